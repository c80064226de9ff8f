"""Images per second: inference (deploy vs train-time, float32 vs float16/bfloat16), training.

What is timed (``tools/benchmark.py --mode throughput``, the default with ``--device cuda``):

- inference: ``model(x)`` on one random (batch, 3, size, size) input made beforehand, under
  ``torch.inference_mode()``, model and input cast to the dtype (float32, float16, bfloat16);
  mmdet / mmseg / mmpretrain models in ``mode='tensor'`` (raw head outputs: no preprocessing,
  NMS or upsampling). ``torch.backends.cudnn.benchmark`` is on (it picks each conv's fastest
  algorithm during the warm-up). After ``warmup`` calls, rounds of ``calls`` back-to-back calls
  are timed with the device synchronized before and after each round (so queued GPU work is
  inside the round and nothing else is); images/s = batch * calls / median round time.
- training: one step = forward of the ImageNet classifier network (backbone + pooling + linear
  head, train mode), cross-entropy on random labels, backward, SGD step (momentum 0.9, weight
  decay 1e-4), timed the same way. AMP: ``torch.autocast`` (float16 with a ``GradScaler`` on
  CUDA, as mmengine's ``AmpOptimWrapper`` / ``tools/train.py --amp``; bfloat16 on the CPU).
  channels_last: model and input in ``torch.channels_last``, on CUDA only: on the CPU those rows
  are skipped with the reason (`CPU_CHANNELS_LAST_TRAINING`). At 320 and 512 the classifier
  network stands for the backbone's share of a detection / segmentation training step (neck and
  head are the same for every backbone). ``peak_mb``: ``torch.cuda.max_memory_allocated`` of the
  timed steps (CUDA only).
"""

import copy
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import Config
from mmpretrain.registry import MODELS as MMPRETRAIN_MODELS

from ..apis.model_building import build_model_from_config
from ..models.mobileone import stage_channels
from ..models.reparameterize import reparameterize
from .baselines import (
    BASELINE_NAMES,
    OUR_NAMES,
    TensorMode,
    build_mobilenet_v2,
    build_ours,
    our_config,
)
from .timing import sync_for, time_callable

DTYPES = {'float32': torch.float32, 'float16': torch.float16, 'bfloat16': torch.bfloat16}
# (task, archs) of the inference table: classifiers S0-S4, SSDLite S0/S2, DeepLabV3 S0
INFERENCE_MODELS = (
    ('cls', ('s0', 's1', 's2', 's3', 's4')),
    ('det', ('s0', 's2')),
    ('seg', ('s0',)),
)
INPUT_SIZE = {'cls': 224, 'det': 320, 'seg': 512}
# (batch, square input side) of the training table: ImageNet, SSDLite and DeepLabV3 inputs
TRAIN_SETTINGS = ((32, 224), (24, 320), (8, 512))


@dataclass
class ThroughputSettings:
    """What to measure (see ``tools/benchmark.py --help``)."""

    device: str = 'cuda'
    inference_models: Sequence[Tuple[str, Sequence[str]]] = INFERENCE_MODELS
    batches: Sequence[int] = (1, 64)
    dtypes: Sequence[str] = ('float32', 'float16', 'bfloat16')
    input_size: Optional[Dict[str, int]] = None  # None: INPUT_SIZE
    train_archs: Sequence[str] = ('s0', 's1', 's2', 's3', 's4')
    reference_archs: Sequence[str] = ('s0',)  # mmpretrain's MobileOne and the plain network
    train_settings: Sequence[Tuple[int, int]] = TRAIN_SETTINGS
    warmup: int = 3
    rounds: int = 5
    min_round_s: float = 0.05  # calls per round grow until a round lasts this long
    budget_s: Optional[float] = None  # stop measuring (rows marked skipped) after this long
    notes: List[str] = field(default_factory=list)

    def size_for(self, task: str) -> int:
        return (self.input_size or INPUT_SIZE)[task]


@dataclass
class ThroughputRow:
    """One measurement; ``images_per_s`` is None when it was skipped or failed (``error``)."""

    kind: str  # 'inference' or 'training'
    model: str
    variant: str
    form: str
    batch: int
    size: int
    dtype: str  # inference: float32/float16/bfloat16; training: 'float32' or 'amp'
    channels_last: bool = False
    images_per_s: Optional[float] = None
    ms_per_batch: Optional[float] = None
    peak_mb: Optional[float] = None
    error: Optional[str] = None


