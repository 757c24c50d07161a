"""Calls/s of our math reward vs verl's `verl.utils.reward_score.math_verify.compute_score`, same inputs, same run.

Inputs: responses built from the real ground truths of the six benchmarks (a short reasoning line, then
`\\boxed{answer}`): half correct (the problem's own ground truth, sometimes rewritten: `025` -> `25`,
`142.0` -> `142`), half wrong (another problem's answer). Both scorers run single-threaded over the same
list, each after a warm-up call (pool start-up excluded); every input is distinct within a pass, so our
answer cache does not flatter us. A second pass of ours shows the cache (GRPO groups repeat answers).

    python benchmarks/bench_reward_math.py [--n 400] [--shared ../shared/data/six_benchmarks.parquet]
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import pandas as pd


def build_inputs(path: Path, n: int, seed: int = 0) -> list[tuple[str, str]]:
    df = pd.read_parquet(path)
    gts = [str(r["ground_truth"]) for r in df.reward_model]
    rng = random.Random(seed)
    out = []
    for k, i in enumerate(rng.sample(range(len(gts)), n)):
        gt = gts[i]
        if k % 2 == 0:
            answer = gt.lstrip("0") or "0" if gt.isdigit() else gt.removesuffix(".0")
        else:
            answer = gts[rng.randrange(len(gts))]
        out.append((f"Step {k}: some reasoning.\nTherefore the answer is $\\boxed{{{answer}}}$.", gt))
    return out


def run(fn, inputs) -> tuple[float, list[float]]:
    t0 = time.perf_counter()
    scores = [fn(sol, gt) for sol, gt in inputs]
    return len(inputs) / (time.perf_counter() - t0), scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument(
        "--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/six_benchmarks.parquet"
    )
    args = ap.parse_args()

    from verl.utils.reward_score import math_verify as verl_mv

    from verl_ext.reward import math_reward as reward_math

    inputs = build_inputs(args.shared, args.n)
    ours = lambda s, g: reward_math.compute_score("math", s, g)["score"]  # noqa: E731
    theirs = lambda s, g: float(verl_mv.compute_score(s, g))  # noqa: E731
    ours("\\boxed{1}", "1/2"), theirs("\\boxed{1}", "1/2")  # warm-up: start both process pools

    theirs_rate, theirs_scores = run(theirs, inputs)
    reward_math.clear_caches()
    ours_rate, ours_scores = run(ours, inputs)
    cached_rate, _ = run(ours, inputs)
    agree = sum(a == b for a, b in zip(ours_scores, theirs_scores, strict=True))
    print(f"inputs: {len(inputs)} ({sum(ours_scores):.0f} scored correct by ours, {sum(theirs_scores):.0f} by verl's)")
    print(f"verl math_verify.compute_score: {theirs_rate:8.1f} calls/s")
    print(f"ours reward_math.compute_score: {ours_rate:8.1f} calls/s  (cold cache)")
    print(f"ours, same inputs again:        {cached_rate:8.1f} calls/s  (answer cache)")
    print(f"ratio ours/verl (cold cache): {ours_rate / theirs_rate:.2f}x; agreement {agree}/{len(inputs)}")
    for (sol, gt), a, b in zip(inputs, ours_scores, theirs_scores, strict=True):
        if a != b:
            print(f"  differ: gt={gt!r} answer={reward_math.extract_boxed(sol)!r} ours={a} verl={b}")


if __name__ == "__main__":
    main()
