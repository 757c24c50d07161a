"""GRPO advantages with group statistics over the on-policy rows only: ``algorithm.adv_estimator=grpo_on_policy_stats``.

verl's GRPO (``compute_grpo_outcome_advantage``) normalises each reward by the mean (and std) of ALL rows with the
same uid. LUFFY's code has a second estimator, ``grpo_split`` (LUFFY luffy/verl/verl/mix_src/mix_core_alg.py,
``compute_grpo_outcome_advantage_split``), whose statistics come from the on-policy rows of the group only, applied
to the off-policy row too -- so an external solution does not move its own baseline. This is that estimator:

    A_i = (r_i - mean(on-policy r of i's group)) [/ (std(on-policy r of i's group) + eps)]

as verl computes GRPO otherwise: unbiased std, eps = 1e-6, a group with one on-policy row has mean 0 and std 1.
A zero std becomes 1 (LUFFY's rule): all on-policy rows equal would otherwise give the off-policy row (r - mean)/eps.

Why a context variable: verl calls a registered estimator with the rewards, the mask, the uids and the algorithm
config only -- not with other fields of the batch. The LTE trainer reads the per-row off-policy flags of the batch
it is computing advantages for and sets them here (``statistics_rows``) around verl's own ``_compute_advantage``;
called without them, the estimator raises instead of silently using every row.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from verl.trainer.ppo import core_algos

ESTIMATOR = "grpo_on_policy_stats"
EPSILON = 1e-6  # verl's GRPO epsilon

# [B] bool, True = the row counts in its group's statistics; set by the trainer for one batch.
_STATS_ROWS: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar("lte_stats_rows", default=None)


def on_policy_stats_advantages(
    scores: torch.Tensor, index: Sequence[Any], in_stats: torch.Tensor, norm_by_std: bool, epsilon: float = EPSILON
) -> torch.Tensor:
    """Per-row advantages [B] from per-row scores [B]; ``in_stats`` [B] bool marks the rows whose scores give
    their group's mean and std. Every group needs at least one such row."""
    if not (len(scores) == len(index) == len(in_stats)):
        raise ValueError(f"scores ({len(scores)}), index ({len(index)}) and in_stats ({len(in_stats)}) differ")
    members: dict[Any, list[int]] = {}
    for i, uid in enumerate(index):
        members.setdefault(uid, []).append(i)
    out = torch.empty_like(scores)
    for uid, rows in members.items():
        stats = scores[[i for i in rows if bool(in_stats[i])]]
        if len(stats) == 0:
            raise ValueError(f"group {uid!r} has no on-policy row to compute its advantage statistics from")
        if len(stats) == 1:
            mean, std = torch.tensor(0.0), torch.tensor(1.0)
        else:
            mean, std = stats.mean(), stats.std()
            if std == 0:
                std = torch.tensor(1.0)
        for i in rows:
            out[i] = (scores[i] - mean) / (std + epsilon) if norm_by_std else scores[i] - mean
    return out


@contextlib.contextmanager
def statistics_rows(in_stats: torch.Tensor) -> Iterator[None]:
    """Within the block, the registered estimator takes its group statistics from the rows flagged here ([B],
    in the order of the batch verl computes advantages for)."""
    token = _STATS_ROWS.set(torch.as_tensor(in_stats, dtype=torch.bool).reshape(-1))
    try:
        yield
    finally:
        _STATS_ROWS.reset(token)


def compute_grpo_on_policy_stats_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    config: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl advantage estimator ``grpo_on_policy_stats``: (advantages, returns), both [B, T], as verl's GRPO."""
    in_stats = _STATS_ROWS.get()
    if in_stats is None:
        raise RuntimeError(
            f"algorithm.adv_estimator={ESTIMATOR} was called without the batch's off-policy flags: the LTE trainer "
            "sets them (recipe.lte.trainer.LTETrainer._compute_advantage); refusing to use every row's reward"
        )
    if len(in_stats) != token_level_rewards.shape[0]:
        raise ValueError(f"{len(in_stats)} off-policy flags for a batch of {token_level_rewards.shape[0]} rows")
    norm_by_std = True if config is None else bool(config.get("norm_adv_by_std_in_grpo", True))
    with torch.no_grad():
        scores = on_policy_stats_advantages(token_level_rewards.sum(dim=-1), index, in_stats, norm_by_std)
        advantages = scores.unsqueeze(-1) * response_mask
    return advantages, advantages


def register_grpo_on_policy_stats() -> None:
    """Put ``grpo_on_policy_stats`` into verl's advantage-estimator registry (idempotent)."""
    if core_algos.ADV_ESTIMATOR_REGISTRY.get(ESTIMATOR) is not compute_grpo_on_policy_stats_advantage:
        core_algos.register_adv_est(ESTIMATOR)(compute_grpo_on_policy_stats_advantage)
