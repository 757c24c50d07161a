"""LTE's trainer glue: verl 0.9.1's sync V1 trainer, extended.

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
from omegaconf import DictConfig
from verl.trainer.main_ppo import TaskRunnerV1
from verl.trainer.ppo.v1 import trainer_base
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from recipe.lte import core
from recipe.lte.agent_loop import ROW_FIELDS, rows_from_fields
from recipe.lte.data_check import dropped_metrics
from recipe.lte.startup_checks import check_config, lte_config, lte_loss_config
from verl_ext.loss.ppo_loss import make_lte_loss_fn

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "INFO"))


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
        (read by ``python -m recipe.lte.tools.summary`` for the end-of-run table and plots)."""
        print(format_step_line(step, lte_metrics), flush=True)
        record = {"step": step, **{k: float(v) for k, v in metrics.items() if _is_number(v)}}
        path = os.path.join(self.config.trainer.default_local_dir, core.METRICS_FILE)
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
            keys=keys,
            partition_id=batch.partition_id,
            select_fields=["uid", "rm_scores", "response_mask", *ROW_FIELDS],
        )
        scores = [float(s.sum()) for s in data["rm_scores"].unbind()]
        passed = [s >= self.lte.pass_threshold for s in scores]
        uids = data["uid"].tolist() if hasattr(data["uid"], "tolist") else list(data["uid"])
        rows = rows_from_fields(uids, {k: data[k] for k in ROW_FIELDS}, passed)
        m = core.step_metrics(rows)
        # The hinted rows' response tokens, counted here before verl balances rows over ranks: the loss's
        # actor/lte/off_policy_tokens (summed over ranks) must find them all (tests/e2e/test_cpu_demo_data_parallel.py).
        tokens = [int(r.sum()) for r in data["response_mask"].unbind()]
        m["lte/extra/off_policy_response_tokens"] = sum(t for t, r in zip(tokens, rows, strict=True) if r.off_policy)
        return m


class LTETaskRunner(TaskRunnerV1.__ray_actor_class__):
    """``TaskRunnerV1`` that runs ``LTETrainer`` as the "sync" trainer, in this (the task runner's) process only."""

    # Ray 2.60 needs __init__ defined on the subclass of an actor class.
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)

    def run(self, config: DictConfig):
        trainer_base.TRAINER_REGISTRY["sync"] = LTETrainer
        return super().run(config)
