"""MobileOne building blocks: the re-parameterizable ``MobileOneBlock`` and its squeeze-excite.

At train time a block is ``act(se(sum of branches))`` with k conv-BN branches, a 1x1 conv-BN "scale"
branch (kernel > 1 only) and a BN-only identity branch (in == out channels, stride 1). All branches
are linear, so ``reparameterize()`` folds them into one conv with bias (paper, section 3.3).
"""

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import FoldingError


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation with ReLU/sigmoid gating (as in the reference MobileOne-S4).

    Pools with ``adaptive_avg_pool2d`` (not a fixed kernel) so the block stays exportable with
    dynamic input sizes.
    """

    def __init__(self, channels: int, rd_ratio: float = 0.0625) -> None:
        super().__init__()
        reduced = max(1, int(channels * rd_ratio))
        self.reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.expand = nn.Conv2d(reduced, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)
        scale = torch.sigmoid(self.expand(F.relu(self.reduce(scale))))
        return x * scale


class ConvNorm(nn.Sequential):
    """Conv (no bias) followed by a norm layer; children named ``conv`` and ``bn``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        padding: int,
        dilation: int,
        groups: int,
        norm_cfg: dict,
    ) -> None:
        super().__init__()
        self.add_module(
            'conv',
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding,
                dilation=dilation,
                groups=groups,
                bias=False,
            ),
        )
        self.add_module('bn', build_norm_layer(norm_cfg, out_channels)[1])


