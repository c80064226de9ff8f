"""AutoAugment with a strength, for MobileOne's progressive learning (supplementary C.1, Table 15).

The paper multiplies each AutoAugment op's magnitude level (0-9) by a strength alpha (0.3, 0.6, 1.0
over training). mmpretrain's ``AutoAugment`` has no such knob: its ``'imagenet'`` policy stores each
op's level already turned into a value (``Rotate(angle=30)``, ``Solarize(thr=113.8)``, ...), and
``RandAugment``, which does take a ``magnitude_level``, draws ops uniformly instead of applying
AutoAugment's sub-policies. In that policy every op's value is linear in its level and equals the
identity at level 0 (DeepVoltaire's tables, which mmpretrain's policy reproduces), so scaling the
level by alpha is exactly scaling the distance from the identity by alpha; that is what
``ScaledAutoAugment`` does to the policy before building it. Probabilities are unchanged.

Also: ``LoadImageFromFile`` and ``LoadSegAnnotations``, loaders whose errors name the bad file
(corrupt or truncated image, mask labels outside the classes) and say what to do.
"""

import copy
import warnings
from typing import List, Optional, Sequence, Union

import mmcv
import numpy as np
from mmcv.transforms import LoadImageFromFile as MMCVLoadImageFromFile
from mmcv.transforms import RandomChoice
from mmengine import fileio
from mmengine.registry import DefaultScope
from mmpretrain.datasets.transforms.auto_augment import AUTOAUG_POLICIES, AutoAugment, merge_hparams
from mmpretrain.registry import TRANSFORMS as MMPRETRAIN_TRANSFORMS
from mmseg.datasets.transforms import LoadAnnotations as MMSegLoadAnnotations

from ..errors import BadDataError, MissingDataError
from ..registry import TRANSFORMS

# op type -> (argument holding the magnitude, its identity value); ops absent from this table and
# from MAGNITUDE_FREE have a magnitude we do not know how to scale, which raises.
MAGNITUDE_ARGS = {
    'Rotate': ('angle', 0.0),
    'Shear': ('magnitude', 0.0),
    'Translate': ('magnitude', 0.0),
    'ColorTransform': ('magnitude', 0.0),
    'Contrast': ('magnitude', 0.0),
    'Brightness': ('magnitude', 0.0),
    'Sharpness': ('magnitude', 0.0),
    'SolarizeAdd': ('magnitude', 0.0),
    'Solarize': ('thr', 256.0),  # no pixel is >= 256: nothing inverted
    'Posterize': ('bits', 8.0),  # 8 bits kept: unchanged (mmpretrain rounds bits up)
}
MAGNITUDE_FREE = ('AutoContrast', 'Equalize', 'Invert')


def scale_policy(policy: dict, strength: float) -> dict:
    """One AutoAugment op config with its magnitude level multiplied by ``strength``."""
    policy = copy.deepcopy(policy)
    op = policy['type']
    if op in MAGNITUDE_FREE:
        return policy
    if op not in MAGNITUDE_ARGS or 'magnitude_range' in policy:
        raise ValueError(
            f'ScaledAutoAugment cannot scale {op!r} ({policy}): give ops with a fixed '
            f'magnitude among {sorted(MAGNITUDE_ARGS)} or one of {MAGNITUDE_FREE}'
        )
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

    def __init__(
        self,
        policies: Union[str, List[List[dict]]] = 'imagenet',
        strength: float = 1.0,
        hparams: dict = dict(pad_val=128),
    ) -> None:
        if isinstance(policies, str):
            if policies not in AUTOAUG_POLICIES:
                raise KeyError(
                    f'unknown AutoAugment policy {policies!r}; choose one of '
                    f'{sorted(AUTOAUG_POLICIES)} or give the sub-policies'
                )
            policies = AUTOAUG_POLICIES[policies]
        if strength < 0:
            raise ValueError(f'strength must be >= 0, got {strength}')
        self.strength = float(strength)
        self.hparams = hparams
        self.policies = [
            [scale_policy(merge_hparams(op, hparams), self.strength) for op in sub]
            for sub in policies
        ]
        # The op names are mmpretrain's: build them in its scope whatever scope builds us.
        with DefaultScope.overwrite_default_scope('mmpretrain'):
            transforms = [[MMPRETRAIN_TRANSFORMS.build(op) for op in sub] for sub in self.policies]
        RandomChoice.__init__(self, transforms=transforms)

    def magnitudes(self) -> List[Sequence[float]]:
        """The magnitude argument of each built op (None for magnitude-free ops), per sub-policy."""
        return [
            [
                getattr(op, MAGNITUDE_ARGS[type(op).__name__][0], None)
                if type(op).__name__ in MAGNITUDE_ARGS
                else None
                for op in sub.transforms
            ]
            for sub in self.transforms
        ]

    def __repr__(self) -> str:
        return f'{super().__repr__()[:-1]}strength={self.strength})'


