"""Find and end the processes of one training run on this machine. Linux only (reads ``/proc``).

A process belongs to run RUN_ID when any of these holds; each one catches what another can miss:

1. its environment has ``LTE_RUN_ID=RUN_ID``: everything the run starts inherits it (Ray's GCS, raylet, agents
   and workers, vLLM's engine processes, dataloader workers);
2. its command line, working directory or an open file lies under the run's Ray temp dir: Ray's daemons name it
   in their arguments, and every Ray worker writes stdout/stderr to log files there, which the processes it
   spawns inherit -- this holds for a process whose environment was rewritten or replaced;
3. it is in a process session the launcher created for the run (``sessions``: the CPU demo starts the trainer as
   a session leader, and nothing of Ray or vLLM leaves that session);
4. its parent belongs to the run.

The run's Ray temp dirs are the one derived from RUN_ID (``ray_temp_dir_for``), those given, and those its marked
processes name (``LTE_RAY_TEMP_DIR``). Command lines alone do not work (vLLM's processes do not name the Ray
session), and ``ray stop`` ends every Ray session on the machine, other users' included.

    python -m recipe.lte.tools.processes list RUN_ID [--ray-temp-dir DIR] [--session SID]
    python -m recipe.lte.tools.processes kill RUN_ID [--ray-temp-dir DIR] [--session SID]   # SIGTERM, then SIGKILL
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import signal
import time
from collections.abc import Iterable

RUN_ID_ENV = "LTE_RUN_ID"
RAY_TEMP_DIR_ENV = "LTE_RAY_TEMP_DIR"


def ray_temp_dir_for(run_id: str) -> str:
    """The run's default Ray temp dir: derived from the run id (so ``kill RUN_ID`` finds it) and short (Ray's
    unix socket paths live under it, within the 107-byte limit)."""
    return f"/tmp/lte-ray-{hashlib.sha1(run_id.encode()).hexdigest()[:12]}"


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:  # gone, or not readable
        return b""


def _stat_fields(pid: int) -> list[str]:
    """``/proc/PID/stat`` after the command name: [state, ppid, pgrp, session, ...]; [] when gone."""
    text = _read(f"/proc/{pid}/stat").decode(errors="replace")
    return text.rsplit(")", 1)[1].split() if ")" in text else []


def _ancestors(pid: int) -> set[int]:
    """``pid`` and its parents: the caller (a shell script's cleanup trap, a test) may carry the marker too."""
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        fields = _stat_fields(pid)
        if len(fields) < 2:
            break
        pid = int(fields[1])
    return seen


def _environ(pid: int) -> dict[bytes, bytes]:
    env = {}
    for entry in _read(f"/proc/{pid}/environ").split(b"\0"):
        key, sep, value = entry.partition(b"=")
        if sep:
            env[key] = value
    return env


def _paths(pid: int) -> list[str]:
    """The command line's words, the working directory and the targets of the open file descriptors."""
    words = [w.decode(errors="replace") for w in _read(f"/proc/{pid}/cmdline").split(b"\0") if w]
    links = [f"/proc/{pid}/cwd"]
    try:
        links += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        pass
    for link in links:
        try:
            words.append(os.readlink(link))
        except OSError:
            pass
    return words


def _under(dirs: Iterable[str]) -> re.Pattern | None:
    """Matches a word that names a path under one of ``dirs`` (``/tmp/lte-ray-a`` does not match ``-ab``)."""
    dirs = sorted({d.rstrip("/") for d in dirs if d and d.rstrip("/")})
    if not dirs:
        return None
    return re.compile(r"(?<![^=\s'\",:;])(?:" + "|".join(re.escape(d) for d in dirs) + r")(?=/|$|[\s'\",:;])")


def run_pids(run_id: str, ray_temp_dirs: Iterable[str] = (), sessions: Iterable[int] = ()) -> list[int]:
    """Live processes of run ``run_id`` (see the module docstring), other than the caller and its ancestors."""
    if not run_id:
        raise ValueError(f"{RUN_ID_ENV} must be a non-empty run id")
    excluded = _ancestors(os.getpid())
    sessions = {int(s) for s in sessions} - {os.getsid(0)}  # never the caller's own session
    procs = {}  # pid -> (ppid, session)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if len(fields) >= 4 and fields[0] not in ("Z", "X"):
                procs[int(entry)] = (int(fields[1]), int(fields[3]))
    marker = run_id.encode()
    found, dirs = set(), {ray_temp_dir_for(run_id), *ray_temp_dirs}
    for pid, (_, sid) in procs.items():
        env = _environ(pid)
        if env.get(RUN_ID_ENV.encode()) == marker:
            found.add(pid)
            if env.get(RAY_TEMP_DIR_ENV.encode()):
                dirs.add(env[RAY_TEMP_DIR_ENV.encode()].decode(errors="replace"))
        elif sid in sessions:
            found.add(pid)
    pattern = _under(dirs)
    for pid in procs.keys() - found:
        if pattern is not None and any(pattern.search(w) for w in _paths(pid)):
            found.add(pid)
    # Descendants: whatever a process of the run started (to a fixed point: children may come before parents).
    grew = True
    while grew:
        new = {pid for pid, (ppid, _) in procs.items() if ppid in found} - found
        found |= new
        grew = bool(new)
    return sorted(found - excluded)


def kill_run(
    run_id: str, ray_temp_dirs: Iterable[str] = (), sessions: Iterable[int] = (), grace_s: float = 5.0
) -> list[int]:
    """SIGTERM every process of the run, SIGKILL what is left after ``grace_s`` (found again: a process may have
    started meanwhile); return every pid signalled."""
    ray_temp_dirs, sessions = list(ray_temp_dirs), list(sessions)
    signalled: set[int] = set()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = run_pids(run_id, ray_temp_dirs, sessions)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        signalled.update(pids)
        deadline = time.monotonic() + grace_s
        while sig == signal.SIGTERM and time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
    # A process SIGKILLed while it was starting a child may leave that child: one last sweep.
    for pid in run_pids(run_id, ray_temp_dirs, sessions):
        try:
            os.kill(pid, signal.SIGKILL)
            signalled.add(pid)
        except ProcessLookupError:
            pass
    return sorted(signalled)


def _alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] not in ("Z", "X")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="List or end the processes of one run (see the module docstring).")
    parser.add_argument("action", choices=["list", "kill"])
    parser.add_argument("run_id")
    parser.add_argument("--ray-temp-dir", action="append", default=[], help="a Ray temp dir of the run (repeatable)")
    parser.add_argument("--session", action="append", type=int, default=[], help="a process session of the run")
    args = parser.parse_args()
    if args.action == "list":
        found = run_pids(args.run_id, args.ray_temp_dir, args.session)
    else:
        found = kill_run(args.run_id, args.ray_temp_dir, args.session)
    print(" ".join(map(str, found)))
