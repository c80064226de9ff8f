"""Public MobileOne weights (Apple, timm, mmpretrain) load into our backbone with identical
features."""

import os.path as osp
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from apple_reference import AppleMobileOne, randomized

from mobileone_dense import MobileOne, reparameterize
from mobileone_dense.converters import (
    backbone_state_dict,
    convert_state_dict,
    detect_source,
    load_weights_strictly,
)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOLERANCE = 1e-5


def relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def ours_from(state_dict, arch, deploy, source='auto'):
    converted = convert_state_dict(state_dict, source=source)
    backbone = MobileOne(arch, out_indices=(3,), deploy=deploy).eval()
    load_weights_strictly(backbone, backbone_state_dict(converted))
    head = nn.Linear(backbone.channels[-1], converted['head.fc.weight'].shape[0])
    head.load_state_dict({'weight': converted['head.fc.weight'], 'bias': converted['head.fc.bias']})
    return backbone, head


def classify(backbone, head, x):
    return head(backbone(x)[-1].mean((2, 3)))


@pytest.mark.parametrize('arch', ['s0', 's4'])
@pytest.mark.parametrize('deploy', [False, True])
def test_apple_checkpoints(arch, deploy):
    apple = randomized(AppleMobileOne(arch))
    x = torch.randn(1, 3, 96, 96)
    if deploy:  # Apple's inference-mode release: build in deploy form and load folded weights
        ours_train_time, head = ours_from(apple.state_dict(), arch, deploy=False)
        reparameterize(ours_train_time)
        apple_deploy = AppleMobileOne(arch, inference_mode=True).eval()
        apple_keys = list(apple_deploy.state_dict())
        assert 'stage1.1.reparam_conv.bias' in apple_keys
        # our deploy weights, renamed to Apple's inference-mode layout, are Apple's release
        renamed = {}
        for key, value in ours_train_time.state_dict().items():
            key = key.replace('stem.', 'stage0.', 1)
            if key.startswith('stages.'):
                _, s, rest = key.split('.', 2)
                key = f'stage{int(s) + 1}.{rest}'
            renamed[key] = value
        renamed['linear.weight'], renamed['linear.bias'] = head.weight, head.bias
        apple_deploy.load_state_dict(renamed, strict=True)
        apple = apple_deploy
    state_dict = apple.state_dict()
    if arch == 's4' and not deploy:
        assert 'stage3.10.se.reduce.weight' in state_dict
    assert detect_source(state_dict) == 'apple'
    backbone, head = ours_from(state_dict, arch, deploy=deploy)
    with torch.no_grad():
        assert relative_error(backbone(x)[-1], apple.forward_features(x)) <= TOLERANCE
        assert relative_error(classify(backbone, head, x), apple(x)) <= TOLERANCE


def test_apple_layout_keys():
    keys = AppleMobileOne('s0').state_dict()
    for key in [
        'stage0.rbr_conv.0.conv.weight',
        'stage0.rbr_conv.0.bn.running_var',
        'stage0.rbr_scale.conv.weight',
        'stage1.1.rbr_skip.weight',
        'linear.weight',
    ]:
        assert key in keys
    converted = convert_state_dict(keys)
    assert 'backbone.stages.0.1.identity_branch.weight' in converted
    assert 'head.fc.weight' in converted


@pytest.mark.parametrize('arch', ['s0', 's4'])
@pytest.mark.parametrize('deploy', [False, True])
def test_timm_checkpoints(arch, deploy):
    timm = pytest.importorskip('timm')
    model = randomized(timm.create_model(f'mobileone_{arch}', pretrained=False))
    if deploy:
        from timm.utils.model import reparameterize_model

        model = reparameterize_model(model).eval()
    state_dict = model.state_dict()
    assert detect_source(state_dict) in ('timm', 'mobileone_dense')
    backbone, head = ours_from(state_dict, arch, deploy=deploy, source='timm')
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert relative_error(backbone(x)[-1], model.forward_features(x)) <= TOLERANCE
        assert relative_error(classify(backbone, head, x), model(x)) <= TOLERANCE


