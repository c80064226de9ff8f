"""Models to check re-parameterization on: BN layers with non-trivial statistics (the check
itself is :func:`mobileone_dense.engine.deploy_checkpoints.deploy_error`)."""

from typing import Optional

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..models.blocks import MobileOneBlock


@torch.no_grad()
def randomize_batch_norm(
    model: nn.Module, seed: int = 0, calibration_inputs: Optional[torch.Tensor] = None
) -> nn.Module:
    """Give every BN layer non-trivial affine parameters and running statistics (in place).

    Freshly initialized BN (mean 0, var 1, gamma 1, beta 0) would hide folding mistakes. With
    ``calibration_inputs`` the running statistics are first measured on them (as after training)
    and then perturbed, so activations keep a trained network's scale; without, they are drawn
    independently (activations of deep models then grow layer after layer, and float32 rounding
    with them).
    """
    generator = torch.Generator().manual_seed(seed)
    batch_norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    branch_gain = {}
    for block in model.modules():
        if isinstance(block, MobileOneBlock) and not block.deploy:
            norms = [m for m in block.modules() if isinstance(m, _BatchNorm)]
            branch_gain.update({id(m): len(norms) ** -0.5 for m in norms})
    if calibration_inputs is not None:
        was_training = model.training
        momenta = [bn.momentum for bn in batch_norms]
        for bn in batch_norms:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the calibration pass
        model.train()
        model(calibration_inputs)
        for bn, momentum in zip(batch_norms, momenta):
            bn.momentum = momentum
        model.train(was_training)
    for module in batch_norms:
        n = module.num_features
        # A trained MobileOne block's branches sum to activations of unit scale; scale each
        # branch's gamma by 1/sqrt(#branches) so deep random models stay as well conditioned
        # (otherwise activations grow ~20% a block and float32 rounding grows with them).
        gain = branch_gain.get(id(module), 1.0)
        if calibration_inputs is not None:
            std = module.running_var.sqrt()
            module.running_mean.add_(torch.randn(n, generator=generator) * 0.1 * std)
            module.running_var.mul_(torch.rand(n, generator=generator) * 0.5 + 0.75)
        else:
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) * 0.5 + 0.5)
        if module.affine:
            module.weight.copy_((torch.rand(n, generator=generator) * 0.5 + 0.75) * gain)
            module.bias.copy_(torch.randn(n, generator=generator) * 0.1 * gain)
    return model
