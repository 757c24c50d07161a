"""Tables (markdown, CSV) in the paper's layout and the Pass@k-vs-k plot, for one run or several."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .paper import AVG_COLUMN, BENCHMARKS, PAPER, PAPER_AVERAGES

SETTING_KEYS = ("n", "temperature", "top_p", "max_new_tokens", "template", "grader")


def run_label(summary: dict[str, Any]) -> str:
    return str(summary["config"].get("run_name") or summary["config"].get("model") or "run")


def columns(summaries: Sequence[dict[str, Any]]) -> list[str]:
    """The paper's six columns, then any other benchmark a run has, then Avg."""
    extra = []
    for s in summaries:
        extra += [b["column"] for b in s["benchmarks"] if b["column"] not in extra]
    paper_cols = [b.column for b in BENCHMARKS]
    return paper_cols + [c for c in extra if c not in paper_cols] + [AVG_COLUMN]


def metric_cells(summary: dict[str, Any], k: int) -> dict[str, float | None]:
    """Column -> Pass@k in percent (None where the run lacks that benchmark or k)."""
    cells: dict[str, float | None] = {b["column"]: _pct(b["pass_at_k"].get(str(k))) for b in summary["benchmarks"]}
    avg = summary.get("average")
    cells[AVG_COLUMN] = _pct(avg["pass_at_k"].get(str(k))) if avg else None
    return cells


def _pct(x: float | None) -> float | None:
    return None if x is None else 100.0 * x


def run_ks(summary: dict[str, Any]) -> list[int]:
    """The k every benchmark of the run supports (and hence its Avg)."""
    sets = [{int(k) for k in b["pass_at_k"]} for b in summary["benchmarks"]]
    return sorted(set.intersection(*sets))


def settings(summary: dict[str, Any]) -> dict[str, Any]:
    """n, temperature, top_p, max new tokens, template and grader of a run ("unknown" where not recorded)."""
    cfg = summary["config"]
    ns = {str(b["n"]) for b in summary["benchmarks"]}
    out = {"n": ns.pop() if len(ns) == 1 else "/".join(sorted(ns))}
    for key in SETTING_KEYS[1:]:
        value = cfg.get(key)
        out[key] = "unknown" if value is None else value
    return out


def table_rows(summaries: Sequence[dict[str, Any]], ks: Sequence[int] | None, with_paper: bool) -> list[dict]:
    """Rows of the table: one per (run, metric), runs grouped by metric; paper reference rows (Avg only) last.

    ``ks=None`` means every k of each run (a single run's full table); otherwise those k for every run.
    """
    rows = []
    all_ks = sorted({k for s in summaries for k in run_ks(s)}) if ks is None else list(ks)
    for k in all_ks:
        for s in summaries:
            if k in run_ks(s):
                rows.append({"run": run_label(s), "metric": f"Pass@{k}", "cells": metric_cells(s, k), **settings(s)})
    if with_paper:
        for metric, attr in (("Pass@1", "pass_at_1"), ("Pass@k", "pass_at_k")):
            for ref in PAPER_AVERAGES:
                value = getattr(ref, attr)
                rows.append(
                    {"run": ref.label, "metric": metric, "cells": {AVG_COLUMN: value}, "n": "16 or 32"}
                    | {key: "paper" for key in SETTING_KEYS[1:]}
                )
    return rows


