"""Multi-node launch under SLURM: Ray head on the first node, Ray workers on the others, the trainer on the head.

Called by ``scripts/slurm_lte.sbatch`` inside an allocation (standard library only, so the host's python3 can run
it outside a container):

    python3 -m recipe.lte.tools.slurm launch [--dry] -- --preset qwen3-8b-lte [hydra overrides...]
    python -m recipe.lte.tools.slurm wait-ray --address HOST:PORT --gpus 16   # inside the runtime: wait for the GPUs

``plan`` assembles every command from the allocation (``cluster_from_env``) as plain argument lists: ``--dry``
prints them, otherwise ``execute`` runs them (Ray nodes in the background, the trainer in the foreground).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class Cluster:
    """An allocation and how to run commands on it (knobs: sbatch options and LTE_* environment variables)."""

    nodes: list[str]
    gpus_per_node: int
    cpus_per_node: int | None = None
    head_ip: str | None = None  # None: the first node's name
    ray_port: int = 6379
    # `ray start --temp-dir`: the job's own. In Ray's default (/tmp/ray) `ray start` leaves the address of its
    # cluster behind, and a later plain ray.init() on that node (another user's, another job's) would try to join it.
    ray_temp_dir: str = "/tmp/ray-lte-0"
    repo: str = str(REPO)
    venv: str | None = None  # a virtual environment present on every node (shared file system)
    container_image: str | None = None  # instead of a venv: an image with the project's environment
    container_runtime: str = "pyxis"  # pyxis (srun --container-image) or apptainer
    container_mounts: str | None = None
    wait_timeout_s: int = 900
    extra_env: dict[str, str] = field(default_factory=dict)  # every step gets these (srun --export)

    @property
    def head(self) -> str:
        return self.nodes[0]

    @property
    def address(self) -> str:
        return f"{self.head_ip or self.head}:{self.ray_port}"


@dataclass(frozen=True)
class Step:
    name: str
    argv: list[str]
    background: bool = False  # Ray nodes run (--block) for the whole job; the rest run in order

    def shell(self) -> str:
        return shlex.join(self.argv) + (" &" if self.background else "")


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compressed host list, e.g. ``gpu[01-03,07],login5`` -> gpu01 gpu02 gpu03 gpu07 login5."""
    hosts: list[str] = []
    for m in re.finditer(r"([^,\[]+)(?:\[([^\]]*)\])?(?:,|$)", nodelist.strip()):
        prefix, ranges = m.group(1), m.group(2)
        if not prefix:
            continue
        if ranges is None:
            hosts.append(prefix)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            if not lo.isdigit() or (hi and not hi.isdigit()):
                raise ValueError(f"SLURM_JOB_NODELIST={nodelist!r}: cannot read the range {part!r}")
            for i in range(int(lo), int(hi or lo) + 1):
                hosts.append(f"{prefix}{i:0{len(lo)}d}")
    if not hosts:
        raise ValueError(f"SLURM_JOB_NODELIST={nodelist!r} names no node")
    return hosts


def _gpus_from_env(env: Mapping[str, str]) -> int:
    for key in ("LTE_GPUS_PER_NODE", "SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE"):
        value = env.get(key)
        if value:
            count = value.rsplit(":", 1)[-1]  # "8" or "h100:8"
            if not count.isdigit() or int(count) < 1:
                raise ValueError(f"{key}={value!r}: expected a GPU count like 8 or h100:8")
            return int(count)
    raise ValueError("no GPUs in the allocation: submit with --gpus-per-node=N (or set LTE_GPUS_PER_NODE)")


def ray_auth_env(env: Mapping[str, str]) -> dict[str, str]:
    """``RAY_AUTH_MODE`` for every step, decided once, as the head will decide it.

    Ray 2.60's ``ray start --head`` turns token authentication on by itself when it finds a token
    (``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``, which any local ``ray.init()``
    writes), but ``ray start --address`` and drivers send the token only with ``RAY_AUTH_MODE=token``: the worker
    nodes would never join (wait-ray times out). Every node reads the token from the same place (a shared home).
    """
    if env.get("RAY_AUTH_MODE"):
        return {}  # the user's choice, inherited by every step
    path = env.get("RAY_AUTH_TOKEN_PATH") or (f"{env['HOME']}/.ray/auth_token" if env.get("HOME") else "")
    return {"RAY_AUTH_MODE": "token"} if env.get("RAY_AUTH_TOKEN") or (path and os.path.isfile(path)) else {}


