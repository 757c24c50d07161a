"""Smoke run: the run's real model and settings for 2 steps on a few prompts, a checkpoint at each step, then the
merge and a few-problem evaluation -- the whole pipeline on the real hardware in minutes, with each phase's peak
memory beside the estimate for the full run.

    bash run_lte.sh --smoke --preset qwen3-4b-lte [hydra overrides...]   # GPUs: the preset's model and layout
    bash run_lte.sh --smoke                                              # no GPU: the CPU demo's model and settings
    python -m recipe.lte.tools.smoke [--preset NAME] [--out DIR] [--no-preflight] [hydra overrides...]

Phases, each a subprocess of the same commands a user runs (so the smoke exercises their code paths):
preflight (``recipe.lte.tools.preflight``), train (``recipe.lte.main_lte``: verl's trainer with LTE, 2 steps,
``save_freq=1``), merge (``recipe.lte.tools.merge``: verl's model merger on the last checkpoint), evaluate
(``recipe.lte.evaluate generate``: vLLM, then the project's scoring). Without ``--preset`` the demo model and the
CPU platform stand in for the preset (``recipe.lte.demo``); everything after that is the same code.

Peak memory is sampled every half second: on GPUs the most any GPU of this node uses (nvidia-smi) plus the actor's
torch peak that verl logs (``perf/max_memory_allocated_gb``); on CPU the run's processes' memory (PSS, summed:
``recipe.lte.tools.memory``). Output in ``--out``: each phase's log (train.log, ...), ckpt/, hf/ (the merged
model), eval/, smoke_report.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from recipe.lte.tools import estimate

REPO_ROOT = Path(__file__).resolve().parents[3]
SMOKE_STEPS = 2
DEFAULT_OUT = "outputs/smoke"
REPORT_FILE = "smoke_report.json"
# The run's own settings, shortened to a smoke run. A user override of the same key wins.
SMOKE_OVERRIDES = (
    f"trainer.total_training_steps={SMOKE_STEPS}",
    "trainer.save_freq=1",  # a checkpoint at every step: saving (and verl's retention) runs twice
    "trainer.test_freq=-1",  # validation is the evaluation phase's job here
    "trainer.val_before_train=false",
    "trainer.resume_mode=disable",  # always the two steps themselves, never a resume
    "data.train_batch_size=16",  # a few prompts (x G rollouts each)
    "actor_rollout_ref.actor.ppo_mini_batch_size=8",  # two updates per step, as the full run's 128 / 64
)
EVAL_SAMPLES = 2  # responses per problem in the evaluation phase
PHASES = ("preflight", "train", "merge", "evaluate")


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def merge_overrides(base: list[str], user: list[str]) -> list[str]:
    """``base`` then ``user``, leaving out each ``base`` override whose key ``user`` sets (the user's wins)."""
    taken = {_key(o) for o in user}
    return [o for o in base if _key(o) not in taken] + list(user)


@dataclass
class Phase:
    """One phase of the smoke run: how long it took, its exit status, its peak memory (bytes)."""

    name: str
    rc: int | None = None
    seconds: float = 0.0
    peak_bytes: int = 0
    note: str = ""


class PeakSampler(threading.Thread):
    """Samples ``sample()`` (bytes) every ``interval`` seconds and keeps the peak of the current ``phase``."""

    def __init__(self, sample: Callable[[], int], interval: float = 0.5):
        super().__init__(daemon=True)
        self.sample, self.interval = sample, interval
        self.phase: str | None = None
        self.peaks: dict[str, int] = {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            phase = self.phase
            if phase is not None:
                try:
                    value = self.sample()
                except Exception as e:  # a failed sample must not end the run; it is reported once per phase
                    self.peaks.setdefault(f"{phase}:error", 0)
                    print(f"[smoke] memory sample failed in {phase}: {e}", file=sys.stderr, flush=True)
                    value = 0
                self.peaks[phase] = max(self.peaks.get(phase, 0), value)
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


def gpu_sample() -> int:
    """The most memory any GPU of this node holds now (nvidia-smi)."""
    from recipe.lte.tools.gpus import query_gpus

    return max(g.used_bytes for g in query_gpus())


def run_memory(run_id: str) -> int:
    """The run's memory now on CPU: PSS summed over its processes and this launcher (``recipe.lte.tools.memory``)."""
    from recipe.lte.tools import memory
    from recipe.lte.tools.processes import run_pids

    return memory.sample([*run_pids(run_id), os.getpid()]).pss


@dataclass
class Plan:
    """What differs between a preset on GPUs and the CPU demo; everything else is shared."""

    label: str
    preset: str | None
    overrides: list[str]  # the training overrides (without +preset)
    env: dict[str, str]
    eval_data: list[str]
    eval_args: list[str]
    on_gpu: bool
    demo_stats: dict = field(default_factory=dict)


def preset_plan(preset: str, out: Path, user: list[str], run_id: str) -> Plan:
    """A preset's smoke run: its model and layout, checkpoints under ``out`` unless the overrides say otherwise."""
    base = [*SMOKE_OVERRIDES, f"trainer.experiment_name={preset}-smoke", f"trainer.default_local_dir={out / 'ckpt'}"]
    return Plan(
        label=preset,
        preset=preset,
        overrides=merge_overrides(base, user),
        env={**os.environ, "LTE_RUN_ID": run_id},
        eval_data=[],  # the config's val_files, read once it is composed
        eval_args=[],
        on_gpu=True,
    )


def demo_plan(out: Path, build_dir: Path, user: list[str], run_id: str) -> Plan:
    """The CPU demo's smoke run: the demo model and settings on verl's CPU platform."""
    from recipe.lte.demo import task
    from recipe.lte.demo.run import build_in_child, demo_overrides, platform_overrides, train_env
    from recipe.lte.tools.processes import ray_temp_dir_for

    print(f"[smoke] building or reusing the demo model and data in {build_dir}", flush=True)
    build = build_in_child(build_dir)  # the warm-up's memory is gone before the phases (this process is sampled)
    # Derived from the run id, as the demo's (recipe.lte.tools.processes finds the run's Ray processes by it).
    ray_temp_dir = os.environ.get("LTE_RAY_TEMP_DIR") or ray_temp_dir_for(run_id)
    training = [
        *demo_overrides(build, out / "ckpt", SMOKE_STEPS, "lte"),
        *SMOKE_OVERRIDES,
        "trainer.experiment_name=cpu-demo-smoke",
    ]
    # The platform's overrides size vLLM's KV cache from the run's settings, the user's included.
    base = [*platform_overrides(merge_overrides(training, user), ray_temp_dir, build["model_dir"]), *training]
    env = train_env(run_id, ray_temp_dir)
    return Plan(
        label="cpu-demo",
        preset=None,
        overrides=merge_overrides(base, user),
        env=env,
        eval_data=[build["val_parquet"]],
        # The demo's prompts are its parquet's chat turns; its answers are short. On vLLM's CPU backend
        # --gpu-memory-utilization is the share of the machine's RAM it reserves (the default 0.9 is refused).
        eval_args=[
            "--template",
            "dataset",
            "--limit",
            "4",
            "--gpu-memory-utilization",
            "0.1",
            "--max-new-tokens",
            str(task.RECOMMENDED_MAX_RESPONSE_LENGTH),
        ],
        on_gpu=False,
        demo_stats=build.get("stats") or {},
    )


def run_phase(
    name: str,
    cmd: list[str],
    env: dict[str, str],
    log_path: Path,
    sampler: PeakSampler,
    show: Callable[[str], bool] = lambda line: False,
) -> Phase:
    """Run one phase's command (its output to ``log_path``; lines ``show`` accepts also to the console)."""
    from recipe.lte.tools.processes import kill_run

    print(f"[smoke] {name}: {' '.join(cmd[:4])} ... (log: {log_path})", flush=True)
    phase = Phase(name)
    sampler.phase = name
    start = time.monotonic()
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            for line in proc.stdout:
                log.write(line)
                text = line.split("\x1b[0m", 1)[-1].rstrip()  # drop Ray's "(Actor pid=...)" prefix
                if show(text):
                    print(text.strip(), flush=True)
            phase.rc = proc.wait()
        except KeyboardInterrupt:
            os.killpg(proc.pid, 2)
            proc.wait(timeout=30)
            raise
        finally:
            kill_run(env["LTE_RUN_ID"])  # Ray's and vLLM's processes end asynchronously: end what is left now
    phase.seconds = time.monotonic() - start
    sampler.phase = None
    phase.peak_bytes = sampler.peaks.get(name, 0)
    if phase.rc != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-25:])
        print(f"[smoke] {name} failed (exit {phase.rc}); the last lines of {log_path}:\n{tail}", flush=True)
    return phase


