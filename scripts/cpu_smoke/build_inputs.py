"""Build the CPU smoke run's inputs into OUT_DIR: a tiny local model and "(a*b) mod 10" RL parquet files.

    python scripts/cpu_smoke/build_inputs.py OUT_DIR      # writes OUT_DIR/model, OUT_DIR/{train,val}.parquet

Idempotent: existing outputs are kept. Rows follow verl's RLHFDataset schema.
"""

from __future__ import annotations

import argparse
import os

PROMPT = "Compute ({a}*{b}) mod 10. Let's think step by step and output the final answer within \\boxed{{}}."


def mod10_rows(pairs: list[tuple[int, int]], split: str) -> list[dict]:
    """verl RL rows for "(a*b) mod 10" with the answer as ground truth."""
    return [
        {
            "data_source": "lte_cpu_smoke_mod10",
            "prompt": [{"role": "user", "content": PROMPT.format(a=a, b=b)}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": str((a * b) % 10)},
            "extra_info": {"split": split, "index": i, "a": a, "b": b},
        }
        for i, (a, b) in enumerate(pairs)
    ]


def build_inputs(out_dir: str) -> dict[str, str]:
    """Write model and parquet files under ``out_dir`` (if missing); return their paths."""
    import pandas as pd

    from verl_ext.tiny_model import build_tiny_model

    os.makedirs(out_dir, exist_ok=True)
    paths = {
        "model": os.path.join(out_dir, "model"),
        "train": os.path.join(out_dir, "train.parquet"),
        "val": os.path.join(out_dir, "val.parquet"),
    }
    if not os.path.exists(os.path.join(paths["model"], "config.json")):
        build_tiny_model(paths["model"])
    pairs = [(a, b) for a in range(1, 10) for b in range(1, 10)]
    if not os.path.exists(paths["train"]):
        pd.DataFrame(mod10_rows(pairs[:64], "train")).to_parquet(paths["train"])
    if not os.path.exists(paths["val"]):
        pd.DataFrame(mod10_rows(pairs[64:72], "test")).to_parquet(paths["val"])
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    print(build_inputs(parser.parse_args().out_dir))
