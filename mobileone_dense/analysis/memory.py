"""Memory of a module (bytes of its tensors) and the peak of tensor memory one call allocates.

CUDA: ``torch.cuda.max_memory_allocated``. CPU: the c10 CPU allocator's records taken by
``torch.profiler.profile(profile_memory=True)``, one per allocation and free, summed in time
order. Torch has no public API that returns those records one by one (``prof.events()`` only
sums them per op, which hides what an op allocates and frees inside itself, so a running total
of those sums misses the peak), so :func:`cpu_allocation_records` reads the records torch's own
``prof.events()`` is built from. When a torch version exposes them differently, the CPU peak is
None ("n/a" in the benchmark's table) and one warning names the torch version.
"""

import warnings
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile

# name of the allocator records in the profiler's results (torch.autograd.profiler_util's
# MEMORY_EVENT_NAME, read by torch's own profiler parsing)
MEMORY_RECORD = '[memory]'
# torch versions already warned about (one warning per process, not one per model)
_WARNED = set()


def module_bytes(module: nn.Module) -> int:
    """Bytes of parameters and buffers."""
    return sum(
        t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers())
    )


def cpu_allocation_records(prof: profile) -> List[Tuple[int, int]]:
    """(time in ns, bytes: positive for an allocation, negative for a free) of every c10 CPU
    allocator record of a finished ``profile(profile_memory=True)``, in time order.

    Reads ``prof.profiler.kineto_results.events()``, which torch does not document: raises
    AttributeError or TypeError when this torch's profiler has no such records.
    """
    cpu = torch.autograd.DeviceType.CPU
    records = [
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == MEMORY_RECORD and event.device_type() == cpu
    ]
    return sorted(records, key=lambda record: record[0])  # stable: same-time records keep order


def warn_cpu_peak_unavailable(reason: str) -> None:
    """One warning per torch version that the CPU peak memory is not measured, and why."""
    if torch.__version__ in _WARNED:
        return
    _WARNED.add(torch.__version__)
    warnings.warn(
        f'CPU peak memory is n/a: the profiler of torch {torch.__version__} does not give the '
        f'c10 CPU allocator records that mobileone_dense.analysis.memory reads ({reason}). '
        'Every other number is measured as usual; for the CPU peak, use a torch version whose '
        'prof.profiler.kineto_results.events() has "[memory]" records, or update '
        'cpu_allocation_records for this one.',
        RuntimeWarning,
        stacklevel=3,
    )


def activation_peak_bytes(fn: Callable[[], object], device: str = 'cpu') -> Optional[int]:
    """Peak tensor bytes allocated during one ``fn()`` above those allocated before it.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: the running total of the c10 CPU allocator's
    records (:func:`cpu_allocation_records`), i.e. what the CUDA counter measures, on the CPU;
    memory that oneDNN or onnxruntime allocate themselves is not counted. None (and one warning,
    :func:`warn_cpu_peak_unavailable`) if this torch's profiler does not give the records.
    """
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        records = cpu_allocation_records(prof)
    except (AttributeError, TypeError) as error:  # a torch without (or with other) records
        warn_cpu_peak_unavailable(f'{type(error).__name__}: {error}')
        return None
    if not records:  # every forward allocates: the records are named or typed differently
        warn_cpu_peak_unavailable(f'no {MEMORY_RECORD!r} CPU record in the profile')
        return None
    current = peak = 0
    for _, size in records:
        current += size
        peak = max(peak, current)
    return peak
