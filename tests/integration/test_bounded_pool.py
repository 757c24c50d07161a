"""verl_ext/reward/bounded_pool.py: a worker process killed from outside is replaced, and the call it was serving
(or the next one) still gets its answer; a worker past its deadline is killed; errors inside the function are
reported."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from verl_ext.reward.bounded_pool import BoundedProcessPool, CallTimeout, WorkerError


@pytest.fixture
def pool():
    p = BoundedProcessPool(1)
    yield p
    p.close()


def test_an_idle_worker_killed_from_outside_is_replaced(pool):
    first = pool.call(os.getpid, (), 30)
    os.kill(first, signal.SIGKILL)
    time.sleep(0.2)
    second = pool.call(os.getpid, (), 30)  # the call still gets its answer, from a new worker
    assert second not in (first, os.getpid())
    assert pool.restarts == 1


def test_a_worker_killed_during_a_call_is_replaced_and_the_call_runs_again(pool):
    victim = pool.call(os.getpid, (), 30)
    threading.Timer(0.5, os.kill, (victim, signal.SIGKILL)).start()
    start = time.monotonic()
    assert pool.call(time.sleep, (1.5,), 30) is None  # killed after 0.5 s, run again in full
    assert time.monotonic() - start >= 1.9
    assert pool.restarts == 1 and pool.call(os.getpid, (), 30) != victim


def test_deadline_and_errors_are_not_retried(pool):
    with pytest.raises(CallTimeout):
        pool.call(time.sleep, (30,), 0.5)
    assert pool.restarts == 1
    with pytest.raises(WorkerError, match="ValueError"):
        pool.call(int, ("not a number",), 30)
    assert pool.restarts == 1 and pool.call(abs, (-3,), 30) == 3
