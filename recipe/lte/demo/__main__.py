"""``python -m recipe.lte.demo --out DIR``: build (or reuse) the CPU demo and print what its model does under LTE."""

from __future__ import annotations

import argparse
import json
import logging
import time

from recipe.lte.demo import task
from recipe.lte.demo.warmup import WarmupConfig, build_demo, torch_threads


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m recipe.lte.demo",
        description="Build (or reuse) the LTE CPU demo -- a tiny warmed-up model and the 'Compute <N in words> mod ten' "
        "RL parquet -- then measure success, none-pass groups and the rescue rate of hinted vs unhinted extra "
        "rollouts with transformers on CPU.",
    )
    p.add_argument("--out", required=True, help="build directory (reused when its cache key matches)")
    p.add_argument("--force", action="store_true", help="rebuild even if a matching build exists")
    p.add_argument("--rounds", type=int, default=3, help="groups per problem for the measurement (default 3)")
    p.add_argument("--group-size", type=int, default=4, help="G: rollouts per prompt (default 4)")
    p.add_argument(
        "--max-response-length",
        type=int,
        default=task.RECOMMENDED_MAX_RESPONSE_LENGTH,
        help=f"response budget in tokens; longer responses are truncated (default {task.RECOMMENDED_MAX_RESPONSE_LENGTH})",
    )
    p.add_argument("--seed", type=int, default=12345, help="sampling seed of the measurement")
    p.add_argument("--no-measure", action="store_true", help="only build / reuse and print the paths")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.rounds < 1 or args.group_size < 1 or args.max_response_length < 1:
        raise SystemExit("--rounds, --group-size and --max-response-length must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build = build_demo(args.out, force=args.force)
    print(f"model_dir:     {build['model_dir']}")
    print(f"train_parquet: {build['train_parquet']}")
    print(f"val_parquet:   {build['val_parquet']}")
    print(f"heldout_parquet: {build['heldout_parquet']}")
    print(
        f"{'reused' if build['reused'] else 'built'} (cache key {build['cache_key']}, build {build['build_seconds']} s)"
    )
    if args.no_measure:
        return build

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recipe.lte.demo.measure import measure

    tok = AutoTokenizer.from_pretrained(build["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(build["model_dir"], attn_implementation="sdpa").eval()
    start = time.perf_counter()
    with torch_threads(WarmupConfig().torch_threads):
        stats = measure(
            model,
            tok,
            rounds=args.rounds,
            group_size=args.group_size,
            max_response_length=args.max_response_length,
            seed=args.seed,
        )
    scorer, _ = task.get_scorer()
    print(
        f"\nmeasured with transformers generate (T=1.0, top_k=0), scorer {scorer}, {time.perf_counter() - start:.1f} s"
    )
    print(f"  groups {stats['groups']} x G={stats['group_size']}, max response length {stats['max_response_length']}")
    print(f"  success per sample       {stats['success_rate']:.3f}   truncated {stats['truncated_rate']:.3f}")
    print(
        f"  groups all/some/none pass {stats['all_pass_share']:.3f} / {stats['some_pass_share']:.3f} / "
        f"{stats['none_pass_share']:.3f}"
    )
    print(f"  hints planned            {stats['hint_kinds']}")
    print("  on none-pass groups, G extra samples:   hinted   unhinted")
    print(f"    rescue rate (>= 1 correct)           {stats['rescue_hinted']:.3f}    {stats['rescue_unhinted']:.3f}")
    print(
        f"    success per sample                   {stats['extra_success_hinted']:.3f}    "
        f"{stats['extra_success_unhinted']:.3f}"
    )
    print(f"    repeats a listed wrong answer        {stats['repeat_hinted']:.3f}    {stats['repeat_unhinted']:.3f}")
    print(json.dumps(stats))
    return {**build, "measured": stats}


if __name__ == "__main__":
    main()