def cluster_from_env(env: Mapping[str, str] | None = None) -> Cluster:
    """The allocation from SLURM's variables plus the LTE_* knobs; errors name the variable to fix."""
    env = os.environ if env is None else env
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise ValueError("SLURM_JOB_NODELIST is not set: run inside an allocation (sbatch scripts/slurm_lte.sbatch)")
    nodes = expand_nodelist(nodelist)
    cpus = env.get("SLURM_CPUS_ON_NODE")
    venv, image = env.get("LTE_VENV") or None, env.get("LTE_CONTAINER_IMAGE") or None
    if venv and image:
        raise ValueError("set LTE_VENV or LTE_CONTAINER_IMAGE, not both")
    runtime = env.get("LTE_CONTAINER_RUNTIME", "pyxis")
    if runtime not in ("pyxis", "apptainer"):
        raise ValueError(f"LTE_CONTAINER_RUNTIME={runtime!r}: choose pyxis or apptainer")
    return Cluster(
        nodes=nodes,
        gpus_per_node=_gpus_from_env(env),
        cpus_per_node=int(cpus) if cpus and cpus.isdigit() else None,
        head_ip=env.get("LTE_RAY_HEAD_IP") or None,
        ray_port=int(env.get("LTE_RAY_PORT", "6379")),
        ray_temp_dir=env.get("LTE_SLURM_RAY_TEMP_DIR") or f"/tmp/ray-lte-{env.get('SLURM_JOB_ID', '0')}",
        repo=env.get("LTE_REPO") or env.get("SLURM_SUBMIT_DIR") or str(REPO),
        venv=venv,
        container_image=image,
        container_runtime=runtime,
        container_mounts=env.get("LTE_CONTAINER_MOUNTS") or None,
        wait_timeout_s=int(env.get("LTE_RAY_WAIT_S", "900")),
        extra_env=ray_auth_env(env),
    )


def _on_node(cluster: Cluster, node: str, command: list[str], env: dict[str, str] | None = None) -> list[str]:
    """``srun`` one task on ``node`` in the project's runtime (venv or container), in the repository."""
    env = {**(env or {}), **cluster.extra_env}
    if cluster.venv and not cluster.container_image:
        # The venv's own executables; run_lte.sh picks $VIRTUAL_ENV/bin/python.
        env["VIRTUAL_ENV"] = cluster.venv
        if command[0] in ("ray", "python"):
            command = [f"{cluster.venv}/bin/{command[0]}", *command[1:]]
    exports = ",".join(["ALL", *(f"{k}={v}" for k, v in env.items())])
    argv = ["srun", "--overlap", "--nodes=1", "--ntasks=1", f"--nodelist={node}", f"--export={exports}"]
    mounts = ",".join(m for m in (cluster.repo, cluster.container_mounts) if m)
    if cluster.container_image and cluster.container_runtime == "pyxis":
        argv += [
            f"--container-image={cluster.container_image}",
            f"--container-mounts={mounts}",
            f"--container-workdir={cluster.repo}",
        ]
    elif cluster.container_image:  # apptainer
        argv += ["apptainer", "exec", "--nv", "--bind", mounts, "--pwd", cluster.repo, cluster.container_image]
    return argv + command


def _ray_node_options(cluster: Cluster) -> list[str]:
    res = [f"--num-gpus={cluster.gpus_per_node}"]
    res += [f"--num-cpus={cluster.cpus_per_node}"] if cluster.cpus_per_node else []
    return [*res, f"--temp-dir={cluster.ray_temp_dir}"]


