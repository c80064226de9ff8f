"""MobileOne backbone (Vasu et al., CVPR 2023) for classification, detection and segmentation.

Layout (as Apple's reference implementation, so public weights map one to one): a stride-2 3x3
stem block, then four stages at output strides 4, 8, 16, 32. Each paper block is two
``MobileOneBlock`` entries of a stage: a depthwise 3x3 (even index) and a pointwise 1x1 (odd index).
Paper stages 4 and 5 (both 256*alpha wide, stride 2 then 1) form our third stage.
"""

import copy
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.model import BaseModule
from torch.nn.modules.batchnorm import _BatchNorm

from ..registry import MODELS, WEIGHT_LOADERS
from .blocks import MobileOneBlock

# Paper Table 7 (S0-S4) and Table 17 (micro variants). ``width_factors`` are the alphas of the
# four stages (64, 128, 256, 512 base widths); the stem is min(64, 64 * alpha_1) wide.
# ``num_se_blocks`` counts the last paper blocks of a stage that use SE (S4: paper stages 5 and 6).
# The stem uses a single conv branch in all three public implementations (Apple, timm,
# mmpretrain), although Table 7 lists k=4 for S0's first row; we follow them so their weights load.
ARCH_SETTINGS: Dict[str, dict] = {
    's0': dict(num_blocks=(2, 8, 10, 1), width_factors=(0.75, 1.0, 1.0, 2.0), num_conv_branches=4),
    's1': dict(num_blocks=(2, 8, 10, 1), width_factors=(1.5, 1.5, 2.0, 2.5), num_conv_branches=1),
    's2': dict(num_blocks=(2, 8, 10, 1), width_factors=(1.5, 2.0, 2.5, 4.0), num_conv_branches=1),
    's3': dict(num_blocks=(2, 8, 10, 1), width_factors=(2.0, 2.5, 3.0, 4.0), num_conv_branches=1),
    's4': dict(
        num_blocks=(2, 8, 10, 1),
        width_factors=(3.0, 3.5, 3.5, 4.0),
        num_conv_branches=1,
        num_se_blocks=(0, 0, 5, 1),
    ),
    'mu0': dict(num_blocks=(2, 4, 6, 1), width_factors=(0.75, 0.5, 0.5, 0.75), num_conv_branches=3),
    'mu1': dict(
        num_blocks=(2, 6, 8, 1), width_factors=(0.75, 0.75, 0.75, 1.0), num_conv_branches=2
    ),
    'mu2': dict(num_blocks=(2, 6, 8, 1), width_factors=(0.75, 1.0, 1.0, 1.0), num_conv_branches=2),
}
# S4 without squeeze-excite: the paper's S4 segmentation backbone (Table 11b, marked with a dagger).
# Not in the paper's complexity tables; S4 ImageNet weights (trained with SE) need 's4'.
ARCH_SETTINGS['s4_no_se'] = dict(ARCH_SETTINGS['s4'], num_se_blocks=(0, 0, 0, 0))
BASE_WIDTHS = (64, 128, 256, 512)
ARCH_KEYS = (
    'num_blocks',
    'width_factors',
    'num_conv_branches',
    'num_se_blocks',
    'stem_conv_branches',
)


def resolve_arch(arch: Union[str, dict]) -> dict:
    """Full arch dict (with defaults) from a name in ``ARCH_SETTINGS`` or a custom dict."""
    if isinstance(arch, str):
        if arch.lower() not in ARCH_SETTINGS:
            raise KeyError(
                f'unknown MobileOne arch {arch!r}; valid names are '
                f'{sorted(ARCH_SETTINGS)} (or pass a dict with keys {list(ARCH_KEYS)})'
            )
        arch = ARCH_SETTINGS[arch.lower()]
    elif not isinstance(arch, dict):
        raise TypeError(f'arch must be a name or a dict, got {type(arch).__name__}')
    unknown = set(arch) - set(ARCH_KEYS)
    missing = {'num_blocks', 'width_factors'} - set(arch)
    if unknown or missing:
        raise KeyError(
            f'custom MobileOne arch: unknown keys {sorted(unknown)}, missing keys '
            f'{sorted(missing)}; valid keys are {list(ARCH_KEYS)}'
        )
    resolved = dict(num_conv_branches=1, num_se_blocks=(0, 0, 0, 0), stem_conv_branches=1)
    resolved.update(copy.deepcopy(arch))
    for key in ('num_blocks', 'width_factors', 'num_se_blocks'):
        if len(resolved[key]) != 4:
            raise ValueError(f'arch[{key!r}] needs one value per stage (4), got {resolved[key]}')
    return resolved


