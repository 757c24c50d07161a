"""LTE's mixed-policy loss (step 7 of the method): PPO-clip on-policy, regularised importance sampling off-policy.

Per response token, with advantage A and a per-response flag "hinted" (off-policy):

    on-policy rows:  verl's vanilla PPO loss, max(-A r, -A clip(r, 1-eps_lo, 1+eps_hi)), dual-clipped by -A c
                     when A < 0, with r = exp(clamp(logp - logp_old, -20, 20))
    off-policy rows: -A f(x), f(x) = x / (x + gamma), no clipping, where x is
                     "behavior_ratio" (paper):  exp(clamp(logp - logp_behaviour, -20, 20)); logp_behaviour = the rollout
                                                log-probs of the HINTED generation (verl's `rollout_log_probs`)
                     "luffy_prob" (LUFFY/ICPO): exp(logp)
                     "on_policy" (ablation):    off-policy rows get the on-policy loss

f(x) is computed as sigmoid(log x - log gamma), the same value without overflow for any log x. A micro-batch without
hinted rows (or mode "on_policy") runs verl's own operations under autograd: loss and gradient equal verl's vanilla
bit for bit. A micro-batch with hinted rows computes both branches without autograd and attaches the per-token
derivative written out (d/dlogp of -A f(x) is -A f (1 - f)): cheaper than verl's vanilla (benchmarks/bench_loss.py).

How it reaches verl: a registered policy loss sees only padded [B, T] tensors and the actor config, never the per-row
flag. `lte_ppo_loss` (installed with `set_loss_fn`) therefore puts the flag and the behaviour log-probs of the
micro-batch into a context variable and then calls verl's own `ppo_loss` unchanged, with
`policy_loss.loss_mode=lte_mixed`; verl's code keeps doing the entropy bonus, the KL loss, the global token
normalisation and the metric bookkeeping, and calls the registered `lte_mixed` policy loss, which reads the context.
Called without that context (the LTE loss fn not installed), `lte_mixed` raises instead of training hinted rows as
on-policy.
"""

from __future__ import annotations

import contextvars
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from tensordict import TensorDict
from verl.trainer.ppo.core_algos import agg_loss, register_policy_loss
from verl.utils.metric import AggregationType, Metric
from verl.workers.utils.losses import ppo_loss

OFF_POLICY_FIELD = "lte_off_policy"  # per-row 0-d float32 written by the rollout stage: 1.0 = hinted, 0.0 otherwise
BEHAVIOR_LOG_PROB_FIELD = "rollout_log_probs"  # verl's field, filled when rollout.calculate_log_probs=true
LOSS_MODE = "lte_mixed"  # actor_rollout_ref.actor.policy_loss.loss_mode
OFF_POLICY_MODES = ("behavior_ratio", "luffy_prob", "on_policy")
AGGREGATIONS = ("global", "separate")
LOG_RATIO_CLAMP = 20.0  # verl's compute_policy_loss_vanilla clamps log(pi/pi_old) to [-20, 20]
NORMALISING_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")

# metric names; the first three are verl's vanilla ones (clip fractions over on-policy tokens here; with no hinted rows
# they equal verl's up to float32 rounding)
M_CLIPFRAC, M_PPO_KL, M_CLIPFRAC_LOWER = "actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_clipfrac_lower"
M_ON_TOKENS, M_OFF_TOKENS = "actor/lte/on_policy_tokens", "actor/lte/off_policy_tokens"
M_ON_CLIPFRAC = "actor/lte/on_policy_clipfrac"
M_OFF_PROB, M_OFF_RATIO, M_F = "actor/lte/off_policy_prob_mean", "actor/lte/off_policy_ratio_mean", "actor/lte/f_mean"
M_OFF_SHARE = "actor/lte/off_policy_loss_share"
VERL_METRICS = (M_CLIPFRAC, M_PPO_KL, M_CLIPFRAC_LOWER)


# ----------------------------------------------------------------------------------------------------------------------
# configuration (top-level `lte.loss:` block of the recipe config)