def _show_train(text: str) -> bool:
    t = text.strip()
    return "[LTE step" in t or "Traceback" in t or t.startswith(("Error", "ValueError", "RuntimeError"))


def saved_checkpoints(run_dir: Path) -> dict[int, int]:
    """Step -> bytes on disk of each complete actor checkpoint (model shards present) in ``run_dir``."""
    found = {}
    for step_dir in run_dir.glob("global_step_*"):
        actor = step_dir / "actor"
        if list(actor.glob("model_world_size_*_rank_*.pt")):
            found[int(step_dir.name.rsplit("_", 1)[1])] = sum(f.stat().st_size for f in actor.rglob("*") if f.is_file())
    return dict(sorted(found.items()))


def metric_peak(run_dir: Path, key: str) -> float | None:
    """The largest value of metric ``key`` over the steps of ``lte_metrics.jsonl`` (None if never above 0)."""
    path = run_dir / "lte_metrics.jsonl"
    if not path.is_file():
        return None
    values = [json.loads(line).get(key, 0) for line in path.read_text().splitlines() if line.strip()]
    peak = max(values, default=0)
    return peak if peak > 0 else None


def format_eval(summary: dict) -> str:
    """One line per evaluation summary: each benchmark's problems and Pass@k (``recipe.lte.evaluate`` scoring)."""
    parts = []
    for b in summary["benchmarks"]:
        ks = ", ".join(f"pass@{k} {v:.2f}" for k, v in b["pass_at_k"].items())
        parts.append(f"{b['data_source']} {b['problems']} problem(s) x {b['n']}: {ks}")
    return "; ".join(parts)