def fold_batch_norm(kernel: torch.Tensor, bn: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fold an inference-mode BN into the preceding bias-free conv kernel: the one BN folding
    of the package (MobileOne branches here, Conv+BN pairs in ``reparameterize``).

    Raises :class:`~mobileone_dense.errors.FoldingError` for a norm that is not a BatchNorm or
    has no running statistics. Returns ``(kernel * gamma / sigma, beta - mu * gamma / sigma)``
    computed in float64.
    We do not use ``mmcv.cnn.fuse_conv_bn``: it rewrites Conv->BN module pairs in place, while a
    MobileOne block needs each branch's (kernel, bias) to sum them, including a BN-only branch.
    """
    if not isinstance(bn, _BatchNorm):
        raise FoldingError(
            f'cannot fold {type(bn).__name__} into a convolution: only BatchNorm '
            '(BN, SyncBN) layers can be re-parameterized; use norm_cfg=dict(type="BN") '
            'or dict(type="SyncBN")'
        )
    if bn.running_mean is None or bn.running_var is None:
        raise FoldingError(
            f'cannot fold {type(bn).__name__} without running statistics '
            '(track_running_stats=False): build the model with '
            'track_running_stats=True and train it so the statistics exist'
        )
    std = (bn.running_var.double() + bn.eps).sqrt()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(std)
    scale = gamma / std
    return kernel.double() * scale.reshape(-1, 1, 1, 1), beta - bn.running_mean.double() * scale


class MobileOneBlock(nn.Module):
    """One MobileOne conv block (paper Fig. 3): over-parameterized at train time, one conv at
    inference.

    Args:
        in_channels / out_channels: channels of the (N, C, H, W) input / output.
        kernel_size: k x k kernel of the main branches (3 for depthwise/stem, 1 for pointwise).
        stride, dilation, groups: as in ``nn.Conv2d``; padding keeps the size ("same" for stride 1).
        num_conv_branches: the trivial over-parameterization factor k of the paper.
        use_se: squeeze-excite before the activation.
        norm_cfg: mmcv norm config of every branch (BN or SyncBN).
        deploy: build the deploy form (one conv) directly (for loading deploy weights).
        identity: whether to add the BN identity branch; None (default): when in == out channels
            and stride 1.
    """

    __jit_unused_properties__ = ['deploy']

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        num_conv_branches: int = 1,
        use_se: bool = False,
        norm_cfg: Optional[dict] = None,
        deploy: bool = False,
        identity: Optional[bool] = None,
    ) -> None:
        super().__init__()
        if num_conv_branches < 1:
            raise ValueError(f'num_conv_branches must be >= 1, got {num_conv_branches}')
        norm_cfg = norm_cfg if norm_cfg is not None else dict(type='BN')
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.dilation = dilation
        self.groups = groups
        self.padding = dilation * (kernel_size - 1) // 2
        self.num_conv_branches = num_conv_branches

        self.se = SqueezeExcite(out_channels) if use_se else nn.Identity()
        self.act = nn.ReLU(inplace=False)

        self.reparam_conv: Optional[nn.Conv2d] = None
        self.conv_branches: Optional[nn.ModuleList] = None
        self.scale_branch: Optional[ConvNorm] = None
        self.identity_branch: Optional[nn.Module] = None
        if deploy:
            self.reparam_conv = self._make_deploy_conv()
            return
        self.conv_branches = nn.ModuleList(
            ConvNorm(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                self.padding,
                dilation,
                groups,
                norm_cfg,
            )
            for _ in range(num_conv_branches)
        )
        if kernel_size > 1:
            # A 1x1 conv with no padding reads the same pixel as the centre tap of the dilated
            # k x k kernel with padding d*(k-1)/2, so it folds exactly whatever the dilation.
            self.scale_branch = ConvNorm(
                in_channels, out_channels, 1, stride, 0, 1, groups, norm_cfg
            )
        if identity is None:
            identity = in_channels == out_channels and stride == 1
        elif identity and not (in_channels == out_channels and stride == 1):
            raise ValueError('an identity branch needs in_channels == out_channels and stride 1')
        if identity:
            self.identity_branch = build_norm_layer(norm_cfg, out_channels)[1]

    @property
    def deploy(self) -> bool:
        """Whether the block is in its deploy (single conv) form."""
        return self.reparam_conv is not None

    def _make_deploy_conv(self) -> nn.Conv2d:
        return nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            dilation=self.dilation,
            groups=self.groups,
            bias=True,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) -> (N, out_channels, H', W')."""
        if self.reparam_conv is not None:
            return self.act(self.se(self.reparam_conv(x)))
        out = torch.zeros(1, dtype=x.dtype, device=x.device)
        if self.conv_branches is not None:
            for branch in self.conv_branches:
                out = out + branch(x)
        if self.scale_branch is not None:
            out = out + self.scale_branch(x)
        if self.identity_branch is not None:
            out = out + self.identity_branch(x)
        return self.act(self.se(out))

    def deploy_kernel_and_bias(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The single (kernel, bias) equivalent to the sum of all branches in eval mode
        (float64, on the device of the branches)."""
        k = self.kernel_size
        centre = k // 2
        assert self.conv_branches is not None
        device = self.conv_branches[0].conv.weight.device
        kernel = torch.zeros(
            self.out_channels,
            self.in_channels // self.groups,
            k,
            k,
            dtype=torch.float64,
            device=device,
        )
        bias = torch.zeros(self.out_channels, dtype=torch.float64, device=device)
        for branch in self.conv_branches:
            w, b = fold_batch_norm(branch.conv.weight, branch.bn)
            kernel, bias = kernel + w, bias + b
        if self.scale_branch is not None:
            w, b = fold_batch_norm(self.scale_branch.conv.weight, self.scale_branch.bn)
            kernel[:, :, centre : centre + 1, centre : centre + 1] += w
            bias += b
        if self.identity_branch is not None:
            # Identity as a centred one-hot kernel: output channel i reads input channel i, which
            # is index i % (in_channels / groups) inside its group.
            identity = torch.zeros_like(kernel)
            outputs = torch.arange(self.out_channels, device=device)
            identity[outputs, outputs % (self.in_channels // self.groups), centre, centre] = 1.0
            w, b = fold_batch_norm(identity, self.identity_branch)
            kernel, bias = kernel + w, bias + b
        return kernel, bias

    @torch.no_grad()
    def init_from_deploy(self, kernel: torch.Tensor, bias: torch.Tensor) -> None:
        """Set the train-time branches so that, in eval mode, the block computes the deploy block
        ``act(se(conv(x, kernel) + bias))`` exactly (up to float rounding).

        The first conv branch carries the function: its conv gets ``kernel``, its BN is the
        identity plus ``bias`` with running statistics (mean 0, variance 1), weight
        ``sqrt(1 + eps)`` and bias ``bias``. Every other branch (the other conv branches, the
        1x1 scale branch, the BN identity branch) starts at zero output: BN weight and bias 0,
        running statistics (0, 1); their convs keep their initialization, so they learn as soon
        as their BN weight moves off zero (as a zero-initialized residual branch).
        ``kernel``: ``(out_channels, in_channels / groups, k, k)``; ``bias``: ``(out_channels,)``.
        """
        if self.reparam_conv is not None:
            raise RuntimeError(
                'init_from_deploy needs the train-time branches; this block is '
                'in deploy form (deploy=True): load the deploy weights directly'
            )
        carrier = self.conv_branches[0]
        if tuple(kernel.shape) != tuple(carrier.conv.weight.shape) or tuple(bias.shape) != (
            self.out_channels,
        ):
            raise ValueError(
                f'deploy kernel {tuple(kernel.shape)} / bias {tuple(bias.shape)} do '
                f'not fit this block ({self.extra_repr()})'
            )
        norms = [branch.bn for branch in self.conv_branches]
        if self.scale_branch is not None:
            norms.append(self.scale_branch.bn)
        if self.identity_branch is not None:
            norms.append(self.identity_branch)
        for i, bn in enumerate(norms):
            if not isinstance(bn, _BatchNorm) or bn.weight is None or bn.running_var is None:
                raise TypeError(
                    f'cannot initialize {type(bn).__name__} from deploy weights: the '
                    'branches need affine BN with running statistics'
                )
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0)
            bn.weight.fill_((1.0 + bn.eps) ** 0.5 if i == 0 else 0.0)
            bn.bias.copy_(bias if i == 0 else torch.zeros_like(bias))
        carrier.conv.weight.copy_(kernel)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold all branches into ``reparam_conv`` and drop them. Idempotent."""
        if self.reparam_conv is not None:
            return
        kernel, bias = self.deploy_kernel_and_bias()
        reference = self.conv_branches[0].conv.weight
        conv = self._make_deploy_conv().to(device=reference.device, dtype=reference.dtype)
        conv.weight.copy_(kernel.to(reference.dtype))
        conv.bias.copy_(bias.to(reference.dtype))
        self.reparam_conv = conv
        self.conv_branches = None
        self.scale_branch = None
        self.identity_branch = None

    def extra_repr(self) -> str:
        return (
            f'{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, '
            f'stride={self.stride}, dilation={self.dilation}, groups={self.groups}, '
            f'num_conv_branches={self.num_conv_branches}, deploy={self.deploy}'
        )
