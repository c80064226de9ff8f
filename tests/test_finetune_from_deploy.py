"""Fine-tuning from deploy weights: a deploy checkpoint initializes a trainable (train-time) model.

The backbone's ``Pretrained`` init given a deploy checkpoint sets its train-time branches so that
the train-time model in eval mode computes the deploy model's function; ``load_deploy_state_dict``
does the same for a whole detector / segmentor (neck and head BN folded back out). Models are
random with calibrated, perturbed BN statistics (as after training), inputs small.
"""

import copy
import logging
import math
import os.path as osp

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.structures import InstanceData, PixelData

from mobileone_dense import MobileOne, MobileOneBlock, reparameterize
from mobileone_dense.analysis.deploy_check import randomize_batch_norm
from mobileone_dense.apis import build_model_from_config
from mobileone_dense.engine.deploy_checkpoints import (
    atomic_save,
    deploy_checkpoint,
    max_relative_difference,
    output_tensors,
)
from mobileone_dense.errors import WeightsMismatchError
from mobileone_dense.models.reparameterize import load_deploy_state_dict

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = {
    'detector': ('configs/ssdlite_mobileone_s0_coco.py', 96),
    'segmentor': ('configs/deeplabv3_mobileone_s0_voc.py', 64),
}


def smooth_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Image-like inputs: smooth structure plus noise (i.i.d. noise averages out in deep nets)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 3, size // 8, size // 8, generator=g)
    return F.interpolate(coarse, size=(size, size), mode='bilinear') + 0.3 * torch.randn(
        n, 3, size, size, generator=g
    )


class _TensorOutputs(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, inputs):
        return output_tensors(self.model(inputs, mode='tensor'))


@pytest.fixture(scope='module')
def deploy_models(tmp_path_factory):
    """task -> (config, deploy eval model, inputs, deploy checkpoint path, train-time model), made
    once per task."""
    made = {}

    def get(task):
        if task not in made:
            made[task] = deploy_model(task, tmp_path_factory.mktemp(task))
        return made[task]

    return get


def deploy_model(task: str, tmp_path):
    """(config, deploy eval model, inputs, deploy checkpoint path, train-time model) of the task's
    S0 config."""
    config, size = CONFIGS[task]
    cfg = Config.fromfile(osp.join(REPO, config))
    torch.manual_seed(0)
    model = build_model_from_config(cfg)
    inputs = smooth_images(2, size, 1)
    randomize_batch_norm(_TensorOutputs(model), calibration_inputs=inputs)
    deploy = reparameterize(copy.deepcopy(model).eval())
    path = str(tmp_path / f'{task}_deploy.pth')
    atomic_save(deploy_checkpoint(deploy, {}), path)
    return cfg, deploy, inputs, path, model


def from_deploy_backbone(cfg: Config, checkpoint: str, norm_eval: bool = False):
    """The training config's model, its backbone given the deploy checkpoint by Pretrained."""
    cfg = copy.deepcopy(cfg)
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=checkpoint, prefix='backbone.')
    cfg.model.backbone.norm_eval = norm_eval
    model = build_model_from_config(cfg)
    model.init_weights()  # the config's init: neck and head as for training, backbone Pretrained
    return model


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.parametrize('task', sorted(CONFIGS))
def test_deploy_checkpoint_initializes_a_train_time_model_with_the_same_function(
    task, deploy_models
):
    cfg, deploy, inputs, checkpoint, train_time = deploy_models(task)
    records = _Records()
    logger = MMLogger.get_current_instance()
    logger.addHandler(records)
    try:
        model = from_deploy_backbone(cfg, checkpoint)
    finally:
        logger.removeHandler(records)
    assert any(
        'from the deploy weights' in m and 'train-time branches' in m for m in records.messages
    )
    assert not model.backbone.deploy  # trainable branches
    with torch.no_grad():
        error = max_relative_difference(model.eval().backbone(inputs), deploy.backbone(inputs))
    assert error <= 1e-5

    # which branch carries the weights: the first conv branch, BN = identity + deploy bias
    block = model.backbone.stages[1][2]
    deploy_block = deploy.backbone.stages[1][2]
    carrier = block.conv_branches[0]
    assert torch.equal(carrier.conv.weight, deploy_block.reparam_conv.weight)
    assert torch.equal(carrier.bn.bias, deploy_block.reparam_conv.bias)
    assert torch.equal(carrier.bn.running_mean, torch.zeros_like(carrier.bn.running_mean))
    assert torch.equal(carrier.bn.running_var, torch.ones_like(carrier.bn.running_var))
    # the others start at zero output (BN weight and bias 0), their convs stay random
    others = [b.bn for b in block.conv_branches[1:]] + [
        block.scale_branch.bn,
        block.identity_branch,
    ]
    assert all(not bn.weight.any() and not bn.bias.any() for bn in others)
    assert block.conv_branches[1].conv.weight.abs().sum() > 0
    # re-parameterizing the initialized backbone again gives the deploy weights back
    redeploy = reparameterize(copy.deepcopy(model.backbone)).state_dict()
    assert (
        max_relative_difference(
            list(redeploy.values()), list(deploy.backbone.state_dict().values())
        )
        <= 1e-6
    )

    # the whole model (neck / head BN folded back out): the same outputs; in float64 (deploy
    # and loaded in float64, so that no float32 rounding of the weights enters) exactly
    whole = build_model_from_config(cfg)
    counts = load_deploy_state_dict(whole, deploy.state_dict())
    assert counts['blocks'] == sum(isinstance(m, MobileOneBlock) for m in whole.modules())
    assert counts['conv_bn'] > 0
    deploy64 = reparameterize(copy.deepcopy(train_time).double().eval())
    whole64 = build_model_from_config(cfg).double()
    load_deploy_state_dict(whole64, deploy64.state_dict())
    with torch.no_grad():
        error32 = max_relative_difference(
            output_tensors(whole.eval()(inputs, mode='tensor')),
            output_tensors(deploy(inputs, mode='tensor')),
        )
        error64 = max_relative_difference(
            output_tensors(whole64.eval()(inputs.double(), mode='tensor')),
            output_tensors(deploy64(inputs.double(), mode='tensor')),
        )
    assert error32 <= 1e-4 and error64 <= 1e-10, (error32, error64)


