"""End-of-run summary of an LTE training run: ``python -m recipe.lte.tools.summary RUN_DIR [--plot PNG]``.

Reads ``RUN_DIR/lte_metrics.jsonl`` (one record per step, written by ``LTETrainer``; ``RUN_DIR`` is
``trainer.default_local_dir``), prints what LTE did over the run -- groups by class, extra phases by kind,
rescued groups, replaced responses -- and where the latest checkpoint is, and plots the training dynamics the
paper reports (none-pass groups falling, on-policy accuracy).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence

from recipe.lte import core

METRICS_FILE = core.METRICS_FILE
CLASSES = core.GROUP_CLASSES
KINDS = (*core.HINT_KINDS, "unhinted", core.REFERENCE)  # "reference": lte.mode=luffy's rows, shown when present


def load_metrics(run_dir: str) -> list[dict]:
    """Per-step records, ordered by step; a resumed run's later record for the same step wins."""
    path = os.path.join(run_dir, METRICS_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: is {run_dir} an LTE run's trainer.default_local_dir?")
    by_step: dict[int, dict] = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                by_step[int(rec["step"])] = rec
            except (ValueError, KeyError) as e:
                raise ValueError(f"{path}:{lineno}: not a metrics record ({e})") from e
    return [by_step[s] for s in sorted(by_step)]


def summarize(records: Sequence[dict]) -> dict[str, float]:
    """Run totals from per-step records (counts summed over steps; accuracies first and last step)."""

    def total(key: str) -> float:
        return sum(r.get(f"lte/{key}", 0.0) for r in records)

    out: dict[str, float] = {"steps": len(records)}
    for c in CLASSES:
        out[f"{c}_before"] = total(f"groups/{c}_before")
        out[f"{c}_after"] = total(f"groups/{c}_after")
    for k in KINDS:
        out[f"kind_{k}"] = total(f"extra/kind_{k}")
    for key in (
        "ran",
        "skipped_too_long",
        "skipped_no_hint",
        "skipped_bad_ground_truth",
        "error",
        "rescued",
        "replaced",
        "correct",
        "tokens",
    ):
        out[key] = total(f"extra/{key}")
    out["rescue_rate"] = out["rescued"] / out["ran"] if out["ran"] else 0.0
    if records:
        out["on_policy_acc_first"] = records[0].get("lte/on_policy_acc", 0.0)
        out["on_policy_acc_last"] = records[-1].get("lte/on_policy_acc", 0.0)
    return out


def latest_checkpoint(run_dir: str) -> str | None:
    """verl's latest checkpoint folder in ``run_dir`` (from latest_checkpointed_iteration.txt), or None."""
    marker = os.path.join(run_dir, "latest_checkpointed_iteration.txt")
    if not os.path.exists(marker):
        return None
    with open(marker) as f:
        step = f.read().strip()
    path = os.path.join(run_dir, f"global_step_{step}")
    return path if os.path.isdir(path) else None


def format_summary(s: dict[str, float], checkpoint: str | None) -> str:
    """A short, human-readable table of ``summarize``'s totals."""
    rows = [
        ("steps", f"{s['steps']:.0f}"),
        (
            "groups all/some/none, before LTE",
            "/".join(f"{s[f'{c}_before']:.0f}" for c in CLASSES),
        ),
        ("groups all/some/none, after LTE", "/".join(f"{s[f'{c}_after']:.0f}" for c in CLASSES)),
        (
            "extra phases by kind",
            ", ".join(f"{k} {s[f'kind_{k}']:.0f}" for k in KINDS if k != core.REFERENCE or s[f"kind_{k}"]),
        ),
        (
            "extra phases skipped (too long / no hint / bad ground truth) / errors",
            f"{s['skipped_too_long']:.0f} / {s['skipped_no_hint']:.0f} / {s['skipped_bad_ground_truth']:.0f} / "
            f"{s['error']:.0f}",
        ),
        ("groups rescued / extra phases run", f"{s['rescued']:.0f} / {s['ran']:.0f} ({s['rescue_rate']:.1%})"),
        ("responses replaced", f"{s['replaced']:.0f}"),
        ("extra response tokens", f"{s['tokens']:.0f}"),
    ]
    if "on_policy_acc_first" in s:
        rows.append(
            (
                "on-policy accuracy, first -> last step",
                f"{s['on_policy_acc_first']:.3f} -> {s['on_policy_acc_last']:.3f}",
            )
        )
    rows.append(("latest checkpoint", checkpoint or "none"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(["LTE run summary", "-" * (width + 20)] + [f"{k:<{width}}  {v}" for k, v in rows])


def plot(records: Sequence[dict], out_png: str) -> str:
    """None-pass groups before/after LTE, rescue rate and on-policy accuracy per step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    steps = [r["step"] for r in records]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ax = axes[0]
    for c, style in zip(CLASSES, ("-", "--", ":"), strict=True):
        ax.plot(steps, [r.get(f"lte/groups/{c}_before_share", 0.0) for r in records], style, label=f"{c} (before)")
    ax.plot(
        steps, [r.get("lte/groups/none_pass_after_share", 0.0) for r in records], "-o", ms=3, label="none_pass (after)"
    )
    ax.set(title="Groups by class (share)", xlabel="step", ylim=(-0.02, 1.02))
    ax.legend(fontsize=7)
    # only steps that ran an extra phase have a rescue rate
    rated = [(r["step"], r["lte/extra/rescue_rate"]) for r in records if "lte/extra/rescue_rate" in r]
    axes[1].plot([s for s, _ in rated], [v for _, v in rated], "-o", ms=3)
    axes[1].set(title="Rescue rate of extra phases", xlabel="step", ylim=(-0.02, 1.02))
    axes[2].plot(steps, [r.get("lte/on_policy_acc", 0.0) for r in records], "-o", ms=3, label="on-policy")
    axes[2].plot(steps, [r.get("lte/acc_after", 0.0) for r in records], "--", label="after replacement")
    axes[2].set(title="Accuracy per response", xlabel="step", ylim=(-0.02, 1.02))
    axes[2].legend(fontsize=7)
    for a in axes:
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="the run's trainer.default_local_dir (holds lte_metrics.jsonl)")
    p.add_argument("--plot", default=None, help="write the training-dynamics plot here (PNG)")
    args = p.parse_args(argv)
    records = load_metrics(args.run_dir)
    print(format_summary(summarize(records), latest_checkpoint(args.run_dir)))
    if args.plot:
        print(f"plot: {plot(records, args.plot)}")


if __name__ == "__main__":
    main()