# -- loading with errors that name the file ------------------------------------------------------
@TRANSFORMS.register_module()
class LoadImageFromFile(MMCVLoadImageFromFile):
    """mmcv's ``LoadImageFromFile`` that says what to do when an image is corrupt or truncated.

    mmcv fails with a bare ``AssertionError: failed to load image: <file>`` when OpenCV cannot
    decode a file (corrupt, truncated, empty, not an image). Here that raises ``BadDataError``
    naming the file and the fix or, with ``skip_corrupt=True``, warns (naming the file) and returns
    None: mmengine's ``BaseDataset`` then takes another sample (training only; a test-mode dataset
    raises). A missing file raises ``MissingDataError`` naming it.

    Args:
        skip_corrupt: skip undecodable images with a warning instead of raising.
        **kwargs: mmcv's ``LoadImageFromFile`` arguments (``to_float32``, ``color_type``,
            ``imdecode_backend``, ``ignore_empty``, ``backend_args``).
    """

    def __init__(self, skip_corrupt: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.skip_corrupt = skip_corrupt

    def transform(self, results: dict) -> Optional[dict]:
        if self.file_client_args is not None:  # mmcv's deprecated file clients: its own path
            return super().transform(results)
        filename = results['img_path']
        try:
            data = fileio.get(filename, backend_args=self.backend_args)
        except FileNotFoundError:
            if self.ignore_empty:
                return None
            raise MissingDataError(
                f'{filename}: image file does not exist but the dataset lists '
                'it: restore it, or remove it from the annotations'
            ) from None
        try:
            image = mmcv.imfrombytes(data, flag=self.color_type, backend=self.imdecode_backend)
            problem = None if image is not None else 'cannot decode image'
        except Exception as error:  # cv2.error, PIL's OSError/UnidentifiedImageError, ...
            image, problem = None, f'cannot decode image ({type(error).__name__}: {error})'
        if problem is not None:
            message = (
                f'{filename}: {problem}; the file is corrupt or truncated ({len(data)} '
                'bytes): remove or replace it (and its annotation), or set '
                'skip_corrupt=True on mobileone_dense.LoadImageFromFile to skip such images '
                'with a warning during training'
            )
            if self.skip_corrupt:
                warnings.warn(message)
                return None
            raise BadDataError(message)
        if self.to_float32:
            image = image.astype(np.float32)
        results['img'] = image
        results['img_shape'] = image.shape[:2]
        results['ori_shape'] = image.shape[:2]
        return results

    def __repr__(self) -> str:
        return f'{super().__repr__()[:-1]}, skip_corrupt={self.skip_corrupt})'


@TRANSFORMS.register_module()
class LoadSegAnnotations(MMSegLoadAnnotations):
    """mmseg's ``LoadAnnotations`` that rejects masks with labels outside the classes.

    mmseg reads any value: a label >= ``num_classes`` (other than ``ignore_index``) crashes the
    cross-entropy loss ("Target N is out of bounds", a device-side assert on GPUs) without naming
    the file, or is silently dropped by ``IoUMetric``. Here it raises ``BadDataError`` naming the
    file, the values, ``num_classes`` and ``ignore_index``. ``tools/train.py``/``test.py`` fill
    ``num_classes``/``ignore_index`` from ``model.decode_head`` when the config leaves them unset.

    Args:
        num_classes: the model's classes; None: no check.
        ignore_index: the label the loss and metric ignore (mmseg's 255).
        **kwargs: mmseg's ``LoadAnnotations`` arguments.
    """

    def __init__(
        self, num_classes: Optional[int] = None, ignore_index: int = 255, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def _load_seg_map(self, results: dict) -> None:
        path = results['seg_map_path']
        try:
            super()._load_seg_map(results)
        except FileNotFoundError:
            raise MissingDataError(
                f'{path}: segmentation mask does not exist but the dataset '
                'lists its image: restore it, or remove the image from the '
                'split file'
            ) from None
        except (OSError, ValueError, AttributeError) as error:  # undecodable: PIL, cv2, None
            raise BadDataError(
                f'{path}: cannot decode segmentation mask ({error}); the file is '
                'corrupt or truncated: replace it, or remove the image from the '
                'split file'
            ) from None
        if self.num_classes is None:
            return
        labels = np.flatnonzero(np.bincount(results['gt_seg_map'].ravel(), minlength=256))
        bad = labels[(labels >= self.num_classes) & (labels != self.ignore_index)]
        if bad.size:
            reduced = results.get('reduce_zero_label', self.reduce_zero_label)
            in_file = (
                f' (values {(bad + 1).tolist()} in the file, before reduce_zero_label subtracts 1)'
                if reduced and not results.get('label_map')
                else ''
            )
            raise BadDataError(
                f'{path}: label values {bad.tolist()}{in_file} are outside the {self.num_classes} '
                f'classes (0-{self.num_classes - 1}; {self.ignore_index} = ignore_index): fix the '
                f'mask (e.g. set those pixels to {self.ignore_index} to ignore them), or set '
                "model.decode_head.num_classes (and the dataset's classes) to match the data"
            )

    def __repr__(self) -> str:
        return (
            f'{super().__repr__()[:-1]}, num_classes={self.num_classes}, '
            f'ignore_index={self.ignore_index})'
        )
