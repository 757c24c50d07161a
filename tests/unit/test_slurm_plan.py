"""The SLURM launcher's command assembly, from fake SLURM environment variables (no SLURM on this machine):
host lists, knobs and their errors, the plan's commands, the sbatch script's dry mode, and step execution."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recipe.lte.tools.slurm import Cluster, Step, cluster_from_env, execute, expand_nodelist, plan, ray_auth_env

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "nodelist, hosts",
    [
        ("gpu07", ["gpu07"]),
        ("gpu[01-03,07],login5", ["gpu01", "gpu02", "gpu03", "gpu07", "login5"]),
        ("a[8-10]", ["a8", "a9", "a10"]),
        ("n[098-101]", ["n098", "n099", "n100", "n101"]),
        ("x1,y[2-3]", ["x1", "y2", "y3"]),
    ],
)
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


def test_expand_nodelist_refuses_what_it_cannot_read():
    with pytest.raises(ValueError, match="SLURM_JOB_NODELIST='gpu\\[a-b\\]'"):
        expand_nodelist("gpu[a-b]")


FAKE = {
    "SLURM_JOB_NODELIST": "gpu[01-03]",
    "SLURM_GPUS_ON_NODE": "4",
    "SLURM_CPUS_ON_NODE": "32",
    "SLURM_JOB_ID": "777",
}


def test_cluster_from_fake_slurm_env():
    c = cluster_from_env(
        {**FAKE, "SLURM_SUBMIT_DIR": "/shared/lte", "LTE_VENV": "/shared/venv", "LTE_RAY_PORT": "7000"}
    )
    assert (c.nodes, c.gpus_per_node, c.cpus_per_node) == (["gpu01", "gpu02", "gpu03"], 4, 32)
    assert (c.repo, c.venv, c.ray_port, c.address) == ("/shared/lte", "/shared/venv", 7000, "gpu01:7000")
    # GPU count forms: SLURM_GPUS_PER_NODE may carry a type
    env = {"SLURM_JOB_NODELIST": "n1", "SLURM_GPUS_PER_NODE": "h100:8"}
    assert cluster_from_env(env).gpus_per_node == 8
    # Ray's folder on each node is the job's own (never /tmp/ray, where `ray start` leaves its address behind).
    assert cluster_from_env({**env, "SLURM_JOB_ID": "55"}).ray_temp_dir == "/tmp/ray-lte-55"
    assert cluster_from_env({**env, "LTE_SLURM_RAY_TEMP_DIR": "/scratch/r"}).ray_temp_dir == "/scratch/r"


@pytest.mark.parametrize(
    "env, message",
    [
        ({"SLURM_GPUS_ON_NODE": "8"}, "SLURM_JOB_NODELIST is not set"),
        ({"SLURM_JOB_NODELIST": "n1"}, "--gpus-per-node"),
        ({"SLURM_JOB_NODELIST": "n1", "SLURM_GPUS_PER_NODE": "h100:x"}, "SLURM_GPUS_PER_NODE='h100:x'"),
        ({**FAKE, "LTE_VENV": "/v", "LTE_CONTAINER_IMAGE": "img"}, "LTE_VENV or LTE_CONTAINER_IMAGE"),
        ({**FAKE, "LTE_CONTAINER_RUNTIME": "docker"}, "LTE_CONTAINER_RUNTIME='docker'"),
    ],
)
def test_cluster_errors_name_the_variable(env, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        cluster_from_env(env)


def _by_name(steps: list[Step]) -> dict[str, Step]:
    return {s.name: s for s in steps}


def test_plan_head_workers_trainer_on_three_nodes():
    c = cluster_from_env({**FAKE, "SLURM_SUBMIT_DIR": "/shared/lte", "LTE_RAY_HEAD_IP": "10.0.0.1"})
    steps = plan(c, ["--preset", "qwen3-8b-lte", "actor_rollout_ref.model.path=/w"])
    assert [s.name for s in steps] == ["ray-head", "ray-worker-gpu02", "ray-worker-gpu03", "wait-ray", "train"]
    assert [s.background for s in steps] == [True, True, True, False, False]
    s = _by_name(steps)
    head = s["ray-head"].argv
    assert head[:6] == ["srun", "--overlap", "--nodes=1", "--ntasks=1", "--nodelist=gpu01", "--export=ALL"]
    assert head[6:] == [
        "ray", "start", "--head", "--node-ip-address=10.0.0.1", "--port=6379", "--num-gpus=4", "--num-cpus=32",
        "--temp-dir=/tmp/ray-lte-777", "--block",
    ]  # fmt: skip
    for node in ("gpu02", "gpu03"):
        w = s[f"ray-worker-{node}"].argv
        assert f"--nodelist={node}" in w and "--address=10.0.0.1:6379" in w and "--num-gpus=4" in w
        assert "--temp-dir=/tmp/ray-lte-777" in w
    wait = s["wait-ray"].argv
    assert "--nodelist=gpu01" in wait and "--gpus=12" in wait and "--address=10.0.0.1:6379" in wait
    train = s["train"].argv
    assert "--nodelist=gpu01" in train and "--export=ALL,RAY_ADDRESS=10.0.0.1:6379,LTE_JOIN_RAY_CLUSTER=1" in train
    i = train.index("bash")
    assert train[i:] == [
        "bash", "run_lte.sh", "--preset", "qwen3-8b-lte", "actor_rollout_ref.model.path=/w",
        "trainer.nnodes=3", "trainer.n_gpus_per_node=4",
    ]  # fmt: skip
    assert s["train"].shell().startswith("srun --overlap") and s["ray-head"].shell().endswith(" --block &")


def test_plan_single_node_has_no_workers_and_no_ip_guess():
    c = cluster_from_env({"SLURM_JOB_NODELIST": "solo", "SLURM_GPUS_ON_NODE": "8"})
    steps = plan(c, ["--preset", "qwen3-4b-lte"])
    assert [s.name for s in steps] == ["ray-head", "wait-ray", "train"]
    assert not any(a.startswith("--node-ip-address") for a in steps[0].argv)  # Ray picks the head's address
    assert "--num-cpus" not in " ".join(steps[0].argv)  # not in the allocation: Ray counts them
    assert steps[-1].argv[-2:] == ["trainer.nnodes=1", "trainer.n_gpus_per_node=8"]


def test_plan_venv_uses_its_executables():
    c = cluster_from_env({**FAKE, "LTE_VENV": "/shared/venv"})
    s = _by_name(plan(c, []))
    assert (
        "/shared/venv/bin/ray" in s["ray-head"].argv and "--export=ALL,VIRTUAL_ENV=/shared/venv" in s["ray-head"].argv
    )
    assert "/shared/venv/bin/python" in s["wait-ray"].argv
    assert "--export=ALL,RAY_ADDRESS=gpu01:6379,LTE_JOIN_RAY_CLUSTER=1,VIRTUAL_ENV=/shared/venv" in s["train"].argv


def test_plan_containers():
    env = {**FAKE, "SLURM_SUBMIT_DIR": "/shared/lte", "LTE_CONTAINER_IMAGE": "/img/verl.sqsh"}
    head = plan(cluster_from_env({**env, "LTE_CONTAINER_MOUNTS": "/data:/data"}), [])[0].argv
    assert "--container-image=/img/verl.sqsh" in head
    assert "--container-mounts=/shared/lte,/data:/data" in head and "--container-workdir=/shared/lte" in head
    assert head[head.index("--container-workdir=/shared/lte") + 1 :][:2] == ["ray", "start"]
    head = plan(cluster_from_env({**env, "LTE_CONTAINER_RUNTIME": "apptainer"}), [])[0].argv
    i = head.index("apptainer")
    assert head[i : i + 9] == [
        "apptainer", "exec", "--nv", "--bind", "/shared/lte", "--pwd", "/shared/lte", "/img/verl.sqsh", "ray"
    ]  # fmt: skip


def test_plan_refuses_layout_overrides_that_the_allocation_sets():
    c = cluster_from_env(FAKE)
    with pytest.raises(ValueError, match="sbatch --nodes=N --gpus-per-node=G"):
        plan(c, ["--preset", "qwen3-8b-lte", "trainer.nnodes=4"])


def test_sbatch_script_dry_mode_prints_the_commands(tmp_path):
    env = {
        **os.environ,
        **FAKE,
        "SLURM_SUBMIT_DIR": str(REPO),
        "LTE_SLURM_DRY": "1",
        "LTE_DATA_DIR": str(tmp_path / "data"),
    }
    env.pop("LTE_VENV", None)
    res = subprocess.run(
        ["bash", str(REPO / "scripts" / "slurm_lte.sbatch"), "--preset", "qwen3-8b-lte"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[0] == "[slurm] 3 node(s) x 4 GPUs; Ray head gpu01:6379"
    assert len(lines) == 6 and all(line.startswith("srun ") for line in lines[1:])
    assert lines[-1].endswith("bash run_lte.sh --preset qwen3-8b-lte trainer.nnodes=3 trainer.n_gpus_per_node=4")
    assert not (tmp_path / "data").exists()


def test_sbatch_script_refuses_outside_the_repository(tmp_path):
    env = {**os.environ, **FAKE, "SLURM_SUBMIT_DIR": str(tmp_path), "LTE_SLURM_DRY": "1"}
    res = subprocess.run(
        ["bash", str(REPO / "scripts" / "slurm_lte.sbatch")], env=env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2 and "not the lte-verl repository" in res.stderr


def test_execute_stops_background_steps_and_returns_the_failing_status(tmp_path):
    # Real processes stand in for srun (no SLURM here): a long-running "node" and a failing foreground step.
    marker = tmp_path / "after"
    cluster = Cluster(nodes=["localhost"], gpus_per_node=1)
    steps = [
        Step("node", ["sleep", "60"], background=True),
        Step("fails", ["bash", "-c", "exit 3"]),
        Step("never", ["touch", str(marker)]),
    ]
    t0 = time.monotonic()
    assert execute(cluster, steps) == 3
    assert time.monotonic() - t0 < 30  # the background "node" was stopped, not waited for
    assert not marker.exists()
    assert execute(cluster, [Step("ok", ["touch", str(marker)])]) == 0 and marker.exists()


# The trainer's side of a graceful stop (stop file -> save -> end of the loop) runs in tests/test_run_failures_e2e.py;
# here a small script stands in for the train step: it waits for LTE_STOP_FILE (or a SIGTERM) and says which came.
FAKE_TRAINER = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: (open(sys.argv[1], "w").write("SIGTERM"), sys.exit(143)))
open(sys.argv[1], "w").write("started")
while not os.path.exists(os.environ["LTE_STOP_FILE"]):
    time.sleep(0.05)
if os.environ.get("FAKE_LAST_STEP"):  # training ends by itself: the trainer leaves the stop file
    open(sys.argv[1], "w").write("finished training")
else:
    os.remove(os.environ["LTE_STOP_FILE"])
    open(sys.argv[1], "w").write("stopped at a step boundary")
"""

