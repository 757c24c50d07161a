"""verl's rollout-vs-training diagnostics, over the on-policy rows only.

Every step verl logs how far the rollout engine's log-probs are from the trainer's on the same tokens:
`training/rollout_probs_diff_*` and `training/rollout_actor_probs_pearson_corr` (`calculate_debug_metrics`, when
`rollout.calculate_log_probs=true`) and `rollout_corr/*` (`compute_rollout_correction_and_rejection_mask`, whenever
`algorithm.rollout_correction` exists and rollout log-probs are there). A hinted row's rollout log-probs were taken
under the hinted prompt and its training log-probs under the original one: they differ by design, so one rescue
would swamp the engine mismatch these metrics exist to show. `LTETrainer` recomputes them here with verl's own
functions over the on-policy rows and logs them under verl's names (a step without an on-policy token logs none).

The IS weights themselves are not touched: with `rollout_is` they are per token or per sequence, so an on-policy
row's weight does not depend on the hinted rows (the LTE loss does not apply them to hinted rows), and the one
setting that would mix them, `rollout_is_batch_normalize`, is refused at start-up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import transfer_queue as tq
from verl.protocol import DataProto
from verl.trainer.ppo.rollout_corr_helper import compute_rollout_correction_and_rejection_mask
from verl.utils.debug.metrics import calculate_debug_metrics

from verl_ext.loss.ppo_loss import BEHAVIOR_LOG_PROB_FIELD, OFF_POLICY_FIELD

DIAGNOSTIC_PREFIXES = ("training/rollout_probs_diff_", "training/rollout_actor_probs_", "rollout_corr/")
_FIELDS = ["old_log_probs", BEHAVIOR_LOG_PROB_FIELD, "response_mask", "responses"]


def on_policy_rollout_diagnostics(
    fields: Mapping[str, torch.Tensor], off_policy: torch.Tensor, rollout_corr_config: Any = None
) -> dict[str, float]:
    """verl's rollout-vs-training metrics over the on-policy rows; {} when there is no on-policy token.

    Args:
        fields: padded [B, T] `old_log_probs`, `rollout_log_probs`, `response_mask`, `responses`.
        off_policy: [B] flags (1 = hinted).
        rollout_corr_config: `algorithm.rollout_correction` (None: no `rollout_corr/*` metrics).
    """
    mask = fields["response_mask"].bool() & ~off_policy.bool().reshape(-1, 1)
    if not mask.any():
        return {}
    old, rollout = fields["old_log_probs"], fields[BEHAVIOR_LOG_PROB_FIELD]
    data = DataProto.from_dict(
        tensors={
            "old_log_probs": old,
            "rollout_log_probs": rollout,
            "response_mask": mask.to(fields["response_mask"].dtype),
            "responses": fields["responses"],
        }
    )
    out = dict(calculate_debug_metrics(data))
    if rollout_corr_config is not None:
        cfg = rollout_corr_config
        _, _, corr = compute_rollout_correction_and_rejection_mask(
            old_log_prob=old,
            rollout_log_prob=rollout,
            response_mask=mask.to(fields["response_mask"].dtype),
            rollout_is=cfg.get("rollout_is", None),
            rollout_is_threshold=cfg.get("rollout_is_threshold", 2.0),
            rollout_is_batch_normalize=cfg.get("rollout_is_batch_normalize", False),
            rollout_rs=cfg.get("rollout_rs", None),
            rollout_rs_threshold=cfg.get("rollout_rs_threshold", None),
        )
        out.update(corr)
    return out


def replace_with_on_policy_diagnostics(batch: Any, metrics: dict, rollout_corr_config: Any = None) -> None:
    """Replace verl's rollout-vs-training metrics in `metrics` by their on-policy-only values, when the batch
    (a `KVBatchMeta` in TransferQueue) has hinted rows; verl's values stand when it has none (they are the same)."""
    verl_keys = [k for k in metrics if k.startswith(DIAGNOSTIC_PREFIXES)]
    if not verl_keys:
        return
    flags = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=[OFF_POLICY_FIELD])
    off_policy = torch.as_tensor(flags[OFF_POLICY_FIELD]).reshape(-1)
    if not off_policy.bool().any():
        return
    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=_FIELDS).to_padded_tensor()
    fresh = on_policy_rollout_diagnostics(data, off_policy, rollout_corr_config)
    for key in verl_keys:
        if key in fresh:
            metrics[key] = fresh[key]
        else:  # no on-policy token (or a key verl computed differently): no value rather than a mixed one
            metrics.pop(key)
