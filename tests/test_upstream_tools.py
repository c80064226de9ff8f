"""mmdet's and mmseg's own tools (the ones in their wheels, which ``mim train`` runs) on user
configs that inherit ours by ``mobileone_dense::`` with ``custom_imports``, as their docs teach.

mmengine reads ``_base_`` before ``custom_imports``: only the start-up hook installed with the
package (``mobileone_dense_mmengine_scope.pth``) lets these processes resolve our configs.
"""

import os
import os.path as osp
import subprocess
import sys
import textwrap

import mmdet
import mmseg
import pytest

from mobileone_dense.datasets import make_coco_shapes, make_voc_shapes

MMDET_TOOLS = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools')
MMSEG_TOOLS = osp.join(osp.dirname(mmseg.__file__), '.mim', 'tools')


def run_tool(tool: str, *args: str, cwd: str) -> str:
    """``python TOOL ARGS`` in a clean process: no PYTHONPATH, from a folder outside the repo."""
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    result = subprocess.run(
        [sys.executable, tool, *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env=env,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-5000:]
    return out


def test_plain_python_does_not_import_mmengine_or_us():
    """The start-up hook costs no import: a process that never uses mmengine imports neither."""
    result = subprocess.run(
        [
            sys.executable,
            '-c',
            'import sys; print(sorted(m for m in '
            'sys.modules if m.startswith(("mmengine", "mobileone_dense"))))',
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == "['mobileone_dense_mmengine_scope']", result.stdout


def test_mmdet_train_and_test_tools_run_a_config_inheriting_ours(tmp_path, apple_checkpoints):
    apple_checkpoints('s0')  # the config's backbone init, in the session's torch hub cache
    data = str(tmp_path / 'coco') + '/'
    make_coco_shapes(data, num_train=4, num_val=2, image_size=(64, 64))
    config = tmp_path / 'my_ssdlite.py'
    config.write_text(
        textwrap.dedent(f"""
        _base_ = ['mobileone_dense::configs/ssdlite_mobileone_s0_coco.py']
        custom_imports = dict(imports=['mobileone_dense'], allow_failed_imports=False)

        data_root = {data!r}
        train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                                dataset=dict(data_root=data_root))
        val_dataloader = dict(num_workers=0, persistent_workers=False,
                              dataset=dict(data_root=data_root))
        test_dataloader = val_dataloader
        val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
        test_evaluator = val_evaluator
        train_cfg = dict(max_epochs=1, val_interval=1)
        model = dict(test_cfg=dict(score_thr=0.0))
    """)
    )
    work_dir = str(tmp_path / 'work')
    out = run_tool(
        osp.join(MMDET_TOOLS, 'train.py'), str(config), '--work-dir', work_dir, cwd=str(tmp_path)
    )
    assert 'initialized the MobileOne-s0 backbone from' in out
    assert 'ReparameterizeHook: deploy vs train-time model on a validation batch' in out
    assert 'coco/bbox_mAP_50:' in out
    deploy = [osp.join(work_dir, name) for name in ('epoch_1_deploy.pth', 'my_ssdlite_deploy.py')]
    assert all(osp.isfile(path) for path in deploy)
    out = run_tool(
        osp.join(MMDET_TOOLS, 'test.py'),
        deploy[1],
        deploy[0],
        '--work-dir',
        str(tmp_path / 'test'),
        cwd=str(tmp_path),
    )
    assert 'coco/bbox_mAP_50:' in out


def test_mmseg_train_tool_runs_a_config_inheriting_ours(tmp_path, apple_checkpoints):
    apple_checkpoints('s0')  # the config's backbone init, in the session's torch hub cache
    voc = make_voc_shapes(
        str(tmp_path / 'VOCdevkit'), num_train=2, num_aug=2, num_val=2, image_size=(64, 64)
    )
    config = tmp_path / 'my_deeplabv3.py'
    config.write_text(
        textwrap.dedent(f"""
        _base_ = ['mobileone_dense::configs/deeplabv3_mobileone_s0_voc.py']
        custom_imports = dict(imports=['mobileone_dense'], allow_failed_imports=False)

        crop_size = (64, 64)  # the config's 512 x 512, smaller
        model = dict(data_preprocessor=dict(size=crop_size))
        train_pipeline = [
            dict(type='mobileone_dense.LoadImageFromFile'),
            dict(type='mobileone_dense.LoadSegAnnotations'),
            dict(type='RandomResize', scale=(128, 64), ratio_range=(0.5, 2.0), keep_ratio=True),
            dict(type='mmseg.RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
            dict(type='RandomFlip', prob=0.5),
            dict(type='mmseg.PackSegInputs')]
        voc = {voc!r}
        train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                                dataset=dict(datasets=[
                                    dict(_base_.voc_train, data_root=voc, pipeline=train_pipeline),
                                    dict(_base_.voc_aug, data_root=voc, pipeline=train_pipeline)]))
        val_dataloader = dict(num_workers=0, persistent_workers=False,
                              dataset=dict(data_root=voc))
        test_dataloader = val_dataloader
        train_cfg = dict(max_iters=2, val_interval=2)
        default_hooks = dict(checkpoint=dict(interval=2))
    """)
    )
    work_dir = str(tmp_path / 'work')
    out = run_tool(
        osp.join(MMSEG_TOOLS, 'train.py'), str(config), '--work-dir', work_dir, cwd=str(tmp_path)
    )
    assert 'initialized the MobileOne-s0 backbone from' in out
    assert 'ReparameterizeHook: deploy vs train-time model on a validation batch' in out
    assert 'mIoU' in out
    assert osp.isfile(osp.join(work_dir, 'iter_2_deploy.pth'))


@pytest.mark.parametrize('form', ['mobileone_dense', 'unknown'])
def test_unknown_package_prefix_still_fails_clearly(tmp_path, form):
    """Only our prefix is added: mmengine's own check stays for unknown packages."""
    config = tmp_path / 'c.py'
    base = (
        'mobileone_dense::configs/ssdlite_mobileone_s0_coco.py'
        if form == 'mobileone_dense'
        else 'nosuchpkg::configs/x.py'
    )
    config.write_text(f'_base_ = [{base!r}]\n')
    result = subprocess.run(
        [
            sys.executable,
            '-c',
            'import sys; from mmengine.config import '
            'Config; print(Config.fromfile(sys.argv[1]).model.backbone.type)',
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(tmp_path),
    )
    if form == 'mobileone_dense':
        assert result.returncode == 0 and 'mobileone_dense.MobileOne' in result.stdout
    else:
        assert 'mmengine does not support to load nosuchpkg config' in result.stderr
