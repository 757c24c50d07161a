"""From per-model evaluation summaries and per-run training metrics to the numbers of the results: Pass@k per
split, mean and spread over seeds, and what training did per arm. Pure functions over plain dicts."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# (arm name) -> (seed) -> (column, e.g. a split's data_source or "Avg") -> (k) -> Pass@k in [0, 1]
Results = Mapping[str, Mapping[int, Mapping[str, Mapping[int, float]]]]


@dataclass(frozen=True)
class Spread:
    """A quantity over seeds: mean, sample standard deviation (None with one seed), min, max, number of seeds."""

    mean: float
    std: float | None
    lo: float
    hi: float
    n: int


def spread(values: Sequence[float]) -> Spread:
    """Mean and spread of ``values`` (one per seed); the sample standard deviation (n - 1) needs two seeds."""
    if not values:
        raise ValueError("spread: no values (no seed finished?)")
    values = [float(v) for v in values]
    std = statistics.stdev(values) if len(values) > 1 else None
    return Spread(statistics.fmean(values), std, min(values), max(values), len(values))


def pass_at_k_table(samples: Sequence[Mapping], columns: Sequence[str]) -> dict[str, dict[int, float]]:
    """``{column: {k: Pass@k}}`` for k = 1..n from scored samples (``samples.jsonl`` of an evaluation: one row per
    sample with id, data_source, acc). A column is a data_source, or "Avg": the unweighted mean over the paper's
    six benchmarks present (as ``recipe.lte.evaluate``'s summary averages them)."""
    from recipe.lte.evaluate.metrics import mean_pass_at_k
    from recipe.lte.evaluate.paper import BENCHMARK_BY_SOURCE
    from recipe.lte.evaluate.scoring import per_problem_counts

    counts = per_problem_counts(samples)

    def table(source: str) -> dict[int, float]:
        problem_counts = list(counts[source].values())
        ns = {n for n, _ in problem_counts}
        if len(ns) != 1:
            raise ValueError(f"{source}: problems have different sample counts {sorted(ns)}; Pass@k needs one n")
        return mean_pass_at_k(problem_counts, range(1, ns.pop() + 1))

    out = {}
    for col in columns:
        if col == "Avg":
            sources = [s for s in counts if s in BENCHMARK_BY_SOURCE]
            if not sources:
                raise ValueError(f"no sample is from the paper's six benchmarks (got {sorted(counts)}): no Avg column")
            tables = [table(s) for s in sources]
            common = set.intersection(*(set(t) for t in tables))
            out[col] = {k: statistics.fmean(t[k] for t in tables) for k in sorted(common)}
        elif col in counts:
            out[col] = table(col)
        else:
            raise ValueError(f"the evaluation has no {col!r} samples (it has {sorted(counts)})")
    return out


def pass_at_k_from_samples(path: str | Path, columns: Sequence[str]) -> dict[str, dict[int, float]]:
    """``pass_at_k_table`` of an evaluation run's ``samples.jsonl``."""
    from recipe.lte.evaluate.records import read_jsonl

    samples = read_jsonl(path)
    if not samples:
        raise FileNotFoundError(f"{path}: no scored samples (did the evaluation finish?)")
    return pass_at_k_table(samples, columns)


def aggregate(results: Results) -> dict[str, dict[str, dict[int, Spread]]]:
    """``{arm: {column: {k: Spread over seeds}}}``; every seed of an arm must have the same columns and k."""
    out: dict[str, dict[str, dict[int, Spread]]] = {}
    for arm, by_seed in results.items():
        seeds = sorted(by_seed)
        if not seeds:
            continue
        first = by_seed[seeds[0]]
        for s in seeds[1:]:
            if {c: sorted(v) for c, v in by_seed[s].items()} != {c: sorted(v) for c, v in first.items()}:
                raise ValueError(f"{arm}: seeds {seeds[0]} and {s} were evaluated on other columns or k")
        out[arm] = {col: {k: spread([by_seed[s][col][k] for s in seeds]) for k in sorted(first[col])} for col in first}
    return out


def fmt(x: Spread | None, scale: float = 100.0, digits: int = 1) -> str:
    """``37.2 ± 1.4`` (percent by default); the spread is left out with one seed."""
    if x is None:
        return "—"
    if x.std is None:
        return f"{scale * x.mean:.{digits}f}"
    return f"{scale * x.mean:.{digits}f} ± {scale * x.std:.{digits}f}"


def table_markdown(
    agg: Mapping[str, Mapping[str, Mapping[int, Spread]]],
    labels: Mapping[str, str],
    columns: Mapping[str, str],
    ks: Sequence[int],
) -> str:
    """The paper's layout: one row per arm (in ``labels`` order), Pass@k columns per split, in percent,
    mean ± sample std over seeds."""
    heads = [f"{columns[c]} Pass@{k}" for c in columns for k in ks]
    lines = ["| Arm | seeds | " + " | ".join(heads) + " |", "|---|---:|" + "---:|" * len(heads)]
    for arm, label in labels.items():
        if arm not in agg:
            continue
        n = {x.n for col in agg[arm].values() for x in col.values()}
        cells = [fmt(agg[arm].get(c, {}).get(k)) for c in columns for k in ks]
        lines.append(f"| {label} | {'/'.join(map(str, sorted(n)))} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table_csv(agg: Mapping[str, Mapping[str, Mapping[int, Spread]]], labels: Mapping[str, str]) -> str:
    """Every arm, column and k: mean, std, min, max, seeds (fractions, not percent)."""
    lines = ["arm,column,k,mean,std,min,max,seeds"]
    for arm in labels:
        for col, by_k in agg.get(arm, {}).items():
            for k, x in by_k.items():
                std = "" if x.std is None else f"{x.std:.6f}"
                lines.append(f"{arm},{col},{k},{x.mean:.6f},{std},{x.lo:.6f},{x.hi:.6f},{x.n}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------
# Training: what each run did (from its lte_metrics.jsonl records, one per step)
# ---------------------------------------------------------------------------------------------------------


def series(records: Sequence[Mapping], key: str) -> list[float]:
    """One metric per step (NaN on a step that does not log it, e.g. the rescue rate without an extra phase)."""
    return [float(r.get(key, math.nan)) for r in records]


def training_totals(records: Sequence[Mapping]) -> dict[str, float]:
    """A run's totals: groups seen, none-pass groups before LTE, extra phases run, rescued groups, replaced and
    off-policy rows, the rescue rate, and the none-pass share and on-policy accuracy of the first and the last
    quarter of the steps (at least one step each)."""
    if not records:
        raise ValueError("training_totals: no step records")

    def total(key: str) -> float:
        return sum(float(r.get(key, 0.0)) for r in records)

    groups = sum(total(f"lte/groups/{c}_before") for c in ("all_pass", "some_pass", "none_pass"))
    q = max(1, len(records) // 4)

    def mean_of(rs: Sequence[Mapping], key: str) -> float:
        return statistics.fmean(float(r.get(key, 0.0)) for r in rs)

    ran = total("lte/extra/ran")
    return {
        "steps": len(records),
        "groups": groups,
        "none_pass_before": total("lte/groups/none_pass_before"),
        "extra_ran": ran,
        "rescued": total("lte/extra/rescued"),
        "rescue_rate": total("lte/extra/rescued") / ran if ran else math.nan,
        "replaced": total("lte/extra/replaced"),
        "off_policy_rows": total("lte/extra/off_policy_rows"),
        "none_pass_share_first": mean_of(records[:q], "lte/groups/none_pass_before_share"),
        "none_pass_share_last": mean_of(records[-q:], "lte/groups/none_pass_before_share"),
        "on_policy_acc_first": mean_of(records[:q], "lte/on_policy_acc"),
        "on_policy_acc_last": mean_of(records[-q:], "lte/on_policy_acc"),
        "step_seconds_mean": mean_of(records, "timing_s/step"),
    }