def stage_channels(arch: Union[str, dict]) -> Tuple[int, ...]:
    """Output channels of the four stages (what ``in_channels`` of a neck/head must be)."""
    arch = resolve_arch(arch)
    return tuple(int(base * factor) for base, factor in zip(BASE_WIDTHS, arch['width_factors']))


@MODELS.register_module()
class MobileOne(BaseModule):
    """MobileOne backbone returning a tuple of stage features.

    Args:
        arch: 's0'...'s4', 's4_no_se', 'mu0'...'mu2' or a dict (see ``ARCH_SETTINGS``).
        in_channels: channels of the input image batch (N, C, H, W).
        out_indices: stages to return (0..3 at output strides 4, 8, 16, 32 without dilation).
        strides: stride of the first block of each stage.
        dilations: dilation of the 3x3 convs of each stage; output stride 8 for segmentation is
            ``strides=(2, 2, 1, 1), dilations=(1, 1, 2, 4)``.
        frozen_stages: -1 freezes nothing; 0 the stem; n > 0 the stem and stages 0..n-1.
        norm_eval: keep BN layers in eval mode while training.
        deploy: build the deploy (inference, single-branch) form directly.
        norm_cfg: mmcv norm config (BN or SyncBN).
        init_cfg: mmengine init config, e.g.
            ``dict(type='Pretrained', checkpoint=..., prefix=...)``.
    """

    # Not compiled by torch.jit.script (is_init: mmengine BaseModule's bookkeeping property).
    __jit_unused_properties__ = ['deploy', 'out_channels', 'is_init']

    def __init__(
        self,
        arch: Union[str, dict] = 's0',
        in_channels: int = 3,
        out_indices: Sequence[int] = (3,),
        strides: Sequence[int] = (2, 2, 2, 2),
        dilations: Sequence[int] = (1, 1, 1, 1),
        frozen_stages: int = -1,
        norm_eval: bool = False,
        deploy: bool = False,
        norm_cfg: Optional[dict] = None,
        init_cfg: Optional[Union[dict, List[dict]]] = None,
    ) -> None:
        if init_cfg is None:
            init_cfg = [
                dict(type='Kaiming', layer='Conv2d'),
                dict(type='Constant', val=1, layer=['_BatchNorm', 'GroupNorm']),
            ]
        super().__init__(init_cfg=init_cfg)
        self.arch_name = arch if isinstance(arch, str) else 'custom'
        self.arch = resolve_arch(arch)
        if isinstance(out_indices, int):
            out_indices = (out_indices,)
        out_indices = tuple(out_indices)
        if not out_indices or any(not 0 <= i < 4 for i in out_indices):
            raise ValueError(
                f'out_indices must be stage indices in 0..3 (output strides 4, 8, 16, '
                f'32), got {out_indices}'
            )
        if len(strides) != 4 or len(dilations) != 4:
            raise ValueError(
                f'strides and dilations need 4 values (one per stage), got '
                f'{tuple(strides)} and {tuple(dilations)}'
            )
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f'frozen_stages must be in -1..4, got {frozen_stages}')
        self.in_channels = in_channels
        self.out_indices = out_indices
        self.strides = tuple(strides)
        self.dilations = tuple(dilations)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.norm_cfg = norm_cfg if norm_cfg is not None else dict(type='BN', requires_grad=True)
        self.channels = stage_channels(self.arch)
        self.stem_channels = min(64, int(64 * self.arch['width_factors'][0]))

        self.stem = MobileOneBlock(
            in_channels,
            self.stem_channels,
            3,
            stride=2,
            num_conv_branches=self.arch['stem_conv_branches'],
            norm_cfg=self.norm_cfg,
            deploy=deploy,
        )
        self.stages = nn.ModuleList()
        channels = self.stem_channels
        for i, (num_blocks, out_channels) in enumerate(zip(self.arch['num_blocks'], self.channels)):
            num_se = self.arch['num_se_blocks'][i]
            if num_se > num_blocks:
                raise ValueError(f'stage {i}: {num_se} SE blocks but only {num_blocks} blocks')
            blocks = []
            for j in range(num_blocks):
                use_se = j >= num_blocks - num_se
                stride = self.strides[i] if j == 0 else 1
                common = dict(
                    num_conv_branches=self.arch['num_conv_branches'],
                    use_se=use_se,
                    norm_cfg=self.norm_cfg,
                    deploy=deploy,
                )
                # A stage's first block downsamples in the reference architecture, so it has no
                # identity branch; with its stride traded for dilation (output stride 8 or 16)
                # it keeps the same branches: ImageNet weights load and keep their function.
                blocks.append(
                    MobileOneBlock(
                        channels,
                        channels,
                        3,
                        stride=stride,
                        dilation=self.dilations[i],
                        groups=channels,
                        identity=False if j == 0 else None,
                        **common,
                    )
                )
                blocks.append(MobileOneBlock(channels, out_channels, 1, **common))
                channels = out_channels
            self.stages.append(nn.Sequential(*blocks))
        self._freeze_stages()

    @property
    def deploy(self) -> bool:
        """True once every block is in deploy form."""
        return all(m.deploy for m in self.modules() if isinstance(m, MobileOneBlock))

    @property
    def out_channels(self) -> Tuple[int, ...]:
        """Channels of each returned feature map, in ``out_indices`` order."""
        return tuple(self.channels[i] for i in self.out_indices)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """(N, in_channels, H, W) -> features of ``out_indices``, stage i at stride 2**(i+2)."""
        return tuple(_extract_features(self, x))

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script`` compiles this twin: same modules, features as a list (TorchScript
        has no variable-length tuples)."""
        return _ScriptableMobileOne(self)

    def init_weights(self) -> None:
        """Initialize; a ``Pretrained`` init_cfg loads strictly (any mismatch raises)."""
        init_cfg = self.init_cfg
        if isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained':
            # converters.loading.load_pretrained_backbone, from the layer above
            load = WEIGHT_LOADERS.get('MobileOne')
            load(self, init_cfg['checkpoint'], prefix=init_cfg.get('prefix'))
            self._is_init = True
            return
        super().init_weights()

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Re-parameterize every block into its deploy form, in place (idempotent)."""
        for module in self.modules():
            if isinstance(module, MobileOneBlock):
                module.reparameterize()
        self._freeze_stages()

    def _freeze_stages(self) -> None:
        frozen = []
        if self.frozen_stages >= 0:
            frozen.append(self.stem)
        frozen += [self.stages[i] for i in range(max(self.frozen_stages, 0))]
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'MobileOne':
        """Switch mode, keeping frozen stages (and all BN with ``norm_eval``) in eval mode."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self


def _check_input(x: torch.Tensor, in_channels: int) -> None:
    if x.dim() != 4:
        raise ValueError(
            'MobileOne expects a 4-D (N, C, H, W) batch but got shape ' + str(list(x.shape))
        )
    if x.shape[1] != in_channels:
        raise ValueError(
            'MobileOne expects an (N, ' + str(in_channels) + ', H, W) image batch '
            'but got shape ' + str(list(x.shape)) + '; convert grayscale/RGBA '
            'images to ' + str(in_channels) + ' channels or build the backbone '
            'with in_channels=' + str(x.shape[1])
        )


def _extract_features(backbone: 'MobileOne', x: torch.Tensor) -> List[torch.Tensor]:
    _check_input(x, backbone.in_channels)
    x = backbone.stem(x)
    outs = []
    for i, stage in enumerate(backbone.stages):
        x = stage(x)
        if i in backbone.out_indices:
            outs.append(x)
    return outs


class _ScriptableMobileOne(nn.Module):
    """What ``torch.jit.script(MobileOne)`` compiles: shares the backbone's modules."""

    def __init__(self, backbone: MobileOne) -> None:
        super().__init__()
        self.stem = backbone.stem
        self.stages = backbone.stages
        self.in_channels = backbone.in_channels
        self.out_indices: List[int] = list(backbone.out_indices)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        _check_input(x, self.in_channels)
        x = self.stem(x)
        outs: List[torch.Tensor] = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                outs.append(x)
        return outs
