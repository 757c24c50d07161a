"""Hydra entry point of the LTE recipe: ``python -m recipe.lte.main_lte [hydra overrides...]``.

Composes ``recipe/lte/config/lte_trainer.yaml`` (verl's ppo_trainer.yaml + the ``lte:`` block), fills the
project's defaults, refuses bad settings and checks the data files (``recipe.lte.data_check``) before anything
starts, then runs verl's V1 PPO loop with LTE's task runner, trainer, rollout stage and loss.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping

import hydra
import ray
from omegaconf import DictConfig, open_dict
from verl.trainer.main_ppo import run_ppo
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils.config import validate_config
from verl.utils.device import auto_set_device

from recipe.lte.data_check import check_run_data
from recipe.lte.startup_checks import check_config, check_reference_data
from recipe.lte.trainer import LTETaskRunner
from verl_ext.loss.ppo_loss import register_lte_policy_loss

# Settings the Ray workers must see as the launching shell has them. Workers on other nodes (a joined cluster:
# RAY_ADDRESS, multi-node SLURM) start from their own node's environment, so these travel in the job's
# runtime_env: the logger's mode (without it an offline run's trainer actor calls wandb online and fails), the
# hub's offline switches, and the paths the config and verl's tensorboard logger read. Settings only, never
# credentials: verl prints the config and the loggers record it.
FORWARDED_ENV = (
    "WANDB_MODE",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "LTE_DATA_DIR",
    "TENSORBOARD_DIR",
    "LTE_STOP_FILE",  # the watchdog reads it in the trainer actor (docs/robustness.md)
    "LTE_RUN_ID",  # the CPU demo finds (and ends) its processes by it (recipe/lte/tools/processes.py)
    # verl's and the CPU platform's switches (verl_ext.cpu.env.cpu_env): a CPU run on a joined cluster
    "VERL_USE_EXTERNAL_MODULES",
    "VERL_PLATFORM",
    "VERL_ENGINE_DEVICE",
    "VLLM_TARGET_DEVICE",
)


def forward_env(config: DictConfig, env: Mapping[str, str] | None = None) -> list[str]:
    """Put each ``FORWARDED_ENV`` variable set in ``env`` into ``ray_kwargs.ray_init.runtime_env.env_vars``
    (a value the config already has wins); return the names added."""
    env = os.environ if env is None else env
    added = []
    with open_dict(config):
        runtime_env = config.ray_kwargs.ray_init.runtime_env
        if runtime_env.get("env_vars") is None:
            runtime_env.env_vars = {}
        for name in FORWARDED_ENV:
            if env.get(name) is not None and name not in runtime_env.env_vars:
                runtime_env.env_vars[name] = env[name]
                added.append(name)
    return added


def fill_defaults(config: DictConfig) -> DictConfig:
    """Project defaults that need a value computed at run time (absolute paths, the launching environment)."""
    import verl_ext.reward.math_reward

    with open_dict(config):
        if config.reward.custom_reward_function.get("path") is None:
            # verl loads custom rewards by file path inside its reward workers.
            config.reward.custom_reward_function.path = verl_ext.reward.math_reward.__file__
    forward_env(config)
    return config


def prepare_config(config: DictConfig) -> DictConfig:
    """What ``main`` does before training starts: defaults, verl's validation, LTE's refusals."""
    register_lte_policy_loss()  # verl's validation looks policy_loss.loss_mode up in its registry
    auto_set_device(config)
    fill_defaults(config)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    check_config(config)
    return config


def _stop_like_ctrl_c(signum: int, frame) -> None:
    # os.write: a print could re-enter stdout's buffer if the signal came in the middle of one.
    os.write(2, f"[LTE] {signal.Signals(signum).name} received: stopping the run as Ctrl-C does\n".encode())
    raise KeyboardInterrupt(f"{signal.Signals(signum).name} received")


def install_stop_handlers() -> None:
    """SIGTERM (``kill``, ``timeout``, a supervisor, a container stop) and SIGHUP (the terminal closed) end the
    run as Ctrl-C does: Ray's driver shuts its cluster down. Without this, SIGHUP kills the driver outright and
    Ray's agents outlive it (Ray 2.60); Ray's own SIGTERM handler aborts the driver (see ``_AfterRayInit``)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop_like_ctrl_c)


class _AfterRayInit:
    """``ray.remote(LTETaskRunner)`` for verl's ``run_ppo``, which creates the task runner right after its
    ``ray.init``: the moment to take SIGTERM back. Upstream workaround (Ray 2.60): ``ray.init`` installs a crash
    handler for SIGTERM in the driver that aborts it (exit -6), so Ray's processes are left to die by themselves.
    Delete when run_ppo lets a caller act after ray.init, or Ray's driver shuts down on SIGTERM."""

    def __init__(self, actor_cls):
        self._actor_cls = actor_cls

    def options(self, **kwargs) -> _AfterRayInit:
        return _AfterRayInit(self._actor_cls.options(**kwargs))

    def remote(self, *args, **kwargs):
        install_stop_handlers()
        return self._actor_cls.remote(*args, **kwargs)


@hydra.main(config_path="config", config_name="lte_trainer", version_base=None)
def main(config: DictConfig) -> None:
    install_stop_handlers()
    prepare_config(config)
    check_reference_data(config)  # lte.mode=luffy: every training row carries its reference solution
    check_run_data(config)  # before Ray: bad rows are refused (or dropped) here, not paid for in rollouts
    run_ppo(config, task_runner_class=_AfterRayInit(ray.remote(LTETaskRunner)))


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The recipe config composed as ``main`` sees it (hydra compose API), for dry runs and tests."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    config_dir = str(Path(__file__).resolve().parent / "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(config_name="lte_trainer", overrides=list(overrides or []))


if __name__ == "__main__":
    main()