def plan(cluster: Cluster, run_args: list[str]) -> list[Step]:
    """Every command of a multi-node run, in order. ``run_args`` go to run_lte.sh (preset and overrides)."""
    if any(a.startswith(("trainer.nnodes=", "trainer.n_gpus_per_node=")) for a in run_args):
        raise ValueError(
            "trainer.nnodes / trainer.n_gpus_per_node come from the allocation: submit with "
            "sbatch --nodes=N --gpus-per-node=G instead of overriding them"
        )
    # Without a known IP, Ray picks the head's address itself; workers reach it by the node name.
    ip_flag = [f"--node-ip-address={cluster.head_ip}"] if cluster.head_ip else []
    steps = [
        Step(
            "ray-head",
            _on_node(
                cluster,
                cluster.head,
                [
                    "ray",
                    "start",
                    "--head",
                    *ip_flag,
                    f"--port={cluster.ray_port}",
                    *_ray_node_options(cluster),
                    "--block",
                ],
            ),
            background=True,
        )
    ]
    for node in cluster.nodes[1:]:
        steps.append(
            Step(
                f"ray-worker-{node}",
                _on_node(
                    cluster,
                    node,
                    ["ray", "start", f"--address={cluster.address}", *_ray_node_options(cluster), "--block"],
                ),
                background=True,
            )
        )
    total_gpus = len(cluster.nodes) * cluster.gpus_per_node
    steps.append(
        Step(
            "wait-ray",
            _on_node(
                cluster,
                cluster.head,
                [
                    "python",
                    "-m",
                    "recipe.lte.tools.slurm",
                    "wait-ray",
                    f"--address={cluster.address}",
                    f"--gpus={total_gpus}",
                    f"--timeout={cluster.wait_timeout_s}",
                ],
            ),
        )
    )
    train = [
        "bash",
        "run_lte.sh",
        *run_args,
        f"trainer.nnodes={len(cluster.nodes)}",
        f"trainer.n_gpus_per_node={cluster.gpus_per_node}",
    ]
    # RAY_ADDRESS: verl's ray.init joins the cluster above. LTE_JOIN_RAY_CLUSTER=1: so does a run on the CPU
    # platform, which otherwise starts a local cluster of its own (recipe/lte/demo/run.py: joins_ray_cluster).
    join = {"RAY_ADDRESS": cluster.address, "LTE_JOIN_RAY_CLUSTER": "1"}
    steps.append(Step("train", _on_node(cluster, cluster.head, train, env=join)))
    return steps


