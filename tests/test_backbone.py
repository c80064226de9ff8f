"""MobileOne backbone: architecture fidelity, exact re-parameterization, shapes, freezing,
errors."""

import copy

import pytest
import torch
import torch.nn as nn

from mobileone_dense import MobileOne, MobileOneBlock, reparameterize
from mobileone_dense.analysis import (
    PAPER_COMPLEXITY,
    deploy_error,
    measure_classifier_complexity,
    randomize_batch_norm,
)
from mobileone_dense.errors import FoldingError
from mobileone_dense.models import ARCH_SETTINGS, SqueezeExcite, stage_channels

ALL_ARCHS = list(PAPER_COMPLEXITY)  # 's4_no_se' is S4's blocks minus SE: its own test below
TOLERANCE = 1e-5  # float32 comparisons: rounding
EXACT = 1e-9  # deploy_error: float64, where the fold is exact


def make_backbone(arch, seed=0, calibration_size=(64, 64), **kwargs):
    """Random weights; BN statistics measured on random images, then randomly perturbed."""
    torch.manual_seed(seed)
    kwargs.setdefault('out_indices', (0, 1, 2, 3))
    model = MobileOne(arch, **kwargs)
    calibration = torch.randn(4, 3, *calibration_size)
    return randomize_batch_norm(model, seed=seed + 1, calibration_inputs=calibration).eval()


@pytest.mark.parametrize('arch', ALL_ARCHS)
def test_reparameterization_is_exact_for_every_arch(arch):
    model = make_backbone(arch)
    inputs = torch.randn(2, 3, 224, 224)
    assert deploy_error(model, inputs) <= EXACT


@pytest.mark.parametrize('arch', ['s0', 's4'])
def test_reparameterization_is_exact_at_odd_input_size(arch):
    model = make_backbone(arch)
    assert deploy_error(model, torch.randn(1, 3, 199, 257)) <= EXACT


@pytest.mark.parametrize('arch', ['s0', 'mu1'])
def test_reparameterization_is_exact_for_dilated_output_stride_8(arch):
    model = make_backbone(arch, strides=(2, 2, 1, 1), dilations=(1, 1, 2, 4))
    inputs = torch.randn(1, 3, 96, 128)
    outputs = model(inputs)
    assert [tuple(o.shape[-2:]) for o in outputs] == [(24, 32), (12, 16), (12, 16), (12, 16)]
    assert deploy_error(model, inputs) <= EXACT


@pytest.mark.parametrize('stride,dilation,groups', [(1, 2, 8), (1, 3, 1), (2, 2, 8), (1, 1, 4)])
def test_block_reparameterization_is_exact_with_dilation_and_groups(stride, dilation, groups):
    torch.manual_seed(0)
    block = randomize_batch_norm(
        MobileOneBlock(
            32,
            32,
            3,
            stride=stride,
            dilation=dilation,
            groups=groups,
            num_conv_branches=3,
            use_se=True,
        ),
        seed=3,
    ).eval()
    inputs = torch.randn(2, 32, 17, 23)
    reference = block(inputs)
    block.reparameterize()
    assert block.deploy and block.conv_branches is None and block.identity_branch is None
    assert block.reparam_conv.dilation == (dilation, dilation)
    deploy = block(inputs)
    assert deploy.shape == reference.shape
    assert ((deploy - reference).abs().max() / reference.abs().max()) <= TOLERANCE


def test_dilation_changes_the_function():
    """Dilation is really applied (a dilated and an undilated block with equal weights differ)."""
    torch.manual_seed(0)
    plain = randomize_batch_norm(MobileOneBlock(4, 4, 3, groups=4, num_conv_branches=2)).eval()
    dilated = MobileOneBlock(4, 4, 3, dilation=2, groups=4, num_conv_branches=2).eval()
    dilated.load_state_dict(plain.state_dict())
    inputs = torch.randn(1, 4, 16, 16)
    assert not torch.allclose(plain(inputs), dilated(inputs))


def test_reparameterize_is_idempotent_and_mode_independent():
    model = make_backbone('s0')
    inputs = torch.randn(1, 3, 64, 64)
    reference = [o.clone() for o in model(inputs)]
    model.train()  # BN running statistics are folded whatever the mode
    reparameterize(model)
    state = copy.deepcopy(model.state_dict())
    assert reparameterize(model) is model
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert model.deploy
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    model.eval()
    for out, ref in zip(model(inputs), reference):
        assert ((out - ref).abs().max() / ref.abs().max()) <= TOLERANCE


def test_reparameterize_inside_a_larger_model():
    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = make_backbone('mu0', out_indices=(3,))
            self.head = nn.Linear(384, 10)

        def forward(self, x):
            return self.head(self.backbone(x)[0].mean((2, 3)))

    model = Classifier().eval()
    assert deploy_error(model, torch.randn(2, 3, 64, 64)) <= EXACT
    reparameterize(model)
    assert model.backbone.deploy


