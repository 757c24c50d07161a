"""benchmarks/bench_lte_cost.py: the order of the runs and the statistics, on records computed by hand.

The runs themselves are the CPU demo (tests/e2e/test_cpu_demo_run.py runs it); here only the arithmetic.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from bench_lte_cost import interleaved, report, run_summary, step_values  # noqa: E402


def _rec(step: int, step_s: float, gen_s: float, first: int = 100, extra: int = 0, extra_max: float = 0.0) -> dict:
    return {
        "step": step,
        "timing_s/step": step_s,
        "timing_s/gen": gen_s,
        "lte/first/tokens": first,
        "lte/extra/tokens": extra,
        "lte/extra/seconds_max": extra_max,
        "lte/extra/ran": 1 if extra else 0,
    }


def test_interleaved_rotates_the_first_arm() -> None:
    assert interleaved(["a", "b", "c"], 2) == [(0, "a"), (0, "b"), (0, "c"), (1, "b"), (1, "c"), (1, "a")]


def test_step_values_skip_the_first_steps() -> None:
    v = step_values([_rec(1, 99.0, 90.0), _rec(2, 10.0, 6.0)], skip=1)
    assert v["step_s"] == [10.0] and v["gen_s"] == [6.0]
    with pytest.raises(ValueError, match="no step left"):
        step_values([_rec(1, 1.0, 1.0)], skip=1)


def test_run_summary_floors() -> None:
    # Steps 2-4: step times 10, 12, 11 (median 11), gen 6, 8, 7 (median 7); tokens 300 first, 60 extra.
    run = {
        "records": [_rec(1, 50, 40), _rec(2, 10, 6, 100, 30, 2.0), _rec(3, 12, 8, 100, 0), _rec(4, 11, 7, 100, 30, 1)],
        "peak_pss_gib": 3.0,
    }
    s = run_summary(run, skip=1)
    assert (s["step_s"], s["gen_s"], s["extra_max_s"], s["steps"]) == (11, 7, 1.0, 3)
    assert s["extra_share"] == pytest.approx(0.2) and s["gen_floor"] == pytest.approx(1.2)
    assert s["step_floor"] == pytest.approx(1 + 0.2 * 7 / 11)


def test_report_pairs_ratios_per_repeat() -> None:
    def run(repeat: int, arm: str, step_s: float, gen_s: float, extra: int) -> dict:
        return {
            "repeat": repeat,
            "arm": arm,
            "records": [_rec(1, 0, 0), _rec(2, step_s, gen_s, 100, extra)],
            "peak_pss_gib": 2.5,
        }

    # Repeat 0: GRPO 10 s, LTE 12 s (ratio 1.2); repeat 1, a slower machine: GRPO 20 s, LTE 22 s (ratio 1.1).
    runs = [run(0, "grpo", 10, 5, 0), run(0, "lte", 12, 7, 20), run(1, "grpo", 20, 10, 0), run(1, "lte", 22, 12, 20)]
    text = report(runs, skip=1)
    lte_row = next(line for line in text.splitlines() if line.startswith("lte ") and "[" in line and "1.1" in line)
    # step ratio median of 1.2 and 1.1; gen floor 1.2 both; gen ratios 1.4 and 1.2.
    assert "1.150 [1.100-1.200]" in lte_row and "1.300 [1.200-1.400]" in lte_row and "1.200 [1.200-1.200]" in lte_row
    # Generation beyond GRPO's: 2 s both repeats; floor part 0.2 * 5 = 1 s and 0.2 * 10 = 2 s.
    tail_row = text.splitlines()[-1]
    assert tail_row.startswith("lte ") and "2.000 [2.000-2.000]" in tail_row and "1.500 [1.000-2.000]" in tail_row


def test_heavy_lock_takes_the_first_free_slot(tmp_path) -> None:
    import fcntl

    from bench_lte_cost import heavy_lock

    busy, free = tmp_path / "1.lock", tmp_path / "2.lock"
    with open(busy, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another user's run holds slot 1
        with heavy_lock(f"{busy},{free}", poll_s=0.01):
            with open(free, "a") as probe, pytest.raises(BlockingIOError):
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(free, "a") as probe:
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released after the run
