"""LTE's mixed-policy loss inside verl: verl's `ppo_loss` with the per-row off-policy flag, and the `lte_mixed`
policy loss in verl's registry.

Why a context variable: a verl policy loss (`@register_policy_loss`, selected by
`actor_rollout_ref.actor.policy_loss.loss_mode`) sees only padded [B, T] tensors and the actor config, never the
other fields of the batch, so it cannot tell which rows are hinted. `lte_ppo_loss` -- installed in each actor worker
with `ActorRolloutRefWorker.set_loss_fn` by the LTE trainer, in place of verl's `partial(ppo_loss, config=...)` --
reads the micro-batch's `lte_off_policy` flags and behaviour log-probs, puts them in `_MICRO_BATCH`, and calls verl's
own `ppo_loss` unchanged with `loss_mode=lte_mixed`. verl then does the entropy bonus, the KL loss, the global token
normalisation and the metric bookkeeping as always, and calls `compute_policy_loss_lte_mixed`, which reads the
context. Called without it (the LTE loss fn not installed), `lte_mixed` raises instead of training hinted rows as
on-policy.

The tensor math is `verl_ext/loss/mixed_policy.py`; the `lte.loss` settings and start-up checks
`verl_ext/loss/config.py`.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from tensordict import TensorDict
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.core_algos import agg_loss
from verl.utils import tensordict_utils as tu
from verl.utils.metric import AggregationType, Metric
from verl.workers.utils.losses import ppo_loss

from verl_ext.loss.config import LOSS_MODE, NORMALISING_AGG_MODES, LTELossConfig
from verl_ext.loss.mixed_policy import (
    M_OFF_TOKENS,
    M_ON_TOKENS,
    VERL_METRICS,
    PartCounts,
    count_parts,
    mixed_policy_metrics,
    mixed_token_losses,
)

OFF_POLICY_FIELD = "lte_off_policy"  # per-row 0-d float32 written by the rollout stage: 1.0 = hinted, 0.0 otherwise
BEHAVIOR_LOG_PROB_FIELD = "rollout_log_probs"  # verl's field, filled when rollout.calculate_log_probs=true
# non-tensor entry of each micro-batch: PartCounts of its whole mini-batch, attached by LTETrainingWorker
PART_COUNTS_FIELD = "lte_part_counts"


# ----------------------------------------------------------------------------------------------------------------------
# one micro-batch's loss, aggregated as verl aggregates


def compute_mixed_policy_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    off_policy_mask: torch.Tensor,
    *,
    behavior_log_prob: torch.Tensor | None = None,
    rollout_is_weights: torch.Tensor | None = None,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    gamma: float = 0.1,
    off_policy_mode: str = "behavior_ratio",
    loss_agg_mode: str = "token-mean",
    aggregation: str = "global",
    global_batch_info: dict | None = None,
    part_counts: PartCounts | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """LTE mixed-policy loss of one micro-batch, aggregated with verl's `agg_loss`.

    Args:
        old_log_prob, log_prob, advantages, response_mask: [B, T], as verl's compute_policy_loss_vanilla. Only
            log_prob may require grad.
        off_policy_mask: [B] bool (or 0/1 float), True for hinted (off-policy) responses.
        behavior_log_prob: [B, T] rollout log-probs (under the hinted prompt for hinted rows); needed by
            off_policy_mode="behavior_ratio", used for the ratio metric otherwise.
        rollout_is_weights: verl's rollout-correction IS weights [B, T]; applied to the PPO (on-policy) loss as in
            verl. Hinted rows already carry their importance weight in f, so it is not applied to them.
        gamma, off_policy_mode, aggregation: see LTELossConfig.
        loss_agg_mode, global_batch_info: passed to verl's agg_loss (dp_size, batch_num_tokens,
            global_batch_size, loss_scale_factor), so the normalisation across micro-batches and ranks stays verl's.
        part_counts: aggregation="separate" only: Z, Z' of the whole mini-batch (see `_separate_agg`).

    Returns:
        (loss, metrics): metrics are plain floats of this micro-batch. verl's three (pg_clipfrac, ppo_kl,
        pg_clipfrac_lower; clip fractions over on-policy tokens) and the token counts are always present; means
        over a token set only when the set is non-empty (a missing key means "no such tokens", never a fake 0).

    With no off-policy row (or off_policy_mode="on_policy") the loss is computed with verl's own operations, so
    loss and gradient equal compute_policy_loss_vanilla bit for bit.
    """
    LTELossConfig(gamma=gamma, off_policy_mode=off_policy_mode, aggregation=aggregation)
    terms = mixed_token_losses(
        old_log_prob, log_prob, advantages, response_mask, off_policy_mask,
        behavior_log_prob=behavior_log_prob, rollout_is_weights=rollout_is_weights, clip_ratio_low=clip_ratio_low,
        clip_ratio_high=clip_ratio_high, clip_ratio_c=clip_ratio_c, gamma=gamma, off_policy_mode=off_policy_mode,
    )  # fmt: skip
    global_batch_info = dict(global_batch_info or {})
    if aggregation == "global":
        pg_loss = agg_loss(
            loss_mat=terms.losses, loss_mask=response_mask, loss_agg_mode=loss_agg_mode, **global_batch_info
        )
    else:
        pg_loss = _separate_agg(
            terms.losses, terms.token_mask, terms.off_rows, loss_agg_mode, global_batch_info, part_counts
        )
    return pg_loss, mixed_policy_metrics(terms, log_prob, behavior_log_prob)


def _separate_agg(
    losses: torch.Tensor,
    token_mask: torch.Tensor,
    off_rows: torch.Tensor,
    loss_agg_mode: str,
    global_batch_info: dict,
    part_counts: PartCounts | None,
) -> torch.Tensor:
    """agg_loss over the on-policy part with its normaliser Z plus agg_loss over the hinted part with Z' (loss tokens
    for token-mean, responses for the seq-mean modes).

    Z and Z' are the whole mini-batch's (all micro-batches, all DP ranks): `part_counts`, counted by
    `LTETrainingWorker` before verl cuts the mini-batch into micro-batches, so the loss does not depend on the cut.
    Without them, only a single process's call with no global batch info is allowed: the micro-batch is then the
    whole batch and its own counts are used, as agg_loss does.
    """
    if loss_agg_mode not in NORMALISING_AGG_MODES:
        raise ValueError(f"aggregation='separate' needs a normalising loss_agg_mode {NORMALISING_AGG_MODES}")
    info = dict(global_batch_info)
    token_level = loss_agg_mode == "token-mean"
    key = "batch_num_tokens" if token_level else "global_batch_size"
    if part_counts is None:
        if info.get(key) is not None or info.get("dp_size", 1) > 1:
            raise RuntimeError(
                f"lte.loss.aggregation=separate needs the mini-batch's on-policy and hinted counts ('{PART_COUNTS_FIELD}'"
                "), which the LTE actor worker attaches before verl splits a mini-batch into micro-batches: run the "
                "LTE trainer (recipe.lte.trainer.LTETrainer installs verl_ext.loss.training_worker."
                "LTEActorRolloutRefWorker)"
            )
        local = count_parts(token_mask, off_rows)  # stays a tensor: no device sync
        norms = (local[0], local[1]) if token_level else (local[2], local[3])
    else:
        norms = part_counts[:2] if token_level else part_counts[2:]
    row_off = off_rows.unsqueeze(-1)
    loss = losses.new_zeros(())
    for part, norm in zip((token_mask & ~row_off, token_mask & row_off), norms, strict=True):
        # an empty part contributes 0, not 0/0
        info[key] = norm.clamp(min=1) if isinstance(norm, torch.Tensor) else max(int(norm), 1)
        loss = loss + agg_loss(loss_mat=losses, loss_mask=part, loss_agg_mode=loss_agg_mode, **info)
    return loss


# ----------------------------------------------------------------------------------------------------------------------
# verl integration: registered policy loss + drop-in replacement for verl's ppo_loss


@dataclass
class _MicroBatchContext:
    """What `lte_ppo_loss` hands to the registered `lte_mixed` policy loss for one micro-batch."""

    off_policy_mask: torch.Tensor
    behavior_log_prob: torch.Tensor | None
    lte_loss: LTELossConfig
    part_counts: PartCounts | None = None
    metrics: dict[str, float] = field(default_factory=dict)


_MICRO_BATCH: contextvars.ContextVar[_MicroBatchContext | None] = contextvars.ContextVar(
    "lte_micro_batch", default=None
)


def compute_policy_loss_lte_mixed(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """verl policy loss `lte_mixed`: the mixed loss for the micro-batch that `lte_ppo_loss` is processing."""
    ctx = _MICRO_BATCH.get()
    if ctx is None:
        raise RuntimeError(
            f"policy_loss.loss_mode={LOSS_MODE} was called without the per-response off-policy flag: the LTE loss "
            "function must be installed in the actor workers (the LTE trainer does it with "
            "ActorRolloutRefWorker.set_loss_fn(make_lte_loss_fn(...))); refusing to train hinted rows as on-policy"
        )
    if config is None:
        raise ValueError(f"policy loss {LOSS_MODE} needs the actor config")
    clip_ratio = config.clip_ratio
    pg_loss, metrics = compute_mixed_policy_loss(
        old_log_prob,
        log_prob,
        advantages,
        response_mask,
        ctx.off_policy_mask,
        behavior_log_prob=ctx.behavior_log_prob,
        rollout_is_weights=rollout_is_weights,
        clip_ratio_low=config.clip_ratio_low if config.clip_ratio_low is not None else clip_ratio,
        clip_ratio_high=config.clip_ratio_high if config.clip_ratio_high is not None else clip_ratio,
        clip_ratio_c=config.get("clip_ratio_c", 3.0),
        gamma=ctx.lte_loss.gamma,
        off_policy_mode=ctx.lte_loss.off_policy_mode,
        loss_agg_mode=loss_agg_mode,
        aggregation=ctx.lte_loss.aggregation,
        global_batch_info=config.global_batch_info,
        part_counts=ctx.part_counts,
    )
    # verl wraps what we return as mean-aggregated Metrics, which needs the same keys on every micro-batch and rank:
    # return only verl's own three, lte_ppo_loss adds the rest with their proper aggregation
    ctx.metrics = {k: v for k, v in metrics.items() if k not in VERL_METRICS}
    return pg_loss, {k: metrics[k] for k in VERL_METRICS}


def register_lte_policy_loss() -> None:
    """Put `lte_mixed` into verl's policy-loss registry (idempotent). Called by the entry point before verl validates
    the config, and by `lte_ppo_loss` in each actor worker before verl looks the loss up."""
    if core_algos.POLICY_LOSS_REGISTRY.get(LOSS_MODE) is not compute_policy_loss_lte_mixed:
        core_algos.register_policy_loss(LOSS_MODE)(compute_policy_loss_lte_mixed)


def _padded_off_policy_fields(data: TensorDict, lte_loss: LTELossConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The [B] flag and the padded [B, T] behaviour log-probs of a micro-batch, with clear errors."""
    if OFF_POLICY_FIELD not in data.keys():
        raise KeyError(
            f"the training batch has no '{OFF_POLICY_FIELD}' field: the LTE rollout stage must write it on every "
            "row (0-d float32 tensor, 1.0 = hinted)"
        )
    need_behavior = lte_loss.off_policy_mode == "behavior_ratio"
    has_behavior = BEHAVIOR_LOG_PROB_FIELD in data.keys()
    if need_behavior and not has_behavior:
        raise KeyError(
            f"lte.loss.off_policy_mode=behavior_ratio needs '{BEHAVIOR_LOG_PROB_FIELD}' in the batch: set "
            "actor_rollout_ref.rollout.calculate_log_probs=true"
        )
    names = ["response_mask", OFF_POLICY_FIELD] + ([BEHAVIOR_LOG_PROB_FIELD] if has_behavior else [])
    padded = data.select(*names).to_padded_tensor()
    flag = padded[OFF_POLICY_FIELD]
    if flag.dim() != 1:
        raise ValueError(f"'{OFF_POLICY_FIELD}' must be one scalar per row ([B]), got shape {tuple(flag.shape)}")
    bad = ((flag != 0) & (flag != 1)).nonzero()
    if bad.numel():
        i = bad[0, 0].item()
        raise ValueError(f"'{OFF_POLICY_FIELD}' must be 0 or 1; row {i} has {flag[i].item()}")
    behavior = padded[BEHAVIOR_LOG_PROB_FIELD].float() if has_behavior else None
    return flag.bool(), behavior