def time_rounds(
    fn: Callable[[], object],
    sync: Optional[Callable[[], None]],
    warmup: int,
    rounds: int,
    min_round_s: float,
) -> Tuple[float, int]:
    """(median seconds per call, calls per round): ``warmup`` calls, then ``rounds`` rounds of
    back-to-back calls (enough for ``min_round_s``), each round timed by
    :func:`.timing.time_callable` (synchronized before and after)."""
    for _ in range(warmup):
        fn()
    one = max(time_callable(fn, 0, 1, sync)[0], 1e-6)
    calls = max(1, min(1000, math.ceil(min_round_s / one)))

    def round_of_calls() -> None:
        for _ in range(calls):
            fn()

    return statistics.median(time_callable(round_of_calls, 0, rounds, sync)) / calls, calls


def _peak_tracking(device: str) -> Tuple[Callable[[], None], Callable[[], Optional[float]]]:
    if torch.device(device).type != 'cuda':
        return (lambda: None), (lambda: None)
    return torch.cuda.reset_peak_memory_stats, lambda: torch.cuda.max_memory_allocated() / 2**20


class Clock:
    """Elapsed time against ``settings.budget_s``."""

    def __init__(self, budget_s: Optional[float]) -> None:
        self.start, self.budget_s = time.perf_counter(), budget_s

    def spent(self) -> bool:
        return self.budget_s is not None and time.perf_counter() - self.start > self.budget_s


def _measure(
    row: ThroughputRow,
    fn_factory: Callable[[], Callable[[], object]],
    settings: ThroughputSettings,
    clock: Clock,
) -> ThroughputRow:
    """Fill ``row`` by timing ``fn_factory()``; an error (e.g. out of memory) is recorded."""
    if clock.spent():
        row.error = f'skipped: over the {settings.budget_s:.0f} s budget'
        return row
    reset_peak, peak = _peak_tracking(settings.device)
    try:
        fn = fn_factory()
        reset_peak()
        seconds, _ = time_rounds(
            fn, sync_for(settings.device), settings.warmup, settings.rounds, settings.min_round_s
        )
    except (RuntimeError, ValueError, NotImplementedError) as error:
        row.error = f'{type(error).__name__}: {str(error).splitlines()[0][:160]}'
    else:
        row.ms_per_batch = seconds * 1e3
        row.images_per_s = row.batch / seconds
        row.peak_mb = peak()
    finally:
        if torch.device(settings.device).type == 'cuda':
            torch.cuda.empty_cache()
    return row


def inference_models(settings: ThroughputSettings) -> List[Tuple[str, str, str, str, nn.Module]]:
    """(task, model name, variant, form, module) of every model of the inference table."""
    models = []
    for task, archs in settings.inference_models:
        baseline = reparameterize(build_mobilenet_v2(task))
        models.append((task, BASELINE_NAMES[task], 'x1.0', 'BN folded', baseline))
        for arch in archs:
            train_time = build_ours(task, arch)
            models.append((task, OUR_NAMES[task], arch, 'train-time', train_time))
            models.append(
                (task, OUR_NAMES[task], arch, 'deploy', reparameterize(copy.deepcopy(train_time)))
            )
    return models


def measure_inference(
    settings: ThroughputSettings, clock: Clock, log: Callable[[str], None] = print
) -> List[ThroughputRow]:
    rows = []
    for task, name, variant, form, model in inference_models(settings):
        size = settings.size_for(task)
        log(f'  inference {name} {variant} {form} at {size}x{size}')
        for dtype in settings.dtypes:
            for batch in settings.batches:

                def factory(model=model, dtype=dtype, batch=batch, size=size):
                    module = model.to(settings.device, DTYPES[dtype]).eval()
                    x = torch.randn(
                        batch, 3, size, size, device=settings.device, dtype=DTYPES[dtype]
                    )

                    def call():
                        with torch.inference_mode():
                            return module(x)

                    return call

                rows.append(
                    _measure(
                        ThroughputRow('inference', name, variant, form, batch, size, dtype),
                        factory,
                        settings,
                        clock,
                    )
                )
        model.to('cpu', torch.float32)  # free the device for the next model
    return rows