@dataclass
class LTELossConfig:
    """The `lte.loss` config block. Every field is an open choice of the paper, defaulting to the paper's reading."""

    # gamma of f(x) = x / (x + gamma): 0.1 in LUFFY (arXiv 2504.14945) and the same authors' ICPO code
    gamma: float = 0.1
    # denominator of the off-policy ratio: the paper's pi_theta(o|q) / pi_behaviour(o|hint(q)) ("behavior_ratio"),
    # LUFFY/ICPO's shortcut with denominator 1 ("luffy_prob"), or the ablation "on_policy" (plain PPO for hinted rows)
    off_policy_mode: str = "behavior_ratio"
    # "global": one verl token-mean over all tokens (LUFFY's 1/Z); "separate": the paper's 1/Z' (hinted tokens) and
    # 1/Z (on-policy tokens) normalisers
    aggregation: str = "global"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the `lte.loss.*` key and the fix."""
        g = self.gamma
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or g <= 0:
            raise ValueError(
                f"lte.loss.gamma must be a finite number > 0 (got {g!r}): it is gamma of f(x) = x / (x + gamma); "
                "set lte.loss.gamma=0.1 (the value of LUFFY/ICPO)"
            )
        if self.off_policy_mode not in OFF_POLICY_MODES:
            raise ValueError(
                f"lte.loss.off_policy_mode={self.off_policy_mode!r} is unknown: use one of {list(OFF_POLICY_MODES)} "
                "(behavior_ratio = the paper's ratio)"
            )
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(
                f"lte.loss.aggregation={self.aggregation!r} is unknown: use one of {list(AGGREGATIONS)} "
                "(global = verl's token-mean over the whole batch)"
            )

    @classmethod
    def from_config(cls, cfg: LTELossConfig | Mapping | None) -> LTELossConfig:
        """Build from the `lte.loss` block (a dict or an omegaconf DictConfig); unknown keys are an error."""
        if cfg is None:
            return cls()
        if isinstance(cfg, cls):
            cfg.validate()
            return cfg
        if not isinstance(cfg, Mapping):
            try:  # omegaconf DictConfig is not a Mapping subclass in every version
                from omegaconf import DictConfig, OmegaConf

                if isinstance(cfg, DictConfig):
                    cfg = OmegaConf.to_container(cfg, resolve=True)
            except ImportError:  # pragma: no cover - omegaconf ships with verl
                pass
        if not isinstance(cfg, Mapping):
            raise ValueError(f"lte.loss must be a mapping of {[f.name for f in fields(cls)]}, got {type(cfg).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"unknown key(s) {['lte.loss.' + k for k in unknown]}: the keys are {sorted(known)}")
        return cls(**dict(cfg))


def _get(cfg: Any, dotted: str, default: Any = None) -> Any:
    """Read `a.b.c` from nested dicts / DictConfigs / dataclasses; `default` when a level is missing."""
    node = cfg
    for key in dotted.split("."):
        if node is None:
            return default
        if hasattr(node, "get"):  # dict, DictConfig, verl's BaseConfig
            node = node.get(key, None)
        else:
            node = getattr(node, key, None)
    return default if node is None else node


def check_loss_config(
    lte_loss_cfg: LTELossConfig | Mapping | None, actor_rollout_ref_cfg: Any, algorithm_cfg: Any = None
) -> LTELossConfig:
    """Start-up check for a run that installs the LTE loss; returns the validated `LTELossConfig`.

    Refuses: bad `lte.loss` values; `policy_loss.loss_mode` other than `lte_mixed`; `behavior_ratio` without
    rollout log-probs; `aggregation=separate` with `loss_agg_mode=token-sum` (nothing to normalise). With
    `algorithm_cfg`, also verl's rollout correction modes that would defeat the loss: rejection sampling (rejects
    hinted rows) and bypass mode (replaces the loss mode).
    """
    cfg = LTELossConfig.from_config(lte_loss_cfg)
    loss_mode = _get(actor_rollout_ref_cfg, "actor.policy_loss.loss_mode", "vanilla")
    if loss_mode != LOSS_MODE:
        raise ValueError(
            f"actor_rollout_ref.actor.policy_loss.loss_mode={loss_mode!r}, but the LTE loss is installed: set "
            f"actor_rollout_ref.actor.policy_loss.loss_mode={LOSS_MODE} (otherwise hinted rows train as on-policy)"
        )
    if cfg.off_policy_mode == "behavior_ratio" and not _get(actor_rollout_ref_cfg, "rollout.calculate_log_probs"):
        raise ValueError(
            "lte.loss.off_policy_mode=behavior_ratio needs the behaviour (hinted-prompt) log-probs: set "
            "actor_rollout_ref.rollout.calculate_log_probs=true, or choose lte.loss.off_policy_mode=luffy_prob"
        )
    agg_mode = _get(actor_rollout_ref_cfg, "actor.loss_agg_mode", "token-mean")
    if cfg.aggregation == "separate" and agg_mode not in NORMALISING_AGG_MODES:
        raise ValueError(
            f"lte.loss.aggregation=separate needs a normalising actor_rollout_ref.actor.loss_agg_mode "
            f"({list(NORMALISING_AGG_MODES)}), got {agg_mode!r}: change one of the two"
        )
    clip_c = _get(actor_rollout_ref_cfg, "actor.clip_ratio_c", 3.0)
    if not clip_c > 1.0:
        raise ValueError(f"actor_rollout_ref.actor.clip_ratio_c must be > 1 (dual-clip PPO), got {clip_c}")
    if algorithm_cfg is not None:
        if _get(algorithm_cfg, "rollout_correction.bypass_mode", False):
            raise ValueError(
                "algorithm.rollout_correction.bypass_mode=true replaces the policy loss mode, so hinted rows would "
                "not get the LTE loss: set algorithm.rollout_correction.bypass_mode=false"
            )
        if _get(algorithm_cfg, "rollout_correction.rollout_rs") is not None:
            raise ValueError(
                "algorithm.rollout_correction.rollout_rs rejects tokens whose rollout and training log-probs differ, "
                "which hinted rows always do: set algorithm.rollout_correction.rollout_rs=null"
            )
    return cfg


# ----------------------------------------------------------------------------------------------------------------------
# the loss on padded [B, T] tensors


def regularized_importance_weight(log_x: torch.Tensor, gamma: float) -> torch.Tensor:
    """f(x) = x / (x + gamma) from log x, as sigmoid(log x - log gamma): no overflow for any log x."""
    return torch.sigmoid(log_x - math.log(gamma))


@dataclass
class _TokenTerms:
    """Per-token loss of a micro-batch and what the metrics need from its computation."""

    losses: torch.Tensor  # [B, T], differentiable in log_prob
    log_ratio: torch.Tensor  # clamped log(pi / pi_old)
    clipped: torch.Tensor  # PPO clip active (verl's pg_clipfrac event)
    clipped_lower: torch.Tensor  # dual clip active (verl's pg_clipfrac_lower event)
    f: torch.Tensor | None = None  # f(x) of the off-policy part, where computed
    log_behavior_ratio: torch.Tensor | None = None  # clamped log(pi / pi_behaviour), where computed


def _ppo_token_terms(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    rollout_is_weights: torch.Tensor | None,
    clip_ratio_low: float,
    clip_ratio_high: float,
    clip_ratio_c: float,
) -> _TokenTerms:
    """verl's vanilla dual-clip PPO per-token loss with the same operations under autograd: the same floats and
    the same gradient as compute_policy_loss_vanilla."""
    log_ratio = torch.clamp(log_prob - old_log_prob, min=-LOG_RATIO_CLAMP, max=LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    losses_unclipped = -advantages * ratio
    losses_clipped = -advantages * torch.clamp(ratio, 1 - clip_ratio_low, 1 + clip_ratio_high)
    losses_ppo = torch.maximum(losses_unclipped, losses_clipped)
    losses_dual = -advantages * clip_ratio_c
    losses = torch.where(advantages < 0, torch.min(losses_dual, losses_ppo), losses_ppo)
    if rollout_is_weights is not None:
        losses = losses * rollout_is_weights
    with torch.no_grad():
        clipped = torch.gt(losses_clipped, losses_unclipped)
        clipped_lower = torch.gt(losses_ppo, losses_dual) & (advantages < 0)
    return _TokenTerms(losses, log_ratio.detach(), clipped, clipped_lower)


class _WithGradient(torch.autograd.Function):
    """`values`, computed without autograd, as a function of `x` whose elementwise derivative is `dvalues_dx`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, values: torch.Tensor, dvalues_dx: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(dvalues_dx)
        return values

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (dvalues_dx,) = ctx.saved_tensors
        return grad * dvalues_dx, None, None