def lte_ppo_loss(config: Any, model_output: Any, data: TensorDict, dp_group: Any = None, *, lte_loss: LTELossConfig):
    """Drop-in replacement for verl's `ppo_loss` whose policy loss is LTE's mixed loss (per-row flag included).

    Everything else (entropy bonus, KL loss, global normalisation, metric types) is verl's `ppo_loss` itself.
    Install with `set_loss_fn(functools.partial(lte_ppo_loss, config=actor_config, lte_loss=cfg))`, or
    `make_lte_loss_fn`.
    """
    loss_mode = config.policy_loss.get("loss_mode", "vanilla")
    if loss_mode != LOSS_MODE:
        raise ValueError(
            f"lte_ppo_loss is installed but actor_rollout_ref.actor.policy_loss.loss_mode={loss_mode!r}: set it to "
            f"{LOSS_MODE}, otherwise hinted rows would train as on-policy"
        )
    register_lte_policy_loss()
    off_policy_mask, behavior_log_prob = _padded_off_policy_fields(data, lte_loss)
    counts = tu.get_non_tensor_data(data, PART_COUNTS_FIELD, None)
    ctx = _MicroBatchContext(
        off_policy_mask=off_policy_mask,
        behavior_log_prob=behavior_log_prob,
        lte_loss=lte_loss,
        part_counts=None if counts is None else PartCounts(*counts),
    )
    token = _MICRO_BATCH.set(ctx)
    try:
        loss, metrics = ppo_loss(config, model_output, data, dp_group)
    finally:
        _MICRO_BATCH.reset(token)

    dp_size = data["dp_size"]
    for name, value in ctx.metrics.items():
        if name in (M_ON_TOKENS, M_OFF_TOKENS):
            # summed over micro-batches, averaged over ranks by verl: the global count per mini-batch
            metrics[name] = Metric(value=value * dp_size, aggregation=AggregationType.SUM)
        else:
            # plain floats: verl averages them over all micro-batches that report them (absent = no such tokens)
            metrics[name] = value
    return loss, metrics


def make_lte_loss_fn(actor_cfg: Any, lte_loss_cfg: LTELossConfig | Mapping | None) -> functools.partial:
    """The picklable loss fn for `ActorRolloutRefWorker.set_loss_fn`, as verl installs `partial(ppo_loss, config=)`.

    `actor_cfg` is `config.actor_rollout_ref.actor` (omegaconf, converted like the worker does) or an ActorConfig.
    """
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.config import ActorConfig

    actor_config = actor_cfg if isinstance(actor_cfg, ActorConfig) else omega_conf_to_dataclass(actor_cfg)
    return functools.partial(lte_ppo_loss, config=actor_config, lte_loss=LTELossConfig.from_config(lte_loss_cfg))
