"""The session's training runs (``trained_runs.py``) in the background, while the other tests run.

Each run is a tool process that trains a tiny model for minutes. They train in two lanes from the
start of the session (threads, each running its runs one after another: the segmentation run,
the longest, beside the three others) while pytest runs the tests that need none of them:
``conftest.py`` orders the tests so that those that need a run come last, in `RUNS` order.

While runs are under way the suite keeps to one thread per process (`apply_thread_policy`),
and so do the runs, but for the quickstart: it trains with 2 threads, as `make demo` does on a
2-core machine, because its mAP floor is asserted on that run and a training run's result depends
on its thread count (the order of its floating-point sums). The runs' OpenMP threads sleep rather
than spin while they wait (``trained_runs.process_threads``): two processes with spinning threads
on two cores slow each other down several times over. Afterwards the suite's own thread count
(``MOBILEONE_DENSE_TEST_THREADS``, default 2) applies again. A test that needs a run that was not
started (a single test selected) starts it itself.
"""

import concurrent.futures
import os
import threading
import time
from typing import Callable, Dict, List, NamedTuple, Optional

import torch
import trained_runs


class Run(NamedTuple):
    # work dir -> the run (what its tests read): data and config written in the calling thread,
    # the returned function only starts processes (``trained_runs.py``)
    prepare: Callable[[str], Callable[[], dict]]
    threads: int  # OpenMP threads of the processes it starts
    lane: int = 0  # the background thread it trains in, after the lane's earlier runs


# name (the session fixture's) -> the run, in the order the runs are started: the detection and
# classification runs first, whose tests are many; the longest in a lane of its own, so that it
# ends about when the others do.
RUNS: Dict[str, Run] = {
    'quickstart': Run(trained_runs.prepare_quickstart, threads=2),  # as `make demo` on 2 cores
    'learned_classifier': Run(trained_runs.prepare_classifier, threads=1),
    's2_resumed_run': Run(trained_runs.prepare_s2_resume, threads=1),
    'learned_segmentor': Run(trained_runs.prepare_segmentor, threads=1, lane=1),
}
SUITE_THREADS = int(os.environ.get('MOBILEONE_DENSE_TEST_THREADS', '2'))
OMP_BEFORE_SESSION = os.environ.get('OMP_NUM_THREADS')


def order_of(fixturenames: List[str]) -> int:
    """Where a test goes: 0 when it needs no run, else 1 + the position of the last run it
    needs."""
    needed = [i for i, name in enumerate(RUNS) if name in fixturenames]
    return 1 + max(needed) if needed else 0


class BackgroundRuns:
    """The runs of one session, each started once, in `RUNS` order, in a worker thread per
    lane."""

    def __init__(self) -> None:
        self._lanes: Dict[int, concurrent.futures.ThreadPoolExecutor] = {}
        self._futures: Dict[str, concurrent.futures.Future] = {}
        self._lock = threading.Lock()
        self._threads = set()  # the worker threads' idents, once they have run something
        self.seconds: Dict[str, float] = {}  # name -> how long the run took, once it ended

    def _run(self, name: str, run: Callable[[], dict]) -> dict:
        self._threads.add(threading.get_ident())
        start = time.perf_counter()
        try:
            with trained_runs.process_threads(RUNS[name].threads):
                return run()
        finally:
            self.seconds[name] = time.perf_counter() - start

    def summary(self) -> str:
        """One line for the end of the session: each run's duration and thread count."""
        runs = [f'{n} {s / 60:.1f} min ({RUNS[n].threads} thr.)' for n, s in self.seconds.items()]
        return 'background training runs: ' + (', '.join(runs) or 'none')

    def start(self, names, folder_of: Callable[[str], str]) -> None:
        """Prepare (here) and queue the runs ``names`` not queued yet; ``folder_of(name)``: its
        work dir."""
        with self._lock:
            for name in RUNS:
                if name in names and name not in self._futures:
                    run = RUNS[name].prepare(folder_of(name))
                    lane = RUNS[name].lane
                    if lane not in self._lanes:
                        self._lanes[lane] = concurrent.futures.ThreadPoolExecutor(
                            1, f'background-runs-{lane}'
                        )
                    self._futures[name] = self._lanes[lane].submit(self._run, name, run)
        apply_thread_policy(self)

    def result(self, name: str, folder_of: Callable[[str], str]) -> dict:
        """The run's result, waiting for it (and queueing it first when nobody did)."""
        self.start([name], folder_of)
        return self._futures[name].result()

    def busy(self) -> bool:
        with self._lock:
            return any(not future.done() for future in self._futures.values())

    def stop(self) -> None:
        """End of the session: nothing more starts, and a run still under way (an interrupted
        session) is killed rather than waited for."""
        for executor in self._lanes.values():
            executor.shutdown(wait=False, cancel_futures=True)
        trained_runs.kill_live_processes(self._threads)


def apply_thread_policy(runs: Optional[BackgroundRuns]) -> None:
    """One intra-op thread in this process and the processes it starts while runs are under way
    (``OMP_NUM_THREADS`` is inherited by every tool process); the suite's count otherwise."""
    omp = '1' if runs is not None and runs.busy() else OMP_BEFORE_SESSION
    torch.set_num_threads(1 if omp == '1' else SUITE_THREADS)
    if os.environ.get('OMP_NUM_THREADS') == omp:
        return  # the environment is changed only when needed (see trained_runs.run_process)
    if omp is None:
        del os.environ['OMP_NUM_THREADS']
    else:
        os.environ['OMP_NUM_THREADS'] = omp
