"""`python -m data_prep`: build verl RL parquet for the training sets and the six benchmarks.

python -m data_prep openr1 --out data/                 # training set from the hub (default training set)
python -m data_prep openr1_luffy --out data/           # the same rows under LUFFY's system prompt (LUFFY arm)
python -m data_prep benchmarks --out data/             # the six benchmarks + benchmarks_val.parquet
python -m data_prep math500 aime24 --local math500=/dl/math500.jsonl --local aime24=/dl/aime24/
python -m data_prep list                               # sources, hub ids, columns, templates
python -m data_prep check data/openr1.parquet --tokenizer /models/Qwen3-4B-Base   # bad rows, by reason
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from data_prep.build import build_source, write_parquet
from data_prep.sources import BENCHMARK_SOURCES, SOURCES, TRAIN_SOURCES
from data_prep.templates import DEFAULT_TEMPLATE, PROMPT_TEMPLATES, TEMPLATE_SYSTEM_PROMPTS

COMBINED_VAL = "benchmarks_val"


def _parse_local(items: list[str]) -> dict[str, str]:
    local = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or name not in SOURCES:
            raise SystemExit(f"--local {item!r}: expected NAME=PATH with NAME one of {sorted(SOURCES)}")
        local[name] = path
    return local


def _targets(names: list[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        expanded = list(BENCHMARK_SOURCES) if name == "benchmarks" else [name]
        for n in expanded:
            if n not in SOURCES:
                raise SystemExit(f"unknown source {n!r}; choose from {sorted(SOURCES)}, 'benchmarks' or 'list'")
            if n not in out:
                out.append(n)
    return out


def _list() -> None:
    print("sources (name: hub id [configs] split | problem column -> answer column | data_source):")
    for group, sources in (("training", TRAIN_SOURCES), ("benchmarks", BENCHMARK_SOURCES)):
        print(f"  {group}:")
        for s in sources.values():
            configs = f" {list(s.configs)}" if s.configs != (None,) else ""
            print(
                f"    {s.name}: {s.hub_id}{configs} {s.split} | {s.problem_column} -> {s.answer_column} | "
                f"{s.data_source}"
                + (f" | reference: {s.reference_column}" if s.reference_column else "")
                + (f"  ({s.note})" if s.note else "")
            )
    print(f"templates (default {DEFAULT_TEMPLATE!r}):")
    for name, text in PROMPT_TEMPLATES.items():
        system = f" (system: {TEMPLATE_SYSTEM_PROMPTS[name][:60]!r}...)" if name in TEMPLATE_SYSTEM_PROMPTS else ""
        print(f"  {name}: {text!r}{system}")


def check_main(argv: list[str]) -> int:
    """`python -m data_prep check FILE...`: exit status 1 when any file has errors, else 0."""
    ap = argparse.ArgumentParser(
        prog="python -m data_prep check",
        description="Check verl RL parquet/jsonl files against what the LTE trainer and the project's math reward "
        "need: the columns and chat layout, ground truths the reward can never match (missing, empty, unparseable), "
        "empty problems, prompts over --max-prompt-length tokens (verl drops them silently), the same problem with "
        "different answers. Prints the bad rows by reason; exit status 1 when there is any. The files are read as "
        "one data set (duplicates and conflicts are looked for across them). See docs/data.md.",
    )
    ap.add_argument("files", nargs="+", type=Path, help="parquet / jsonl / json files in verl's RL layout")
    ap.add_argument(
        "--tokenizer",
        default=None,
        help="a local Hugging Face model or tokenizer folder: count prompt tokens with its chat template "
        "(as actor_rollout_ref.model.path); without it prompt lengths are not checked",
    )
    ap.add_argument("--max-prompt-length", type=int, default=1024, help="data.max_prompt_length (default 1024)")
    ap.add_argument("--prompt-key", default="prompt", help="data.prompt_key (default prompt)")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="parse only the ground truths an error depends on (skips the 'matched only verbatim' warning)",
    )
    ap.add_argument("--workers", type=int, default=None, help="math-verify processes (default: one per CPU)")
    ap.add_argument("--max-rows", type=int, default=12, help="row indices printed per reason (default 12)")
    ap.add_argument("--json", type=Path, default=None, help="also write the full report (every row index) here")
    ap.add_argument(
        "--write-good",
        type=Path,
        default=None,
        metavar="DIR",
        help="write each file's good rows to DIR/<name>.parquet (what lte.data.on_bad_rows=skip trains on)",
    )
    args = ap.parse_args(argv)
    from data_prep.check import CheckSettings, check_files, write_good_rows, write_report_json

    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    settings = CheckSettings(
        prompt_key=args.prompt_key,
        tokenizer=tokenizer,
        max_prompt_length=args.max_prompt_length,
        parse_all=not args.quick,
        workers=args.workers,
    )
    report = check_files(args.files, settings)
    print(report.text(max_rows=args.max_rows, prefix=""))
    if args.quick:
        print("note: --quick: ground truths matched only verbatim were not looked for")
    timing = ", ".join(f"{k} {v:.1f}" for k, v in report.seconds.items())
    print(f"checked in {sum(report.seconds.values()):.1f} s ({timing})")
    if args.json:
        write_report_json(report, args.json)
        print(f"report: {args.json}")
    if args.write_good:
        for f in report.files:
            if f.file_error is None:
                out = args.write_good / (Path(f.path).stem + ".parquet")
                print(f"{write_good_rows(f.path, f.bad_rows, out)} good rows -> {out}")
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["check"]:
        return check_main(argv[1:])
    ap = argparse.ArgumentParser(
        prog="python -m data_prep",
        description="Write verl RL parquet (data_source, prompt, ability, reward_model, extra_info) for the LTE "
        "training sets and the six math benchmarks, from the Hugging Face hub or local files.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "names",
        nargs="+",
        help=f"'list', 'benchmarks' (all six), or any of {sorted(SOURCES)}; or 'check FILE...' (see check --help)",
    )
    ap.add_argument("--out", type=Path, default=Path("data"), help="output folder (default: data/)")
    ap.add_argument(
        "--local",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="read NAME from a local json/jsonl/parquet file or folder (hub column layout) instead "
        "of the hub; repeatable",
    )
    ap.add_argument(
        "--template",
        default=None,
        choices=sorted(PROMPT_TEMPLATES),
        help=f"prompt template, the same for training and evaluation (default: {DEFAULT_TEMPLATE}; "
        "openr1_luffy: luffy)",
    )
    ap.add_argument("--system-prompt", default=None, help="optional system turn before the user turn")
    ap.add_argument("--limit", type=int, default=None, help="read only the first N source rows (smoke tests)")
    args = ap.parse_args(argv)

    if args.names == ["list"]:
        _list()
        return 0
    names = _targets(args.names)
    local = _parse_local(args.local)
    unused = sorted(set(local) - set(names))
    if unused:
        raise SystemExit(f"--local given for {unused}, which are not being built ({names})")

    val_rows = []
    for name in names:
        split = "train" if name in TRAIN_SOURCES else "test"
        path, rows, report = build_source(
            SOURCES[name], args.out, local.get(name), split, args.template, args.system_prompt, args.limit
        )
        print(report.text())
        print(f"  -> {path}")
        if name in BENCHMARK_SOURCES:
            val_rows += rows
    if all(n in names for n in BENCHMARK_SOURCES):
        path = args.out / f"{COMBINED_VAL}.parquet"
        write_parquet(val_rows, path)
        counts = pd.Series([r["data_source"] for r in val_rows]).value_counts().to_dict()
        print(f"[{COMBINED_VAL}] {len(val_rows)} rows {counts}\n  -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