LAUNCHER = """
import sys
from recipe.lte.tools.slurm import Cluster, Step, execute
node, fake_trainer, record = sys.argv[1:]
steps = [Step("ray-node", [sys.executable, "-c", "import time; time.sleep(120)"], background=True),
         Step("train", [sys.executable, fake_trainer, record])]
sys.exit(execute(Cluster(nodes=["localhost"], gpus_per_node=1), steps))
"""


def _launch(tmp_path: Path, **extra_env: str) -> tuple[subprocess.Popen, Path, Path, Path]:
    """The launcher with a fake trainer, a fake `scontrol` on PATH (no SLURM here) and a stop file."""
    bin_dir, record, calls = tmp_path / "bin", tmp_path / "trainer.txt", tmp_path / "scontrol.txt"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    (tmp_path / "fake_trainer.py").write_text(FAKE_TRAINER)
    stop = tmp_path / "stop" / "file"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "LTE_STOP_FILE": str(stop),
        "SLURM_JOB_ID": "4242",
        "PYTHONPATH": str(REPO),
        **extra_env,
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, "localhost", str(tmp_path / "fake_trainer.py"), str(record)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not (record.exists() and record.read_text() == "started"):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()[0]
        time.sleep(0.05)
    return proc, record, calls, stop


def test_usr1_before_the_time_limit_stops_at_a_step_boundary_then_requeues(tmp_path):
    proc, record, calls, stop = _launch(tmp_path)
    proc.send_signal(signal.SIGUSR1)  # what sbatch --signal=B:USR1@SECONDS sends to the batch shell
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out
    assert record.read_text() == "stopped at a step boundary" and not stop.exists()
    assert calls.read_text().split() == ["requeue", "4242"], out
    assert "the time limit is near" in out and "requeueing job 4242" in out


