"""Forward+backward time of the LTE policy loss `lte_mixed` vs verl's vanilla PPO loss, same batch, same run.

    .venv/bin/python benchmarks/bench_loss.py                 # B=64, T=8192, half the rows hinted, CPU
    .venv/bin/python benchmarks/bench_loss.py --threads 1 --clock cpu    # on a shared CPU machine
    .venv/bin/python benchmarks/bench_loss.py --device cuda --repeats 200

"no hinted rows" is the path that reproduces verl's vanilla bit for bit (same operations plus LTE's metrics).
Each repeat times vanilla and every LTE variant back to back (order alternating) on the same tensors; the
report is the median per loss, the ratio of medians against vanilla, and the median of the per-repeat ratios
("paired": each against the vanilla run next to it, robust to a machine whose load drifts). Goal: <= 1.15.
Both include their metrics (host transfers), as they run in training.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla
from verl.workers.config import ActorConfig

from verl_ext.loss.ppo_loss import compute_mixed_policy_loss


def make_batch(batch: int, length: int, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    old = -torch.rand(batch, length, generator=g) * 3
    data = {
        "old": old,
        "log_prob": old + (torch.rand(batch, length, generator=g) - 0.5),
        "behavior": old + (torch.rand(batch, length, generator=g) * 4 - 2),
        "adv": torch.randn(batch, 1, generator=g).expand(batch, length).contiguous(),  # GRPO: one value per row
    }
    lengths = torch.randint(length // 4, length + 1, (batch,), generator=g)
    data["mask"] = torch.arange(length)[None, :] < lengths[:, None]
    data["off"] = torch.arange(batch) % 2 == 1  # half the rows hinted
    return {k: v.to(device) for k, v in data.items()}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_once(fn, data: dict[str, torch.Tensor], device: str, clock) -> float:
    log_prob = data["log_prob"].detach().requires_grad_(True)
    _sync(device)
    start = clock()
    loss, _ = fn(log_prob)
    loss.backward()
    _sync(device)
    return clock() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu = this process's CPU time (CPU device only): less sensitive to other processes on a shared machine",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and args.device != "cpu":
        parser.error("--clock cpu measures host CPU time: use it with --device cpu")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    data = make_batch(args.batch, args.length, args.device)
    config = ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1)
    common = {"clip_ratio_low": config.clip_ratio_low, "clip_ratio_high": config.clip_ratio_high, "clip_ratio_c": 3.0}

    def vanilla(lp):
        return compute_policy_loss_vanilla(data["old"], lp, data["adv"], data["mask"], "token-mean", config=config)

    no_off = torch.zeros_like(data["off"])

    def lte(mode: str, aggregation: str = "global", hinted: bool = True):
        def fn(lp):
            return compute_mixed_policy_loss(
                data["old"], lp, data["adv"], data["mask"], data["off"] if hinted else no_off,
                behavior_log_prob=data["behavior"],
                off_policy_mode=mode, aggregation=aggregation, gamma=0.1, **common,
            )  # fmt: skip

        return fn

    losses = {
        "vanilla (verl)": vanilla,
        "lte_mixed behavior_ratio global (default)": lte("behavior_ratio"),
        "lte_mixed luffy_prob global": lte("luffy_prob"),
        "lte_mixed behavior_ratio separate": lte("behavior_ratio", "separate"),
        "lte_mixed, no hinted rows (verl's operations)": lte("behavior_ratio", hinted=False),
    }
    times: dict[str, list[float]] = {name: [] for name in losses}
    names = list(losses)
    for rep in range(args.warmup + args.repeats):
        order = names if rep % 2 == 0 else names[::-1]
        for name in order:
            elapsed = time_once(losses[name], data, args.device, clock)
            if rep >= args.warmup:
                times[name].append(elapsed)

    threads = torch.get_num_threads() if args.device == "cpu" else None
    print(
        f"device={args.device}{f' ({threads} threads)' if threads else ''} B={args.batch} T={args.length} "
        f"tokens={int(data['mask'].sum())} hinted_rows={int(data['off'].sum())} repeats={args.repeats} clock={args.clock} "
        f"torch={torch.__version__}"
    )
    base_times = times["vanilla (verl)"]
    base = statistics.median(base_times)
    for name in names:
        med = statistics.median(times[name])
        paired = statistics.median(t / b for t, b in zip(times[name], base_times, strict=True))
        print(f"{name:46s} median {med * 1e3:8.2f} ms   ratio of medians {med / base:5.3f}   paired {paired:5.3f}")


if __name__ == "__main__":
    main()
