"""Hydra entry point of the LTE recipe: ``python -m recipe.lte.main_lte [hydra overrides...]``.

Composes ``recipe/lte/config/lte_trainer.yaml`` (verl's ppo_trainer.yaml + the ``lte:`` block), fills the
project's defaults, refuses bad settings and checks the data files (``recipe.lte.data_check``) before anything
starts, then runs verl's V1 PPO loop with LTE's task runner, trainer, rollout stage and loss.
"""

from __future__ import annotations

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


def fill_defaults(config: DictConfig) -> DictConfig:
    """Project defaults that need a value computed at run time (absolute paths)."""
    import verl_ext.reward.math_reward

    with open_dict(config):
        if config.reward.custom_reward_function.get("path") is None:
            # verl loads custom rewards by file path inside its reward workers.
            config.reward.custom_reward_function.path = verl_ext.reward.math_reward.__file__
    return config


def prepare_config(config: DictConfig) -> DictConfig:
    """What ``main`` does before training starts: defaults, verl's validation, LTE's refusals."""
    register_lte_policy_loss()  # verl's validation looks policy_loss.loss_mode up in its registry
    auto_set_device(config)
    fill_defaults(config)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    check_config(config)
    return config


@hydra.main(config_path="config", config_name="lte_trainer", version_base=None)
def main(config: DictConfig) -> None:
    prepare_config(config)
    check_reference_data(config)  # lte.mode=luffy: every training row carries its reference solution
    check_run_data(config)  # before Ray: bad rows are refused (or dropped) here, not paid for in rollouts
    run_ppo(config, task_runner_class=ray.remote(LTETaskRunner))


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The recipe config composed as ``main`` sees it (hydra compose API), for dry runs and tests."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    config_dir = str(Path(__file__).resolve().parent / "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(config_name="lte_trainer", overrides=list(overrides or []))


if __name__ == "__main__":
    main()
