"""Scoring generations with the project's reward and summarising them per benchmark (Pass@1, Pass@k)."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .metrics import k_values, mean_pass_at_k
from .paper import BENCHMARK_BY_SOURCE, BENCHMARKS


def grader_name() -> str:
    """The grader recorded with every result: the project's reward function and its math-verify version."""
    try:
        mv = importlib.metadata.version("math-verify")
    except importlib.metadata.PackageNotFoundError:
        mv = "not installed"
    return f"verl_ext.reward.math_reward.compute_score (math-verify {mv})"


def _score_one(item: tuple[str, str, Any]) -> dict[str, Any]:
    """Score one (data_source, response, ground_truth) with the project's reward."""
    from verl_ext.reward.math_reward import compute_score

    data_source, response, ground_truth = item
    result = compute_score(data_source, response, ground_truth)
    if not isinstance(result, dict) or "acc" not in result:
        raise TypeError(f"compute_score returned {result!r}; expected a dict with 'score', 'acc', 'pred'")
    return {"acc": bool(result["acc"]), "score": float(result["score"]), "pred": result.get("pred")}


def score_generations(records: Sequence[dict], workers: int = 1) -> list[dict[str, Any]]:
    """Per-sample results for generation records (see records.py), in record and sample order.

    Each result: id, data_source, sample, acc, score, pred, and finish_reason / response_tokens when known.
    ``workers`` threads call the reward concurrently: its math-verify work already runs in its own bounded
    process pool (thread-safe, ``LTE_REWARD_WORKERS`` processes), so threads are what keeps that pool busy;
    a process pool here would nest pools. Measured in benchmarks/eval_scoring.py.
    """
    items = [(r["data_source"], resp, r["ground_truth"]) for r in records for resp in r["responses"]]
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            scored = list(pool.map(_score_one, items))
    else:
        scored = [_score_one(item) for item in items]
    results, pos = [], 0
    for rec in records:
        for j in range(len(rec["responses"])):
            row = {"id": rec["id"], "data_source": rec["data_source"], "sample": j, **scored[pos]}
            for key, name in (("finish_reasons", "finish_reason"), ("response_tokens", "response_tokens")):
                if key in rec:
                    row[name] = rec[key][j]
            results.append(row)
            pos += 1
    return results


def per_problem_counts(samples: Sequence[dict]) -> dict[str, dict[str, tuple[int, int]]]:
    """data_source -> problem id -> (n samples, c correct)."""
    counts: dict[str, dict[str, list[int]]] = {}
    for s in samples:
        nc = counts.setdefault(s["data_source"], {}).setdefault(s["id"], [0, 0])
        nc[0] += 1
        nc[1] += int(bool(s["acc"]))
    return {ds: {pid: (n, c) for pid, (n, c) in by_id.items()} for ds, by_id in counts.items()}


def order_sources(sources) -> list[str]:
    """The paper's six benchmarks in the paper's column order first, then any other data_source sorted."""
    paper = [b.data_source for b in BENCHMARKS if b.data_source in sources]
    return paper + sorted(s for s in sources if s not in BENCHMARK_BY_SOURCE)


def summarize(samples: Sequence[dict], config: dict[str, Any]) -> dict[str, Any]:
    """Per-benchmark Pass@k for k = 1, 2, 4, ... n, and their average over the paper's benchmarks present.

    Pass@k of a benchmark is the mean over its problems of the unbiased per-problem estimator; "Avg" is the
    unweighted mean over benchmarks (as in the paper's tables), over the paper's six only, at the k every one
    of them supports.
    """
    counts = per_problem_counts(samples)
    if not counts:
        raise ValueError("summarize: no samples to summarise")
    benchmarks = []
    for ds in order_sources(counts):
        problem_counts = list(counts[ds].values())
        ns = sorted({n for n, _ in problem_counts})
        bench = BENCHMARK_BY_SOURCE.get(ds)
        benchmarks.append(
            {
                "data_source": ds,
                "column": bench.column if bench else ds,
                "problems": len(problem_counts),
                "paper_problems": bench.paper_size if bench else None,
                "n": ns[0] if len(ns) == 1 else ns,
                "pass_at_k": {str(k): v for k, v in mean_pass_at_k(problem_counts, k_values(ns[0])).items()},
            }
        )
    in_avg = [b for b in benchmarks if b["data_source"] in BENCHMARK_BY_SOURCE]
    average = None
    if in_avg:
        common = [k for k in in_avg[0]["pass_at_k"] if all(k in b["pass_at_k"] for b in in_avg)]
        average = {
            "over": [b["data_source"] for b in in_avg],
            "pass_at_k": {k: sum(b["pass_at_k"][k] for b in in_avg) / len(in_avg) for k in common},
        }
    return {"config": dict(config), "benchmarks": benchmarks, "average": average}
