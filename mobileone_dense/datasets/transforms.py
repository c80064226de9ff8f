"""AutoAugment with a strength, for MobileOne's progressive learning (supplementary C.1, Table 15).

The paper multiplies each AutoAugment op's magnitude level (0-9) by a strength alpha (0.3, 0.6, 1.0
over training). mmpretrain's ``AutoAugment`` has no such knob: its ``'imagenet'`` policy stores each
op's level already turned into a value (``Rotate(angle=30)``, ``Solarize(thr=113.8)``, ...), and
``RandAugment``, which does take a ``magnitude_level``, draws ops uniformly instead of applying
AutoAugment's sub-policies. In that policy every op's value is linear in its level and equals the
identity at level 0 (DeepVoltaire's tables, which mmpretrain's policy reproduces), so scaling the
level by alpha is exactly scaling the distance from the identity by alpha; that is what
``ScaledAutoAugment`` does to the policy before building it. Probabilities are unchanged.
"""
import copy
from typing import List, Sequence, Union

from mmcv.transforms import RandomChoice
from mmengine.registry import DefaultScope
from mmpretrain.datasets.transforms.auto_augment import (AUTOAUG_POLICIES, AutoAugment,
                                                         merge_hparams)
from mmpretrain.registry import TRANSFORMS as MMPRETRAIN_TRANSFORMS

from ..registry import TRANSFORMS

# op type -> (argument holding the magnitude, its identity value); ops absent from this table and
# from MAGNITUDE_FREE have a magnitude we do not know how to scale, which raises.
MAGNITUDE_ARGS = {
    'Rotate': ('angle', 0.),
    'Shear': ('magnitude', 0.),
    'Translate': ('magnitude', 0.),
    'ColorTransform': ('magnitude', 0.),
    'Contrast': ('magnitude', 0.),
    'Brightness': ('magnitude', 0.),
    'Sharpness': ('magnitude', 0.),
    'SolarizeAdd': ('magnitude', 0.),
    'Solarize': ('thr', 256.),   # no pixel is >= 256: nothing inverted
    'Posterize': ('bits', 8.),   # 8 bits kept: unchanged (mmpretrain rounds bits up)
}
MAGNITUDE_FREE = ('AutoContrast', 'Equalize', 'Invert')


def scale_policy(policy: dict, strength: float) -> dict:
    """One AutoAugment op config with its magnitude level multiplied by ``strength``."""
    policy = copy.deepcopy(policy)
    op = policy['type']
    if op in MAGNITUDE_FREE:
        return policy
    if op not in MAGNITUDE_ARGS or 'magnitude_range' in policy:
        raise ValueError(f'ScaledAutoAugment cannot scale {op!r} ({policy}): give ops with a fixed '
                         f'magnitude among {sorted(MAGNITUDE_ARGS)} or one of {MAGNITUDE_FREE}')
    key, identity = MAGNITUDE_ARGS[op]
    if strength != 1:  # (1: exactly the policy's value, no rounding)
        policy[key] = identity + strength * (policy[key] - identity)
    return policy


@TRANSFORMS.register_module()
class ScaledAutoAugment(AutoAugment):
    """mmpretrain's ``AutoAugment`` with every op's magnitude scaled by ``strength``.

    ``strength=1`` applies the policy as written (for ``'imagenet'``: mmpretrain's policy),
    ``strength=0`` makes every op with a magnitude the identity (Equalize, AutoContrast and Invert
    have none and stay). Unlike mmpretrain 1.2.0's ``AutoAugment``, which merges ``hparams`` into
    ``self.policies`` but builds its ops from the unmerged policies (so ``pad_val`` and
    ``interpolation`` never reach them), the ops are built from the merged, scaled policies.

    Args:
        policies: ``'imagenet'`` or a list of sub-policies (lists of op configs).
        strength: the multiplier of the magnitude levels (the paper's alpha), >= 0.
        hparams: defaults for op arguments the policies leave unset (e.g. ``pad_val``).
    """

    def __init__(self, policies: Union[str, List[List[dict]]] = 'imagenet',
                 strength: float = 1.0, hparams: dict = dict(pad_val=128)) -> None:
        if isinstance(policies, str):
            if policies not in AUTOAUG_POLICIES:
                raise KeyError(f'unknown AutoAugment policy {policies!r}; choose one of '
                               f'{sorted(AUTOAUG_POLICIES)} or give the sub-policies')
            policies = AUTOAUG_POLICIES[policies]
        if strength < 0:
            raise ValueError(f'strength must be >= 0, got {strength}')
        self.strength = float(strength)
        self.hparams = hparams
        self.policies = [[scale_policy(merge_hparams(op, hparams), self.strength) for op in sub]
                         for sub in policies]
        # The op names are mmpretrain's: build them in its scope whatever scope builds us.
        with DefaultScope.overwrite_default_scope('mmpretrain'):
            transforms = [[MMPRETRAIN_TRANSFORMS.build(op) for op in sub] for sub in self.policies]
        RandomChoice.__init__(self, transforms=transforms)

    def magnitudes(self) -> List[Sequence[float]]:
        """The magnitude argument of each built op (None for magnitude-free ops), per sub-policy."""
        return [[getattr(op, MAGNITUDE_ARGS[type(op).__name__][0], None)
                 if type(op).__name__ in MAGNITUDE_ARGS else None for op in sub.transforms]
                for sub in self.transforms]

    def __repr__(self) -> str:
        return f'{super().__repr__()[:-1]}strength={self.strength})'