def format_report(report: dict) -> str:
    """The closing table: each phase's time and peak memory, beside the estimate for the full run."""
    lines = [
        f"[smoke] {report['label']}: {'passed' if report['passed'] else 'FAILED'} in "
        f"{report['seconds']:.0f} s ({report['memory_kind']})"
    ]
    lines.append(f"  {'phase':10s} {'exit':>4s} {'time':>7s} {'peak memory':>13s}  full-run estimate")
    for p in report["phases"]:
        est = report["estimates"].get(p["name"], "")
        rc = "" if p["rc"] is None else str(p["rc"])
        lines.append(f"  {p['name']:10s} {rc:>4s} {p['seconds']:6.0f}s {estimate.gib(p['peak_bytes']):>13s}  {est}")
    for line in report.get("notes", []):
        lines.append(f"  {line}")
    return "\n".join(lines)


def gpu_eval_args(config) -> list[str]:
    """The evaluation's settings on GPUs: one problem per benchmark, the run's response length and vLLM layout."""
    rollout = config.actor_rollout_ref.rollout
    return ["--limit", "1", "--max-new-tokens", str(config.data.max_response_length),
            "--tensor-parallel-size", str(rollout.tensor_model_parallel_size),
            "--max-model-len", str(int(rollout.prompt_length) + int(rollout.response_length))]  # fmt: skip


