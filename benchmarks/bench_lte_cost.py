"""What LTE costs on the CPU demo: verl's real trainer, ``grpo`` vs ``grpo_extra`` vs ``lte``, measured in one run.

    .venv/bin/python benchmarks/bench_lte_cost.py                       # 2 repeats x 3 arms, 4 steps each
    .venv/bin/python benchmarks/bench_lte_cost.py --repeats 3 --steps 5 --out outputs/bench_cost

Each run is ``python -m recipe.lte.demo.run`` (the first run's launcher) on the same demo model, data, seed and
step budget; only ``--mode`` differs. The arms' runs are interleaved (repeat 1: grpo, grpo_extra, lte; repeat 2
starts with the next arm, ...) so that the machine's load drifts over all of them alike. Each run takes one of the
machine's heavy-run slots (``--lock``: ``flock`` files, the first free one) on its own, so other users of the
machine interleave with the benchmark.

Per step (``lte_metrics.jsonl``): verl's ``timing_s/step`` and ``timing_s/gen``, LTE's ``lte/extra/seconds_max``
(the longest extra phase) and tokens of the first and extra phases. The first ``--skip`` steps of a run are
left out (start-up effects). Per run the medians over its steps; per arm the median over runs and their spread
(min-max); ratios against GRPO paired per repeat (each against the GRPO run of the same repeat), median and
spread. The floor of LTE's overhead is its extra decode work: ``1 + extra tokens / first-phase tokens``
(generation), ``1 + share * gen / step`` (step time, as training does not grow with extra rollouts).
No checkpoint is written (``trainer.save_freq=-1``), so the last step's time is not a checkpoint's.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ARMS = ("grpo", "grpo_extra", "lte")


@contextlib.contextmanager
def heavy_lock(paths: str | None, poll_s: float = 5.0):
    """One of the machine's heavy-run slots, held for one run: the first of the comma-separated ``flock`` files
    ``paths`` that is free (waiting until one is); none when ``paths`` is empty."""
    files = [p for p in (paths or "").split(",") if p]
    if not files:
        yield
        return
    while True:
        for path in files:
            f = open(path, "a")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
                f.close()
            return
        time.sleep(poll_s)


def run_arm(out: Path, build: Path, arm: str, steps: int, batch: int, lock: str | None) -> dict:
    """One training run of ``arm``; returns its per-step records and peak memory."""
    cmd = [sys.executable, "-m", "recipe.lte.demo.run", "--out", str(out), "--build", str(build)]
    cmd += ["--steps", str(steps), "--mode", arm, f"data.train_batch_size={batch}", "trainer.save_freq=-1"]
    with heavy_lock(lock):
        start = time.monotonic()
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
        wall = time.monotonic() - start
    (out / "bench_stdout.txt").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{arm} run failed (exit {proc.returncode}), see {out / 'bench_stdout.txt'}")
    lines = (out / arm / "lte_metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    memory = json.loads((out / f"{arm}_peak_memory.json").read_text())
    return {"arm": arm, "records": records, "wall_s": wall, "peak_pss_gib": memory["peak_pss_gib"]}


def step_values(records: list[dict], skip: int) -> dict[str, list[float]]:
    """Per-step quantities of one run, its first ``skip`` steps left out."""
    kept = [r for r in records if r["step"] > skip]
    if not kept:
        raise ValueError(f"no step left after skipping {skip}: run more --steps")
    return {
        "step_s": [r["timing_s/step"] for r in kept],
        "gen_s": [r["timing_s/gen"] for r in kept],
        "extra_max_s": [r.get("lte/extra/seconds_max", 0.0) for r in kept],
        "extra_phases": [r.get("lte/extra/ran", 0.0) for r in kept],
        "first_tokens": [r.get("lte/first/tokens", 0.0) for r in kept],
        "extra_tokens": [r.get("lte/extra/tokens", 0.0) for r in kept],
    }


def run_summary(run: dict, skip: int) -> dict[str, float]:
    """Medians over the run's steps; token share and floors from its summed tokens and median times."""
    v = step_values(run["records"], skip)
    first, extra = sum(v["first_tokens"]), sum(v["extra_tokens"])
    share = extra / first if first else 0.0
    step, gen = statistics.median(v["step_s"]), statistics.median(v["gen_s"])
    return {
        "step_s": step,
        "gen_s": gen,
        "extra_max_s": statistics.median(v["extra_max_s"]),
        "extra_phases": statistics.fmean(v["extra_phases"]),
        "extra_share": share,
        "gen_floor": 1 + share,
        "step_floor": 1 + share * gen / step if step else 1.0,
        "peak_pss_gib": run["peak_pss_gib"],
        "steps": len(v["step_s"]),
    }


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}-{max(values):.3f}]"