def test_deploy_flag_loads_deploy_weights():
    model = make_backbone('s1')
    inputs = torch.randn(1, 3, 64, 64)
    reparameterize(model)
    deployed = MobileOne('s1', out_indices=(0, 1, 2, 3), deploy=True).eval()
    assert deployed.deploy
    deployed.load_state_dict(model.state_dict(), strict=True)
    for a, b in zip(model(inputs), deployed(inputs)):
        assert torch.equal(a, b)


def test_syncbn_backbone_reparameterizes_exactly_like_bn():
    """mmseg bases use SyncBN: reparameterize must accept it (mmpretrain's MobileOne refuses
    it)."""
    bn_model = make_backbone('s0')
    sync_model = MobileOne('s0', out_indices=(0, 1, 2, 3), norm_cfg=dict(type='SyncBN'))
    assert any(isinstance(m, nn.SyncBatchNorm) for m in sync_model.modules())
    sync_model.load_state_dict(bn_model.state_dict())
    reparameterize(sync_model)
    reparameterize(bn_model)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in sync_model.modules())
    inputs = torch.randn(1, 3, 64, 64)
    for a, b in zip(sync_model.eval()(inputs), bn_model(inputs)):
        assert torch.equal(a, b)


def test_bn_without_running_stats_cannot_be_folded():
    block = MobileOneBlock(8, 8, 3, groups=8, norm_cfg=dict(type='BN', track_running_stats=False))
    with pytest.raises(FoldingError, match='running statistics'):
        reparameterize(block)


@pytest.mark.parametrize('arch', ['s0', 's4'])
def test_reparameterizes_on_the_device_of_the_model(arch):
    """Folded where the model is (a GPU after training): here on the meta device, which, like
    CUDA, refuses to mix its tensors with CPU ones. Found on an H200 (2026-12-04): the identity
    branch was folded with a kernel made on the CPU, and every deploy validation failed."""
    model = MobileOne(arch=arch).eval().to('meta')
    reparameterize(model)
    assert {p.device.type for p in model.parameters()} == {'meta'}
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize('arch', ['s0', 's4'])
def test_deploy_backbone_is_scriptable(arch):
    model = reparameterize(make_backbone(arch, out_indices=(2, 3)))
    scripted = torch.jit.script(model)
    for size in [(64, 64), (96, 160)]:
        inputs = torch.randn(1, 3, *size)
        for a, b in zip(scripted(inputs), model(inputs)):
            assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize('arch', ['s0', 's4'])
def test_paper_complexity_s_variants(arch):
    """Deploy-form params within 2% and MACs within 1% of paper Table 9 (S0 and S4 here; all
    below)."""
    row = measure_classifier_complexity(arch)
    assert abs(row.params_delta) <= 0.02, row
    assert abs(row.macs_delta) <= 0.01, row


@pytest.mark.parametrize('arch', ['s1', 's2', 's3'])
def test_paper_complexity_more_s_variants(arch):
    row = measure_classifier_complexity(arch)
    assert abs(row.params_delta) <= 0.02, row
    assert abs(row.macs_delta) <= 0.01, row


@pytest.mark.parametrize('arch', ['mu0', 'mu1', 'mu2'])
def test_paper_complexity_micro_variants(arch):
    row = measure_classifier_complexity(arch)
    assert abs(row.params_delta) <= 0.05, row
    assert abs(row.macs_delta) <= 0.05, row
    assert set(PAPER_COMPLEXITY) == set(ARCH_SETTINGS) - {'s4_no_se'}


EXPECTED_CHANNELS = {
    's0': (48, 128, 256, 1024),
    's1': (96, 192, 512, 1280),
    's2': (96, 256, 640, 2048),
    's3': (128, 320, 768, 2048),
    's4': (192, 448, 896, 2048),
    'mu0': (48, 64, 128, 384),
    'mu1': (48, 96, 192, 512),
    'mu2': (48, 128, 256, 512),
}