def test_no_requeue_when_training_ended_by_itself_before_the_stop(tmp_path):
    proc, record, calls, stop = _launch(tmp_path, FAKE_LAST_STEP="1")
    proc.send_signal(signal.SIGUSR1)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out
    assert record.read_text() == "finished training"
    assert not calls.exists() and not stop.exists()  # nothing to resume; the stale stop file is gone


def test_sigterm_stops_the_train_step_and_the_nodes_without_requeue(tmp_path):
    proc, record, calls, _ = _launch(tmp_path)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)  # scancel, or the time limit itself
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert record.read_text() == "SIGTERM"  # handed to the train step
    assert not calls.exists()  # no requeue: the job was cancelled
    assert time.monotonic() - t0 < 30  # the background "node" was stopped, not waited for


def test_the_train_step_asks_a_cpu_run_to_join_the_cluster():
    from recipe.lte.demo.run import JOIN_ENV, joins_ray_cluster

    train = _by_name(plan(cluster_from_env(FAKE), []))["train"].argv
    exported = dict(kv.split("=", 1) for kv in train[5].removeprefix("--export=").split(",")[1:])
    assert exported[JOIN_ENV] == "1" and joins_ray_cluster(exported)  # the name the CPU demo reads


def test_every_step_uses_token_auth_when_the_head_will(tmp_path):
    # Ray 2.60's head turns token auth on when it finds a token; worker nodes and drivers use it only when told.
    token = tmp_path / ".ray" / "auth_token"
    assert ray_auth_env({"HOME": str(tmp_path)}) == {}  # no token anywhere: no auth, as the head decides
    token.parent.mkdir()
    token.write_text("0" * 64)
    assert ray_auth_env({"HOME": str(tmp_path)}) == {"RAY_AUTH_MODE": "token"}  # what any local ray.init() leaves
    assert ray_auth_env({"RAY_AUTH_TOKEN_PATH": str(token)}) == {"RAY_AUTH_MODE": "token"}
    assert ray_auth_env({"RAY_AUTH_TOKEN": "abc"}) == {"RAY_AUTH_MODE": "token"}
    assert ray_auth_env({"HOME": str(tmp_path), "RAY_AUTH_MODE": "disabled"}) == {}  # the user's choice stands
    steps = plan(cluster_from_env({**FAKE, "HOME": str(tmp_path)}), [])
    assert all(",RAY_AUTH_MODE=token" in next(a for a in s.argv if a.startswith("--export=")) for s in steps)
