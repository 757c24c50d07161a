"""recipe/lte/diagnostics.py: verl's rollout-vs-training metrics over the on-policy rows only, against hand
computations, and equal to verl's own where no row is hinted."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from verl.protocol import DataProto
from verl.trainer.ppo.rollout_corr_helper import compute_rollout_correction_and_rejection_mask
from verl.utils.debug.metrics import calculate_debug_metrics

from recipe.lte.diagnostics import on_policy_rollout_diagnostics

LENGTHS = (5, 3, 4, 2, 0)  # row 4: a padding row
OFF = (0, 1, 0, 1, 1)  # rows 1, 3 hinted; the padding row copies a hinted flag


def _fields(seed=0):
    g = torch.Generator().manual_seed(seed)
    B, T = len(LENGTHS), 6
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 2
    rollout = old + (torch.rand(B, T, generator=g, dtype=torch.float64) - 0.5) * 0.2  # engine mismatch: small
    hinted = torch.tensor(OFF, dtype=torch.bool)
    rollout[hinted] = old[hinted] - 4.0  # under the hinted prompt: far away
    mask = torch.tensor([[1 if t < n else 0 for t in range(T)] for n in LENGTHS], dtype=torch.int64)
    responses = torch.randint(3, 50, (B, T), generator=g)
    return {"old_log_probs": old, "rollout_log_probs": rollout, "response_mask": mask, "responses": responses}


def _on_policy_tokens(f):
    return [
        (f["old_log_probs"][i, t].item(), f["rollout_log_probs"][i, t].item())
        for i, n in enumerate(LENGTHS)
        if not OFF[i]
        for t in range(n)
    ]


CORR = OmegaConf.create({"rollout_is": "token", "rollout_is_threshold": 2.0, "rollout_is_batch_normalize": False})


def test_on_policy_diagnostics_match_hand():
    f = _fields()
    m = on_policy_rollout_diagnostics(f, torch.tensor(OFF), CORR)
    toks = _on_policy_tokens(f)
    diffs = [abs(math.exp(o) - math.exp(r)) for o, r in toks]
    assert len(toks) == 5 + 4
    assert m["training/rollout_probs_diff_valid"] == 1
    assert m["training/rollout_probs_diff_mean"] == pytest.approx(sum(diffs) / len(diffs), rel=1e-9)
    assert m["training/rollout_probs_diff_max"] == pytest.approx(max(diffs), rel=1e-9)
    assert m["rollout_corr/kl"] == pytest.approx(sum(r - o for o, r in toks) / len(toks), rel=1e-9)
    weights = [min(math.exp(o - r), 2.0) for o, r in toks]
    assert m["rollout_corr/rollout_is_mean"] == pytest.approx(sum(weights) / len(weights), rel=1e-9)
    # verl's own on the whole batch: the hinted rows' prompt gap swamps the engine mismatch
    whole = calculate_debug_metrics(DataProto.from_dict(tensors=f))
    assert whole["training/rollout_probs_diff_max"] > 5 * m["training/rollout_probs_diff_max"]


def test_without_hinted_rows_it_is_verls_own():
    f = _fields()
    m = on_policy_rollout_diagnostics(f, torch.zeros(len(LENGTHS)), CORR)
    assert m == {**calculate_debug_metrics(DataProto.from_dict(tensors=f)), **_verl_corr(f)}


def _verl_corr(f):
    _, _, corr = compute_rollout_correction_and_rejection_mask(
        f["old_log_probs"], f["rollout_log_probs"], f["response_mask"], rollout_is="token", rollout_is_threshold=2.0
    )
    return corr


def test_no_on_policy_token_gives_no_value():
    f = _fields()
    assert on_policy_rollout_diagnostics(f, torch.ones(len(LENGTHS)), CORR) == {}


def test_without_rollout_correction_only_the_debug_metrics():
    m = on_policy_rollout_diagnostics(_fields(), torch.tensor(OFF), None)
    assert m and all(k.startswith("training/") for k in m)
