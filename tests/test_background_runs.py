"""The suite's own scheduling (``background_runs.py``): the training runs start in their order,
once each, a test that needs an unqueued run starts it, the suite keeps to one thread per process
while runs are under way, a run's processes get its thread count, and an interrupted session
kills the run's process."""

import os
import sys
import threading
import time

import background_runs
import pytest
import torch
import trained_runs
from background_runs import BackgroundRuns, Run, apply_thread_policy, order_of


def test_tests_needing_no_run_come_first_then_in_run_order():
    assert order_of(['tmp_path']) == 0
    assert order_of(['quickstart', 'tmp_path']) == 1
    assert order_of(['learned_segmentor', 'quickstart']) == len(background_runs.RUNS)


@pytest.fixture
def fake_runs(monkeypatch):
    """Two runs that record when they start and wait until released."""
    started, release = [], threading.Event()

    def run(name):
        def prepare(folder):
            def train():
                started.append((name, folder))
                release.wait(30)
                return dict(name=name)

            return train

        return Run(prepare, threads=1)

    monkeypatch.setattr(background_runs, 'RUNS', {'first': run('first'), 'second': run('second')})
    runs = BackgroundRuns()
    yield runs, started, release
    release.set()
    runs.stop()
    apply_thread_policy(None)


def test_runs_start_once_each_in_their_order(fake_runs):
    runs, started, release = fake_runs
    runs.start(['second', 'first'], lambda name: f'/tmp/{name}')
    runs.start(['first'], lambda name: f'/tmp/{name}')
    assert runs.busy()
    release.set()
    assert runs.result('second', None) == dict(name='second')
    assert started == [('first', '/tmp/first'), ('second', '/tmp/second')]
    assert not runs.busy()
    assert runs.summary().startswith('background training runs: first 0.0 min (1 thr.), second')


def test_runs_of_two_lanes_train_at_the_same_time(monkeypatch):
    both, started = threading.Barrier(2, timeout=20), []

    def prepare(folder):
        def train():
            started.append(folder)
            both.wait()  # raises BrokenBarrierError if the other lane's run does not start
            return folder

        return train

    monkeypatch.setattr(
        background_runs, 'RUNS', {'a': Run(prepare, threads=1), 'b': Run(prepare, 1, lane=1)}
    )
    runs = BackgroundRuns()
    try:
        runs.start(['a', 'b'], str)
        assert runs.result('a', str) == 'a' and runs.result('b', str) == 'b'
    finally:
        runs.stop()
        apply_thread_policy(None)
    assert sorted(started) == ['a', 'b']


def test_a_run_nobody_queued_is_started_by_its_result(fake_runs):
    runs, started, release = fake_runs
    release.set()
    assert runs.result('second', lambda name: name) == dict(name='second')
    assert started == [('second', 'second')]


def test_one_thread_per_process_while_runs_are_under_way(fake_runs):
    runs, _, release = fake_runs
    runs.start(['first'], str)
    assert torch.get_num_threads() == 1 and os.environ['OMP_NUM_THREADS'] == '1'
    release.set()
    runs.result('first', str)
    apply_thread_policy(runs)
    assert torch.get_num_threads() == background_runs.SUITE_THREADS
    assert os.environ.get('OMP_NUM_THREADS') == background_runs.OMP_BEFORE_SESSION


def test_runs_are_prepared_in_the_calling_thread_and_run_in_another(monkeypatch):
    """Configs are loaded where the tests run, never beside them: mmengine's config loading is
    not thread-safe (``trained_runs.py``)."""
    threads = {}

    def prepare(folder):
        threads['prepare'] = threading.get_ident()
        return lambda: threads.setdefault('run', threading.get_ident())

    monkeypatch.setattr(background_runs, 'RUNS', {'run': Run(prepare, threads=1)})
    runs = BackgroundRuns()
    try:
        runs.result('run', str)
    finally:
        runs.stop()
        apply_thread_policy(None)
    assert threads['prepare'] == threading.get_ident() != threads['run']


def test_stop_kills_the_process_of_a_run_under_way(monkeypatch):
    def sleeper(folder):
        code = 'import time; time.sleep(60)'
        return lambda: trained_runs.run_process([sys.executable, '-c', code], 90)

    monkeypatch.setattr(background_runs, 'RUNS', {'sleeper': Run(sleeper, threads=1)})
    runs = BackgroundRuns()
    runs.start(['sleeper'], str)

    def processes_of_the_runs():
        return [p for p, thread in dict(trained_runs._LIVE).items() if thread in runs._threads]

    deadline = time.time() + 20
    while not processes_of_the_runs() and time.time() < deadline:
        time.sleep(0.05)
    (process,) = processes_of_the_runs()
    runs.stop()
    assert process.wait(timeout=20) != 0  # killed, not left to sleep for a minute
    apply_thread_policy(None)


def test_the_processes_of_a_run_get_its_thread_count(monkeypatch):
    def printer(folder):
        code = "import os; print(os.environ['OMP_NUM_THREADS'], os.environ['OMP_WAIT_POLICY'])"
        return lambda: trained_runs.run_process([sys.executable, '-c', code], 60).stdout.split()

    monkeypatch.setattr(
        background_runs,
        'RUNS',
        {'two': Run(printer, threads=2), 'one': Run(printer, threads=1)},
    )
    runs = BackgroundRuns()
    try:
        assert runs.result('two', str) == ['2', 'PASSIVE']  # while nothing else runs, too
        assert runs.result('one', str) == ['1', 'PASSIVE']
    finally:
        runs.stop()
        apply_thread_policy(None)
    # outside a run, processes inherit the environment
    code = "import os; print(os.environ.get('OMP_WAIT_POLICY'))"
    assert trained_runs.run_process([sys.executable, '-c', code], 60).stdout.split() == [
        str(os.environ.get('OMP_WAIT_POLICY'))
    ]
