"""The preflight's Ray check: when ``RAY_ADDRESS`` names a running cluster, join it with the run's runtime_env,
run one task on every node and check what it sees there (GPUs, the project, verl's version, the logger's settings).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass

from recipe.lte.tools.checklist import FAIL, OK, SKIP, Check


@dataclass(frozen=True)
class NodeReport:
    """What a task scheduled on one Ray node saw there (``probe_ray_cluster``)."""

    node: str
    gpus: int
    env: dict[str, str | None]
    verl: str | None  # verl's version on that node, None if not importable
    project: bool  # recipe.lte importable there
    error: str = ""


def _node_task(names: list[str]) -> dict:
    """Runs on a Ray node with the run's runtime_env: what the trainer's workers would see there."""
    import socket

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "host": socket.gethostname(),
        "env": {n: os.environ.get(n) for n in names},
        "verl": version("verl"),
        "project": importlib.util.find_spec("recipe.lte") is not None,
    }


def probe_ray_cluster(address: str, runtime_env: dict, env_names: list[str], timeout_s: float = 60) -> list[NodeReport]:
    """Join the Ray cluster at ``address`` with the run's ``runtime_env`` and run one task on every alive node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray.init(address=address, runtime_env=runtime_env, log_to_driver=False, logging_level="ERROR")
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        task = ray.remote(num_cpus=0)(_node_task)
        refs = [
            task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(env_names)
            for n in nodes
        ]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        reports = []
        for n, ref in zip(nodes, refs, strict=True):
            gpus = int(n.get("Resources", {}).get("GPU", 0))
            label = n.get("NodeManagerAddress", n["NodeID"][:8])
            if ref not in ready:
                reports.append(NodeReport(label, gpus, {}, None, False, f"no answer in {timeout_s:.0f} s"))
                continue
            try:
                got = ray.get(ref)
            except Exception as e:  # the task's own failure (e.g. the runtime_env cannot be set up there)
                reports.append(NodeReport(label, gpus, {}, None, False, f"{type(e).__name__}: {str(e)[:200]}"))
                continue
            reports.append(NodeReport(f"{label} ({got['host']})", gpus, got["env"], got["verl"], got["project"]))
        return reports
    finally:
        ray.shutdown()


def check_ray_cluster(
    address: str | None,
    nodes: list[NodeReport] | None,
    nnodes: int,
    per_node: int,
    expected_env: Mapping[str, str],
    verl_version: str,
    probe_error: str = "",
) -> Check:
    """A joined cluster (``RAY_ADDRESS``) with the run's nodes and GPUs, the project, verl and the logger's
    settings on every node."""
    name = "ray"
    if not address:
        return Check(name, SKIP, "RAY_ADDRESS not set: the run starts its own Ray on this node")
    if nodes is None:
        return Check(
            name,
            FAIL,
            f"cannot join the Ray cluster at {address}: {probe_error}",
            "start it (ray start --head, or scripts/slurm_lte.sbatch) or unset RAY_ADDRESS",
        )
    problems = []
    gpu_nodes = [n for n in nodes if n.gpus > 0]
    total = sum(n.gpus for n in nodes)
    if len(gpu_nodes) < nnodes or total < nnodes * per_node:
        problems.append(
            f"{len(gpu_nodes)} node(s) with GPUs and {total} GPUs; the run needs trainer.nnodes="
            f"{nnodes} x trainer.n_gpus_per_node={per_node}"
        )
    for n in gpu_nodes:
        if n.gpus < per_node:
            problems.append(f"{n.node} has {n.gpus} GPUs < trainer.n_gpus_per_node={per_node}")
    for n in nodes:
        if n.error:
            problems.append(f"{n.node}: {n.error}")
            continue
        if not n.project:
            problems.append(f"{n.node}: recipe.lte is not importable (install the project there)")
        if n.verl != verl_version:
            problems.append(f"{n.node}: verl {n.verl} (here {verl_version})")
        wrong = {k: n.env.get(k) for k, v in expected_env.items() if n.env.get(k) != v}
        if wrong:
            problems.append(f"{n.node}: sees {wrong}, expected {dict(expected_env)}")
    summary = f"{address}: {len(nodes)} node(s), {total} GPUs"
    if problems:
        return Check(
            name,
            FAIL,
            f"{summary}; " + "; ".join(problems),
            "join every node with its GPUs (ray start --address ... --num-gpus N), install the same environment "
            "and the project on each, and forward settings in ray_kwargs.ray_init.runtime_env.env_vars",
        )
    return Check(name, OK, f"{summary}; every node has the project, verl {verl_version} and {dict(expected_env)}")


def ray_runtime_env(config) -> dict:
    """The runtime_env verl's ``run_ppo`` gives ``ray.init``: verl's defaults merged with the config's."""
    from omegaconf import OmegaConf
    from verl.trainer.constants_ppo import get_ppo_ray_runtime_env

    merged = OmegaConf.merge(get_ppo_ray_runtime_env(config), config.ray_kwargs.ray_init.get("runtime_env") or {})
    return {k: v for k, v in OmegaConf.to_container(merged, resolve=True).items() if v is not None}
