"""Wall-clock timing of callables: warm-up, synchronization, round-robin, matmul peak.

Times are seconds per call from ``time.perf_counter``. On CUDA the caller passes a ``sync``
(:func:`sync_for`) that is called before and after every timed call, so asynchronous work is
inside the timed region and nothing queued earlier is.
"""

import time
from typing import Callable, List, Optional, Sequence

import torch


def sync_for(device: str) -> Optional[Callable[[], None]]:
    """The function that waits for ``device``'s queued work (None on CPU, which is synchronous)."""
    if torch.device(device).type == 'cuda':
        return lambda: torch.cuda.synchronize()  # looked up at call time (tests patch it)
    return None


def time_callable(
    fn: Callable[[], object], warmup: int, repeats: int, sync: Optional[Callable[[], None]] = None
) -> List[float]:
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


def time_interleaved(
    fns: Sequence[Callable[[], object]],
    warmup: int,
    repeats: int,
    sync: Optional[Callable[[], None]] = None,
) -> List[List[float]]:
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


def matmul_peak_gflops(size: int = 2048, device: str = 'cpu', repeats: int = 5) -> float:
    """Best float32 ``torch.mm`` throughput (GFLOP/s, 2 * size**3 per product), current threads."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    with torch.inference_mode():
        times = time_callable(
            lambda: torch.mm(a, b), warmup=2, repeats=repeats, sync=sync_for(device)
        )
    return 2 * size**3 / min(times) / 1e9
