"""recipe.lte.tools.memory: the run's memory read from /proc, checked against allocations of known size."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from recipe.lte.tools.memory import PeakMemory, format_peak, process_memory, read_smaps_rollup, sample

MiB = 1024**2

ROLLUP = """55f1f9d74000-7ffc84274000 ---p 00000000 00:00 0                          [rollup]
Rss:                1620 kB
Pss:                 212 kB
Pss_Dirty:           112 kB
Pss_Anon:            112 kB
Shared_Clean:       1468 kB
"""


def test_read_smaps_rollup_takes_rss_and_pss_in_bytes() -> None:
    assert read_smaps_rollup(ROLLUP) == (1620 * 1024, 212 * 1024)  # not Pss_Dirty / Pss_Anon


def test_read_smaps_rollup_refuses_text_without_the_fields() -> None:
    with pytest.raises(ValueError, match="no Rss/Pss"):
        read_smaps_rollup("Size: 4 kB\n")


def test_process_memory_sees_an_allocation_of_known_size() -> None:
    before = process_memory(os.getpid())
    block = bytearray(200 * MiB)  # zero-filled: every page is touched
    after = process_memory(os.getpid())
    del block
    assert before is not None and after is not None
    assert 190 * MiB <= after.pss - before.pss <= 230 * MiB
    assert after.rss >= after.pss  # a private page counts fully in both; a shared one less in PSS


def test_process_memory_of_a_missing_process_is_none() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert process_memory(proc.pid) is None


def test_peak_memory_sums_the_processes_of_the_run_only() -> None:
    run_id = f"pytest-mem-{uuid.uuid4().hex[:8]}"
    # Two processes of the run hold 150 MiB and 250 MiB each at the same time; a third, outside the run, 300 MiB.
    code = (
        "import sys, time; b = bytearray(int(sys.argv[1]) * 1024 * 1024); print('ready', flush=True); "
        "sys.stdin.readline()"
    )
    env_run = {**os.environ, "LTE_RUN_ID": run_id}
    env_other = {k: v for k, v in os.environ.items() if k != "LTE_RUN_ID"}
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(mb)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        for mb, env in ((150, env_run), (250, env_run), (300, env_other))
    ]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == b"ready"
        with PeakMemory(run_id, interval_s=0.05, include_self=False) as mem:
            mem.sample_now()
    finally:
        for p in procs:
            p.communicate(b"\n", timeout=30)
    record = mem.record()
    assert len(record["processes_at_peak"]) == 2
    # Each process: its block plus an interpreter (10-40 MiB of PSS); the outside process is not counted.
    assert 400 * MiB <= record["peak_pss_bytes"] <= 400 * MiB + 2 * 60 * MiB
    assert record["peak_rss_sum_bytes"] >= record["peak_pss_bytes"]
    assert record["samples"] >= 1
    assert "peak memory of the run 0." in format_peak(record)


def test_sample_of_no_processes_is_zero() -> None:
    s = sample([])
    assert (s.rss, s.pss, s.procs) == (0, 0, [])


def test_peak_memory_needs_a_run_id() -> None:
    with pytest.raises(ValueError, match="LTE_RUN_ID"):
        PeakMemory("")
