"""LTE's mixed-policy loss, the tensor math: per-token loss, its gradient and its statistics. No verl import.

Per response token, with advantage A and a per-response flag "hinted" (off-policy):

    on-policy rows:  verl's vanilla PPO loss, max(-A r, -A clip(r, 1-eps_lo, 1+eps_hi)), dual-clipped by -A c
                     when A < 0, with r = exp(clamp(logp - logp_old, -20, 20))
    off-policy rows: -A f(x), f(x) = x / (x + gamma), no clipping, where x is
                     "behavior_ratio" (paper):  exp(clamp(logp - logp_behaviour, -20, 20)); logp_behaviour = the rollout
                                                log-probs of the HINTED generation (verl's `rollout_log_probs`)
                     "luffy_prob" (LUFFY/ICPO): exp(logp)
                     "on_policy" (ablation):    off-policy rows get the on-policy loss

f(x) is computed as sigmoid(log x - log gamma), the same value without overflow for any log x. Without hinted rows
(or in mode "on_policy") the per-token loss is built from verl's own operations under autograd, so loss and gradient
equal verl's vanilla bit for bit. With hinted rows both branches are computed without autograd and the per-token
derivative written out (d/dlogp of -A f(x) is -A f (1 - f)) is attached: one multiplication backwards, cheaper than
verl's vanilla (benchmarks/bench_loss.py).

How the per-token losses are aggregated (verl's `agg_loss`) and how the per-row flag reaches them is the verl glue,
`verl_ext/loss/ppo_loss.py`; the `lte.loss` settings and start-up checks are `verl_ext/loss/config.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

LOG_RATIO_CLAMP = 20.0  # verl's compute_policy_loss_vanilla clamps log(pi/pi_old) to [-20, 20]

# metric names; the first three are verl's vanilla ones (clip fractions over on-policy tokens here; with no hinted rows
# they equal verl's up to float32 rounding)
M_CLIPFRAC, M_PPO_KL, M_CLIPFRAC_LOWER = "actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_clipfrac_lower"
M_ON_TOKENS, M_OFF_TOKENS = "actor/lte/on_policy_tokens", "actor/lte/off_policy_tokens"
M_ON_CLIPFRAC = "actor/lte/on_policy_clipfrac"
M_OFF_PROB, M_OFF_RATIO, M_F = "actor/lte/off_policy_prob_mean", "actor/lte/off_policy_ratio_mean", "actor/lte/f_mean"
M_OFF_SHARE = "actor/lte/off_policy_loss_share"
VERL_METRICS = (M_CLIPFRAC, M_PPO_KL, M_CLIPFRAC_LOWER)


def regularized_importance_weight(log_x: torch.Tensor, gamma: float) -> torch.Tensor:
    """f(x) = x / (x + gamma) from log x, as sigmoid(log x - log gamma): no overflow for any log x."""
    return torch.sigmoid(log_x - math.log(gamma))


@dataclass
class TokenTerms:
    """Per-token loss of a micro-batch and what the metrics need from its computation."""

    losses: torch.Tensor  # [B, T], differentiable in log_prob
    log_ratio: torch.Tensor  # clamped log(pi / pi_old)
    clipped: torch.Tensor  # PPO clip active (verl's pg_clipfrac event)
    clipped_lower: torch.Tensor  # dual clip active (verl's pg_clipfrac_lower event)
    f: torch.Tensor | None = None  # f(x) of the off-policy part, where computed
    log_behavior_ratio: torch.Tensor | None = None  # clamped log(pi / pi_behaviour), where computed
    token_mask: torch.Tensor | None = None  # [B, T] bool: loss tokens (set by mixed_token_losses)
    off_rows: torch.Tensor | None = None  # [B] bool: hinted rows with at least one loss token (likewise)
    has_off: bool = False  # any such row (likewise)


def ppo_token_terms(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    rollout_is_weights: torch.Tensor | None,
    clip_ratio_low: float,
    clip_ratio_high: float,
    clip_ratio_c: float,
) -> TokenTerms:
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
    return TokenTerms(losses, log_ratio.detach(), clipped, clipped_lower)


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
def mixed_token_terms(
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
) -> TokenTerms:
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
    return TokenTerms(losses, log_ratio, clipped, clipped_lower, f, log_behavior_ratio)


def mixed_token_losses(
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
) -> TokenTerms:
    """Per-token LTE loss of one micro-batch, differentiable in ``log_prob`` (the module docstring has the formula).

    Args:
        old_log_prob, log_prob, advantages, response_mask: [B, T], as verl's compute_policy_loss_vanilla. Only
            log_prob may require grad.
        off_policy_mask: [B] bool (or 0/1 float), True for hinted (off-policy) responses.
        behavior_log_prob: [B, T] rollout log-probs (under the hinted prompt for hinted rows); needed by
            off_policy_mode="behavior_ratio", used for the ratio metric otherwise.
        rollout_is_weights: verl's rollout-correction IS weights [B, T]; applied to the PPO (on-policy) loss as in
            verl. Hinted rows already carry their importance weight in f, so it is not applied to them.
        gamma, off_policy_mode: see ``verl_ext.loss.config.LTELossConfig``.
    """
    if off_policy_mode not in ("behavior_ratio", "luffy_prob", "on_policy"):
        raise ValueError(f"unknown off_policy_mode {off_policy_mode!r}")
    if isinstance(gamma, bool) or not isinstance(gamma, int | float) or not math.isfinite(gamma) or gamma <= 0:
        raise ValueError(f"gamma must be a finite number > 0, got {gamma!r}")
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
    clip = (clip_ratio_low, clip_ratio_high, clip_ratio_c)
    token_mask = response_mask.bool()
    # a padding row (no loss token) flagged 1, as verl's padding copies a real row's fields, is not off-policy
    off_rows = off_policy_mask.bool() & token_mask.any(dim=-1)
    has_off = bool(off_rows.any())
    if off_policy_mode == "on_policy" or not has_off:
        terms = ppo_token_terms(log_prob, old_log_prob, advantages, rollout_is_weights, *clip)
    else:
        terms = mixed_token_terms(
            log_prob, old_log_prob, behavior_log_prob, advantages, off_rows, rollout_is_weights, *clip,
            gamma, off_policy_mode,
        )  # fmt: skip
    terms.token_mask, terms.off_rows, terms.has_off = token_mask, off_rows, has_off
    return terms


class PartCounts(NamedTuple):
    """Loss tokens and responses of the on-policy and the hinted part of a mini-batch (all micro-batches, all DP
    ranks): the normalisers Z, Z' of ``lte.loss.aggregation=separate``."""

    on_tokens: int
    off_tokens: int
    on_rows: int
    off_rows: int


