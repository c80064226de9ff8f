"""Latency, complexity and memory of MobileOne models next to their baselines, in one process.

What is timed: the network's forward only, ``model(inputs, mode='tensor')`` for mmdet / mmseg /
mmpretrain models (backbone + neck + head, raw head outputs: no data preprocessor, no
post-processing such as NMS or upsampling to the input size) and ``model(inputs)`` for backbones
and torchvision / timm models, on one random input tensor created beforehand, under
``torch.inference_mode()`` with ``torch.set_num_threads(threads)``. Each model gets ``warmup``
untimed calls, then ``repeats`` timed calls, round-robin with the task's other models (so that a
load change on a shared machine hits them alike); we report the median and the minimum per call
(of the whole batch). On CUDA, the device is synchronized before and after every timed call.

Forms: our models are timed ``unfused`` (train-time branches, eval mode) and ``fused``
(``mobileone_dense.reparameterize``: branches and every Conv+BN pair folded); baselines ``as
built`` and ``BN folded`` (the same ``reparameterize``, which folds their Conv+BN pairs, as any
deployment runtime does); timm's and mmpretrain's MobileOne are timed fused with their own
re-parameterization. Ratios to the MobileNetV2 baseline use its ``BN folded`` row.
"""
import copy
import datetime
import gc
import json
import os
import os.path as osp
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..apis import build_model_from_config
from ..apis.onnx_export import export_onnx, onnx_session, require_onnx
from ..apis.quickstart import PACKAGE_CONFIGS
from ..models.mobileone import MobileOne, stage_channels
from ..models.reparameterize import reparameterize
from ..models.tasks import CLASSIFICATION, DETECTION, SEGMENTATION
from ..models.tasks import DEFAULT_INPUT_SIZE as TASK_INPUT_SIZE
from .complexity import params_and_macs

ARCHS = ('s0', 's1', 's2', 's3', 's4')
TASKS = ('cls', 'det', 'seg')
# Square input side per task (the configs' test sizes, models.tasks.DEFAULT_INPUT_SIZE); the
# 'backbone' rows are measured with the 'cls' runs.
DEFAULT_INPUT_SIZE = {abbreviation: TASK_INPUT_SIZE[task][0] for abbreviation, task in
                      (('backbone', CLASSIFICATION), ('cls', CLASSIFICATION), ('det', DETECTION),
                       ('seg', SEGMENTATION))}
# ImageNet-1k top-1 (%) as printed in the paper's Table 9 (not measured here).
PAPER_TOP1 = {'s0': 71.4, 's1': 75.9, 's2': 77.4, 's3': 78.1, 's4': 79.4}
PAPER_TOP1_MOBILENETV2 = 72.0  # Table 9, MobileNetV2-x1.0

OUR_CONFIGS = {
    'cls': 'mobileone_{arch}_imagenet.py',
    'det': 'ssdlite_mobileone_{arch}_coco.py',
    'seg': 'deeplabv3_mobileone_{arch}_voc.py',
}
OUR_NAMES = {'backbone': 'MobileOne (ours)', 'cls': 'MobileOne (ours)',
             'det': 'SSDLite-MobileOne (ours)', 'seg': 'DeepLabV3-MobileOne (ours)'}
BASELINE_NAMES = {'backbone': 'MobileNetV2 features (torchvision)',
                  'cls': 'MobileNetV2 (torchvision)',
                  'det': 'SSDLite-MobileNetV2 (mmdet)',
                  'seg': 'DeepLabV3-MobileNetV2 (mmseg)'}
MMDET_SSDLITE_MOBILENETV2 = 'mmdet::ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py'
# mmseg ships DeepLabV3-MobileNetV2 for Cityscapes and ADE20K only; the ADE20K one is trained on
# 512x512 crops like our VOC models (its classes are set to VOC's 21 below).
MMSEG_DEEPLABV3_MOBILENETV2 = ('mmseg::mobilenet_v2/'
                               'mobilenet-v2-d8_deeplabv3_4xb4-160k_ade20k-512x512.py')

