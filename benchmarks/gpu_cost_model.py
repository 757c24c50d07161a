"""LTE's step time against GRPO at GPU scale, from the rollout model (``rollout_sim.py``, ``rollout_workload.py``).

    python benchmarks/gpu_cost_model.py                    # Qwen3-4B-Base on 8 x H100, the paper's batch
    python benchmarks/gpu_cost_model.py --model qwen3-8b --steps 12 --seeds 0,1,2
    python benchmarks/gpu_cost_model.py --sweep            # none-pass share x truncation share

Pure Python (no torch, no GPU). Every variant runs on the same pre-sampled responses (per seed), so ratios are
paired. The hardware and workload numbers, and where each comes from, are in ``docs/cost.md``; they are
written here once, as ``HARDWARE`` / ``MODELS`` / ``Workload`` defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rollout_sim import Engine, Policy, Trainer, simulate, summarize  # noqa: E402
from rollout_workload import Workload, sample_steps, workload_stats  # noqa: E402

# H100 SXM 80 GB (public datasheet): HBM3 bandwidth and dense bf16 tensor throughput.
HARDWARE = {"hbm_bytes_s": 3.35e12, "bf16_flops": 989e12, "mem_gb": 80.0, "gpus": 8}
# Efficiencies (assumed, docs/cost.md): share of the bandwidth a decode step reaches, MFU of decode GEMMs, of
# prefill, of FSDP training; fixed per-iteration overhead of vLLM's scheduler + sampler with CUDA graphs.
EFF = {"bw": 0.7, "decode_mfu": 0.5, "prefill_mfu": 0.6, "train_mfu": 0.35, "iter_overhead_s": 2e-3}

# Model shapes (Qwen3 config.json): parameters, layers, KV heads, head dim; the presets' vLLM tensor parallelism.
MODELS = {
    "qwen3-4b": {"params": 4.02e9, "layers": 36, "kv_heads": 8, "head_dim": 128, "tp": 1},
    "qwen3-8b": {"params": 8.19e9, "layers": 36, "kv_heads": 8, "head_dim": 128, "tp": 2},
}
GPU_MEMORY_UTILIZATION = 0.6  # the presets' rollout.gpu_memory_utilization
ACTIVATION_RESERVE_GB = 2.0  # vLLM's profiled activation peak + CUDA graphs, per GPU (assumed)
TRAIN_FIXED_S = 10.0  # per step: weight sync into vLLM, wake-up / sleep, optimizer step (assumed)
SCORE_S = 0.05  # reward latency after a response ends (math-verify in the reward workers; assumed)


def engine_for(model: str) -> Engine:
    """vLLM replicas of ``model`` on one 8-GPU node, derived from the hardware and model shape."""
    m, h, e = MODELS[model], HARDWARE, EFF
    tp = m["tp"]
    weights = 2 * m["params"]  # bf16 bytes
    kv_token = 2 * m["layers"] * m["kv_heads"] * m["head_dim"] * 2  # K and V, bf16, all layers
    kv_gb_per_gpu = h["mem_gb"] * GPU_MEMORY_UTILIZATION - weights / tp / 1e9 - ACTIVATION_RESERVE_GB
    return Engine(
        replicas=h["gpus"] // tp,
        max_num_seqs=256,  # verl's rollout.max_num_seqs
        kv_capacity_tokens=int(kv_gb_per_gpu * 1e9 * tp / kv_token),
        max_num_batched_tokens=16384,  # the presets' rollout.max_num_batched_tokens
        t_iter_s=weights / tp / (h["hbm_bytes_s"] * e["bw"]) + e["iter_overhead_s"],
        t_seq_s=2 * m["params"] / tp / (h["bf16_flops"] * e["decode_mfu"]),
        t_ctx_s=kv_token / tp / (h["hbm_bytes_s"] * e["bw"]),
        t_prefill_token_s=2 * m["params"] / tp / (h["bf16_flops"] * e["prefill_mfu"]),
    )


def trainer_for(model: str, kind: str = "sync", warmup: float = 1.0) -> Trainer:
    """FSDP2 on all GPUs: old log-probs (2N FLOPs/token), update with gradient checkpointing (6N + 2N)."""
    m, h = MODELS[model], HARDWARE
    flops_per_token = 10 * m["params"]
    return Trainer(
        kind=kind,
        t_fixed_s=TRAIN_FIXED_S,
        t_token_s=flops_per_token / (h["gpus"] * h["bf16_flops"] * EFF["train_mfu"]),
        t_score_s=SCORE_S,
        async_warmup=warmup,
    )


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    mode: str  # workload mode: grpo | grpo_extra | lte
    policy: Policy
    trainer: str = "sync"
    workload: dict = dataclasses.field(default_factory=dict)  # Workload overrides


VARIANTS = (
    Variant("GRPO (sync)", "grpo", Policy(mode="grpo")),
    Variant("GRPO-Extra (sync)", "grpo_extra", Policy(mode="lte")),
    Variant("LTE (sync, today)", "lte", Policy(mode="lte")),
    Variant("LTE, extra after all groups", "lte", Policy(mode="lte", extra_start="barrier")),
    Variant("LTE, concise not shorter", "lte", Policy(mode="lte"), workload={"concise_len_factor": 1.0}),
    Variant("LTE, extra capped at 6144", "lte", Policy(mode="lte", extra_max_len=6144)),
    Variant("LTE, extra capped at 4096", "lte", Policy(mode="lte", extra_max_len=4096)),
    Variant("GRPO (async partial)", "grpo", Policy(mode="grpo"), trainer="async"),
    Variant("LTE (async partial)", "lte", Policy(mode="lte"), trainer="async"),
)


def run_variant(v: Variant, model: str, workload: Workload, steps: int, seed: int) -> dict[str, float]:
    w = dataclasses.replace(workload, mode=v.mode, **v.workload)
    if v.trainer == "async":
        # Partial rollout keeps B extra prompts in flight: feed warm-up batches beyond the measured steps and drop
        # the first two steps (the pipeline filling).
        batches = sample_steps(w, steps + 4, seed)
        results = simulate(engine_for(model), trainer_for(model, "async"), v.policy, batches, batch=w.batch)
        results = results[2 : 2 + steps]
    else:
        results = simulate(engine_for(model), trainer_for(model), v.policy, sample_steps(w, steps, seed))
    return summarize(results)


def compare(model: str, workload: Workload, steps: int, seeds: list[int], variants=VARIANTS) -> list[dict]:
    """Every variant on every seed; ratios to GRPO (sync) and to GRPO under the same trainer, paired per seed."""
    rows = []
    per_seed = {s: {v.name: run_variant(v, model, workload, steps, s) for v in variants} for s in seeds}
    for v in variants:
        base_same = "GRPO (async partial)" if v.trainer == "async" else "GRPO (sync)"
        res = [per_seed[s][v.name] for s in seeds]
        row = {k: statistics.fmean(r[k] for r in res) for k in res[0]}
        row["name"] = v.name
        row["step_vs_grpo"] = statistics.fmean(
            per_seed[s][v.name]["step_s"] / per_seed[s]["GRPO (sync)"]["step_s"] for s in seeds
        )
        row["gen_vs_grpo"] = statistics.fmean(
            per_seed[s][v.name]["gen_s"] / per_seed[s]["GRPO (sync)"]["gen_s"] for s in seeds
        )
        row["step_vs_same"] = statistics.fmean(
            per_seed[s][v.name]["step_s"] / per_seed[s][base_same]["step_s"] for s in seeds
        )
        row["gen_floor"] = 1 + row["extra_share"]
        # Extra decode work only, at the same-trainer GRPO's gen/step split: the step-time floor.
        row["step_floor"] = statistics.fmean(
            1 + per_seed[s][v.name]["extra_share"] * per_seed[s][base_same]["gen_s"] / per_seed[s][base_same]["step_s"]
            for s in seeds
        )
        rows.append(row)
    return rows


def format_rows(rows: list[dict]) -> str:
    head = (
        f"{'variant':<29} {'step s':>7} {'gen s':>7} {'train s':>7} {'step/GRPO':>9} {'gen/GRPO':>8} "
        f"{'same-trainer':>12} {'step floor':>10} {'extra/first':>11} {'gen floor':>9} {'rescued':>7} "
        f"{'recompute':>10} {'staleness':>9} {'(extra)':>7}"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['name']:<29} {r['step_s']:>7.1f} {r['gen_s']:>7.1f} {r['train_s']:>7.1f} {r['step_vs_grpo']:>9.3f} "
            f"{r['gen_vs_grpo']:>8.3f} {r['step_vs_same']:>12.3f} {r['step_floor']:>10.3f} {r['extra_share']:>11.3f} "
            f"{r['gen_floor']:>9.3f} "
            f"{r['rescued']:>7.1f} {r['recompute_tokens'] / 1e3:>9.0f}k {r['staleness']:>9.2f} "
            f"{r['extra_staleness']:>7.2f}"
        )
    return "\n".join(lines)


def describe(model: str, workload: Workload, seeds: list[int]) -> str:
    e = engine_for(model)
    t = trainer_for(model)
    stats = workload_stats([g for s in seeds for g in sample_steps(workload, 4, s)], workload.max_len)
    return (
        f"model {model}: {e.replicas} vLLM replicas, KV {e.kv_capacity_tokens / 1e3:.0f}k tokens each, iteration "
        f"{e.t_iter_s * 1e3:.2f} ms + {e.t_seq_s * 1e6:.1f} us/seq + {e.t_ctx_s * 1e9:.1f} ns/context token, "
        f"prefill {e.t_prefill_token_s * 1e6:.1f} us/token; training {t.t_token_s * 1e6:.1f} us/token + "
        f"{t.t_fixed_s:.0f} s\n"
        f"workload: {workload.batch} prompts x G={workload.g}, max {workload.max_len} tokens; groups all/none pass "
        f"{stats['all_pass']:.2f}/{stats['none_pass']:.2f}, truncated {stats['truncated']:.3f}, mean length "
        f"{stats['mean_len']:.0f} (none-pass groups {stats['none_pass_mean_len']:.0f}), none-pass groups with a "
        f"truncation {stats['none_pass_truncated']:.2f}, hinted extra: mean length {stats['extra_mean_len']:.0f}, "
        f"pass rate {stats['extra_pass_rate']:.2f}"
    )


def sweep(model: str, steps: int, seeds: list[int]) -> str:
    """LTE / GRPO step time over the workload: none-pass share (pass-rate Beta) x response length (median)."""
    names = (
        "GRPO (sync)",
        "LTE (sync, today)",
        "LTE, extra capped at 4096",
        "GRPO (async partial)",
        "LTE (async partial)",
    )
    variants = [v for v in VARIANTS if v.name in names]
    lines = [
        f"{'pass Beta':>12} {'median':>6} {'none-pass':>9} {'trunc':>6} {'mean len':>8} {'extra/first':>11} "
        f"{'LTE/GRPO sync':>13} {'step floor':>10} {'tail share':>10} {'gen ratio':>9} {'cap 4096':>8} "
        f"{'async/async':>11}"
    ]
    for a, b in ((0.7, 0.55), (0.45, 0.55), (0.35, 0.6)):
        for median in (1000.0, 1600.0, 2400.0):
            w = Workload(pass_a=a, pass_b=b, median_len=median)
            stats = workload_stats([g for s in seeds for g in sample_steps(w, 2, s)], w.max_len)
            rows = {r["name"]: r for r in compare(model, w, steps, seeds, variants)}
            lte = rows["LTE (sync, today)"]
            tail = (lte["step_vs_grpo"] - lte["step_floor"]) / (lte["step_vs_grpo"] - 1)
            lines.append(
                f"{f'({a}, {b})':>12} {median:>6.0f} {stats['none_pass']:>9.2f} {stats['truncated']:>6.3f} "
                f"{stats['mean_len']:>8.0f} {lte['extra_share']:>11.3f} {lte['step_vs_grpo']:>13.3f} "
                f"{lte['step_floor']:>10.3f} {tail:>10.2f} {lte['gen_vs_grpo']:>9.3f} "
                f"{rows['LTE, extra capped at 4096']['step_vs_grpo']:>8.3f} "
                f"{rows['LTE (async partial)']['step_vs_same']:>11.3f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="qwen3-4b", choices=sorted(MODELS))
    p.add_argument("--steps", type=int, default=8, help="steps simulated per seed")
    p.add_argument("--seeds", default="0,1", help="comma-separated workload seeds")
    p.add_argument("--sweep", action="store_true", help="LTE/GRPO over none-pass share x response length")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    started = time.monotonic()
    w = Workload()
    print(describe(args.model, w, seeds))
    print()
    if args.sweep:
        print(sweep(args.model, args.steps, seeds))
    else:
        print(format_rows(compare(args.model, w, args.steps, seeds)))
    print(f"\n({len(seeds)} seeds x {args.steps} steps, {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