@pytest.mark.parametrize('arch', ['s0', 's4'])
@pytest.mark.parametrize('deploy', [False, True])
def test_mmpretrain_checkpoints(arch, deploy):
    from mmpretrain.models.backbones import MobileOne as MMPretrainMobileOne

    backbone_ref = randomized(MMPretrainMobileOne(arch, out_indices=(3,)))
    if deploy:
        backbone_ref.switch_to_deploy()
    # an mmpretrain ImageClassifier checkpoint: backbone.* and head.fc.*
    state_dict = {f'backbone.{k}': v for k, v in backbone_ref.state_dict().items()}
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        reference = backbone_ref(x)[-1]
    head_ref = nn.Linear(reference.shape[1], 1000)
    state_dict.update({'head.fc.weight': head_ref.weight, 'head.fc.bias': head_ref.bias})
    assert detect_source(state_dict) == 'mmpretrain'
    backbone, head = ours_from(state_dict, arch, deploy=deploy)
    with torch.no_grad():
        assert relative_error(backbone(x)[-1], reference) <= TOLERANCE
        assert (
            relative_error(classify(backbone, head, x), head_ref(reference.mean((2, 3))))
            <= TOLERANCE
        )


def test_unmappable_keys_are_listed():
    state_dict = AppleMobileOne('s0').state_dict()
    state_dict['stage1.0.mystery.weight'] = torch.zeros(1)
    state_dict['something_else'] = torch.zeros(1)
    with pytest.raises(KeyError) as error:
        convert_state_dict(state_dict)
    assert 'stage1.0.mystery.weight' in str(error.value) and 'something_else' in str(error.value)


def test_convert_cli_output_loads_through_init_cfg(tmp_path):
    apple = randomized(AppleMobileOne('s1'))
    src = tmp_path / 'mobileone_s1_train_time.pth.tar'
    torch.save(apple.state_dict(), src)
    out = tmp_path / 'converted.pth'
    result = subprocess.run(
        [sys.executable, osp.join(REPO, 'tools', 'convert_checkpoint.py'), str(src), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert 'MobileOne-s1' in result.stdout
    backbone = MobileOne(
        's1',
        out_indices=(2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=str(out), prefix='backbone.'),
    )
    backbone.init_weights()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert relative_error(backbone.eval()(x)[-1], apple.forward_features(x)) <= TOLERANCE
    # the same file initializes the backbone of our S1 detection config, every key loaded
    from mmengine.config import Config

    from mobileone_dense.apis import build_model_from_config

    cfg = Config.fromfile(osp.join(REPO, 'configs', 'ssdlite_mobileone_s1_coco.py'))
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=str(out), prefix='backbone.')
    detector = build_model_from_config(cfg)
    detector.init_weights()
    for key, value in backbone.state_dict().items():
        assert torch.equal(detector.backbone.state_dict()[key], value), key


def test_mismatched_weights_fail_loudly(tmp_path):
    s1 = MobileOne('s1')
    path = tmp_path / 's1.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in s1.state_dict().items()}}, path)
    wrong_arch = MobileOne(
        's2', init_cfg=dict(type='Pretrained', checkpoint=str(path), prefix='backbone.')
    )
    with pytest.raises(ValueError, match='size mismatch for .*another MobileOne variant'):
        wrong_arch.init_weights()
    deploy_model = MobileOne(
        's1', deploy=True, init_cfg=dict(type='Pretrained', checkpoint=str(path))
    )
    with pytest.raises(ValueError, match='deploy=False'):
        deploy_model.init_weights()
    deploy_path = tmp_path / 's1_deploy.pth'
    torch.save(reparameterize(MobileOne('s1')).state_dict(), deploy_path)
    # deploy weights initialize a train-time backbone through Pretrained (fine-tuning from a
    # deploy checkpoint, tests/test_finetune_from_deploy.py); a strict load names deploy=True
    train_time = MobileOne('s1', init_cfg=dict(type='Pretrained', checkpoint=str(deploy_path)))
    train_time.init_weights()
    assert not train_time.deploy
    with pytest.raises(ValueError, match='deploy=True'):
        load_weights_strictly(MobileOne('s1'), torch.load(deploy_path))
    s0_path = tmp_path / 's0.pth'
    torch.save(MobileOne('s0').state_dict(), s0_path)  # k=4 branches vs k=1: key mismatch
    with pytest.raises(ValueError, match='missing keys|size mismatch'):
        MobileOne('s1', init_cfg=dict(type='Pretrained', checkpoint=str(s0_path))).init_weights()