def phase_commands(plan: Plan, run_dir: Path, hf_dir: Path, eval_dir: Path, eval_data: list[str]) -> list[tuple]:
    """(name, command, which output lines to show) of each phase, in order: the commands a user runs."""
    py = sys.executable
    preset = ["--preset", plan.preset] if plan.preset else []
    entry = [f"+preset={plan.preset}"] if plan.preset else []
    evaluate = [py, "-m", "recipe.lte.evaluate", "generate", "--model", str(hf_dir), "--data", *eval_data,
                "--out", str(eval_dir), "--n", str(EVAL_SAMPLES), *plan.eval_args]  # fmt: skip
    return [
        ("preflight", [py, "-m", "recipe.lte.tools.preflight", *preset, *plan.overrides], lambda t: True),
        ("train", [py, "-m", "recipe.lte.main_lte", *entry, *plan.overrides], _show_train),
        ("merge", [py, "-m", "recipe.lte.tools.merge", str(run_dir), str(hf_dir)], lambda t: "[merge]" in t),
        ("evaluate", evaluate, lambda t: t.startswith(("|", "[evaluate]"))),
    ]


def run(args: argparse.Namespace, user: list[str]) -> int:
    from recipe.lte.tools.dry_run import compose_and_check

    out = Path(args.out or f"{DEFAULT_OUT}/{args.preset or 'cpu-demo'}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    run_id = os.environ.get("LTE_RUN_ID") or f"lte-smoke-{os.getpid()}-{int(time.time())}"
    if args.preset:
        plan = preset_plan(args.preset, out, user, run_id)
    else:
        plan = demo_plan(out, Path(args.build).resolve() if args.build else out / "build", user, run_id)
    config = compose_and_check(plan.preset, plan.overrides)  # a bad override stops here, before any phase
    run_dir = Path(str(config.trainer.default_local_dir)).resolve()
    val_files = config.data.val_files
    eval_data = plan.eval_data or ([val_files] if isinstance(val_files, str) else list(val_files))
    if plan.on_gpu:
        plan.eval_args = gpu_eval_args(config)
    hf_dir, eval_dir = out / "hf", out / "eval"
    steps = phase_commands(plan, run_dir, hf_dir, eval_dir, eval_data)[1 if args.no_preflight else 0 :]

    sampler = PeakSampler(gpu_sample if plan.on_gpu else lambda: run_memory(run_id))
    sampler.start()
    phases: list[Phase] = []
    start = time.monotonic()
    try:
        for name, cmd, show in steps:
            if name == "evaluate":
                shutil.rmtree(eval_dir, ignore_errors=True)  # a fresh evaluation, not a resume of an older one
            phase = run_phase(name, cmd, plan.env, out / f"{name}.log", sampler, show)
            phases.append(phase)
            if phase.rc == 0 and name == "train":
                phase.note = _check_training(run_dir)
                if phase.note.startswith("FAILED"):
                    phase.rc = 1
                    print(f"[smoke] {phase.note}", flush=True)
            if phase.rc != 0:
                break
    finally:
        sampler.stop()
        if not plan.on_gpu:
            shutil.rmtree(plan.env.get("LTE_RAY_TEMP_DIR", ""), ignore_errors=True)

    report = build_report(plan, config, phases, run_dir, eval_dir, time.monotonic() - start, args.no_preflight)
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report), flush=True)
    return 0 if report["passed"] else 1