def wait_for_port(host: str, port: int, timeout_s: float) -> None:
    """Block until ``host:port`` accepts TCP connections (the Ray head is up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=5):
                return
        except OSError as e:
            if time.monotonic() > deadline:
                raise TimeoutError(f"Ray head {host}:{port} did not come up in {timeout_s:.0f} s ({e})") from e
            time.sleep(2)


def wait_ray(address: str, gpus: int, timeout_s: float) -> None:
    """Block until the Ray cluster at ``address`` reports ``gpus`` GPUs (every worker node joined)."""
    import ray

    ray.init(address=address, log_to_driver=False)
    try:
        deadline = time.monotonic() + timeout_s
        while (have := int(ray.cluster_resources().get("GPU", 0))) < gpus:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Ray cluster {address} has {have} of {gpus} GPUs after {timeout_s:.0f} s: "
                    "a worker node did not join (see its ray-worker output in the job log)"
                )
            time.sleep(5)
        print(f"[slurm] Ray cluster {address}: {have} GPUs")
    finally:
        ray.shutdown()


class _Terminated(Exception):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def execute(cluster: Cluster, steps: list[Step], env: Mapping[str, str] | None = None) -> int:
    """Run ``steps``: Ray nodes in the background, the rest in order; stop the Ray nodes at the end.

    Signals (the sbatch script ``exec``s this launcher, so SLURM's signals for the batch shell arrive here):
    - SIGUSR1, sent ``--signal=B:USR1@SECONDS`` before the time limit: create ``LTE_STOP_FILE``; the trainer saves
      at the end of its current step, removes the file and stops; then the job is requeued (``scontrol requeue``)
      and the same command resumes from that checkpoint (not when training ended by itself meanwhile);
    - SIGTERM, SIGHUP, SIGINT (``scancel``, the time limit itself): SIGTERM to the running step (srun hands it to
      run_lte.sh's trainer, which shuts its Ray driver down), then the Ray nodes are stopped.
    """
    env = os.environ if env is None else env
    stop_file, job_id = env.get("LTE_STOP_FILE"), env.get("SLURM_JOB_ID")
    state = {"stop_requested": False}

    def request_stop(signum, frame):
        state["stop_requested"] = True
        if stop_file:
            Path(stop_file).parent.mkdir(parents=True, exist_ok=True)
            Path(stop_file).touch()
        where = f"LTE_STOP_FILE={stop_file}" if stop_file else "LTE_STOP_FILE is not set: it cannot be asked"
        name = signal.Signals(signum).name
        print(f"[slurm] {name}: the time limit is near; the trainer stops after its current step ({where})", flush=True)

    def terminate(signum, frame):
        raise _Terminated(signum)

    previous = {sig: signal.signal(sig, terminate) for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, request_stop)
    if stop_file and os.path.exists(stop_file):
        os.remove(stop_file)  # left by an earlier attempt: it would stop this one after its first step
    background: list[subprocess.Popen] = []
    current: subprocess.Popen | None = None
    rc = 0
    try:
        for step in steps:
            print(f"[slurm] {step.name}: {step.shell()}", flush=True)
            if step.background:
                background.append(subprocess.Popen(step.argv))
                if step.name == "ray-head":
                    wait_for_port(cluster.head_ip or cluster.head, cluster.ray_port, 120)
                continue
            current = subprocess.Popen(step.argv)
            rc = current.wait()
            current = None
            if rc != 0:
                print(f"[slurm] {step.name} failed with exit status {rc}", file=sys.stderr)
                return rc
        return 0
    except _Terminated as t:
        print(f"[slurm] {t} received: stopping the job's steps", file=sys.stderr, flush=True)
        for sig in previous:  # nothing interrupts the cleanup
            signal.signal(sig, signal.SIG_IGN)
        if current is not None:
            _stop(current, grace_s=120)  # the trainer's Ray driver shuts down; a checkpoint write may finish
        rc = 128 + t.signum
        return rc
    finally:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        for proc in background:  # srun forwards the signal: `ray start --block` stops its node
            proc.terminate()
        for proc in background:
            _stop(proc, grace_s=60)
        # The trainer removes the stop file when it stops early; if it is still there, training ended by itself.
        stopped_early = state["stop_requested"] and rc == 0 and bool(stop_file) and not os.path.exists(stop_file)
        if stop_file and os.path.exists(stop_file):
            os.remove(stop_file)
        if stopped_early and job_id and shutil.which("scontrol"):
            print(f"[slurm] requeueing job {job_id}: it resumes from the checkpoint just saved", flush=True)
            subprocess.run(["scontrol", "requeue", job_id])
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM (unless already sent), then SIGKILL after ``grace_s``."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _resolve_head_ip(cluster: Cluster) -> Cluster:
    if cluster.head_ip:
        return cluster
    try:
        ip = socket.gethostbyname(cluster.head)
    except OSError:
        return cluster  # Ray resolves the name itself
    return Cluster(**{**cluster.__dict__, "head_ip": ip})


def _nodes_via_scontrol(cluster: Cluster, nodelist: str) -> Cluster:
    """Prefer scontrol's expansion when it is there (it knows every host-list form)."""
    if not shutil.which("scontrol"):
        return cluster
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return Cluster(**{**cluster.__dict__, "nodes": out.stdout.split()})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recipe.lte.tools.slurm", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    launch = sub.add_parser("launch", help="start Ray on the allocation and train on the head node")
    launch.add_argument("--dry", action="store_true", help="print the commands, run nothing")
    launch.add_argument("run_args", nargs=argparse.REMAINDER, help="-- then run_lte.sh's arguments")
    wait = sub.add_parser("wait-ray", help="wait until a Ray cluster has the given number of GPUs")
    wait.add_argument("--address", required=True)
    wait.add_argument("--gpus", type=int, required=True)
    wait.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args(argv)

    if args.cmd == "wait-ray":
        wait_ray(args.address, args.gpus, args.timeout)
        return 0
    run_args = args.run_args[1:] if args.run_args[:1] == ["--"] else args.run_args
    try:
        cluster = cluster_from_env()
        if not args.dry:
            cluster = _resolve_head_ip(_nodes_via_scontrol(cluster, os.environ["SLURM_JOB_NODELIST"]))
        steps = plan(cluster, run_args)
    except ValueError as e:
        print(f"[slurm] {e}", file=sys.stderr)
        return 2
    print(f"[slurm] {len(cluster.nodes)} node(s) x {cluster.gpus_per_node} GPUs; Ray head {cluster.address}")
    if args.dry:
        for step in steps:
            print(step.shell())
        return 0
    return execute(cluster, steps)


if __name__ == "__main__":
    sys.exit(main())
