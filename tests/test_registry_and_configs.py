"""Registration in the `mobileone_dense` scope and `mobileone_dense::` config inheritance."""

import os.path as osp
import subprocess
import sys
import textwrap

import pytest

import mobileone_dense
from mobileone_dense import MobileOne


@pytest.mark.parametrize(
    'registry_module', ['mmdet.registry', 'mmseg.registry', 'mmpretrain.registry']
)
def test_backbone_builds_from_each_downstream_scope(registry_module):
    registry = __import__(registry_module, fromlist=['MODELS']).MODELS
    model = registry.build(dict(type='mobileone_dense.MobileOne', arch='mu0', out_indices=(2, 3)))
    assert type(model) is MobileOne
    assert model.out_channels == (128, 384)


def test_registered_once_without_shadowing_mmpretrain():
    from mmengine.registry import MODELS as ROOT
    from mmpretrain.models.backbones import MobileOne as MMPretrainMobileOne
    from mmpretrain.registry import MODELS as MMPRETRAIN

    from mobileone_dense.registry import MODELS

    assert MODELS.scope == 'mobileone_dense' and MODELS.parent is ROOT
    assert MODELS.get('MobileOne') is MobileOne
    assert MMPRETRAIN.get('MobileOne') is MMPretrainMobileOne
    assert MMPRETRAIN.get('mobileone_dense.MobileOne') is MobileOne
    assert 'MobileOne' not in ROOT.module_dict
    assert [k for k, v in MODELS.module_dict.items() if v is MobileOne] == ['MobileOne']


def test_config_outside_the_repo_inherits_ours(tmp_path):
    """A user's config inherits `mobileone_dense::configs/...` as it would `mmdet::...`."""
    user_config = tmp_path / 'my_config.py'
    user_config.write_text(
        textwrap.dedent("""
        _base_ = ['mobileone_dense::configs/_base_/mobileone_dense.py']
        default_scope = 'mmdet'
        model = dict(type='mobileone_dense.MobileOne', arch='s0', out_indices=(1, 2, 3))
    """)
    )
    # A fresh interpreter, started outside the repo, as a user's script would be.
    script = textwrap.dedent(f"""
        import mobileone_dense  # what our tools (and custom_imports) do first
        from mmengine.config import Config
        from mmengine.registry import init_default_scope
        from mmdet.registry import MODELS
        cfg = Config.fromfile({str(user_config)!r})
        assert cfg.custom_imports.imports == ['mobileone_dense'], cfg.custom_imports
        init_default_scope(cfg.default_scope)
        model = MODELS.build(cfg.model)
        print(type(model).__module__, model.out_channels)
    """)
    result = subprocess.run(
        [sys.executable, '-c', script], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert 'mobileone_dense.models.mobileone (128, 256, 1024)' in result.stdout


def test_shipped_configs_point_at_the_repo_configs():
    """The installed package exposes configs/ where mmengine looks for `mobileone_dense::`."""
    from mmengine.utils import get_installed_path

    package_path = get_installed_path('mobileone_dense')
    shipped = osp.join(package_path, '.mim', 'configs', 'configs', '_base_', 'mobileone_dense.py')
    assert osp.isfile(shipped)
    repo_configs = osp.join(osp.dirname(osp.dirname(mobileone_dense.__file__)), 'configs')
    assert osp.samefile(shipped, osp.join(repo_configs, '_base_', 'mobileone_dense.py'))


def test_wheel_ships_the_configs(tmp_path, repo_root):
    """A regular (non-editable) install carries configs/ where mmengine looks for them."""
    import zipfile

    result = subprocess.run(
        [
            sys.executable,
            '-m',
            'pip',
            'wheel',
            '-q',
            '--no-deps',
            '--no-build-isolation',
            repo_root,
            '-w',
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    wheel = next(tmp_path.glob('mobileone_dense-*.whl'))
    names = zipfile.ZipFile(wheel).namelist()
    assert 'mobileone_dense/.mim/model-index.yml' in names
    for config in [
        '_base_/mobileone_dense.py',
        '_base_/ssdlite_mobileone_coco.py',
        'ssdlite_mobileone_s2_coco.py',
    ]:
        assert f'mobileone_dense/.mim/configs/configs/{config}' in names
    # building a wheel leaves the editable install's live link in place
    assert osp.islink(osp.join(repo_root, 'mobileone_dense', '.mim', 'configs', 'configs'))


def test_building_a_model_leaves_its_config_unchanged(repo_root):
    """mmdet's detectors write train_cfg/test_cfg into the head config they are built from."""
    from mmengine.config import Config

    from mobileone_dense.apis.model_building import build_model_from_config

    cfg = Config.fromfile(osp.join(repo_root, 'configs', 'ssdlite_mobileone_s0_coco.py'))
    before = cfg.model.to_dict()
    build_model_from_config(cfg)
    assert cfg.model.to_dict() == before
