"""Scoring throughput of `recipe.lte.evaluate` with 1 thread vs several (the reward's process pool does the work).

    .venv/bin/python benchmarks/eval_scoring.py [--problems 150] [--n 8] [--workers 4]

Responses are synthetic but graded by the real reward: per problem, the ground truth as written, a wrong
number, and an equivalent form that needs math-verify (`\\frac{a}{b}` vs its decimal), so the slow path runs.
Prints samples/s for each setting and the speed-up against workers=1 measured in the same run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from recipe.lte.evaluate.records import load_problems
from recipe.lte.evaluate.scoring import score_generations

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "six_benchmarks.parquet"


def make_records(n_problems: int, n: int) -> list[dict]:
    problems = load_problems([DATA])[:n_problems]
    records = []
    for p in problems:
        forms = [f"\\boxed{{{p.ground_truth}}}", "\\boxed{-987654321}", "\\boxed{\\frac{3}{7}}", "the answer is 0.5"]
        records.append(
            {
                "id": p.id,
                "data_source": p.data_source,
                "ground_truth": p.ground_truth,
                "responses": [f"Reasoning.\n{forms[j % len(forms)]}" for j in range(n)],
            }
        )
    return records


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=150)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    args = ap.parse_args()
    records = make_records(args.problems, args.n)
    total = sum(len(r["responses"]) for r in records)
    score_generations(records[:2], workers=1)  # start the reward's worker pool outside the timings
    base = None
    for w in [1, *args.workers]:
        # the reward caches verdicts (lru_cache): clear it so every setting does the same work
        from verl_ext.reward import math_reward as reward_math

        reward_math.clear_caches()
        t0 = time.perf_counter()
        results = score_generations(records, workers=w)
        dt = time.perf_counter() - t0
        base = base or dt
        acc = sum(r["acc"] for r in results) / len(results)
        print(
            f"workers={w}: {total} samples in {dt:.2f} s ({total / dt:.0f}/s), speed-up x{base / dt:.2f}, acc={acc:.3f}"
        )


if __name__ == "__main__":
    main()
