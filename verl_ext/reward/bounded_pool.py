"""A small pool of worker processes whose calls are bounded in wall-clock time, usable from any thread.

Why: verl runs reward functions in executor threads, where math-verify's signal-based timeouts cannot work
(signals only reach the main thread), and some sympy work (a huge integer power, say) runs inside C code that
no Python-level timeout interrupts. A separate process can always be killed. Each call takes an idle worker,
sends it `(fn, args)` and waits at most `timeout_s` for the answer; a worker that misses its deadline is
killed and replaced lazily, so one bad input costs at most `timeout_s` and never stalls later calls. A worker
killed from outside (the OOM killer, a stray signal) is replaced too, and the call it was serving runs again.

Workers are started with `forkserver` (cheap restarts after a kill, no fork of a threaded parent) where
available, else `spawn`. `fn` must be importable by module path (it is pickled by reference).
"""

from __future__ import annotations

import atexit
import importlib
import logging
import multiprocessing
import os
import signal
import threading
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

logger = logging.getLogger(__name__)


class CallTimeout(TimeoutError):
    """The worker did not answer within the deadline; it was killed."""


class WorkerError(RuntimeError):
    """The function raised inside the worker, or the worker died."""


class WorkerStartError(WorkerError):
    """A worker process did not start (nothing was run): a problem of the machine, not of the call's input."""


def _serve(conn: Connection, preload: tuple[str, ...], warm_up: Callable[[], Any] | None = None) -> None:
    """Worker loop: import `preload`, run `warm_up`, say ready, then run `(fn, args)` requests until the parent
    closes the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    try:
        for name in preload:
            importlib.import_module(name)
        if warm_up is not None:
            warm_up()
    except BaseException as e:
        conn.send(("start-failed", f"{type(e).__name__}: {e}"[:2000]))
        return
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
    def __init__(
        self,
        ctx: multiprocessing.context.BaseContext,
        preload: tuple[str, ...],
        startup_s: float,
        warm_up: Callable[[], Any] | None = None,
    ) -> None:
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(
            target=_serve, args=(child_conn, preload, warm_up), daemon=True, name="bounded-pool-worker"
        )
        self.proc.start()
        child_conn.close()
        self.conn = parent_conn
        # Start-up (imports, warm-up) is not part of any call's deadline: wait for the worker to say it is ready.
        try:
            status, detail = parent_conn.recv() if parent_conn.poll(startup_s) else ("timeout", None)
        except (EOFError, OSError):
            status, detail = "died", None
        if status != "ready":
            self.kill()
            why = (
                f"its start-up failed: {detail}"
                if status == "start-failed"
                else f"it did not start within {startup_s} s"
            )
            raise WorkerStartError(f"worker process: {why} (preload={preload}, warm_up={_name(warm_up)})")

    def kill(self) -> None:
        try:
            self.conn.close()
        except OSError:
            pass
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)


def _name(fn: Callable | None) -> str:
    """``module.qualname`` of a function; the repr of anything else (a partial, None)."""
    qualname = getattr(fn, "__qualname__", None)
    return f"{fn.__module__}.{qualname}" if qualname else repr(fn)


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
        warm_up: Callable[[], Any] | None = None,
    ) -> None:
        """`preload`: modules each worker imports before it counts as started (e.g. the one holding `fn`).
        `warm_up`: a function (importable by module path) each worker runs after them, also before it counts as
        started: lazy imports and caches paid there, not inside the first call's deadline."""
        if size < 1:
            raise ValueError(f"BoundedProcessPool size must be >= 1, got {size}")
        self.size = size
        self._ctx = ctx or _default_context()
        self._preload = tuple(preload)
        self._startup_s = startup_s
        self._warm_up = warm_up
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
            return _Worker(self._ctx, self._preload, self._startup_s, self._warm_up)
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
        """Run `fn(*args)` in a worker. Raises CallTimeout past the deadline, WorkerError if `fn` raised.

        A worker that dies under the call (the OOM killer, a stray signal) is replaced and the call runs once more
        on a fresh one: its death says nothing about the call's result. A second death raises WorkerError.
        """
        if os.getpid() != self._pid:  # forked copy of the parent: its workers belong to the parent
            raise WorkerError("BoundedProcessPool used in a forked child; create a new pool there")
        for attempt in (1, 2):
            worker = self._acquire()
            try:
                worker.conn.send((fn, args))
                answered = worker.conn.poll(timeout_s)
                reply = worker.conn.recv() if answered else None
            except (EOFError, OSError) as e:
                self._release(worker, healthy=False)  # joins it: its exit code is known after
                if attempt == 1:
                    logger.warning(
                        "bounded pool: worker process %s died (exit code %s); replaced, the call runs again",
                        worker.proc.pid,
                        worker.proc.exitcode,
                    )
                    continue
                raise WorkerError(f"worker process died twice ({type(e).__name__}: {e})") from e
            except BaseException:
                self._release(worker, healthy=False)
                raise
            break
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


def shared_pool(
    name: str, size: int, preload: tuple[str, ...] = (), warm_up: Callable[[], Any] | None = None
) -> BoundedProcessPool:
    """One pool per `name` per process, created on first use (again after a fork).

    Lives here, in a module always imported by its package name, so that a reward file that verl loads by path
    (a second copy of that module) still shares the workers with the normally imported copy.
    """
    pool = _SHARED.get(name)
    if pool is None or pool._pid != os.getpid():
        with _SHARED_LOCK:
            pool = _SHARED.get(name)
            if pool is None or pool._pid != os.getpid():
                pool = _SHARED[name] = BoundedProcessPool(size, preload=preload, warm_up=warm_up)
    return pool


@atexit.register
def _close_all() -> None:
    for pool in list(_POOLS):
        if pool._pid == os.getpid():
            pool.close()
