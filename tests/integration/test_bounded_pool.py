"""verl_ext/reward/bounded_pool.py: a worker process killed from outside is replaced, and the call it was serving
(or the next one) still gets its answer; a worker past its deadline is killed; errors inside the function are
reported."""

from __future__ import annotations

import functools
import os
import signal
import threading
import time

import pytest

from verl_ext.reward.bounded_pool import BoundedProcessPool, CallTimeout, WorkerError, WorkerStartError


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


def test_warm_up_runs_at_worker_start_outside_every_calls_deadline():
    # 2 s of warm-up, then a call with a 1 s deadline: it must not pay for the warm-up.
    p = BoundedProcessPool(1, warm_up=functools.partial(time.sleep, 2))
    try:
        start = time.monotonic()
        assert p.call(abs, (-1,), 1.0) == 1
        assert time.monotonic() - start >= 2  # the first call waited for the start-up, not in its deadline
        assert p.call(abs, (-2,), 1.0) == 2 and p.restarts == 0
    finally:
        p.close()


def test_a_failing_warm_up_is_a_start_error_that_names_it():
    p = BoundedProcessPool(1, warm_up=functools.partial(int, "not a number"))
    try:
        with pytest.raises(WorkerStartError, match=r"start-up failed: ValueError: .*warm_up=functools.partial"):
            p.call(abs, (-1,), 30)
    finally:
        p.close()


def test_the_math_verify_pool_warms_its_workers_up():
    from verl_ext.reward import math_reward, math_verify_worker

    assert math_reward._get_pool()._warm_up is math_verify_worker.warm_up
    math_verify_worker.warm_up()  # raises if math-verify reads 5 / 5.0 or 1/2 / 0.5 differently