def count_parts(response_mask: torch.Tensor, off_policy_mask: torch.Tensor) -> torch.Tensor:
    """[on_tokens, off_tokens, on_rows, off_rows] (int64) of one rank's rows, as ``mixed_token_losses`` splits them:
    a row is hinted when flagged and it has a loss token (a padding row flagged 1 counts nowhere).

    Args:
        response_mask: [B, T] padded loss mask.
        off_policy_mask: [B] bool (or 0/1), True for hinted rows.
    """
    tokens = response_mask.bool().sum(dim=-1)
    has_tokens = tokens > 0
    off = off_policy_mask.bool() & has_tokens
    on = ~off
    return torch.stack([tokens[on].sum(), tokens[off].sum(), (on & has_tokens).sum(), off.sum()]).to(torch.int64)


@torch.no_grad()
def mixed_policy_metrics(
    terms: TokenTerms, log_prob: torch.Tensor, behavior_log_prob: torch.Tensor | None
) -> dict[str, float]:
    """Statistics of one micro-batch's ``mixed_token_losses``, as plain floats.

    verl's three (pg_clipfrac, ppo_kl, pg_clipfrac_lower; clip fractions over on-policy tokens) and the token counts
    are always present; means over a token set only when the set is non-empty (a missing key means "no such
    tokens", never a fake 0). Token sums per row, then split into on/off rows by one small product: one
    device->host transfer.
    """
    token_mask, off_rows, has_off = terms.token_mask, terms.off_rows, terms.has_off

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