def _check_training(run_dir: Path) -> str:
    """The two steps ran and the last checkpoint is complete (earlier ones may have been rotated out)."""
    path = run_dir / "lte_metrics.jsonl"
    steps = (
        [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    )
    saved = saved_checkpoints(run_dir)
    if steps != list(range(1, SMOKE_STEPS + 1)) or SMOKE_STEPS not in saved:
        return f"FAILED: steps logged {steps}, checkpoints {sorted(saved)} in {run_dir}"
    return f"steps {steps}, checkpoints {sorted(saved)}"


def build_report(
    plan: Plan,
    config,
    phases: list[Phase],
    run_dir: Path,
    eval_dir: Path,
    seconds: float,
    skipped_preflight: bool = False,
) -> dict:
    """Everything the smoke run measured, with the full run's estimates beside it (written as smoke_report.json)."""
    from recipe.lte.tools.preflight import checkpoint_plan, model_shape

    expected = [n for n in PHASES if n != "preflight" or not skipped_preflight]
    passed = [p.name for p in phases] == expected and all(p.rc == 0 for p in phases)
    notes, estimates = [], {}
    shape, _ = model_shape(str(config.actor_rollout_ref.model.path))
    saved = saved_checkpoints(run_dir)
    if shape and saved:
        ckpt = checkpoint_plan(config, shape)
        step, size = max(saved.items())
        notes.append(
            f"checkpoint global_step_{step}: {estimate.si(size, 'B')} on disk, "
            f"estimate {estimate.si(ckpt.bytes_each, 'B')} "
            f"({'+'.join(ckpt.contents)}, {estimate.params_text(shape.params)} parameters)"
        )
    if plan.on_gpu and shape:
        from recipe.lte.tools.gpus import query_gpus

        gpu_bytes = min(g.total_bytes for g in query_gpus())
        full = estimate.gpu_memory(shape, estimate.layout_from_config(config), gpu_bytes)
        estimates["train"] = "per GPU: " + ", ".join(
            f"{k.replace('_', ' ')} {estimate.gib(v)}" for k, v in full.items()
        )
        estimates["evaluate"] = f"vLLM's share {estimate.gib(0.9 * gpu_bytes)} (--gpu-memory-utilization 0.9)"
        estimates["merge"] = "0 (verl's merger runs on CPU)"
        torch_peak = metric_peak(run_dir, "perf/max_memory_allocated_gb")
        if torch_peak:
            notes.append(
                f"actor torch peak (verl perf/max_memory_allocated_gb, log-prob + update): {torch_peak:.1f} GiB; "
                f"full-run estimate {estimate.gib(max(full['old_log_prob'], full['update']))}"
            )
        notes.append("the smoke run's micro-batches are smaller than the full run's: its peaks are a lower bound")
    elif not plan.on_gpu:
        estimates = {p.name: "n/a (CPU: the estimate is for GPUs)" for p in phases}
    summary_path = eval_dir / "summary.json"
    if summary_path.is_file():
        notes.append(f"evaluation: {format_eval(json.loads(summary_path.read_text()))}")
    for p in phases:
        if p.note:
            notes.append(f"{p.name}: {p.note}")
    if plan.demo_stats.get("rescue_hinted") is not None:
        notes.append(
            f"demo model: hinted extra rollouts rescue {plan.demo_stats['rescue_hinted']:.0%} of none-pass groups"
        )
    return {
        "label": plan.label,
        "passed": passed,
        "seconds": seconds,
        "memory_kind": "peak = most memory on any GPU of this node (nvidia-smi)"
        if plan.on_gpu
        else "peak = the run's processes' memory, PSS summed (CPU)",
        "phases": [asdict(p) for p in phases],
        "estimates": estimates,
        "checkpoints": {str(k): v for k, v in saved.items()},
        "run_dir": str(run_dir),
        "notes": notes,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recipe.lte.tools.smoke", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", help="a preset (GPUs); without it: the CPU demo model and settings")
    p.add_argument("--out", help=f"output folder (default {DEFAULT_OUT}/<preset or cpu-demo>)")
    p.add_argument("--build", help="CPU demo only: where the demo model is built or reused (default OUT/build)")
    p.add_argument("--no-preflight", action="store_true", help="skip the preflight phase")
    args, overrides = p.parse_known_args(argv)
    bad = [o for o in overrides if o.startswith("-")]
    if bad:
        p.error(f"unknown options {bad}; hydra overrides look like key=value")
    return run(args, overrides)


if __name__ == "__main__":
    sys.exit(main())