def classifier_network(arch: str, form: str) -> nn.Module:
    """The ImageNet classifier network (``forward(x)`` gives logits) of the training table.

    ``form``: 'train-time' (ours with its branches), 'plain' (ours built in deploy form, i.e. the
    same network trained without branches), 'mmpretrain' (mmpretrain's MobileOne with its
    branches) or 'mobilenet_v2' (torchvision's; ``arch`` ignored).
    """
    if form == 'mobilenet_v2':
        return build_mobilenet_v2('cls')
    if form == 'mmpretrain':
        return TensorMode(
            MMPRETRAIN_MODELS.build(
                dict(
                    type='ImageClassifier',
                    _scope_='mmpretrain',
                    backbone=dict(type='MobileOne', arch=arch, out_indices=(3,)),
                    neck=dict(type='GlobalAveragePooling'),
                    head=dict(
                        type='LinearClsHead', num_classes=1000, in_channels=stage_channels(arch)[3]
                    ),
                )
            )
        )
    if form not in ('train-time', 'plain'):
        raise ValueError(f'unknown form {form!r}')
    cfg = Config.fromfile(our_config('cls', arch))
    cfg.model.backbone.deploy = form == 'plain'
    return TensorMode(build_model_from_config(cfg))


TRAIN_MODELS = {
    'train-time': OUR_NAMES['cls'],
    'plain': OUR_NAMES['cls'],
    'mmpretrain': 'MobileOne (mmpretrain)',
    'mobilenet_v2': BASELINE_NAMES['cls'],
}


def train_step(
    model: nn.Module, batch: int, size: int, device: str, amp: bool, channels_last: bool
) -> Callable[[], None]:
    """One SGD training step of ``model`` (moved to ``device``, train mode) on a fixed random
    batch; see the module docstring for AMP."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=generator).to(
        device, memory_format=memory_format
    )
    labels = torch.randint(0, 1000, (batch,), generator=generator).to(device)
    device_type = torch.device(device).type
    amp_dtype = torch.float16 if device_type == 'cuda' else torch.bfloat16
    scaler = torch.amp.GradScaler(device_type) if amp and device_type == 'cuda' else None

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device_type, dtype=amp_dtype, enabled=amp):
            loss = F.cross_entropy(model(x).float(), labels)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    return step


# Why the CPU rows of channels_last training are not run: with torch 2.14.1 / oneDNN they crash
# or hang the process; tools/analysis/channels_last_training_repro.py reproduces it (re-run it
# after a torch upgrade before enabling them).
CPU_CHANNELS_LAST_TRAINING = (
    f'skipped: channels_last training on the CPU crashes or hangs with torch '
    f'{torch.__version__.split("+")[0]} (tools/analysis/channels_last_training_repro.py)'
)


def training_entries(settings: ThroughputSettings) -> List[Tuple[str, str]]:
    """(form, arch) of every network of the training table."""
    entries = [('mobilenet_v2', 'x1.0')]
    entries += [('train-time', arch) for arch in settings.train_archs]
    for arch in settings.reference_archs:
        entries += [('plain', arch), ('mmpretrain', arch)]
    return entries


def measure_training(
    settings: ThroughputSettings, clock: Clock, log: Callable[[str], None] = print
) -> List[ThroughputRow]:
    rows = []
    for form, arch in training_entries(settings):
        log(f'  training {TRAIN_MODELS[form]} {arch} {form}')
        for batch, size in settings.train_settings:
            for amp in (False, True):
                for channels_last in (False, True):
                    row = ThroughputRow(
                        'training',
                        TRAIN_MODELS[form],
                        arch,
                        form,
                        batch,
                        size,
                        'amp' if amp else 'float32',
                        channels_last,
                    )
                    if channels_last and torch.device(settings.device).type == 'cpu':
                        row.error = CPU_CHANNELS_LAST_TRAINING
                        rows.append(row)
                        continue
                    rows.append(
                        _measure(
                            row,
                            lambda: train_step(
                                classifier_network(arch, form),
                                batch,
                                size,
                                settings.device,
                                amp,
                                channels_last,
                            ),
                            settings,
                            clock,
                        )
                    )
    return rows


def run_throughput(settings: ThroughputSettings, log: Callable[[str], None] = print) -> dict:
    """Both tables (JSON-ready); cudnn.benchmark is on while measuring."""
    if torch.device(settings.device).type == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError('--device cuda, but torch sees no CUDA device; use --device cpu')
    clock = Clock(settings.budget_s)
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        log('[inference]')
        rows = measure_inference(settings, clock, log) if settings.batches else []
        log('[training]')
        rows += measure_training(settings, clock, log) if settings.train_settings else []
    finally:
        torch.backends.cudnn.benchmark = previous
    return dict(
        settings={k: v for k, v in asdict(settings).items() if k != 'notes'},
        notes=dict(timing=__doc__.split('\n\n', 1)[1].replace('\n', ' ')),
        rows=[asdict(row) for row in rows],
    )
