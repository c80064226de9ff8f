"""The detection and segmentation configs start their backbone from Apple's ImageNet release.

With stand-ins for Apple's checkpoints (``apple_reference.py``: random weights in Apple's file
layout) in torch's hub cache and the network blocked (conftest ``no_network``), every arch's
backbone holds Apple's weights once initialized (``s4_no_se``: all but the SE layers), and a
detection and a segmentation config compute Apple's features (the segmentor up to its first
dilated stage). Which URL each config names: ``test_detection.py``, ``test_segmentation.py``.
"""

import os.path as osp

import pytest
import torch
from apple_reference import apple_init_cfg
from mmengine.config import Config

from mobileone_dense import MobileOne
from mobileone_dense.apis import build_model_from_config
from mobileone_dense.converters import backbone_state_dict, convert_state_dict, loading

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOLERANCE = 1e-5  # relative to the largest feature


def config_path(name: str) -> str:
    return osp.join(REPO, 'configs', f'{name}.py')


def relative_error(ours: torch.Tensor, apple: torch.Tensor) -> float:
    return ((ours - apple).abs().max() / apple.abs().max()).item()


def apple_stages(apple, x: torch.Tensor) -> list:
    """Outputs of Apple's stem (stage0) and of its stages 1-4 (our stages 0-3)."""
    outs = []
    for stage in (apple.stage0, apple.stage1, apple.stage2, apple.stage3, apple.stage4):
        x = stage(x)
        outs.append(x)
    return outs


@pytest.fixture
def log_lines(monkeypatch) -> list:
    """What the weight loader logs, one string a call."""
    lines = []
    monkeypatch.setattr(loading, 'print_log', lambda message, **_: lines.append(message))
    return lines


# One config per arch: the other configs of an arch name the same URL (test_detection.py,
# test_segmentation.py check every config's init_cfg) and build the same backbone weights.
@pytest.mark.parametrize(
    'config, arch',
    [(f'ssdlite_mobileone_{arch}_coco', arch) for arch in ('s0', 's1', 's2', 's3', 's4')]
    + [('deeplabv3_mobileone_s4_voc', 's4_no_se')],
)
def test_backbone_holds_apples_weights(config, arch, apple_checkpoints, log_lines):
    settings = Config.fromfile(config_path(config)).model.backbone
    assert settings.arch == arch and settings.init_cfg == apple_init_cfg(arch)
    apple = apple_checkpoints('s4' if arch == 's4_no_se' else arch)
    backbone = MobileOne(**{k: v for k, v in settings.items() if k != 'type'})
    backbone.init_weights()
    expected = backbone_state_dict(convert_state_dict(apple.state_dict()))
    loaded = backbone.state_dict()
    left_out = sorted(set(expected) - set(loaded))
    assert set(loaded) <= set(expected)
    for key, value in loaded.items():
        assert torch.equal(value, expected[key]), key
    assert any(f'initialized the MobileOne-{arch} backbone from' in line for line in log_lines)
    if arch == 's4_no_se':  # S4's SE layers (last 5 blocks of stage 2, stage 3) left out
        blocks = {key.rsplit('.se.', 1)[0] for key in left_out}
        assert all('.se.' in key for key in left_out) and len(blocks) == 12
        assert any('left out the squeeze-excite weights (48 tensors)' in line for line in log_lines)
    else:
        assert not left_out


def test_detection_config_computes_apples_features(apple_checkpoints):
    """Every backbone output of the S0 detector equals Apple's model (BN eps as Apple's: with
    mmdet's from-scratch 1e-3 the features differ)."""
    apple = apple_checkpoints('s0')
    model = build_model_from_config(Config.fromfile(config_path('ssdlite_mobileone_s0_coco')))
    model.init_weights()
    model.eval()
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.backbone(x)  # stages 2 and 3 (strides 16, 32)
        reference = apple_stages(apple, x)
    assert len(ours) == 2
    for feature, expected in zip(ours, reference[3:]):
        assert relative_error(feature, expected) <= TOLERANCE


def test_segmentation_config_computes_apples_features_up_to_its_first_dilated_stage(
    apple_checkpoints,
):
    """The S0 segmentor's stem and stages 0-1 equal Apple's (stage 2 trades its stride for
    dilation, so from there the features are the output-stride-8 network's)."""
    apple = apple_checkpoints('s0')
    model = build_model_from_config(Config.fromfile(config_path('deeplabv3_mobileone_s0_voc')))
    assert tuple(model.backbone.dilations) == (1, 1, 2, 4)
    model.init_weights()
    model.eval()
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = apple_stages(apple, x)
        ours = [model.backbone.stem(x)]
        for stage in model.backbone.stages[:2]:
            ours.append(stage(ours[-1]))
    for feature, expected in zip(ours, reference[:3]):
        assert relative_error(feature, expected) <= TOLERANCE


def test_quickstart_trains_from_scratch_offline():
    """``make demo`` downloads nothing: the quickstart's backbone starts from scratch, with the
    BN settings its robustness matrix was measured with."""
    from mobileone_dense.apis.quickstart import quickstart_config

    cfg = quickstart_config('data/coco', 'work')
    assert cfg.model.backbone.init_cfg is None
    assert cfg.model.backbone.norm_cfg == dict(type='BN', eps=0.001, momentum=0.03)
