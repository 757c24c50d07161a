"""The preflight's Ray check on a real joined cluster: a Ray head started with ``ray start`` (as
scripts/slurm_lte.sbatch starts each node), joined through RAY_ADDRESS, probed by a task on its node.

The head is started with its own environment (no WANDB_MODE), like a node whose Ray was started before the
launching shell set it: what a worker sees there is what the run's runtime_env gives it, nothing else. The head and
its clients get a HOME of their own: Ray enables token authentication when ``~/.ray/auth_token`` exists, and on a
shared machine another user's run may write that file between our start and our connect.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from recipe.lte.tools import preflight as P
from recipe.lte.tools import preflight_ray as R
from recipe.lte.tools.processes import kill_run, run_pids

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A one-node Ray cluster (no GPUs) of this test only, and the HOME its clients use; every process of it is
    ended afterwards."""
    run_id = f"pytest-pfray-{uuid.uuid4().hex[:8]}"
    temp_dir = f"/tmp/lte-ray-{run_id[-8:]}"  # short: Ray's socket paths live under it
    home = tmp_path_factory.mktemp("ray_home")
    port = _free_port()
    env = {
        k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "WANDB_MODE") and not k.startswith("RAY_AUTH_")
    }
    env.update(LTE_RUN_ID=run_id, RAY_USAGE_STATS_ENABLED="0", HOME=str(home))
    ray = str(Path(sys.executable).parent / "ray")
    cmd = [
        ray,
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--num-cpus=2",
        "--num-gpus=0",
        f"--temp-dir={temp_dir}",
        "--include-dashboard=false",
        "--disable-usage-stats",
    ]
    try:
        started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        yield f"127.0.0.1:{port}", str(home)
    finally:
        kill_run(run_id)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert run_pids(run_id) == []


def test_probe_sees_what_the_runtime_env_forwards_and_nothing_else(ray_head, monkeypatch):
    address, home = ray_head
    monkeypatch.setenv("HOME", home)
    verl = importlib.metadata.version("verl")
    forwarded = R.probe_ray_cluster(address, {"env_vars": {"WANDB_MODE": "offline"}}, ["WANDB_MODE"])
    assert len(forwarded) == 1
    node = forwarded[0]
    assert node.env == {"WANDB_MODE": "offline"} and node.verl == verl and node.project and node.gpus == 0
    expected = {"WANDB_MODE": "offline"}
    # The node has no GPU: the layout's 1 x 8 GPUs are missing.
    c = R.check_ray_cluster(address, forwarded, 1, 8, expected, verl)
    assert c.status == P.FAIL and "0 GPUs" in c.message and "sees" not in c.message
    # Without forwarding, the worker on the joined node does not have the launching shell's setting.
    bare = R.probe_ray_cluster(address, {}, ["WANDB_MODE"])
    assert bare[0].env == {"WANDB_MODE": None}
    c = R.check_ray_cluster(address, bare, 1, 8, expected, verl)
    assert c.status == P.FAIL and "sees {'WANDB_MODE': None}" in c.message


def test_run_lte_preflight_joins_the_cluster_named_by_ray_address(ray_head, tmp_path):
    # No wandb login (HOME without .netrc): run_lte.sh falls back to WANDB_MODE=offline, the entry point's
    # config forwards it, and the task on the joined node sees it.
    address, home = ray_head
    # RAY_AUTH_*: an earlier test's local ray.init() in this pytest process sets RAY_AUTH_MODE=token in os.environ
    # (Ray 2.60 enables token auth for every new local cluster); this head has none.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "RAY_AUTH_"))}
    env.update(
        RAY_ADDRESS=address,
        HOME=home,
        LTE_DATA_DIR=str(tmp_path / "data"),
        LTE_CKPT_DIR=str(tmp_path / "ckpt"),
        PATH="/usr/bin:/bin",
    )
    res = subprocess.run(
        ["bash", str(REPO / "run_lte.sh"), "--preflight", "--preset", "qwen3-4b-lte"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
    ray_line = next(line for line in res.stdout.splitlines() if line.strip().startswith("FAIL  ray"))
    assert f"{address}: 1 node(s), 0 GPUs" in ray_line and "sees" not in ray_line
    logger_line = next(line for line in res.stdout.splitlines() if " logger " in line)
    assert logger_line.strip().startswith("ok") and "WANDB_MODE=offline" in logger_line