def report(runs: list[dict], skip: int) -> str:
    """The table: per arm medians over runs (spread), ratios against GRPO paired per repeat, floors."""
    by = {(r["repeat"], r["arm"]): run_summary(r, skip) for r in runs}
    repeats = sorted({r["repeat"] for r in runs})
    arms = [a for a in ARMS if any(arm == a for _, arm in by)]
    lines = [
        f"{len(repeats)} repeats x {len(arms)} arms, {next(iter(by.values()))['steps']} measured steps per run "
        f"(first {skip} skipped); median over runs [min-max]",
        "",
        f"{'arm':<11} {'step s':>20} {'gen s':>20} {'longest extra s':>20} {'extra phases':>13} "
        f"{'extra/first tok':>20} {'peak GiB':>9}",
    ]
    for arm in arms:
        s = [by[(k, arm)] for k in repeats]
        lines.append(
            f"{arm:<11} {spread([x['step_s'] for x in s]):>20} {spread([x['gen_s'] for x in s]):>20} "
            f"{spread([x['extra_max_s'] for x in s]):>20} {statistics.fmean(x['extra_phases'] for x in s):>13.2f} "
            f"{spread([x['extra_share'] for x in s]):>20} {statistics.median(x['peak_pss_gib'] for x in s):>9.2f}"
        )
    if "grpo" in arms:
        lines += [
            "",
            "against GRPO, paired per repeat (median [min-max]); floor = 1 + extra decode work",
            f"{'arm':<11} {'step ratio':>20} {'step floor':>20} {'step / floor':>20} {'gen ratio':>20} "
            f"{'gen floor':>20} {'gen / floor':>20}",
        ]
        for arm in arms:
            if arm == "grpo":
                continue
            pairs = [(by[(k, arm)], by[(k, "grpo")]) for k in repeats]
            step_r = [a["step_s"] / b["step_s"] for a, b in pairs]
            gen_r = [a["gen_s"] / b["gen_s"] for a, b in pairs]
            step_f = [a["step_floor"] for a, _ in pairs]
            gen_f = [a["gen_floor"] for a, _ in pairs]
            lines.append(
                f"{arm:<11} {spread(step_r):>20} {spread(step_f):>20} "
                f"{spread([r / f for r, f in zip(step_r, step_f, strict=True)]):>20} {spread(gen_r):>20} "
                f"{spread(gen_f):>20} {spread([r / f for r, f in zip(gen_r, gen_f, strict=True)]):>20}"
            )
        lines += [
            "",
            "generation time beyond GRPO's, paired per repeat (s): measured, what the extra tokens would cost at",
            "GRPO's pace (floor), and the longest extra phase of a step (the serial tail)",
            f"{'arm':<11} {'gen - GRPO gen':>20} {'floor part':>20} {'longest extra phase':>20}",
        ]
        for arm in arms:
            if arm == "grpo":
                continue
            pairs = [(by[(k, arm)], by[(k, "grpo")]) for k in repeats]
            lines.append(
                f"{arm:<11} {spread([a['gen_s'] - b['gen_s'] for a, b in pairs]):>20} "
                f"{spread([a['extra_share'] * b['gen_s'] for a, b in pairs]):>20} "
                f"{spread([a['extra_max_s'] for a, _ in pairs]):>20}"
            )
    return "\n".join(lines)


def interleaved(arms: list[str], repeats: int) -> list[tuple[int, str]]:
    """Round-robin order, each repeat starting one arm later: (0, a) (0, b) (0, c) (1, b) (1, c) (1, a) ..."""
    return [(k, arms[(k + i) % len(arms)]) for k in range(repeats) for i in range(len(arms))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="outputs/bench_cost", help="runs, their logs and bench.json go here")
    p.add_argument("--build", default=None, help="demo model and data (default OUT/build, built once)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--steps", type=int, default=4, help="training steps per run")
    p.add_argument("--skip", type=int, default=1, help="first steps of each run left out of the statistics")
    p.add_argument("--batch", type=int, default=16, help="prompts per step (data.train_batch_size)")
    p.add_argument(
        "--lock",
        default="/tmp/lte-heavy-1.lock,/tmp/lte-heavy-2.lock",
        help="heavy-run slots (flock files, comma-separated), one taken per run ('' = none)",
    )
    p.add_argument("--report", default=None, help="print the report of an existing bench.json and exit")
    args = p.parse_args(argv)
    if args.report:
        data = json.loads(Path(args.report).read_text())
        print(report(data["runs"], data["skip"]))
        return 0
    arms = [a for a in args.arms.split(",") if a]
    if not set(arms) <= set(ARMS) or not arms:
        p.error(f"--arms must be a subset of {ARMS}")
    if args.steps <= args.skip:
        p.error("--steps must exceed --skip")
    out = Path(args.out).resolve()
    build = Path(args.build).resolve() if args.build else out / "build"
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    started = time.monotonic()
    for k, arm in interleaved(arms, args.repeats):
        run = run_arm(out / f"r{k}" / arm, build, arm, args.steps, args.batch, args.lock)
        run["repeat"] = k
        runs.append(run)
        s = run_summary(run, args.skip)
        print(
            f"[bench] repeat {k} {arm:<10} step {s['step_s']:.1f} s, gen {s['gen_s']:.1f} s, extra/first tokens "
            f"{s['extra_share']:.3f}, run {run['wall_s']:.0f} s, peak {run['peak_pss_gib']:.2f} GiB",
            flush=True,
        )
        record = {"args": vars(args), "skip": args.skip, "runs": runs, "elapsed_s": time.monotonic() - started}
        (out / "bench.json").write_text(json.dumps(record, indent=1))
    print()
    print(report(runs, args.skip))
    print(f"\n(total {time.monotonic() - started:.0f} s; data in {out / 'bench.json'})")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
