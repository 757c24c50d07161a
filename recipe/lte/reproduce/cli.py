"""``python -m recipe.lte.reproduce``: the paper's comparison -- GRPO, GRPO-Extra, LTE (and LTE†) trained side by
side from the same base model, data order and step budget, several seeds, evaluated by the project's own pipeline
(checkpoint -> Hugging Face merge -> vLLM generation -> the project's reward -> Pass@1 / Pass@k) -- in one command.

    python -m recipe.lte.reproduce                      # CPU: the demo task, the default run (about an hour on 2 cores)
    python -m recipe.lte.reproduce --quick              # CPU: every arm, 1 seed, 1 step, small evaluation (minutes)
    python -m recipe.lte.reproduce --gpu qwen3-8b --dry-run          # GPUs: the paper's presets, validated, nothing run
    python -m recipe.lte.reproduce --gpu qwen3-4b --slurm --sbatch-args="--partition=gpu --nodes=2"

Rerunning the same command resumes: finished stages (an arm and seed trained, merged, evaluated) are not redone.
Results in --out: report.md, table.md / table.csv, pass_at_k.png, dynamics.png, results.json, record.json (the
commands, versions, wall time), and per run its logs, checkpoints and evaluation.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from recipe.lte.reproduce.arms import ARMS, DEFAULT_ARMS, parse_arms, parse_seeds
from recipe.lte.reproduce.plan import Layout, RunSpec, Settings, plan_runs

# The CPU default: sized to about an hour on 2 cores (docs/reproducing.md, "One command": how it was measured).
CPU_DEFAULT = {"seeds": "2", "steps": 8}
# --quick: every arm, one seed, one step, 6 problems per split, 4 samples each -- checks the pipeline, not the method.
CPU_QUICK = {"seeds": "1", "steps": 1, "eval_n": 4, "eval_limit": 6}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m recipe.lte.reproduce",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Extra arguments key=value are hydra overrides for every training run. Arms: "
        + "; ".join(f"{a.name}: {a.description}" for a in ARMS.values()),
    )
    p.add_argument("--arms", default=",".join(DEFAULT_ARMS), help=f"comma-separated (default {','.join(DEFAULT_ARMS)})")
    p.add_argument(
        "--seeds", help=f"a count or a list, e.g. 3 or 0,1,2 (default: CPU {CPU_DEFAULT['seeds']}, quick 1, GPU 1)"
    )
    p.add_argument(
        "--steps",
        type=int,
        help=f"training steps per run (default: CPU {CPU_DEFAULT['steps']}, quick 1, GPU the preset's)",
    )
    p.add_argument("--out", help="results folder, reused to resume (default outputs/reproduce_<cpu|cpu_quick|family>)")
    p.add_argument("--quick", action="store_true", help="CPU: a pipeline check in minutes (1 seed, 1 step, small eval)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and every command; GPU: validate each config")
    p.add_argument("--report-only", action="store_true", help="only (re)write the report from the folder's results")
    p.add_argument("--doc", help="also write the report as this markdown file, figures beside it (docs/results-cpu.md)")
    cpu = p.add_argument_group("CPU (the demo task)")
    cpu.add_argument("--build", help="the demo build folder (default OUT/build)")
    cpu.add_argument("--batch-size", type=int, default=8, help="prompts per training step (default 8)")
    cpu.add_argument("--eval-n", type=int, help="samples per problem (default 16; quick 4)")
    cpu.add_argument("--eval-limit", type=int, help="problems per split (default all: 18 held-out, 72 training)")
    gpu = p.add_argument_group("GPU (the paper's presets)")
    gpu.add_argument("--gpu", metavar="FAMILY", help="qwen3-4b or qwen3-8b: run the paper's presets of that family")
    gpu.add_argument("--slurm", action="store_true", help="submit each training run with scripts/slurm_lte.sbatch")
    gpu.add_argument("--sbatch-args", default="", help='options for sbatch, e.g. "--partition=gpu --nodes=2"')
    gpu.add_argument("--model-path", help="local base model weights (default: the preset's hub id)")
    gpu.add_argument("--data-dir", help="LTE_DATA_DIR holding benchmarks_val.parquet (default data/)")
    gpu.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM's, for evaluation")
    return p


def make_backend(args: argparse.Namespace, overrides: list[str]):
    """The backend and the default --out of the parsed command line."""
    if args.gpu:
        from recipe.lte.reproduce.gpu import GPUBackend, GPUSettings

        settings = GPUSettings(
            family=args.gpu,
            steps=args.steps,
            slurm=args.slurm,
            sbatch_args=tuple(shlex.split(args.sbatch_args)),
            model_path=args.model_path,
            data_dir=args.data_dir,
            tensor_parallel_size=args.tensor_parallel_size,
            extra_overrides=tuple(overrides),
        )
        return GPUBackend(settings), f"outputs/reproduce_{args.gpu}", args.seeds or "1"
    if args.slurm or args.model_path:
        raise ValueError("--slurm and --model-path are for the GPU form (--gpu FAMILY)")
    from recipe.lte.reproduce.cpu import CPUBackend

    preset = CPU_QUICK if args.quick else CPU_DEFAULT
    settings = Settings(
        steps=args.steps if args.steps is not None else preset["steps"],
        batch_size=args.batch_size,
        eval_n=args.eval_n if args.eval_n is not None else preset.get("eval_n", 16),
        eval_limit=args.eval_limit if args.eval_limit is not None else preset.get("eval_limit"),
        extra_overrides=tuple(overrides),
    )
    default_out = "outputs/reproduce_cpu_quick" if args.quick else "outputs/reproduce_cpu"
    return CPUBackend(settings), default_out, args.seeds or preset["seeds"]


def dry_run(backend, layout: Layout, arms, seeds) -> int:
    """Print every command the reproduction would run; on GPUs compose and validate each run's config first."""
    from recipe.lte.reproduce.gpu import GPUBackend

    specs = plan_runs(arms, seeds)
    failed = 0
    for spec in specs:
        if isinstance(backend, GPUBackend):
            try:
                backend.check_config(spec, layout)
                status = "config valid (verl + LTE start-up checks + GPU layout)"
            except Exception as e:  # hydra, verl's validation and LTE's refusals each raise their own types
                print(f"[dry-run] {spec.key}: config INVALID: {type(e).__name__}: {e}")
                failed += 1
                continue
            print(f"[dry-run] {spec.key}: {status}")
        steps = backend.target_steps(spec)
        base = {"model_dir": str(layout.build_dir / "model"), "fingerprint": "-"}
        print(f"  train:    {shlex.join(backend.train_command(spec, layout, base, steps))}")
        print(f"  merge:    python -m recipe.lte.tools.merge {layout.run_dir(spec)} {layout.hf_dir(spec)}")
        print(
            f"  evaluate: python -m recipe.lte.evaluate generate --model {layout.hf_dir(spec)} --out {layout.eval_dir(spec.key)} ..."
        )
    print(f"[dry-run] {len(specs)} run(s) of {len(arms)} arm(s) x {len(seeds)} seed(s), results in {layout.root}")
    return 2 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if o.startswith("-") or "=" not in o]
    if bad:
        parser.error(f"unknown arguments {bad}; hydra overrides look like key=value")
    if args.quick and args.gpu:
        parser.error("--quick is the CPU pipeline check; the GPU form takes --steps and --seeds")
    try:
        arms = parse_arms(args.arms)
        backend, default_out, seeds_text = make_backend(args, overrides)
        seeds = parse_seeds(seeds_text)
        if args.gpu:
            from recipe.lte.reproduce.gpu import preset_name

            for arm in arms:  # every arm must have a preset in the family, before anything runs
                preset_name(args.gpu, RunSpec(arm, seeds[0]))
    except ValueError as e:
        parser.error(str(e))
    layout = Layout.create(args.out or default_out, getattr(args, "build", None))
    if args.dry_run:
        return dry_run(backend, layout, arms, seeds)
    from recipe.lte.reproduce.pipeline import Pipeline, StageFailed

    command = "python -m recipe.lte.reproduce " + shlex.join(argv)
    pipeline = Pipeline(backend, layout, arms, seeds, command.strip())
    try:
        pipeline.run(report_only=args.report_only)
    except StageFailed as e:
        print(f"[reproduce] {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("\n[reproduce] interrupted: rerun the same command to resume (finished stages are kept)", flush=True)
        return 130
    if args.doc:
        from recipe.lte.reproduce.report import write_doc

        print(f"[reproduce] wrote {write_doc(layout.root, Path(args.doc))}")
    return 0
