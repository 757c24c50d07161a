"""Seconds of `data_prep check` on a synthetic OpenR1-46k-sized file, against a naive serial check, same run.

The file: 46,000 verl rows made from the six benchmarks' 1,590 real problems (shared/data/six_benchmarks.parquet),
each problem repeated with a variant tag so every prompt is distinct. Ground truths:
- `--golds repeated` (default): integer answers shifted per variant (distinct, as integers are in a real set;
  the check decides them without math-verify), the other answers repeated as they are (`\\frac{1}{2}` recurs
  across a real set): about 670 distinct non-integer ground truths;
- `--golds distinct`: every non-integer answer made distinct too (`<answer>+<variant>`): the worst case, about
  19,000 math-verify parses.

Timed: the check as the trainer runs it at start-up (errors only: math-verify parses only the ground truths that
are not well-formed) and as `python -m data_prep check` runs it (`parse_all`: every distinct non-integer ground
truth, in parallel), both with prompt lengths under a tokenizer. Baseline, measured on a sample in the same run and
scaled to the file: one math-verify parse per row, serially, in this process.

    python benchmarks/bench_data_check.py [--rows 46000] [--golds repeated|distinct] [--tokenizer PATH]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

import pandas as pd


def build_file(shared: Path, rows: int, golds: str, out: Path) -> None:
    from verl_ext.reward.math_reward import _INT_RE

    base = pd.read_parquet(shared).to_dict(orient="records")
    records = []
    for i in range(rows):
        src, variant = base[i % len(base)], i // len(base)
        prompt = [dict(m) for m in src["prompt"]]
        prompt[-1]["content"] = f"{prompt[-1]['content']} (variant {variant})"
        gt = str(src["reward_model"]["ground_truth"])
        if variant and _INT_RE.match(gt.strip()):
            gt = str(int(float(gt)) + variant)
        elif variant and golds == "distinct":
            gt = f"{gt}+{variant}"
        records.append(
            {
                "data_source": src["data_source"],
                "prompt": prompt,
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": gt},
                "extra_info": {"index": i, "split": "train"},
            }
        )
    pd.DataFrame(records).to_parquet(out)


def serial_parse_seconds_per_row(path: Path, sample: int, seed: int = 0) -> float:
    """Seconds per row of the naive check: math-verify's parse of each row's ground truth, one after another."""
    from verl_ext.reward import math_verify_worker as mv
    from verl_ext.reward.ground_truth import gold_text

    golds = [gold_text(r["ground_truth"]) for r in pd.read_parquet(path, columns=["reward_model"])["reward_model"]]
    picked = random.Random(seed).sample(golds, min(sample, len(golds)))
    mv.golds_read_as_math(["1/2"])  # warm-up (imports)
    start = time.perf_counter()
    for g in picked:
        mv._parse_gold.cache_clear()  # naive: no reuse across rows
        mv.golds_read_as_math([g])
    return (time.perf_counter() - start) / len(picked)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=46_000)
    ap.add_argument("--golds", choices=("repeated", "distinct"), default="repeated")
    ap.add_argument("--tokenizer", default=None, help="a local tokenizer folder (default: the tiny test tokenizer)")
    ap.add_argument("--sample", type=int, default=300, help="rows parsed serially for the baseline")
    ap.add_argument(
        "--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/six_benchmarks.parquet"
    )
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from data_prep.check import CheckSettings, check_files

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthetic.parquet"
        build_file(args.shared, args.rows, args.golds, path)
        tok_dir = args.tokenizer
        if tok_dir is None:
            from recipe.lte.demo.tiny_model import build_tiny_model

            tok_dir = build_tiny_model(str(Path(tmp) / "tiny"))
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        print(f"file: {args.rows} rows, ground truths {args.golds}; {os.cpu_count()} CPUs; tokenizer {tok_dir}")

        results = {}
        for name, parse_all in (("start-up check (errors only)", False), ("data_prep check (parse_all)", True)):
            settings = CheckSettings(tokenizer=tokenizer, max_prompt_length=1024, parse_all=parse_all)
            start = time.perf_counter()
            report = check_files([path], settings)
            results[name] = time.perf_counter() - start
            f = report.files[0]
            phases = ", ".join(f"{k} {v:.1f}" for k, v in report.seconds.items())
            print(
                f"{name:30s} {results[name]:7.1f} s  ({phases}); bad rows {len(f.bad_rows)}, "
                f"warnings {sum(len(v) for v in f.warnings.values())}"
            )

        per_row = serial_parse_seconds_per_row(path, args.sample)
        naive = per_row * args.rows
        print(f"naive serial parse of every row: {per_row * 1000:.1f} ms/row -> {naive:.0f} s for {args.rows} rows")
        for name, seconds in results.items():
            print(f"ratio naive / {name}: {naive / seconds:.1f}x")


if __name__ == "__main__":
    main()