@pytest.mark.parametrize('arch', ALL_ARCHS)
def test_output_shapes_and_channels(arch):
    assert stage_channels(arch) == EXPECTED_CHANNELS[arch]
    for out_indices in [(0, 1, 2, 3), (3,), (1, 3), (2,)]:
        model = MobileOne(arch, out_indices=out_indices).eval()
        with torch.no_grad():
            outputs = model(torch.randn(1, 3, 64, 96))
        assert isinstance(outputs, tuple) and len(outputs) == len(out_indices)
        assert model.out_channels == tuple(EXPECTED_CHANNELS[arch][i] for i in out_indices)
        for out, i in zip(outputs, out_indices):
            stride = 2 ** (i + 2)
            assert tuple(out.shape) == (1, EXPECTED_CHANNELS[arch][i], 64 // stride, 96 // stride)


def test_s4_uses_se_only_in_its_last_blocks():
    model = MobileOne('s4')
    se_flags = [[not isinstance(b.se, nn.Identity) for b in stage] for stage in model.stages]
    assert not any(se_flags[0]) and not any(se_flags[1])
    assert se_flags[2] == [False] * 10 + [True] * 10  # last 5 paper blocks (dw + pw each)
    assert all(se_flags[3])
    assert not any(
        not isinstance(b.se, nn.Identity)
        for b in MobileOne('s3').modules()
        if isinstance(b, MobileOneBlock)
    )


def test_s4_no_se_is_s4_without_squeeze_excite():
    """The paper's S4 segmentation backbone: S4's table entry without SE, the same network as
    the explicit dict the S4 segmentation configs used to spell out."""
    assert ARCH_SETTINGS['s4_no_se'] == dict(ARCH_SETTINGS['s4'], num_se_blocks=(0, 0, 0, 0))
    model = MobileOne('s4_no_se')
    assert model.arch_name == 's4_no_se' and model.channels == stage_channels('s4')
    assert not any(isinstance(m, SqueezeExcite) for m in model.modules())
    spelled_out = MobileOne(
        dict(num_blocks=(2, 8, 10, 1), width_factors=(3.0, 3.5, 3.5, 4.0), num_conv_branches=1)
    )
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in spelled_out.state_dict().items()
    }


def test_over_parameterization_factor_per_arch():
    assert len(MobileOne('s0').stages[1][0].conv_branches) == 4
    assert len(MobileOne('s1').stages[1][0].conv_branches) == 1
    assert len(MobileOne('mu0').stages[1][0].conv_branches) == 3
    assert len(MobileOne('mu2').stages[1][0].conv_branches) == 2
    block = MobileOne('s0').stages[1]
    assert block[0].scale_branch is not None and block[1].scale_branch is None  # 1x1 has none
    assert block[0].identity_branch is None  # stride 2
    assert block[2].identity_branch is not None and block[3].identity_branch is not None


@pytest.mark.parametrize('frozen_stages', [0, 2])
def test_frozen_stages_really_freeze(frozen_stages):
    model = MobileOne('s0', frozen_stages=frozen_stages, out_indices=(0, 1, 2, 3))
    model.train()
    frozen = [model.stem] + [model.stages[i] for i in range(frozen_stages)]
    trainable = [model.stages[i] for i in range(frozen_stages, 4)]
    for module in frozen:
        assert all(not p.requires_grad for p in module.parameters())
        assert all(not m.training for m in module.modules())
    for module in trainable:
        assert all(p.requires_grad for p in module.parameters())
        assert all(m.training for m in module.modules())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    sum(o.mean() for o in model(torch.randn(2, 3, 64, 64))).backward()
    optimizer.step()
    after = model.state_dict()
    prefixes = ['stem.'] + [f'stages.{i}.' for i in range(frozen_stages)]
    for key, value in before.items():
        if any(key.startswith(p) for p in prefixes):
            assert torch.equal(value, after[key]), key  # weights and BN statistics unchanged
    assert not torch.equal(
        before['stages.3.1.conv_branches.0.conv.weight'],
        after['stages.3.1.conv_branches.0.conv.weight'],
    )


def test_norm_eval_keeps_bn_in_eval_mode():
    model = MobileOne('mu0', norm_eval=True).train()
    assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_custom_arch_dict():
    arch = dict(num_blocks=(1, 1, 2, 1), width_factors=(0.5, 0.5, 0.5, 0.5), num_conv_branches=2)
    model = MobileOne(arch, out_indices=(0, 1, 2, 3))
    assert model.out_channels == (32, 64, 128, 256)
    assert deploy_error(randomize_batch_norm(model).eval(), torch.randn(1, 3, 32, 32)) <= EXACT


def test_unknown_arch_names_the_valid_ones():
    with pytest.raises(KeyError) as error:
        MobileOne('s9')
    for name in ['s0', 's4', 'mu0', 'mu2']:
        assert name in str(error.value)
    with pytest.raises(KeyError, match='width_factors'):
        MobileOne(dict(num_blocks=(1, 1, 1, 1)))


@pytest.mark.parametrize('out_indices', [(4,), (-1,), (0, 5)])
def test_out_indices_out_of_range(out_indices):
    with pytest.raises(ValueError, match='out_indices'):
        MobileOne('s0', out_indices=out_indices)


@pytest.mark.parametrize('channels', [1, 4])
def test_wrong_number_of_input_channels_is_explained(channels):
    model = MobileOne('s0').eval()
    with pytest.raises(ValueError) as error:
        model(torch.randn(1, channels, 32, 32))
    message = str(error.value)
    assert '(N, 3, H, W)' in message and f'1, {channels}, 32, 32' in message
    assert 'grayscale/RGBA' in message
    deploy = reparameterize(MobileOne('s0')).eval()
    with pytest.raises(ValueError, match='expects an'):
        deploy(torch.randn(1, channels, 32, 32))
