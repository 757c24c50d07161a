"""The reproduction's figures: training dynamics per arm, and Pass@k against k per arm."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from recipe.lte.evaluate.metrics import k_values
from recipe.lte.reproduce.aggregate import Spread, series
from recipe.lte.reproduce.arms import ARMS, BASE

# One colour per arm in every figure, whichever arms a run has (matplotlib's cycle in the registry's order).
ARM_COLORS = {BASE: "0.45", **{name: f"C{i}" for i, name in enumerate(ARMS)}}

# Panels of the training-dynamics figure: (metric of lte_metrics.jsonl, title).
DYNAMICS_PANELS = (
    ("lte/groups/none_pass_before_share", "None-pass groups (share, before LTE's replacement)"),
    ("lte/on_policy_acc", "On-policy accuracy per response"),
    ("lte/groups/none_pass_after_share", "None-pass groups after replacement (share)"),
)


def _mean_band(runs: Sequence[Sequence[float]]) -> tuple[list[float], list[float], list[float]]:
    """Per step: mean, min and max over the runs that reached it (NaN-free steps only)."""
    steps = max(len(r) for r in runs)
    mean, lo, hi = [], [], []
    for t in range(steps):
        vals = [r[t] for r in runs if t < len(r) and not math.isnan(r[t])]
        mean.append(sum(vals) / len(vals) if vals else math.nan)
        lo.append(min(vals) if vals else math.nan)
        hi.append(max(vals) if vals else math.nan)
    return mean, lo, hi


def plot_dynamics(records: Mapping[str, Sequence[Sequence[Mapping]]], labels: Mapping[str, str], path: Path) -> Path:
    """One line per arm (mean over seeds, band = min..max over seeds) for each panel of ``DYNAMICS_PANELS``.

    ``records[arm]`` holds, per seed, that run's per-step records (``recipe.lte.tools.summary.load_metrics``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(DYNAMICS_PANELS), figsize=(5.2 * len(DYNAMICS_PANELS), 3.8))
    last = max((len(rs) for runs in records.values() for rs in runs), default=1)
    for ax, (key, title) in zip(axes, DYNAMICS_PANELS, strict=True):
        for arm, label in labels.items():
            runs = [series(rs, key) for rs in records.get(arm, []) if rs]
            if not runs:
                continue
            mean, lo, hi = _mean_band(runs)
            steps = list(range(1, len(mean) + 1))
            seeds = f"{len(runs)} seed{'s' * (len(runs) > 1)}"
            color = ARM_COLORS.get(arm)
            ax.plot(steps, mean, "-o", ms=3, color=color, label=f"{label} ({seeds})")
            if len(runs) > 1:
                ax.fill_between(steps, lo, hi, color=color, alpha=0.15, linewidth=0)
        ax.set(title=title, xlabel="training step", ylim=(-0.02, 1.02), xlim=(0.5, last + 0.5))
        ax.title.set_fontsize(9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Training dynamics (mean over seeds; band: min..max)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_pass_at_k(
    agg: Mapping[str, Mapping[str, Mapping[int, Spread]]],
    labels: Mapping[str, str],
    columns: Mapping[str, str],
    path: Path,
) -> Path:
    """One panel per column (split): Pass@k (%) against k on a log2 axis, one line per arm, error bars = sample std
    over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(columns), figsize=(5.2 * len(columns), 3.8), squeeze=False)
    for ax, (col, title) in zip(axes[0], columns.items(), strict=True):
        all_ks: set[int] = set()
        for arm, label in labels.items():
            by_k = agg.get(arm, {}).get(col)
            if not by_k:
                continue
            ks = sorted(by_k)
            all_ks.update(ks)
            ys = [100 * by_k[k].mean for k in ks]
            errs = [100 * (by_k[k].std or 0.0) for k in ks]
            ax.errorbar(ks, ys, yerr=errs, marker="o", ms=3, capsize=2, color=ARM_COLORS.get(arm), label=label)
        ax.set_xscale("log", base=2)
        ticks = k_values(max(all_ks)) if all_ks else [1]  # 1, 2, 4, ... n
        ax.set_xticks(ticks, [str(k) for k in ticks])
        ax.set(title=title, xlabel="k", ylabel="Pass@k (%)", ylim=(-4, 104))
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Pass@k against k (unbiased estimator; mean over seeds, bars: sample std)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