NOTES = {
    'timing': __doc__.split('\n\n')[1].replace('\n', ' '),
    'forms': __doc__.split('\n\n')[2].replace('\n', ' '),
    'order': 'all models of a task are built, counted and memory-profiled first, then timed '
             'round-robin (each round calls every model once; warm-up calls first) unless '
             'settings.interleave is false (--sequential: each model\'s calls back to back)',
    'macs': 'multiply-accumulates per image at batch 1 (mmengine FlopAnalyzer, fvcore-style, '
            'as the paper); params: all parameters of the timed module',
    'gflops': '2 * MACs * batch / median latency; % of peak: against a float32 torch.mm of '
              'matmul_size x matmul_size on the same device and threads (best of its repeats)',
    'memory': 'peak_mem_mb = weights_mb (parameters + buffers) + activation_peak_mb, the peak '
              'of tensor memory allocated above what was allocated before one forward (CPU: '
              'running total of the c10 CPU allocator recorded by torch.profiler with '
              'profile_memory=True, so memory that oneDNN or onnxruntime allocate themselves '
              'is not counted; CUDA: torch.cuda.max_memory_allocated); not measured for '
              'onnxruntime rows; MB here means MiB (2**20 bytes)',
    'ratios': 'vs_mobilenetv2: median / median of the same task\'s MobileNetV2 "BN folded" '
              'row; fused_vs_unfused: median of a fused (BN folded) row / median of the same '
              'model\'s unfused (as built) row',
    'segmentation baseline': 'mmseg\'s DeepLabV3-MobileNetV2 keeps its own 512-channel ASPP '
                             '(ours: 256 channels, as MobileViT/the paper); classes set to 21, '
                             'auxiliary head removed, no pretrained weights',
    'onnx': 'our fused classifier/detector/segmentor exported with mobileone_dense.apis.'
            'onnx_export.export_onnx (graph: the same outputs as mode="tensor"; for '
            'segmentation it also upsamples the logits to the input size) and run by an '
            'onnxruntime CPU session with intra_op_num_threads = threads; MACs and params are '
            'the fused PyTorch model\'s; vs_mobilenetv2 compares with the eager PyTorch baseline',
    'top1': 'the plot\'s y axis is the ImageNet top-1 reported in the paper (Table 9), not '
            'measured here',
}


@dataclass
class BenchmarkRow:
    """One timed model. Latencies are per forward call (whole batch); MACs are per image."""
    model: str
    variant: str
    task: str
    form: str
    role: str  # 'ours', 'baseline' (MobileNetV2) or 'reference' (timm, mmpretrain)
    input_shape: Tuple[int, int, int, int]
    params_m: float
    macs_g: Optional[float]
    median_ms: float
    min_ms: float
    times_ms: List[float]
    gflops: Optional[float] = None
    peak_percent: Optional[float] = None
    weights_mb: Optional[float] = None
    activation_peak_mb: Optional[float] = None
    peak_mem_mb: Optional[float] = None
    vs_mobilenetv2: Optional[float] = None
    fused_vs_unfused: Optional[float] = None

    @property
    def input(self) -> str:
        return 'x'.join(str(s) for s in self.input_shape)


@dataclass
class BenchmarkSettings:
    """What to measure and how (see ``tools/benchmark.py --help``)."""
    tasks: Sequence[str] = ('cls',)
    archs: Sequence[str] = ('s0',)
    input_size: Optional[int] = None  # None: DEFAULT_INPUT_SIZE per task
    batch: int = 1
    threads: int = 2
    warmup: int = 5
    repeats: int = 30
    device: str = 'cpu'
    channels_last: bool = False
    onnx: bool = False
    matmul_size: int = 2048
    compare_settings: bool = False
    interleave: bool = True  # time a task's models round-robin (False: one after the other)
    notes: List[str] = field(default_factory=list)  # filled while running (skipped parts)

    def size_for(self, task: str) -> int:
        return self.input_size or DEFAULT_INPUT_SIZE[task]


# ---------------------------------------------------------------------------------------------
# Timing, peak, memory
# ---------------------------------------------------------------------------------------------
def sync_for(device: str) -> Optional[Callable[[], None]]:
    """The function that waits for ``device``'s queued work (None on CPU, which is synchronous)."""
    if torch.device(device).type == 'cuda':
        return lambda: torch.cuda.synchronize()  # looked up at call time (tests patch it)
    return None