def _loss(model, task: str, inputs: torch.Tensor, step: int) -> torch.Tensor:
    """The model's training loss on ``inputs`` with generated targets (boxes / label maps)."""
    g = torch.Generator().manual_seed(step)
    n, _, h, w = inputs.shape
    samples = []
    if task == 'detector':
        from mmdet.structures import DetDataSample

        for _ in range(n):
            sample = DetDataSample(
                metainfo=dict(img_shape=(h, w), pad_shape=(h, w), batch_input_shape=(h, w))
            )
            xy = torch.rand(2, 2, generator=g) * (h / 2)
            sample.gt_instances = InstanceData(
                bboxes=torch.cat([xy, xy + h / 4 + torch.rand(2, 2, generator=g) * h / 4], 1),
                labels=torch.randint(0, 80, (2,), generator=g),
            )
            samples.append(sample)
    else:
        from mmseg.structures import SegDataSample

        for _ in range(n):
            sample = SegDataSample(metainfo=dict(img_shape=(h, w), pad_shape=(h, w)))
            sample.gt_sem_seg = PixelData(data=torch.randint(0, 21, (1, h, w), generator=g))
            samples.append(sample)
    losses = model.loss(inputs, samples)
    return sum(
        v.sum() if isinstance(v, torch.Tensor) else sum(v) for k, v in losses.items() if 'loss' in k
    )


@pytest.mark.parametrize('task', sorted(CONFIGS))
def test_training_from_deploy_weights_runs_and_moves_the_function_smoothly(task, deploy_models):
    cfg, deploy, _, checkpoint, _ = deploy_models(task)
    # batches of 4: BN's batch statistics over fewer images are too noisy to train on
    inputs = smooth_images(4, CONFIGS[task][1], 7)
    with torch.no_grad():
        reference = deploy.backbone(inputs)
    changes = {}
    for norm_eval in (True, False):
        model = from_deploy_backbone(cfg, checkpoint, norm_eval=norm_eval)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        changes[norm_eval] = []
        for step in range(2):
            loss = _loss(model.train(), task, inputs, step)
            assert math.isfinite(loss.item())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                changes[norm_eval].append(
                    max_relative_difference(model.eval().backbone(inputs), reference)
                )
        # the zero-output branches learn: their BN weights left zero
        assert any(
            b.bn.weight.abs().sum() > 0
            for b in model.backbone.modules()
            if isinstance(b, MobileOneBlock)
            for b in b.conv_branches[1:]
        )
    # norm_eval=True keeps the deploy-set BN statistics: only the SGD steps move the function
    assert all(0 < c < 1e-2 for c in changes[True]), changes
    # norm_eval=False: BN statistics move towards the batches' by the momentum each step
    assert all(c < 0.25 for c in changes[False]) and changes[False][0] > changes[True][0], changes


def test_deploy_weights_that_do_not_fit_are_named(tmp_path):
    deploy = reparameterize(MobileOne('s1').eval())
    path = str(tmp_path / 's1_deploy.pth')
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in deploy.state_dict().items()}}, path)
    backbone = MobileOne(
        's2', init_cfg=dict(type='Pretrained', checkpoint=path, prefix='backbone.')
    )
    with pytest.raises(WeightsMismatchError, match='size mismatch'):
        backbone.init_weights()
    state = dict(deploy.state_dict())
    state.pop('stem.reparam_conv.bias')
    with pytest.raises(WeightsMismatchError, match='stem.reparam_conv.bias'):
        load_deploy_state_dict(MobileOne('s1'), state)
    with pytest.raises(RuntimeError, match='needs the train-time branches'):
        deploy.stem.init_from_deploy(torch.zeros(1), torch.zeros(1))
