"""A compact copy of the structure of Apple's reference MobileOne (ml-mobileone, mobileone.py).

Only what determines its state-dict layout and its function is kept: ``stage0`` (stem) ...
``stage4``, blocks with ``rbr_skip`` (BN), ``rbr_conv`` (k conv-BN), ``rbr_scale`` (1x1 conv-BN),
``se`` (reduce/expand), ``reparam_conv`` in inference mode, and ``linear``. Used to check that
Apple's checkpoints convert to identical features, and to write stand-ins for Apple's release
(its file layout: a plain state dict) where the tests need them offline, in both of Apple's
forms: train-time (``mobileone_<arch>_unfused.pth.tar``) and deploy
(``mobileone_<arch>.pth.tar``, the state dict after Apple's ``reparameterize_model``).
"""

import os
import os.path as osp

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import Config

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def apple_imagenet_url(arch: str) -> str:
    """The URL of Apple's train-time ImageNet checkpoint of ``arch`` ('s0'...'s4'), as the
    configs give it (``configs/_base_/apple_imagenet_weights.py``)."""
    base = osp.join(REPO, 'configs', '_base_', 'apple_imagenet_weights.py')
    return Config.fromfile(base).apple_imagenet.format(arch)


def apple_init_cfg(arch: str) -> dict:
    """The backbone ``init_cfg`` of the detection and segmentation configs of ``arch``: Apple's
    weights (S4's for ``s4_no_se``)."""
    weights = 's4' if arch == 's4_no_se' else arch
    return dict(type='Pretrained', checkpoint=apple_imagenet_url(weights), prefix='backbone.')


class SEBlock(nn.Module):
    def __init__(self, in_channels, rd_ratio=0.0625):
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, int(in_channels * rd_ratio), 1, bias=True)
        self.expand = nn.Conv2d(int(in_channels * rd_ratio), in_channels, 1, bias=True)

    def forward(self, inputs):
        x = F.avg_pool2d(inputs, kernel_size=inputs.shape[-2:])
        return inputs * torch.sigmoid(self.expand(F.relu(self.reduce(x))))


def conv_bn(in_c, out_c, k, stride, padding, groups):
    mod = nn.Sequential()
    mod.add_module('conv', nn.Conv2d(in_c, out_c, k, stride, padding, groups=groups, bias=False))
    mod.add_module('bn', nn.BatchNorm2d(out_c))
    return mod


class MobileOneBlock(nn.Module):
    def __init__(
        self,
        in_c,
        out_c,
        k,
        stride=1,
        padding=0,
        groups=1,
        inference_mode=False,
        use_se=False,
        num_conv_branches=1,
    ):
        super().__init__()
        self.se = SEBlock(out_c) if use_se else nn.Identity()
        self.activation = nn.ReLU()
        if inference_mode:
            self.reparam_conv = nn.Conv2d(in_c, out_c, k, stride, padding, groups=groups, bias=True)
            return
        self.rbr_skip = nn.BatchNorm2d(in_c) if out_c == in_c and stride == 1 else None
        self.rbr_conv = nn.ModuleList(
            conv_bn(in_c, out_c, k, stride, padding, groups) for _ in range(num_conv_branches)
        )
        self.rbr_scale = conv_bn(in_c, out_c, 1, stride, 0, groups) if k > 1 else None

    def forward(self, x):
        if hasattr(self, 'reparam_conv'):
            return self.activation(self.se(self.reparam_conv(x)))
        out = 0
        if self.rbr_skip is not None:
            out = self.rbr_skip(x)
        if self.rbr_scale is not None:
            out = out + self.rbr_scale(x)
        for branch in self.rbr_conv:
            out = out + branch(x)
        return self.activation(self.se(out))


PARAMS = {
    's0': dict(width_multipliers=(0.75, 1.0, 1.0, 2.0), num_conv_branches=4),
    's1': dict(width_multipliers=(1.5, 1.5, 2.0, 2.5)),
    's2': dict(width_multipliers=(1.5, 2.0, 2.5, 4.0)),
    's3': dict(width_multipliers=(2.0, 2.5, 3.0, 4.0)),
    's4': dict(width_multipliers=(3.0, 3.5, 3.5, 4.0), use_se=True),
}