@torch.no_grad()
def _mixed_token_terms(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    behavior_log_prob: torch.Tensor | None,
    advantages: torch.Tensor,
    off_rows: torch.Tensor,
    rollout_is_weights: torch.Tensor | None,
    clip_ratio_low: float,
    clip_ratio_high: float,
    clip_ratio_c: float,
    gamma: float,
    off_policy_mode: str,
) -> _TokenTerms:
    """Mixed per-token loss with its derivative in log_prob written out, so autograd keeps no intermediate and
    runs one multiplication backwards (computing the two branches under autograd cost 1.7x verl's vanilla).

    On-policy: value as verl's vanilla; derivative -A r where the unclipped term is active, else 0 (clip, dual clip,
    or log-ratio below the -20 clamp). Off-policy: -A f, derivative -A f (1 - f) (0 beyond the +-20 clamp)."""
    neg_adv = -advantages
    raw_log_ratio = log_prob - old_log_prob
    log_ratio = torch.clamp(raw_log_ratio, min=-LOG_RATIO_CLAMP, max=LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    losses_unclipped = neg_adv * ratio
    losses_clipped = neg_adv * torch.clamp(ratio, 1 - clip_ratio_low, 1 + clip_ratio_high)
    clipped = losses_clipped > losses_unclipped
    losses_ppo = torch.maximum(losses_unclipped, losses_clipped)
    losses_dual = neg_adv * clip_ratio_c
    clipped_lower = (losses_ppo > losses_dual) & (advantages < 0)
    on_losses = torch.where(clipped_lower, losses_dual, losses_ppo)
    on_grads = torch.where(clipped | clipped_lower | (raw_log_ratio < -LOG_RATIO_CLAMP), 0.0, losses_unclipped)
    if rollout_is_weights is not None:
        on_losses = on_losses * rollout_is_weights
        on_grads = on_grads * rollout_is_weights

    if off_policy_mode == "behavior_ratio":
        raw_log_x = log_prob - behavior_log_prob
        log_x = torch.clamp(raw_log_x, min=-LOG_RATIO_CLAMP, max=LOG_RATIO_CLAMP)
    else:  # luffy_prob
        raw_log_x = log_x = log_prob
    f = regularized_importance_weight(log_x, gamma)
    off_losses = neg_adv * f
    off_grads = off_losses * (1 - f)
    if off_policy_mode == "behavior_ratio":
        off_grads = torch.where(raw_log_x.abs() > LOG_RATIO_CLAMP, 0.0, off_grads)

    row_off = off_rows.unsqueeze(-1)
    losses = torch.where(row_off, off_losses, on_losses)
    grads = torch.where(row_off, off_grads, on_grads)
    with torch.enable_grad():
        losses = _WithGradient.apply(log_prob, losses, grads)
    log_behavior_ratio = log_x if off_policy_mode == "behavior_ratio" else None
    return _TokenTerms(losses, log_ratio, clipped, clipped_lower, f, log_behavior_ratio)


def _separate_agg(
    losses: torch.Tensor,
    token_mask: torch.Tensor,
    part_masks: tuple[torch.Tensor, ...],
    loss_agg_mode: str,
    global_batch_info: dict,
) -> torch.Tensor:
    """Sum over parts of agg_loss(part) with the part's own normaliser (tokens for token-mean, rows for seq-mean).

    The global part counts (Z, Z') are not available inside a micro-batch: verl gives only the global total
    (batch_num_tokens / global_batch_size). Each part's count is estimated as total * (part's share of this
    micro-batch), exact when a micro-batch is the whole mini-batch of a rank and DP ranks have equal shares.
    Without global info (single process), the micro-batch's own part counts are used, as agg_loss does.
    """
    if loss_agg_mode not in NORMALISING_AGG_MODES:
        raise ValueError(f"aggregation='separate' needs a normalising loss_agg_mode {NORMALISING_AGG_MODES}")
    info = dict(global_batch_info)
    token_level = loss_agg_mode == "token-mean"
    key = "batch_num_tokens" if token_level else "global_batch_size"
    total_global = info.get(key)
    if total_global is None and info.get("dp_size", 1) > 1:
        raise ValueError(f"(global) {key} is required when dp_size > 1")

    def count(mask: torch.Tensor) -> torch.Tensor:
        return mask.sum() if token_level else (mask.sum(dim=-1) > 0).sum()

    total_local = count(token_mask).clamp(min=1)
    loss = losses.new_zeros(())
    for part in part_masks:
        n_part = count(part)
        norm = n_part if total_global is None else total_global * n_part / total_local
        info[key] = norm.clamp(min=1)  # an empty part contributes 0, not 0/0
        loss = loss + agg_loss(loss_mat=losses, loss_mask=part, loss_agg_mode=loss_agg_mode, **info)
    return loss


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
) -> tuple[torch.Tensor, dict[str, float]]:
    """LTE mixed-policy loss of one micro-batch.

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

    Returns:
        (loss, metrics): metrics are plain floats of this micro-batch. verl's three (pg_clipfrac, ppo_kl,
        pg_clipfrac_lower; clip fractions over on-policy tokens) and the token counts are always present; means
        over a token set only when the set is non-empty (a missing key means "no such tokens", never a fake 0).

    With no off-policy row (or off_policy_mode="on_policy") the loss is computed with verl's own operations, so
    loss and gradient equal compute_policy_loss_vanilla bit for bit.
    """
    LTELossConfig(gamma=gamma, off_policy_mode=off_policy_mode, aggregation=aggregation)
    if not clip_ratio_c > 1.0:
        raise ValueError(f"clip_ratio_c must be > 1 for dual-clip PPO, got {clip_ratio_c}")
    if log_prob.dim() != 2 or not (old_log_prob.shape == advantages.shape == response_mask.shape == log_prob.shape):
        raise ValueError(
            f"old_log_prob {tuple(old_log_prob.shape)}, log_prob {tuple(log_prob.shape)}, advantages "
            f"{tuple(advantages.shape)} and response_mask {tuple(response_mask.shape)} must all be the same [B, T]"
        )
    if off_policy_mask.shape != log_prob.shape[:1]:
        raise ValueError(f"off_policy_mask must be [B]={tuple(log_prob.shape[:1])}, got {tuple(off_policy_mask.shape)}")
    if behavior_log_prob is not None and behavior_log_prob.shape != log_prob.shape:
        raise ValueError(
            f"behavior_log_prob {tuple(behavior_log_prob.shape)} must have log_prob's shape {tuple(log_prob.shape)}"
        )
    if off_policy_mode == "behavior_ratio" and behavior_log_prob is None:
        raise ValueError(
            "off_policy_mode='behavior_ratio' needs behavior_log_prob (verl's rollout_log_probs: set "
            "actor_rollout_ref.rollout.calculate_log_probs=true)"
        )
    others = (old_log_prob, advantages, behavior_log_prob, rollout_is_weights)
    if any(t is not None and t.requires_grad for t in others):
        raise ValueError("only log_prob may require grad (old/behaviour log-probs, advantages, IS weights are data)")
    global_batch_info = dict(global_batch_info or {})
    clip = (clip_ratio_low, clip_ratio_high, clip_ratio_c)

    token_mask = response_mask.bool()
    # a padding row (no loss token) flagged 1, as verl's padding copies a real row's fields, is not off-policy
    off_rows = off_policy_mask.bool() & token_mask.any(dim=-1)
    has_off = bool(off_rows.any())
    if off_policy_mode == "on_policy" or not has_off:
        terms = _ppo_token_terms(log_prob, old_log_prob, advantages, rollout_is_weights, *clip)
    else:
        terms = _mixed_token_terms(
            log_prob, old_log_prob, behavior_log_prob, advantages, off_rows, rollout_is_weights, *clip,
            gamma, off_policy_mode,
        )  # fmt: skip

    if aggregation == "global":
        pg_loss = agg_loss(
            loss_mat=terms.losses, loss_mask=response_mask, loss_agg_mode=loss_agg_mode, **global_batch_info
        )
    else:
        row_off = off_rows.unsqueeze(-1)
        parts = (token_mask & ~row_off, token_mask & row_off)
        pg_loss = _separate_agg(terms.losses, token_mask, parts, loss_agg_mode, global_batch_info)

    metrics = _mixed_policy_metrics(terms, log_prob, behavior_log_prob, token_mask, off_rows, has_off)
    return pg_loss, metrics


