"""Peak memory of one training run: the processes carrying its ``LTE_RUN_ID`` (``recipe.lte.tools.processes``), sampled.

The run's memory is the sum over its processes of PSS (proportional set size: a page shared by k processes counts
1/k in each), which counts shared pages -- torch's libraries mapped by every Ray worker, Ray's object store in
``/dev/shm`` -- once, unlike a sum of RSS. Both sums are recorded. Linux only (reads ``/proc/PID/smaps_rollup``).

    with PeakMemory(run_id, include_self=True) as mem:
        ...run...
    print(format_peak(mem.peak))
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field

from recipe.lte.tools.processes import run_pids

GiB = 1024**3


@dataclass
class ProcMemory:
    """One process's memory in bytes, and a short name (Ray sets actor processes' titles to ``ray::Class...``)."""

    pid: int
    name: str
    rss: int
    pss: int


@dataclass
class MemorySample:
    """The run's memory at one instant: sums over its processes, and the processes."""

    t_s: float
    rss: int
    pss: int
    procs: list[ProcMemory] = field(default_factory=list)


def read_smaps_rollup(text: str) -> tuple[int, int]:
    """(RSS, PSS) in bytes from the text of ``/proc/PID/smaps_rollup`` (values are in kB there)."""
    values = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in ("Rss:", "Pss:") and parts[2] == "kB":
            values[parts[0][:-1]] = int(parts[1]) * 1024
    if set(values) != {"Rss", "Pss"}:
        raise ValueError(f"no Rss/Pss lines in smaps_rollup text: {text[:200]!r}")
    return values["Rss"], values["Pss"]


def _name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return "?"
    if not argv:
        return "?"
    if argv[0].startswith("ray::"):
        return argv[0].split()[0]
    exe = os.path.basename(argv[0])
    if "-m" in argv[:-1]:
        return f"{exe} -m {argv[argv.index('-m') + 1]}"
    return " ".join([exe, *(os.path.basename(a) for a in argv[1:2])])


def process_memory(pid: int) -> ProcMemory | None:
    """The process's memory, or None when it is gone or unreadable (another user's, a zombie)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            text = f.read()
    except OSError:
        return None
    if not text.strip():  # a zombie has an empty rollup
        return None
    rss, pss = read_smaps_rollup(text)
    return ProcMemory(pid=pid, name=_name(pid), rss=rss, pss=pss)


def sample(pids: list[int], t_s: float = 0.0) -> MemorySample:
    """Sum the memory of ``pids`` (those still alive)."""
    procs = [p for p in (process_memory(pid) for pid in pids) if p is not None]
    return MemorySample(t_s=t_s, rss=sum(p.rss for p in procs), pss=sum(p.pss for p in procs), procs=procs)


class PeakMemory:
    """Samples the run's processes every ``interval_s`` in a thread; keeps the sample with the highest PSS sum.

    ``include_self``: count the calling process too (``processes.run_pids`` leaves out the caller and its
    ancestors, and the launcher is part of the run).
    """

    def __init__(self, run_id: str, interval_s: float = 0.5, include_self: bool = True):
        if not run_id:
            raise ValueError("PeakMemory needs the run's LTE_RUN_ID")
        self.run_id = run_id
        self.interval_s = interval_s
        self.include_self = include_self
        self.peak: MemorySample | None = None
        self.peak_rss = 0  # the highest RSS sum seen (it may fall at another instant than the PSS peak)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lte-peak-memory", daemon=True)
        self._t0 = 0.0

    def sample_now(self) -> MemorySample:
        pids = run_pids(self.run_id)
        if self.include_self:
            pids.append(os.getpid())
        s = sample(pids, t_s=time.monotonic() - self._t0)
        self.samples += 1
        self.peak_rss = max(self.peak_rss, s.rss)
        if self.peak is None or s.pss > self.peak.pss:
            self.peak = s
        return s

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample_now()
            self._stop.wait(self.interval_s)

    def start(self) -> PeakMemory:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        """End sampling (one last sample is taken first, so a short run has at least one)."""
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
        if self.samples == 0:
            self.sample_now()

    def __enter__(self) -> PeakMemory:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def record(self) -> dict:
        """The peak as a json-able dict: sums in bytes and GiB, sample count, the processes at the peak by PSS."""
        if self.peak is None:
            raise RuntimeError("no memory sample was taken")
        procs = sorted(self.peak.procs, key=lambda p: p.pss, reverse=True)
        return {
            "run_id": self.run_id,
            "peak_pss_bytes": self.peak.pss,
            "peak_pss_gib": round(self.peak.pss / GiB, 3),
            "peak_rss_sum_bytes": self.peak_rss,
            "peak_rss_sum_gib": round(self.peak_rss / GiB, 3),
            "peak_at_s": round(self.peak.t_s, 1),
            "samples": self.samples,
            "interval_s": self.interval_s,
            "processes_at_peak": [asdict(p) for p in procs],
        }


def format_peak(record: dict, top: int = 5) -> str:
    """``peak memory of the run 3.10 GiB (PSS summed over 14 processes; RSS sum 6.2 GiB); largest: ...``"""
    procs = record["processes_at_peak"]
    largest = ", ".join(f"{p['name']} {p['pss'] / GiB:.2f}" for p in procs[:top])
    return (
        f"peak memory of the run {record['peak_pss_gib']:.2f} GiB (PSS summed over {len(procs)} processes; "
        f"RSS sum {record['peak_rss_sum_gib']:.2f} GiB); largest (GiB): {largest}"
    )


def write_record(record: dict, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