class AppleMobileOne(nn.Module):
    def __init__(self, variant='s0', inference_mode=False, num_classes=1000):
        super().__init__()
        params = PARAMS[variant]
        self.variant, self.num_classes = variant, num_classes
        widths = params['width_multipliers']
        self.inference_mode = inference_mode
        self.num_conv_branches = params.get('num_conv_branches', 1)
        use_se = params.get('use_se', False)
        self.in_planes = min(64, int(64 * widths[0]))
        self.stage0 = MobileOneBlock(3, self.in_planes, 3, 2, 1, inference_mode=inference_mode)
        num_blocks = (2, 8, 10, 1)
        self.stage1 = self._make_stage(int(64 * widths[0]), num_blocks[0], 0)
        self.stage2 = self._make_stage(int(128 * widths[1]), num_blocks[1], 0)
        self.stage3 = self._make_stage(
            int(256 * widths[2]), num_blocks[2], int(num_blocks[2] // 2) if use_se else 0
        )
        self.stage4 = self._make_stage(
            int(512 * widths[3]), num_blocks[3], num_blocks[3] if use_se else 0
        )
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(int(512 * widths[3]), num_classes)

    def _make_stage(self, planes, num_blocks, num_se_blocks):
        blocks = []
        for ix, stride in enumerate([2] + [1] * (num_blocks - 1)):
            use_se = ix >= num_blocks - num_se_blocks
            common = dict(
                inference_mode=self.inference_mode,
                use_se=use_se,
                num_conv_branches=self.num_conv_branches,
            )
            blocks.append(
                MobileOneBlock(
                    self.in_planes, self.in_planes, 3, stride, 1, groups=self.in_planes, **common
                )
            )
            blocks.append(MobileOneBlock(self.in_planes, planes, 1, 1, 0, groups=1, **common))
            self.in_planes = planes
        return nn.Sequential(*blocks)

    def forward_features(self, x):
        for stage in (self.stage0, self.stage1, self.stage2, self.stage3, self.stage4):
            x = stage(x)
        return x

    def forward(self, x):
        return self.linear(torch.flatten(self.gap(self.forward_features(x)), 1))


def randomized(model, seed=0):
    """Random weights and BN statistics of a well-conditioned net (activations stay O(1))."""
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()
            nn.init.normal_(module.weight, std=0.7 * fan_in**-0.5)
            if module.bias is not None:
                nn.init.normal_(module.bias, std=0.05)
        elif isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(std=0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.3, 0.6)
            module.bias.data.normal_(std=0.05)
    model.eval()
    return model


def _fuse_bn_tensor(branch, in_c, k, groups):
    """Apple's ``MobileOneBlock._fuse_bn_tensor``: (kernel, bias) of a conv-BN branch, or of the
    BN identity branch as a k x k conv."""
    if isinstance(branch, nn.Sequential):
        kernel, bn = branch.conv.weight, branch.bn
    else:
        input_dim = in_c // groups
        kernel = torch.zeros((in_c, input_dim, k, k))
        for i in range(in_c):
            kernel[i, i % input_dim, k // 2, k // 2] = 1
        bn = branch
    std = (bn.running_var + bn.eps).sqrt()
    t = (bn.weight / std).reshape(-1, 1, 1, 1)
    return kernel * t, bn.bias - bn.running_mean * bn.weight / std


def _kernel_bias(block):
    """Apple's ``MobileOneBlock._get_kernel_bias``: the sum of the block's branches."""
    conv = block.rbr_conv[0].conv
    in_c, k, groups = conv.in_channels, conv.kernel_size[0], conv.groups
    kernel, bias = 0, 0
    if block.rbr_scale is not None:
        scale_kernel, scale_bias = _fuse_bn_tensor(block.rbr_scale, in_c, k, groups)
        kernel, bias = F.pad(scale_kernel, [k // 2] * 4), scale_bias
    if block.rbr_skip is not None:
        skip_kernel, skip_bias = _fuse_bn_tensor(block.rbr_skip, in_c, k, groups)
        kernel, bias = kernel + skip_kernel, bias + skip_bias
    for branch in block.rbr_conv:
        branch_kernel, branch_bias = _fuse_bn_tensor(branch, in_c, k, groups)
        kernel, bias = kernel + branch_kernel, bias + branch_bias
    return kernel, bias


@torch.no_grad()
def reparameterized(model: AppleMobileOne) -> AppleMobileOne:
    """What Apple's ``reparameterize_model`` makes of ``model``: an inference-mode copy whose
    blocks each hold one ``reparam_conv`` with the sum of their branches (SE and the linear
    layer kept); eval mode."""
    deploy = AppleMobileOne(model.variant, inference_mode=True, num_classes=model.num_classes)
    fused = dict(model.state_dict())
    for name, block in model.named_modules():
        if isinstance(block, MobileOneBlock):
            for key in [k for k in fused if k.startswith(f'{name}.rbr_')]:
                del fused[key]
            kernel, bias = _kernel_bias(block)
            fused[f'{name}.reparam_conv.weight'], fused[f'{name}.reparam_conv.bias'] = kernel, bias
    deploy.load_state_dict(fused, strict=True)
    return deploy.eval()


def save_apple_checkpoint(
    arch: str, path: str, seed: int = 0, deploy: bool = False
) -> AppleMobileOne:
    """Write a checkpoint in the layout of Apple's ``mobileone_<arch>_unfused.pth.tar``
    (train-time; ``deploy=True``: of ``mobileone_<arch>.pth.tar``, the same weights
    re-parameterized as Apple's ``reparameterize_model`` does) with random weights
    (``randomized``) to ``path``, through a rename; returns the model it holds (eval)."""
    model = randomized(AppleMobileOne(arch), seed=seed)
    if deploy:
        model = reparameterized(model)
    os.makedirs(osp.dirname(path), exist_ok=True)
    torch.save(model.state_dict(), path + '.tmp')
    os.replace(path + '.tmp', path)
    return model