@torch.no_grad()
def _mixed_policy_metrics(
    terms: _TokenTerms,
    log_prob: torch.Tensor,
    behavior_log_prob: torch.Tensor | None,
    token_mask: torch.Tensor,
    off_rows: torch.Tensor,
    has_off: bool,
) -> dict[str, float]:
    """Token sums per row, then split into on/off rows by one small product: one device->host transfer.
    Without hinted rows only verl's statistics and the counts are computed (the rest cannot be reported)."""

    def row_sum(values: torch.Tensor) -> torch.Tensor:
        # rows summed in their own dtype (a row is at most a response long), counts as integers
        if values.dtype == torch.bool:
            return (values & token_mask).sum(dim=-1)
        return torch.where(token_mask, values, 0).sum(dim=-1)

    log_prob = log_prob.detach()
    rows = {
        "tokens": token_mask.sum(dim=-1),
        "clipped": row_sum(terms.clipped),
        "clipped_lower": row_sum(terms.clipped_lower),
        "log_ratio": row_sum(terms.log_ratio),
    }
    if has_off:
        rows["abs_loss"] = row_sum(terms.losses.detach().abs())
        rows["prob"] = row_sum(torch.exp(log_prob))
        log_r = terms.log_behavior_ratio
        if log_r is None and behavior_log_prob is not None:
            log_r = torch.clamp(log_prob - behavior_log_prob, min=-LOG_RATIO_CLAMP, max=LOG_RATIO_CLAMP)
        if log_r is not None:
            rows["ratio"] = row_sum(torch.exp(log_r))
        if terms.f is not None:
            rows["f"] = row_sum(terms.f)
    on_off = torch.stack([~off_rows, off_rows]).to(torch.float64)  # [2, B]
    sums = (on_off @ torch.stack([v.to(torch.float64) for v in rows.values()], dim=-1)).tolist()  # [2, k]
    on = dict(zip(rows, sums[0], strict=True))
    off = dict(zip(rows, sums[1], strict=True))

    n_on, n_off = on["tokens"], off["tokens"]
    n_all = n_on + n_off
    metrics = {
        M_CLIPFRAC: on["clipped"] / n_on if n_on else 0.0,
        M_PPO_KL: -(on["log_ratio"] + off["log_ratio"]) / n_all if n_all else 0.0,
        M_CLIPFRAC_LOWER: on["clipped_lower"] / n_on if n_on else 0.0,
        M_ON_TOKENS: n_on,
        M_OFF_TOKENS: n_off,
    }
    if n_on:
        metrics[M_ON_CLIPFRAC] = metrics[M_CLIPFRAC]
    if n_off:
        metrics[M_OFF_PROB] = off["prob"] / n_off
        if "ratio" in off:
            metrics[M_OFF_RATIO] = off["ratio"] / n_off
        if "f" in off:
            metrics[M_F] = off["f"] / n_off
    abs_all = on.get("abs_loss", 0.0) + off.get("abs_loss", 0.0)
    metrics[M_OFF_SHARE] = off["abs_loss"] / abs_all if abs_all > 0 else 0.0  # no hinted token: 0
    return metrics