def _fmt(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def markdown_table(
    summaries: Sequence[dict[str, Any]], ks: Sequence[int] | None = None, with_paper: bool = False
) -> str:
    """The table in the paper's layout (percent, two decimals), followed by the settings and notes."""
    cols = columns(summaries)
    lines = ["| Run | Metric | " + " | ".join(cols) + " |", "|---|---|" + "---:|" * len(cols)]
    for row in table_rows(summaries, ks, with_paper):
        lines.append(
            f"| {row['run']} | {row['metric']} | " + " | ".join(_fmt(row["cells"].get(c)) for c in cols) + " |"
        )
    lines += ["", "Settings:", ""]
    for s in summaries:
        st = settings(s)
        lines.append(
            f"- {run_label(s)}: n={st['n']}, temperature={st['temperature']}, top_p={st['top_p']}, "
            f"max new tokens={st['max_new_tokens']}, template={st['template']}, grader={st['grader']}"
        )
    notes = _notes(summaries)
    if with_paper:
        notes.append(
            f"Rows 'paper: ...' are the published six-benchmark averages of the {PAPER} (Avg only; per-benchmark "
            "numbers were not available to us; the paper's Pass@k uses its own k, not necessarily this table's)."
        )
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _notes(summaries: Sequence[dict[str, Any]]) -> list[str]:
    notes = []
    for s in summaries:
        differ = [
            f"{b['column']} {b['problems']} (paper {b['paper_problems']})"
            for b in s["benchmarks"]
            if b["paper_problems"] is not None and b["problems"] != b["paper_problems"]
        ]
        if differ:
            notes.append(f"{run_label(s)}: problem counts differ from the paper's sets: {', '.join(differ)}")
        avg = s.get("average")
        if avg and len(avg["over"]) < len(BENCHMARKS):
            notes.append(f"{run_label(s)}: Avg is over the {len(avg['over'])} of 6 benchmarks present")
        if not avg:
            notes.append(f"{run_label(s)}: none of the paper's six benchmarks present, no Avg")
    return notes


def csv_table(summaries: Sequence[dict[str, Any]], ks: Sequence[int] | None = None, with_paper: bool = False) -> str:
    """The same rows as the markdown table (percent), with each row's settings as extra columns."""
    cols = columns(summaries)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["run", "metric", *cols, *SETTING_KEYS])
    for row in table_rows(summaries, ks, with_paper):
        cells = ["" if row["cells"].get(c) is None else f"{row['cells'][c]:.4f}" for c in cols]
        writer.writerow([row["run"], row["metric"], *cells, *(row.get(key, "") for key in SETTING_KEYS)])
    return buf.getvalue()


def plot_pass_at_k(summaries: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """One panel per benchmark (and Avg): Pass@k (%) against k on a log2 axis, one line per run; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [c for c in columns(summaries)]
    ncols = 4
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.0 * ncols, 3.3 * nrows), squeeze=False)
    for ax, col in zip(axes.flat, panels, strict=False):
        for s in summaries:
            ks = run_ks(s) if col == AVG_COLUMN else _bench_ks(s, col)
            ys = [metric_cells(s, k).get(col) for k in ks]
            pts = [(k, y) for k, y in zip(ks, ys, strict=True) if y is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=run_label(s))
        ax.set_title(col)
        ax.set_xscale("log", base=2)
        all_ks = sorted({k for s in summaries for k in run_ks(s)})
        ax.set_xticks(all_ks, [str(k) for k in all_ks])
        ax.set_xlabel("k")
        ax.set_ylabel("Pass@k (%)")
        ax.set_ylim(-4, 104)  # markers at 0 % and 100 % stay visible
        ax.grid(True, alpha=0.3)
    spare = list(axes.flat)[len(panels) :]
    for ax in spare:
        ax.axis("off")
    handles, labels = next(
        (ax.get_legend_handles_labels() for ax in axes.flat if ax.get_legend_handles_labels()[0]), ([], [])
    )
    settings_lines = [
        f"{run_label(s)}: n={x['n']}, T={x['temperature']}, top_p={x['top_p']}, max tokens={x['max_new_tokens']}"
        for s, x in ((s, settings(s)) for s in summaries)
    ]
    fig.suptitle("Pass@k vs k (unbiased estimator)\n" + "\n".join(settings_lines), fontsize=10)
    if spare:  # the legend goes into the first empty panel, out of the way of the curves
        spare[0].legend(handles, labels, loc="center", fontsize=9, title="run")
    else:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _bench_ks(summary: dict[str, Any], column: str) -> list[int]:
    for b in summary["benchmarks"]:
        if b["column"] == column:
            return sorted(int(k) for k in b["pass_at_k"])
    return []
