"""Find and end the processes of one training run, by a marker in their environment.

A run started with ``LTE_RUN_ID=<id>`` in its environment passes it to everything it starts on this machine: Ray's
GCS, raylet and workers (they inherit the driver's environment), vLLM's engine subprocesses, dataloader workers.
Command lines do not work for this (vLLM's spawned processes do not name the Ray session), and ``ray stop`` ends
every Ray session on the machine, other users' included. Linux only (reads ``/proc``).

    python -m recipe.lte.tools.processes list RUN_ID
    python -m recipe.lte.tools.processes kill RUN_ID     # SIGTERM, then SIGKILL after a grace period
"""

from __future__ import annotations

import argparse
import os
import signal
import time

RUN_ID_ENV = "LTE_RUN_ID"


def _environ(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read()
    except OSError:  # gone, or another user's process
        return b""


def _ancestors(pid: int) -> set[int]:
    """``pid`` and its parents: the caller (a shell script's cleanup trap) carries the marker too."""
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return seen


def run_pids(run_id: str) -> list[int]:
    """Live processes (other than the caller and its ancestors) whose environment has ``LTE_RUN_ID=run_id``."""
    if not run_id:
        raise ValueError(f"{RUN_ID_ENV} must be a non-empty run id")
    marker = f"{RUN_ID_ENV}={run_id}".encode()
    excluded = _ancestors(os.getpid())
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in excluded:
            if marker in _environ(int(entry)).split(b"\0"):
                pids.append(int(entry))
    return sorted(pids)


def kill_run(run_id: str, grace_s: float = 5.0) -> list[int]:
    """SIGTERM every process of the run, SIGKILL those still alive after ``grace_s``; return the pids found."""
    pids = run_pids(run_id)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while sig == signal.SIGTERM and time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
    return pids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="List or end the processes of one run (by LTE_RUN_ID).")
    parser.add_argument("action", choices=["list", "kill"])
    parser.add_argument("run_id")
    args = parser.parse_args()
    found = run_pids(args.run_id) if args.action == "list" else kill_run(args.run_id)
    print(" ".join(map(str, found)))
