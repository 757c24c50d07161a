"""A small pool of worker processes whose calls are bounded in wall-clock time, usable from any thread.

Why: verl runs reward functions in executor threads, where math-verify's signal-based timeouts cannot work
(signals only reach the main thread), and some sympy work (a huge integer power, say) runs inside C code that
no Python-level timeout interrupts. A separate process can always be killed. Each call takes an idle worker,
sends it `(fn, args)` and waits at most `timeout_s` for the answer; a worker that misses its deadline is
killed and replaced lazily, so one bad input costs at most `timeout_s` and never stalls later calls.

Workers are started with `forkserver` (cheap restarts after a kill, no fork of a threaded parent) where
available, else `spawn`. `fn` must be importable by module path (it is pickled by reference).
"""

from __future__ import annotations

import atexit
import importlib
import multiprocessing
import os
import signal
import threading
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any


class CallTimeout(TimeoutError):
    """The worker did not answer within the deadline; it was killed."""


class WorkerError(RuntimeError):
    """The function raised inside the worker, or the worker died."""


class WorkerStartError(WorkerError):
    """A worker process did not start (nothing was run): a problem of the machine, not of the call's input."""


def _serve(conn: Connection, preload: tuple[str, ...]) -> None:
    """Worker loop: import `preload`, say ready, then run `(fn, args)` requests until the parent closes the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    for name in preload:
        importlib.import_module(name)
    conn.send(("ready", None))
    while True:
        try:
            fn, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply = ("ok", fn(*args))
        except BaseException as e:  # report everything: the parent decides what a failure means
            reply = ("err", f"{type(e).__name__}: {e}"[:2000])
        try:
            conn.send(reply)
        except (OSError, ValueError):
            return


class _Worker:
    def __init__(self, ctx: multiprocessing.context.BaseContext, preload: tuple[str, ...], startup_s: float) -> None:
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_serve, args=(child_conn, preload), daemon=True, name="bounded-pool-worker")
        self.proc.start()
        child_conn.close()
        self.conn = parent_conn
        # Start-up (imports) is not part of any call's deadline: wait for the worker to say it is ready.
        try:
            ready = parent_conn.poll(startup_s) and parent_conn.recv()[0] == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            self.kill()
            raise WorkerStartError(f"worker process did not start within {startup_s} s (preload={preload})")

    def kill(self) -> None:
        try:
            self.conn.close()
        except OSError:
            pass
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)


def _default_context() -> multiprocessing.context.BaseContext:
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method)


class BoundedProcessPool:
    """At most `size` worker processes; `call` blocks the calling thread for at most about `timeout_s` once a
    worker is free (waiting for a free worker is itself bounded by the other calls' deadlines)."""

    def __init__(
        self,
        size: int,
        preload: tuple[str, ...] = (),
        startup_s: float = 120.0,
        ctx: multiprocessing.context.BaseContext | None = None,
    ) -> None:
        """`preload`: modules each worker imports before it counts as started (e.g. the one holding `fn`)."""
        if size < 1:
            raise ValueError(f"BoundedProcessPool size must be >= 1, got {size}")
        self.size = size
        self._ctx = ctx or _default_context()
        self._preload = tuple(preload)
        self._startup_s = startup_s
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._live = 0
        self._pid = os.getpid()
        self.restarts = 0  # workers killed on a deadline or found dead (for tests and logs)
        _POOLS.add(self)

    def _acquire(self) -> _Worker:
        with self._cond:
            while True:
                if self._idle:
                    return self._idle.pop()
                if self._live < self.size:
                    self._live += 1
                    break
                self._cond.wait()
        try:
            return _Worker(self._ctx, self._preload, self._startup_s)
        except BaseException:
            with self._cond:
                self._live -= 1
                self._cond.notify()
            raise

    def _release(self, worker: _Worker, healthy: bool) -> None:
        if not healthy:
            worker.kill()
        with self._cond:
            if healthy:
                self._idle.append(worker)
            else:
                self._live -= 1
                self.restarts += 1
            self._cond.notify()

    def call(self, fn: Callable[..., Any], args: tuple, timeout_s: float) -> Any:
        """Run `fn(*args)` in a worker. Raises CallTimeout past the deadline, WorkerError if `fn` raised."""
        if os.getpid() != self._pid:  # forked copy of the parent: its workers belong to the parent
            raise WorkerError("BoundedProcessPool used in a forked child; create a new pool there")
        worker = self._acquire()
        try:
            worker.conn.send((fn, args))
            answered = worker.conn.poll(timeout_s)
            reply = worker.conn.recv() if answered else None
        except (EOFError, OSError) as e:
            self._release(worker, healthy=False)
            raise WorkerError(f"worker process died ({type(e).__name__}: {e})") from e
        except BaseException:
            self._release(worker, healthy=False)
            raise
        if reply is None:
            self._release(worker, healthy=False)
            raise CallTimeout(f"{getattr(fn, '__name__', fn)} did not finish within {timeout_s} s")
        self._release(worker, healthy=True)
        status, payload = reply
        if status != "ok":
            raise WorkerError(payload)
        return payload

    def close(self) -> None:
        """Kill every idle worker (busy ones are killed when their call returns)."""
        with self._cond:
            idle, self._idle = self._idle, []
            self._live -= len(idle)
        for w in idle:
            w.kill()


_POOLS: weakref.WeakSet[BoundedProcessPool] = weakref.WeakSet()
_SHARED: dict[str, BoundedProcessPool] = {}
_SHARED_LOCK = threading.Lock()


def shared_pool(name: str, size: int, preload: tuple[str, ...] = ()) -> BoundedProcessPool:
    """One pool per `name` per process, created on first use (again after a fork).

    Lives here, in a module always imported by its package name, so that a reward file that verl loads by path
    (a second copy of that module) still shares the workers with the normally imported copy.
    """
    pool = _SHARED.get(name)
    if pool is None or pool._pid != os.getpid():
        with _SHARED_LOCK:
            pool = _SHARED.get(name)
            if pool is None or pool._pid != os.getpid():
                pool = _SHARED[name] = BoundedProcessPool(size, preload=preload)
    return pool


@atexit.register
def _close_all() -> None:
    for pool in list(_POOLS):
        if pool._pid == os.getpid():
            pool.close()
