"""LTE's trainer glue: verl 0.9.1's sync V1 trainer, extended.

- ``check_config``: refuses, at start-up, settings LTE cannot honour, naming the key and the fix.
- ``LTETrainer(PPOTrainerSync)``: installs the mixed-policy loss in the actor workers and logs LTE's metrics
  (and the rows the start-up data check dropped, ``recipe.lte.data_check``).
- ``LTETaskRunner(TaskRunnerV1)``: runs ``LTETrainer`` under the trainer name "sync" (verl's replay buffer
  keys its semantics on that literal name; a new name would silently switch to async behaviour).
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import transfer_queue as tq
from omegaconf import DictConfig, OmegaConf
from verl.trainer.main_ppo import TaskRunnerV1
from verl.trainer.ppo.v1 import trainer_base
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from recipe.lte import core
from recipe.lte.agent_loop import ROW_FIELDS, LTEAgentLoopManager, rows_from_fields
from recipe.lte.data_check import dropped_metrics
from recipe.lte.summary import METRICS_FILE
from verl_ext.losses import LTELossConfig, check_loss_config, make_lte_loss_fn

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "INFO"))


def lte_config(config: DictConfig) -> core.LTEConfig:
    """``core.LTEConfig`` from the ``lte:`` block (validated)."""
    block = config.get("lte", None)
    return core.LTEConfig.from_dict(OmegaConf.to_container(block, resolve=True) if block is not None else None)


def lte_loss_config(config: DictConfig) -> LTELossConfig:
    """``LTELossConfig`` from ``lte.loss`` (validated)."""
    return LTELossConfig.from_config(OmegaConf.select(config, "lte.loss", default=None))


def check_config(config: DictConfig) -> None:
    """Refuse configurations LTE cannot honour. Each error names the key and the fix."""
    lte = lte_config(config)
    rollout = config.actor_rollout_ref.rollout
    errors: list[str] = []
    try:  # the loss's own refusals: loss mode, behaviour log-probs, rollout correction
        check_loss_config(OmegaConf.select(config, "lte.loss"), config.actor_rollout_ref, config.algorithm)
    except ValueError as e:
        errors.append(str(e))

    def refuse(cond: bool, msg: str) -> None:
        if cond:
            errors.append(msg)

    refuse(not config.trainer.get("use_v1", True), "trainer.use_v1=false: LTE extends the V1 trainer; set it true")
    refuse(
        config.trainer.v1.trainer_mode != "sync",
        f"trainer.v1.trainer_mode={config.trainer.v1.trainer_mode}: LTE extends the sync trainer; set it to sync",
    )
    refuse(
        config.algorithm.adv_estimator != "grpo",
        f"algorithm.adv_estimator={config.algorithm.adv_estimator}: LTE is defined on GRPO's group advantages; "
        "set algorithm.adv_estimator=grpo",
    )
    refuse(rollout.n < 2, f"actor_rollout_ref.rollout.n={rollout.n}: groups need at least 2 rollouts")
    manager = rollout.get("agent", {}).get("agent_loop_manager_class")
    refuse(
        manager != f"{LTEAgentLoopManager.__module__}.{LTEAgentLoopManager.__qualname__}",
        f"actor_rollout_ref.rollout.agent.agent_loop_manager_class={manager}: LTE's rollout stage is "
        "recipe.lte.agent_loop.LTEAgentLoopManager; set it so",
    )
    rm = config.reward.get("reward_model", {})
    refuse(
        bool(rm.get("enable", False)) and not rm.get("enable_resource_pool", False),
        "reward.reward_model.enable=true without reward.reward_model.enable_resource_pool: a colocated reward "
        "model scores after rollout, but LTE must see scores during rollout; give it its own resource pool or "
        "use the rule-based reward",
    )
    refuse(
        bool(config.get("distillation", {}).get("enabled", False)),
        "distillation.enabled=true: on-policy distillation is not supported with LTE; set it to false",
    )
    refuse(
        bool(rollout.get("enable_rollout_routing_replay", False)),
        "actor_rollout_ref.rollout.enable_rollout_routing_replay=true: routing records of hinted responses belong "
        "to another prompt; set it to false",
    )
    if lte.mode == "lte":
        room = rollout.prompt_length - config.data.max_prompt_length
        refuse(
            room < lte.min_hint_room_tokens,
            f"actor_rollout_ref.rollout.prompt_length={rollout.prompt_length} leaves {room} tokens above "
            f"data.max_prompt_length={config.data.max_prompt_length} for the hint, fewer than "
            f"lte.min_hint_room_tokens={lte.min_hint_room_tokens}; raise rollout.prompt_length to at least "
            f"{config.data.max_prompt_length + lte.min_hint_room_tokens}",
        )
        refuse(
            not config.data.get("filter_overlong_prompts", False),
            "data.filter_overlong_prompts=false: prompts longer than data.max_prompt_length would leave no room "
            "for a hint; set it to true",
        )
    if errors:
        raise ValueError("LTE cannot run with this configuration:\n  - " + "\n  - ".join(errors))


def _is_number(v) -> bool:
    try:
        return np.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def format_step_line(step: int, m: dict) -> str:
    """``[LTE step 3] groups all/some/none 2/3/3 -> 2/5/1 | extra phases 3 (hint 2 ...), skipped 0, bad ground truth
    0, errors 0 | rescued 2, replaced 3 | on-policy acc 0.250``"""
    if not m:
        return f"[LTE step {step}] no LTE info in this batch"

    def g(key: str) -> int:
        return int(m.get(f"lte/{key}", 0))

    before = "/".join(str(g(f"groups/{c}_before")) for c in core.GROUP_CLASSES)
    after = "/".join(str(g(f"groups/{c}_after")) for c in core.GROUP_CLASSES)
    kinds = " ".join(f"{k} {g(f'extra/kind_{k}')}" for k in (*core.HINT_KINDS, "unhinted") if g(f"extra/kind_{k}"))
    skipped = g("extra/skipped_too_long") + g("extra/skipped_no_hint")
    # Groups whose ground truth the reward can never match: a data problem, so named apart from the skips.
    bad_gt = g("extra/skipped_bad_ground_truth")
    return (
        f"[LTE step {step}] groups all/some/none {before} -> {after} | extra phases {g('extra/ran')}"
        f"{' (' + kinds + ')' if kinds else ''}, skipped {skipped}, bad ground truth {bad_gt}, errors "
        f"{g('extra/error')} | rescued "
        f"{g('extra/rescued')}, replaced {g('extra/replaced')} | on-policy acc {m.get('lte/on_policy_acc', 0.0):.3f}"
    )


class LTETrainer(PPOTrainerSync):
    """``PPOTrainerSync`` + LTE's loss in the actor workers + LTE's per-step metrics."""

    def __init__(self, config: DictConfig):
        check_config(config)
        super().__init__(config)
        self.lte = lte_config(config)
        # Rows the start-up data check dropped (lte.data.on_bad_rows=skip), logged with every step.
        self._data_metrics = dropped_metrics(config.trainer.default_local_dir)

    def on_init_end(self):
        super().on_init_end()
        # verl installs partial(ppo_loss, config=<ActorConfig>) per worker; ours routes hinted rows through the
        # off-policy term (the flag reaches the loss as a per-row field of the micro-batch).
        loss_fn = make_lte_loss_fn(self.config.actor_rollout_ref.actor, lte_loss_config(self.config))
        self.actor_rollout_wg.set_loss_fn(loss_fn)
        logger.info(f"LTE mode={self.lte.mode}: mixed-policy loss installed in the actor workers")

    def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
        lte_metrics = self._lte_metrics(batch)
        metrics.update(lte_metrics)
        metrics.update(self._data_metrics)
        out = super()._compute_metrics(batch, metrics, timing_raw, global_steps, epoch)
        self._report_step(global_steps, lte_metrics, metrics)
        return out

    def _report_step(self, step: int, lte_metrics: dict, metrics: dict) -> None:
        """One readable LTE line per step, and the step's metrics appended to ``<default_local_dir>/lte_metrics.jsonl``
        (read by ``python -m recipe.lte.summary`` for the end-of-run table and plots)."""
        print(format_step_line(step, lte_metrics), flush=True)
        record = {"step": step, **{k: float(v) for k, v in metrics.items() if _is_number(v)}}
        path = os.path.join(self.config.trainer.default_local_dir, METRICS_FILE)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _lte_metrics(self, batch) -> dict[str, float]:
        """``core.step_metrics`` over the batch's real rows (padding rows copy a real row: left out)."""
        real = [i for i, tag in enumerate(batch.tags) if not tag.get("is_padding", False)]
        if not real:
            return {}
        keys = [batch.keys[i] for i in real]
        data = tq.kv_batch_get(
            keys=keys, partition_id=batch.partition_id, select_fields=["uid", "rm_scores", *ROW_FIELDS]
        )
        scores = [float(s.sum()) for s in data["rm_scores"].unbind()]
        passed = [s >= self.lte.pass_threshold for s in scores]
        uids = np.array(data["uid"].tolist() if hasattr(data["uid"], "tolist") else list(data["uid"]), dtype=object)
        rows = rows_from_fields(list(uids), {k: data[k] for k in ROW_FIELDS}, passed)
        return core.step_metrics(rows)


class LTETaskRunner(TaskRunnerV1.__ray_actor_class__):
    """``TaskRunnerV1`` that runs ``LTETrainer`` as the "sync" trainer, in this (the task runner's) process only."""

    # Ray 2.60 needs __init__ defined on the subclass of an actor class.
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)

    def run(self, config: DictConfig):
        trainer_base.TRAINER_REGISTRY["sync"] = LTETrainer
        return super().run(config)