def time_callable(fn: Callable[[], object], warmup: int, repeats: int,
                  sync: Optional[Callable[[], None]] = None) -> List[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls.

    With ``sync`` (e.g. ``torch.cuda.synchronize``), it is called before and after every timed
    call, so asynchronous work is inside the timed region and nothing queued earlier is.
    """
    if repeats < 1:
        raise ValueError(f'repeats must be >= 1, got {repeats}')
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if sync is not None:
            sync()
        start = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - start)
    return times


def matmul_peak_gflops(size: int = 2048, device: str = 'cpu', repeats: int = 5) -> float:
    """Best float32 ``torch.mm`` throughput (GFLOP/s, 2 * size**3 per product), current threads."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    with torch.inference_mode():
        times = time_callable(lambda: torch.mm(a, b), warmup=2, repeats=repeats,
                              sync=sync_for(device))
    return 2 * size ** 3 / min(times) / 1e9


def module_bytes(module: nn.Module) -> int:
    """Bytes of parameters and buffers."""
    return sum(t.numel() * t.element_size()
               for t in list(module.parameters()) + list(module.buffers()))


def activation_peak_bytes(fn: Callable[[], object], device: str = 'cpu') -> Optional[int]:
    """Peak tensor bytes allocated during one ``fn()`` above those allocated before it.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: the profiler's record of every allocation of
    the c10 CPU allocator (sizes in time order, running total), i.e. what the CUDA counter
    measures, on the CPU. None if this torch's profiler does not expose the records.
    """
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    try:
        from torch._C._profiler import _EventType
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        nodes, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    except (ImportError, AttributeError):
        return None
    while stack:
        node = stack.pop()
        if node.typed[0] == _EventType.Allocation and node.typed[1].device.type == 'cpu':
            nodes.append(node)
        stack.extend(node.children)
    current = peak = 0
    for node in sorted(nodes, key=lambda n: n.start_time_ns):
        current += node.typed[1].alloc_size  # negative for frees
        peak = max(peak, current)
    return peak


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
class TensorMode(nn.Module):
    """``model(x, mode='tensor')`` of an mmdet / mmseg / mmpretrain model as ``forward(x)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return self.model(x, mode='tensor')


class PlainForward(nn.Module):
    """``model(x)``, with a ``train()``/``eval()`` that returns the module (mmpretrain's
    MobileOne returns None, which breaks chaining in counters)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return self.model(x)


class ForwardFeatures(nn.Module):
    """A timm classifier's ``forward_features(x)`` (backbone without pooling and head)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def our_config(task: str, arch: str) -> str:
    """Path of our config for ``task`` ('cls', 'det', 'seg') and ``arch``."""
    return osp.join(PACKAGE_CONFIGS, OUR_CONFIGS[task].format(arch=arch))


def build_ours(task: str, arch: str) -> nn.Module:
    """Our unfused model, eval mode: the bare backbone or the config's whole model."""
    if task == 'backbone':
        return MobileOne(arch, out_indices=(3,)).eval()
    return TensorMode(build_model_from_config(our_config(task, arch))).eval()


def build_mobilenet_v2(task: str) -> nn.Module:
    """The task's MobileNetV2 baseline, as built (random weights, nothing downloaded)."""
    if task in ('backbone', 'cls'):
        from torchvision.models import mobilenet_v2
        model = mobilenet_v2(weights=None)
        return (model.features if task == 'backbone' else model).eval()
    from mmengine.hub import get_config
    if task == 'det':
        cfg = get_config(MMDET_SSDLITE_MOBILENETV2)  # 80 classes, like ours
    elif task == 'seg':
        cfg = get_config(MMSEG_DEEPLABV3_MOBILENETV2)
        cfg.model.pretrained = None  # the base's mmcls:// URL
        cfg.model.decode_head.num_classes = 21  # VOC, as ours
        cfg.model.auxiliary_head = None  # ours has none (and 'tensor' mode never runs it)
    else:
        raise ValueError(f'unknown task {task!r}; valid: backbone, {", ".join(TASKS)}')
    cfg.model.backbone.init_cfg = None
    return TensorMode(build_model_from_config(cfg)).eval()


def build_timm_mobileone(arch: str, backbone: bool) -> nn.Module:
    """timm's ``mobileone_<arch>`` fused by ``reparameterize_model``; raises ImportError without
    timm. ``backbone``: its ``forward_features`` only (our backbone's counterpart)."""
    import timm
    from timm.utils.model import reparameterize_model
    # num_classes=0 drops the classifier's linear layer: the backbone's params are its own
    model = timm.create_model(f'mobileone_{arch}', pretrained=False,
                              num_classes=0 if backbone else 1000)
    model = reparameterize_model(model.eval())
    return ForwardFeatures(model) if backbone else model


def build_mmpretrain_mobileone(arch: str, backbone: bool) -> nn.Module:
    """mmpretrain's MobileOne backbone (or ImageClassifier with GAP + linear head) after
    ``switch_to_deploy()``; raises ImportError without mmpretrain."""
    from mmpretrain.registry import MODELS
    cfg = dict(type='MobileOne', arch=arch, out_indices=(3,))
    if not backbone:
        cfg = dict(type='ImageClassifier', backbone=cfg, neck=dict(type='GlobalAveragePooling'),
                   head=dict(type='LinearClsHead', num_classes=1000,
                             in_channels=stage_channels(arch)[3]))
    # in mmpretrain's scope whatever the current default scope is (mmseg's has no MobileOne)
    model = MODELS.build(dict(cfg, _scope_='mmpretrain'))
    model.eval()  # not chained: mmpretrain's MobileOne.train() returns None
    if backbone:
        model.switch_to_deploy()
        return PlainForward(model)
    model.backbone.switch_to_deploy()
    return TensorMode(model)


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------
def _prepare(module: nn.Module, settings: BenchmarkSettings) -> nn.Module:
    module = module.to(settings.device)
    module.eval()
    if settings.channels_last:
        module = module.to(memory_format=torch.channels_last)
    return module


def make_inputs(size: int, settings: BenchmarkSettings, batch: Optional[int] = None
                ) -> torch.Tensor:
    """Random (batch, 3, size, size) float32 input on the device, channels_last if asked."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch or settings.batch, 3, size, size, generator=generator)
    x = x.to(settings.device)
    if settings.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def profile_module(module: nn.Module, inputs: torch.Tensor, device: str) -> dict:
    """Params (M), MACs per image (G), weights and activation peak (MB) of ``module(inputs)``."""
    with torch.no_grad():
        # counted at batch 1 on a contiguous input: MACs do not depend on the layout
        params, macs = params_and_macs(module, inputs[:1].contiguous())
    module.eval()
    with torch.inference_mode():
        activation = activation_peak_bytes(lambda: module(inputs), device)
    weights_mb = module_bytes(module) / 2 ** 20
    stats = dict(params_m=params, macs_g=macs / 1e3, weights_mb=weights_mb)
    if activation is not None:
        stats.update(activation_peak_mb=activation / 2 ** 20,
                     peak_mem_mb=weights_mb + activation / 2 ** 20)
    return stats


def onnx_runner(module: nn.Module, inputs: torch.Tensor, settings: BenchmarkSettings,
                label: str) -> Optional[Callable[[], object]]:
    """``session.run`` of ``module`` exported by ``mobileone_dense.apis.onnx_export.export_onnx``
    in an onnxruntime CPU session (``intra_op_num_threads = threads``), fed a numpy copy of
    ``inputs`` made beforehand; None (and a note) if onnx/onnxruntime/the exporter is missing."""
    try:
        require_onnx()
    except ImportError as error:
        settings.notes.append(f'--onnx skipped for {label}: {error}')
        return None
    model = module.model if isinstance(module, TensorMode) else module
    with tempfile.TemporaryDirectory() as tmp:
        path = osp.join(tmp, 'model.onnx')
        try:
            export_onnx(copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format),
                        path, tuple(inputs.shape))
        except TypeError as error:  # e.g. a bare backbone: export_onnx takes whole models
            settings.notes.append(f'--onnx skipped for {label}: {error}')
            return None
        # no busy-wait between models; the session holds the file's contents, so the file
        # may be deleted afterwards
        session = onnx_session(path, settings.threads, spin=False)
    feed = {session.get_inputs()[0].name: inputs.contiguous().cpu().numpy()}
    return lambda: session.run(None, feed)


def time_interleaved(fns: Sequence[Callable[[], object]], warmup: int, repeats: int,
                     sync: Optional[Callable[[], None]] = None) -> List[List[float]]:
    """Seconds of ``repeats`` calls of each of ``fns``, timed round-robin (one call of each per
    round) after ``warmup`` untimed calls of each: a load change on a shared machine then hits
    all models alike instead of whichever was being timed."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: List[List[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, record in zip(fns, times):
            record += time_callable(fn, warmup=0, repeats=1, sync=sync)
    return times


def _row(meta: dict, stats: dict, times: Sequence[float], inputs: torch.Tensor,
         peak_gflops: Optional[float]) -> BenchmarkRow:
    row = BenchmarkRow(**meta, **stats, input_shape=tuple(inputs.shape),
                       median_ms=statistics.median(times) * 1e3, min_ms=min(times) * 1e3,
                       times_ms=[t * 1e3 for t in times])
    if row.macs_g is not None:
        row.gflops = 2 * row.macs_g * row.input_shape[0] / (row.median_ms / 1e3)
        if peak_gflops:
            row.peak_percent = 100 * row.gflops / peak_gflops
    return row


def _release() -> None:
    """Give back the memory of models no longer referenced (between tasks, not timed)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def benchmark_task(task: str, settings: BenchmarkSettings, peak_gflops: Optional[float],
                   log: Callable[[str], None] = print) -> List[BenchmarkRow]:
    """All rows of one task: MobileNetV2 (as built, BN folded), then per arch ours (unfused,
    fused, [onnxruntime]) and, for 'backbone'/'cls', timm's and mmpretrain's fused MobileOne.

    Every model is built, counted and memory-profiled first; then all are timed together
    (round-robin, see :func:`time_interleaved`, or one after the other with
    ``settings.interleave=False``) on the same input.
    """
    inputs = make_inputs(settings.size_for(task), settings)
    entries: List[Tuple[dict, Callable[[], object], dict]] = []  # (meta, call, stats)

    def add(module: nn.Module, **meta) -> Tuple[nn.Module, dict]:
        module = _prepare(module, settings)
        stats = profile_module(module, inputs, settings.device)
        meta.setdefault('task', task)
        entries.append((meta, lambda: module(inputs), stats))
        log(f'  built {meta["model"]} {meta["variant"]} {meta["form"]}: '
            f'{stats["params_m"]:.2f} M params, {stats["macs_g"]:.3f} GMACs')
        return module, stats

    baseline = build_mobilenet_v2(task)
    folded = reparameterize(copy.deepcopy(baseline))
    names = dict(model=BASELINE_NAMES[task], variant='x1.0', role='baseline')
    add(baseline, form='as built', **names)
    add(folded, form='BN folded', **names)
    for arch in settings.archs:
        ours = build_ours(task, arch)
        fused = reparameterize(copy.deepcopy(ours))
        names = dict(model=OUR_NAMES[task], variant=arch, role='ours')
        add(ours, form='unfused', **names)
        fused, stats = add(fused, form='fused', **names)
        if settings.onnx and task != 'backbone':  # export_onnx takes whole models only
            run = onnx_runner(fused, inputs, settings, f'{names["model"]} {arch} {task}')
            if run is not None:
                onnx_stats = {k: stats[k] for k in ('params_m', 'macs_g')}
                entries.append((dict(names, task=task, form='onnxruntime (CPU)'), run,
                                onnx_stats))
        if task not in ('backbone', 'cls'):
            continue
        for library, builder in (('timm', build_timm_mobileone),
                                 ('mmpretrain', build_mmpretrain_mobileone)):
            try:
                reference = builder(arch, backbone=task == 'backbone')
            except ImportError as error:
                settings.notes.append(f'{library} MobileOne skipped: {error}')
                continue
            add(reference, model=f'MobileOne ({library})', variant=arch, form='fused',
                role='reference')

    log(f'  timing {len(entries)} models, {settings.warmup} warm-up + {settings.repeats} '
        f'timed calls each ({"round-robin" if settings.interleave else "one after the other"})')
    calls = [call for _, call, _ in entries]
    sync = sync_for(settings.device)
    with torch.inference_mode():
        if settings.interleave:
            times = time_interleaved(calls, settings.warmup, settings.repeats, sync)
        else:
            times = [time_callable(call, settings.warmup, settings.repeats, sync)
                     for call in calls]
    return [_row(meta, stats, t, inputs, peak_gflops)
            for (meta, _, stats), t in zip(entries, times)]


def add_ratios(rows: Sequence[BenchmarkRow]) -> None:
    """Fill ``vs_mobilenetv2`` and ``fused_vs_unfused`` from the rows' medians (in place)."""
    baselines = {(r.task, r.input_shape): r for r in rows
                 if r.role == 'baseline' and r.form == 'BN folded'}
    unfused = {(r.model, r.variant, r.task, r.input_shape): r for r in rows
               if r.form in ('unfused', 'as built')}
    for row in rows:
        base = baselines.get((row.task, row.input_shape))
        if base is not None:
            row.vs_mobilenetv2 = row.median_ms / base.median_ms
        if row.form in ('fused', 'BN folded'):
            plain = unfused.get((row.model, row.variant, row.task, row.input_shape))
            if plain is not None:
                row.fused_vs_unfused = row.median_ms / plain.median_ms


def compare_settings(settings: BenchmarkSettings, arch: str = 's0',
                     batches: Sequence[int] = (1, 8)) -> List[dict]:
    """Fused ``arch`` classifier per image with and without channels_last, at each batch size."""
    model = reparameterize(build_ours('cls', arch)).to(settings.device).eval()
    results = []
    for channels_last in (False, True):
        variant = copy.copy(settings)
        variant.channels_last = channels_last
        module = model.to(memory_format=torch.channels_last if channels_last
                          else torch.contiguous_format)
        for batch in batches:
            inputs = make_inputs(settings.size_for('cls'), variant, batch)
            with torch.inference_mode():
                times = time_callable(lambda: module(inputs), settings.warmup, settings.repeats,
                                      sync_for(settings.device))
            results.append(dict(model=OUR_NAMES['cls'], variant=arch, form='fused',
                                channels_last=channels_last, batch=batch,
                                input_shape=list(inputs.shape),
                                median_ms_per_image=statistics.median(times) * 1e3 / batch,
                                min_ms_per_image=min(times) * 1e3 / batch))
    return results


# ---------------------------------------------------------------------------------------------
# Machine, targets, report
# ---------------------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's processor string elsewhere)."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown CPU'


def machine_info(settings: BenchmarkSettings) -> dict:
    """Where and with what the numbers were measured."""
    info = dict(cpu=cpu_model(), cores=os.cpu_count(),
                usable_cores=len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
                else os.cpu_count(),
                threads=settings.threads, torch=torch.__version__, python=platform.python_version(),
                date=datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
                load_average=os.getloadavg() if hasattr(os, 'getloadavg') else None)
    if torch.device(settings.device).type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name()
    for package in ('torchvision', 'timm', 'mmpretrain', 'mmdet', 'mmseg', 'onnxruntime'):
        try:
            info[package] = __import__(package).__version__
        except ImportError:
            info[package] = None
    return info


def target_lines(rows: Sequence[BenchmarkRow]) -> List[str]:
    """The issue's targets as PASS/FAIL lines from the measured medians (never asserted)."""
    def find(**keys) -> Optional[BenchmarkRow]:
        return next((r for r in rows if all(getattr(r, k) == v for k, v in keys.items())), None)

    def line(name: str, value: Optional[float], limit: float) -> str:
        if value is None:
            return f'n/a   {name}: not measured in this run'
        verdict = 'PASS' if value <= limit else 'FAIL'
        return f'{verdict:<5} {name}: {value:.2f}x (target <= {limit:.2f}x)'

    lines = []
    s0_cls = find(model=OUR_NAMES['cls'], variant='s0', task='cls', form='fused')
    lines.append(line('fused S0 classifier / torchvision MobileNetV2 (BN folded)',
                      s0_cls.vs_mobilenetv2 if s0_cls else None, 0.85))
    ours_backbones = [r for r in rows if r.task == 'backbone' and r.role == 'ours'
                      and r.form == 'fused']
    for ours in ours_backbones:
        for library in ('timm', 'mmpretrain'):
            ref = find(model=f'MobileOne ({library})', variant=ours.variant, task='backbone')
            lines.append(line(f'our fused {ours.variant.upper()} backbone / {library}\'s fused '
                              f'{ours.variant.upper()}',
                              ours.median_ms / ref.median_ms if ref else None, 1.0))
    if not ours_backbones:
        lines.append(line('our fused backbone / timm\'s and mmpretrain\'s', None, 1.0))
    s0_fused = [r for r in rows if r.role == 'ours' and r.variant == 's0' and r.form == 'fused']
    for row in s0_fused:
        lines.append(line(f'fused / unfused S0 {row.task}', row.fused_vs_unfused, 0.35))
    if not s0_fused:
        lines.append(line('fused / unfused S0', None, 0.35))
    return lines


def _fmt(value: Optional[float], spec: str) -> str:
    return '-' if value is None else format(value, spec)


TABLE_COLUMNS = (('model', 34), ('variant', 7), ('task', 8), ('form', 18), ('input', 13),
                 ('params M', 8), ('MACs G', 7), ('median ms', 9), ('min ms', 8),
                 ('GFLOP/s', 7), ('% peak', 6), ('peak MB', 7), ('vs MNv2', 7),
                 ('fused/unf', 9))


def format_table(rows: Sequence[BenchmarkRow]) -> str:
    """The rows as a fixed-width text table."""
    header = ' '.join(f'{name:>{width}}' if i > 4 else f'{name:<{width}}'
                      for i, (name, width) in enumerate(TABLE_COLUMNS))
    lines = [header, '-' * len(header)]
    for r in rows:
        cells = [r.model, r.variant, r.task, r.form, r.input, _fmt(r.params_m, '.2f'),
                 _fmt(r.macs_g, '.3f'), _fmt(r.median_ms, '.2f'), _fmt(r.min_ms, '.2f'),
                 _fmt(r.gflops, '.1f'), _fmt(r.peak_percent, '.1f'), _fmt(r.peak_mem_mb, '.1f'),
                 _fmt(r.vs_mobilenetv2, '.2f'), _fmt(r.fused_vs_unfused, '.2f')]
        lines.append(' '.join(f'{c:>{w}}' if i > 4 else f'{c:<{w}}'
                              for i, (c, (_, w)) in enumerate(zip(cells, TABLE_COLUMNS))))
    return '\n'.join(lines)


def plot_latency_vs_top1(rows: Sequence[BenchmarkRow], machine: dict, path: str) -> bool:
    """The paper's Figure 1 with latency measured here: fused classifiers (x, ms) against the
    paper-reported ImageNet top-1 (y). False (nothing written) without classifier rows."""
    ours = sorted((r for r in rows if r.task == 'cls' and r.role == 'ours' and r.form == 'fused'
                   and r.variant in PAPER_TOP1), key=lambda r: r.variant)
    baseline = next((r for r in rows if r.task == 'cls' and r.role == 'baseline'
                     and r.form == 'BN folded'), None)
    if not ours and baseline is None:
        return False
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    if ours:
        ax.plot([r.median_ms for r in ours], [PAPER_TOP1[r.variant] for r in ours], '-o',
                color='tab:red', label='MobileOne (fused)')
        for r in ours:
            ax.annotate(f'MobileOne-{r.variant.upper()}', (r.median_ms, PAPER_TOP1[r.variant]),
                        textcoords='offset points', xytext=(6, -4), fontsize=8)
    if baseline is not None:
        ax.plot([baseline.median_ms], [PAPER_TOP1_MOBILENETV2], 's', color='tab:blue',
                label='MobileNetV2 x1.0 (BN folded)')
        ax.annotate('MobileNetV2', (baseline.median_ms, PAPER_TOP1_MOBILENETV2),
                    textcoords='offset points', xytext=(6, -4), fontsize=8)
    shape = (ours or [baseline])[0].input
    threads = machine['threads']
    where = machine.get('gpu') or f'CPU, {threads} thread{"s" if threads != 1 else ""}'
    ax.set_xlabel(f'latency measured here (ms, median of forward calls, input {shape})')
    ax.set_ylabel('paper-reported top-1 (%), ImageNet-1k (Table 9)')
    ax.set_title(f'{machine["cpu"]} ({machine["cores"]} cores), {where}, torch '
                 f'{machine["torch"]}, {machine["date"][:10]}', fontsize=9)
    ax.set_xlim(left=0, right=1.25 * max(r.median_ms for r in ours + [baseline] if r))
    ax.set_ylim(min(PAPER_TOP1.values()) - 1.5, max(PAPER_TOP1.values()) + 1.5)
    ax.grid(True, alpha=0.3)
    ax.legend(loc='best')
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def run_benchmark(settings: BenchmarkSettings, log: Callable[[str], None] = print) -> dict:
    """Measure everything ``settings`` asks for; returns the JSON-ready result."""
    if torch.device(settings.device).type == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError('--device cuda, but torch sees no CUDA device; use --device cpu')
    unknown = set(settings.archs) - set(ARCHS)
    if unknown:
        raise ValueError(f'unknown archs {sorted(unknown)}; valid: {", ".join(ARCHS)}')
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        machine = machine_info(settings)
        peak = matmul_peak_gflops(settings.matmul_size, settings.device)
        log(f'matmul peak ({settings.matmul_size}x{settings.matmul_size} float32, '
            f'{settings.threads} threads, {settings.device}): {peak:.1f} GFLOP/s')
        rows = []
        for task in settings.tasks:
            for sub_task in (('backbone', 'cls') if task == 'cls' else (task,)):
                log(f'[{sub_task}] input {settings.size_for(sub_task)}x'
                    f'{settings.size_for(sub_task)}, batch {settings.batch}')
                rows += benchmark_task(sub_task, settings, peak, log)
                _release()  # the task's models are gone with benchmark_task's frame
        add_ratios(rows)
        comparison = compare_settings(settings) if settings.compare_settings else None
    finally:
        torch.set_num_threads(previous_threads)
    return dict(machine=machine, matmul_peak_gflops=peak,
                settings={k: v for k, v in asdict(settings).items() if k != 'notes'},
                notes=dict(NOTES, skipped=list(settings.notes)),
                rows=[dict(asdict(r), input=r.input) for r in rows],
                targets=target_lines(rows), settings_comparison=comparison)


def rows_from_result(result: dict) -> List[BenchmarkRow]:
    """``BenchmarkRow`` objects back from a result (or a loaded ``benchmark.json``)."""
    names = set(BenchmarkRow.__dataclass_fields__)
    return [BenchmarkRow(**{k: (tuple(v) if k == 'input_shape' else v)
                            for k, v in row.items() if k in names}) for row in result['rows']]


def format_comparison(comparison: Sequence[dict]) -> str:
    lines = [f'{"channels_last":<14} {"batch":>5} {"median ms/image":>16} {"min ms/image":>13}']
    for c in comparison:
        lines.append(f'{str(c["channels_last"]):<14} {c["batch"]:>5} '
                     f'{c["median_ms_per_image"]:>16.3f} {c["min_ms_per_image"]:>13.3f}')
    return '\n'.join(lines)


def write_outputs(result: dict, out_dir: str) -> Dict[str, Optional[str]]:
    """``benchmark.json`` and ``benchmark.png`` (if there are classifier rows) in ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    json_path = osp.join(out_dir, 'benchmark.json')
    with open(json_path, 'w') as f:
        json.dump(result, f, indent=2)
    png_path = osp.join(out_dir, 'benchmark.png')
    if not plot_latency_vs_top1(rows_from_result(result), result['machine'], png_path):
        png_path = None
    return dict(json=json_path, png=png_path)