# ----------------------------------------------------------------------------------------------------------------------
# verl integration: registered policy loss + drop-in replacement for verl's ppo_loss


@dataclass
class _MicroBatchContext:
    """What `lte_ppo_loss` hands to the registered `lte_mixed` policy loss for one micro-batch."""

    off_policy_mask: torch.Tensor
    behavior_log_prob: torch.Tensor | None
    lte_loss: LTELossConfig
    metrics: dict[str, float] = field(default_factory=dict)


_MICRO_BATCH: contextvars.ContextVar[_MicroBatchContext | None] = contextvars.ContextVar(
    "lte_micro_batch", default=None
)


@register_policy_loss(LOSS_MODE)  # type: ignore[arg-type]
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
    )
    # verl wraps what we return as mean-aggregated Metrics, which needs the same keys on every micro-batch and rank:
    # return only verl's own three, lte_ppo_loss adds the rest with their proper aggregation
    ctx.metrics = {k: v for k, v in metrics.items() if k not in VERL_METRICS}
    return pg_loss, {k: metrics[k] for k in VERL_METRICS}


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
    off_policy_mask, behavior_log_prob = _padded_off_policy_fields(data, lte_loss)
    ctx = _MicroBatchContext(off_policy_mask=off_policy_mask, behavior_log_prob=behavior_log_prob, lte_loss=lte_loss)
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
