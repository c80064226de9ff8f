"""Each workaround of ``mobileone_dense/engine/compat.py`` (and the ones below the engine layer
that its docstring lists) rests on an upstream behaviour or private API: these tests assert that
upstream still behaves so. When an upgrade fails one, its workaround can go or must change; the
test names the upstream version it was written against.
"""

import ast
import inspect
import os.path as osp
import pickle
import textwrap
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from mmengine.hooks import CheckpointHook, Hook
from mmengine.model import BaseModel
from mmengine.runner import Runner as MMEngineRunner
from mmengine.runner.checkpoint import find_latest_checkpoint

import mobileone_dense  # noqa: F401  (registers our scope)
from mobileone_dense.engine import compat

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


class ToyModel(BaseModel):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        return self.linear(inputs)


def toy_runner(tmp_path, name: str, **kwargs) -> MMEngineRunner:
    """mmengine's own Runner (not ours) around a two-weight model."""
    return MMEngineRunner(
        model=ToyModel(),
        work_dir=str(tmp_path / 'work'),
        experiment_name=f'compat_{name}',
        **kwargs,
    )


def code_lines(function) -> list:
    """The statements of ``function``'s body as source lines (no docstring, comments, blanks)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    body = tree.body[0].body
    if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    return [' '.join(ast.unparse(node).split()) for node in body]


# -- mmengine 0.10.7 Runner: private _has_loaded / _resume / _load_from ----------------------
def test_runner_keeps_the_checkpoint_plan_in_the_private_attributes_we_read(tmp_path):
    runner = toy_runner(tmp_path, 'plan', load_from='somewhere.pth', resume=True)
    assert compat.checkpoint_plan(runner) == (False, True, 'somewhere.pth')
    resumed = []
    runner.resume = resumed.append  # upstream load_or_resume acts on those attributes
    runner.load_or_resume()
    assert resumed == ['somewhere.pth'] and compat.checkpoint_plan(runner)[0] is True

    runner = toy_runner(tmp_path, 'marked', load_from='somewhere.pth', resume=True)
    runner.resume = resumed.append
    compat.mark_checkpoint_loaded(runner)  # upstream then loads nothing
    runner.load_or_resume()
    assert resumed == ['somewhere.pth']


# -- mmengine 0.10.7 Runner.load_checkpoint, replicated for a checkpoint already read --------
def test_upstream_load_checkpoint_does_what_load_loaded_checkpoint_replicates():
    assert code_lines(MMEngineRunner.load_checkpoint) == [
        'checkpoint = _load_checkpoint(filename, map_location=map_location)',
        "self.call_hook('after_load_checkpoint', checkpoint=checkpoint)",
        'if is_model_wrapper(self.model): model = self.model.module else: model = self.model',
        'checkpoint = _load_checkpoint_to_model(model, checkpoint, strict, '
        'revise_keys=revise_keys)',
        'self._has_loaded = True',
        "self.logger.info(f'Load checkpoint from {filename}')",
        'return checkpoint',
    ]


def test_load_loaded_checkpoint_loads_like_upstream(tmp_path):
    source = ToyModel()
    path = str(tmp_path / 'toy.pth')
    torch.save(
        dict(state_dict={f'module.{k}': v for k, v in source.state_dict().items()}, meta={}), path
    )

    class Seen(Hook):
        checkpoints = []

        def after_load_checkpoint(self, runner, checkpoint) -> None:
            self.checkpoints.append(checkpoint)

    upstream = toy_runner(tmp_path, 'upstream', custom_hooks=[Seen()])
    upstream.load_checkpoint(path)
    ours = toy_runner(tmp_path, 'ours', custom_hooks=[Seen()])
    compat.load_loaded_checkpoint(
        ours, torch.load(path), path, strict=False, revise_keys=[(r'^module.', '')]
    )
    for runner in (upstream, ours):
        assert compat.checkpoint_plan(runner)[0] is True
        assert torch.equal(runner.model.linear.weight, source.linear.weight)
    assert len(Seen.checkpoints) == 2


# -- mmengine 0.10.7 CheckpointHook: the last checkpoint in the message hub and a file ---------
def test_checkpoint_hook_records_the_last_checkpoint_in_the_message_hub(tmp_path):
    runner = toy_runner(tmp_path, 'last')
    runner.save_checkpoint = lambda *args, **kwargs: None  # the file itself is not needed
    hook = CheckpointHook(interval=1, by_epoch=False)
    hook.before_train(runner)
    assert compat.last_checkpoint(runner) is None
    hook._save_checkpoint_with_step(runner, 7, meta=dict(iter=7))
    pointer = osp.join(runner.work_dir, compat.CHECKPOINT_POINTER)
    with open(pointer) as f:
        assert compat.last_checkpoint(runner) == f.read() == osp.join(runner.work_dir, 'iter_7.pth')


def test_upstream_resume_trusts_a_pointer_to_a_missing_checkpoint(tmp_path):
    """Why our Runner chooses the checkpoint of ``--resume`` itself (find_resumable_checkpoint):
    mmengine 0.10.7 returns whatever ``last_checkpoint`` names."""
    with open(tmp_path / compat.CHECKPOINT_POINTER, 'w') as f:
        f.write(str(tmp_path / 'gone.pth'))
    assert find_latest_checkpoint(str(tmp_path)) == str(tmp_path / 'gone.pth')


# -- mmengine 0.10.7 EMAHook: swaps by position --------------------------------------------
def test_upstream_ema_hook_swaps_the_weights_by_position_not_by_name():
    from mmengine.hooks import EMAHook
    from mmengine.model import ExponentialMovingAverage

    model = nn.Sequential(nn.Linear(2, 2))
    runner = SimpleNamespace(hooks=[EMAHook()], model=model)
    hook = runner.hooks[0]
    hook.ema_model = ExponentialMovingAverage(nn.Sequential(nn.Identity(), nn.Linear(2, 2)))
    hook.src_model = model
    assert compat.ema_copies(runner) == [hook.ema_model.module]
    averaged = hook.ema_model.module[1].weight.clone()
    hook._swap_ema_parameters()  # '0.weight' of the model <-> '1.weight' of the copy
    assert torch.equal(model[0].weight, averaged)


# -- mmengine 0.10.7 launcher and DDP wrapper: CUDA-only -------------------------------------
def test_upstream_pytorch_launcher_selects_a_cuda_device_first(monkeypatch):
    from mmengine.dist import utils as dist_utils

    class SetDevice(Exception):
        pass

    def set_device(index):
        raise SetDevice(index)

    monkeypatch.setenv('RANK', '0')
    monkeypatch.setenv('LOCAL_RANK', '0')
    monkeypatch.setenv('WORLD_SIZE', '1')
    monkeypatch.setattr(torch.cuda, 'set_device', set_device)
    monkeypatch.setattr(
        torch.distributed,
        'init_process_group',
        lambda *a, **k: pytest.fail('process group started before set_device'),
    )
    with pytest.raises(SetDevice):
        dist_utils._init_dist_pytorch('gloo')


def test_upstream_ddp_wrapper_gets_the_local_rank_as_device_id(monkeypatch):
    from mmengine.runner import runner as runner_module

    monkeypatch.setenv('LOCAL_RANK', '3')
    built = {}

    def build(cfg, default_args):
        built.update(cfg=cfg, default_args=default_args)
        return default_args['module']

    def default_wrapper(**kwargs):
        built.update(kwargs)
        return kwargs['module']

    monkeypatch.setattr(runner_module.MODEL_WRAPPERS, 'build', build)
    monkeypatch.setattr(runner_module, 'MMDistributedDataParallel', default_wrapper)
    fake = SimpleNamespace(distributed=True, cfg={}, logger=None)
    MMEngineRunner.wrap_model(fake, None, ToyModel())
    assert built['device_ids'] == [3]
    wrapper = compat.cpu_ddp_wrapper_cfg(None, find_unused_parameters=True)
    MMEngineRunner.wrap_model(fake, dict(wrapper), ToyModel())
    # upstream's default; mmengine's builders let the config's explicit None win over it
    assert built['default_args']['device_ids'] == [3] and built['cfg']['device_ids'] is None
    assert wrapper == dict(
        type='MMDistributedDataParallel',
        broadcast_buffers=False,
        find_unused_parameters=True,
        device_ids=None,
    )


# -- torch >= 2.6 + mmengine 0.10.7 checkpoints (converters/checkpoint_io.py) ------------------
def test_mmengine_checkpoints_need_allowed_globals_under_weights_only(tmp_path):
    from mmengine.logging import HistoryBuffer
    from mmengine.runner.checkpoint import _load_checkpoint

    from mobileone_dense.converters.checkpoint_io import allow_mmengine_checkpoints

    path = str(tmp_path / 'run.pth')
    buffer = HistoryBuffer()
    buffer.update(1.0)
    torch.save(dict(state_dict={}, message_hub=dict(log_scalars={'loss': buffer})), path)
    with pytest.raises(pickle.UnpicklingError):
        _load_checkpoint(path)  # mmengine's own loader, torch's default weights_only=True
    with allow_mmengine_checkpoints():
        assert 'message_hub' in _load_checkpoint(path)


# -- mmdet 3.3.0 SSDHead (models/dense_heads/ssd_head.py) ------------------------------------
def test_upstream_ssd_head_lacks_the_loss_cls_its_predict_reads():
    from mmdet.models.dense_heads.base_dense_head import BaseDenseHead
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    cfg = Config.fromfile(osp.join(REPO, 'configs', 'ssdlite_mobileone_s0_coco.py'))
    with DefaultScope.overwrite_default_scope('mmdet'):  # its anchor generator is mmdet's
        head = MODELS.build(dict(cfg.model.bbox_head, type='mmdet.SSDHead'))
    assert type(head).__module__.startswith('mmdet.') and not hasattr(head, 'loss_cls')
    assert 'self.loss_cls' in inspect.getsource(BaseDenseHead._predict_by_feat_single)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_mmcv_nms_has_no_cuda_kernel_in_our_cpu_ops_build():
    from mmcv.ops import nms

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0]], device='cuda')
    with pytest.raises(RuntimeError):
        nms(boxes, torch.tensor([0.9, 0.8], device='cuda'), 0.5)
