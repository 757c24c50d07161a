"""The loss's tensor math (verl_ext/loss/mixed_policy.py), token by token, against hand computations in plain Python
floats (tests/unit/loss_reference.py). No verl: this layer must be testable on its own."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from loss_reference import CLIP_C, CLIP_HI, CLIP_LO, GAMMA, OFF_POLICY_MODES, hand_off, hand_ppo, make_batch, to_tensors

from verl_ext.loss.mixed_policy import mixed_policy_metrics, mixed_token_losses

REPO_ROOT = Path(__file__).resolve().parents[2]


def token_losses(t, **kwargs):
    """Per-token losses, their derivative in log_prob (autograd) and the metrics."""
    kwargs = {"clip_ratio_low": CLIP_LO, "clip_ratio_high": CLIP_HI, "clip_ratio_c": CLIP_C, "gamma": GAMMA} | kwargs
    terms = mixed_token_losses(
        t["old"], t["log_prob"], t["adv"], t["mask"], t["off"], behavior_log_prob=t.get("beh"), **kwargs
    )
    # d(sum of token losses)/d logp is each token's own derivative (a token's loss depends on its logp only)
    (grad,) = torch.autograd.grad(terms.losses.sum(), t["log_prob"])
    return terms.losses.detach(), grad, mixed_policy_metrics(terms, t["log_prob"], t.get("beh"))


def hand_tokens(batch, mode: str, is_weights=None):
    """Per-token (loss, derivative) by hand: the whole [B, T] grid, padding included (masking is aggregation's)."""
    B, T = len(batch["mask"]), len(batch["mask"][0])
    L = [[0.0] * T for _ in range(B)]
    G = [[0.0] * T for _ in range(B)]
    for i in range(B):
        # a hinted row with no loss token is a padding row: it is not off-policy
        off = batch["off"][i] and any(batch["mask"][i]) and mode != "on_policy"
        for k in range(T):
            lp, a = batch["log_prob"][i][k], batch["adv"][i][k]
            if off:
                L[i][k], G[i][k] = hand_off(lp, batch["beh"][i][k] if mode == "behavior_ratio" else None, a)
            else:
                L[i][k], G[i][k] = hand_ppo(lp, batch["old"][i][k], a)
                if is_weights is not None:
                    L[i][k], G[i][k] = L[i][k] * is_weights[i][k], G[i][k] * is_weights[i][k]
    return torch.tensor(L, dtype=torch.float64), torch.tensor(G, dtype=torch.float64)


@pytest.mark.parametrize("mode", OFF_POLICY_MODES)
@pytest.mark.parametrize("seed", [0, 5])
def test_token_losses_and_derivatives_match_hand(mode, seed):
    batch = make_batch(seed=seed)
    losses, grad, _ = token_losses(to_tensors(batch), off_policy_mode=mode)
    want_l, want_g = hand_tokens(batch, mode)
    torch.testing.assert_close(losses, want_l, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad, want_g, rtol=1e-9, atol=1e-12)


def test_clipping_is_exercised_by_the_hand_test_batch():
    """Guards the tests here: their batch must contain clipped, dual-clipped and unclipped on-policy tokens."""
    batch = make_batch(seed=0)
    kinds = set()
    for i, row in enumerate(batch["mask"]):
        for t, m in enumerate(row):
            if m and not batch["off"][i]:
                lp, old, a = batch["log_prob"][i][t], batch["old"][i][t], batch["adv"][i][t]
                loss, grad = hand_ppo(lp, old, a)
                kinds.add("dual" if a < 0 and loss == -a * CLIP_C else ("clip" if grad == 0.0 else "free"))
    assert kinds == {"dual", "clip", "free"}


def test_off_policy_derivative_formula_single_token():
    """d/dlogp of -A p/(p+g) is -A g p/(p+g)^2 (LUFFY mode, p = exp(logp)); the paper's mode is the same in r'."""
    p, a, g = 0.3, 1.5, GAMMA
    for mode, beh in (("luffy_prob", 0.0), ("behavior_ratio", math.log(0.6))):
        x = p if mode == "luffy_prob" else p / 0.6
        t = {
            "log_prob": torch.tensor([[math.log(p)]], dtype=torch.float64, requires_grad=True),
            "old": torch.tensor([[math.log(0.5)]], dtype=torch.float64),
            "beh": torch.tensor([[beh]], dtype=torch.float64),
            "adv": torch.tensor([[a]], dtype=torch.float64),
            "mask": torch.tensor([[True]]),
            "off": torch.tensor([True]),
        }
        losses, grad, _ = token_losses(t, off_policy_mode=mode, gamma=g)
        assert losses.item() == pytest.approx(-a * x / (x + g), rel=1e-12)
        assert grad.item() == pytest.approx(-a * g * x / (x + g) ** 2, rel=1e-12)


def test_rollout_is_weights_scale_only_on_policy_tokens():
    """verl's rollout-correction IS weights multiply the PPO loss; hinted rows carry their weight in f already."""
    batch = make_batch(seed=0)
    w = (torch.rand(7, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2).tolist()
    t = to_tensors(batch)
    losses, grad, _ = token_losses(t, rollout_is_weights=torch.tensor(w, dtype=torch.float64))
    want_l, want_g = hand_tokens(batch, "behavior_ratio", is_weights=w)
    torch.testing.assert_close(losses, want_l, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad, want_g, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mode", OFF_POLICY_MODES)
def test_clamped_log_ratios_match_hand(mode):
    """Log-ratios beyond verl's +-20 clamp (to pi_old and to the behaviour policy): values and zero derivatives."""
    lp = [[-0.5, -30.0, -1.0, -26.0], [-0.5, -30.0, -1.0, -26.0]]
    batch = {
        "log_prob": lp,
        "old": [[-26.0, -1.0, -30.0, -0.5], [-26.0, -1.0, -30.0, -0.5]],
        "beh": [[-27.0, -1.0, -30.0, -0.5], [-27.0, -1.0, -30.0, -0.5]],
        "adv": [[1.0, 2.0, -1.5, -0.5], [1.0, 2.0, -1.5, -0.5]],
        "mask": [[1, 1, 1, 1], [1, 1, 1, 1]],
        "off": [0, 1],
    }
    losses, grad, _ = token_losses(to_tensors(batch), off_policy_mode=mode)
    want_l, want_g = hand_tokens(batch, mode)
    torch.testing.assert_close(losses, want_l, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(grad, want_g, rtol=1e-9, atol=1e-15)


def test_a_hinted_padding_row_is_not_off_policy():
    """verl's padding rows copy a real row's fields, so they may carry the flag: a row without loss tokens is never
    counted as off-policy, and its (garbage) values never reach the statistics."""
    batch = make_batch(seed=7)  # row 4: no loss token, flagged hinted
    t = to_tensors(batch)
    t["log_prob"].data[4] = 5.0
    t["beh"][4] = -300.0
    t["adv"][4] = 1e6
    terms = mixed_token_losses(t["old"], t["log_prob"], t["adv"], t["mask"], t["off"], behavior_log_prob=t["beh"])
    assert terms.off_rows.tolist() == [False, True, False, True, False, False, True]
    m = mixed_policy_metrics(terms, t["log_prob"], t["beh"])
    assert m["actor/lte/off_policy_tokens"] == 5 + 6 + 4 and m["actor/lte/on_policy_tokens"] == 7 + 3 + 2
    assert all(math.isfinite(v) for v in m.values())


def test_metrics_match_hand():
    batch = make_batch(seed=8)
    _, _, m = token_losses(to_tensors(batch))
    off_tok = [(i, t) for i, row in enumerate(batch["mask"]) for t, v in enumerate(row) if v and batch["off"][i]]
    on_tok = [(i, t) for i, row in enumerate(batch["mask"]) for t, v in enumerate(row) if v and not batch["off"][i]]
    lp, beh = batch["log_prob"], batch["beh"]
    x = [math.exp(lp[i][t] - beh[i][t]) for i, t in off_tok]
    assert m["actor/lte/off_policy_tokens"] == len(off_tok) and m["actor/lte/on_policy_tokens"] == len(on_tok)
    assert m["actor/lte/off_policy_prob_mean"] == pytest.approx(sum(math.exp(lp[i][t]) for i, t in off_tok) / 15)
    assert m["actor/lte/off_policy_ratio_mean"] == pytest.approx(sum(x) / len(x))
    assert m["actor/lte/f_mean"] == pytest.approx(sum(v / (v + GAMMA) for v in x) / len(x))
    clipped = 0
    for i, t in on_tok:
        r = math.exp(lp[i][t] - batch["old"][i][t])
        a = batch["adv"][i][t]
        clipped += -a * min(max(r, 1 - CLIP_LO), 1 + CLIP_HI) > -a * r
    assert m["actor/lte/on_policy_clipfrac"] == pytest.approx(clipped / len(on_tok))
    assert m["actor/pg_clipfrac"] == pytest.approx(clipped / len(on_tok))
    abs_off = sum(abs(hand_off(lp[i][t], beh[i][t], batch["adv"][i][t])[0]) for i, t in off_tok)
    abs_on = sum(abs(hand_ppo(lp[i][t], batch["old"][i][t], batch["adv"][i][t])[0]) for i, t in on_tok)
    assert m["actor/lte/off_policy_loss_share"] == pytest.approx(abs_off / (abs_off + abs_on))


def test_all_off_policy_batch_reports_no_on_policy_means():
    _, _, m = token_losses(to_tensors(make_batch(seed=9, off=(1,) * 7)))
    assert m["actor/lte/on_policy_tokens"] == 0 and "actor/lte/on_policy_clipfrac" not in m
    assert m["actor/lte/off_policy_loss_share"] == pytest.approx(1.0)


def test_no_off_policy_tokens_reports_no_off_policy_means():
    _, _, m = token_losses(to_tensors(make_batch(seed=10, off=(0,) * 7)))
    assert m["actor/lte/off_policy_tokens"] == 0 and m["actor/lte/off_policy_loss_share"] == 0.0
    assert not {"actor/lte/off_policy_prob_mean", "actor/lte/off_policy_ratio_mean", "actor/lte/f_mean"} & set(m)


@pytest.mark.parametrize("mode", OFF_POLICY_MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extreme_log_ratios_stay_finite(mode, dtype):
    B, T = 4, 6
    lp = torch.tensor([[-1e4, -80.0, -1e-7, 0.0, -30.0, -5.0]] * B, dtype=dtype)
    old = torch.tensor([[0.0, -1e4, -1e4, -1e-9, 50.0, -5.0]] * B, dtype=dtype)
    beh = torch.tensor([[0.0, -1e4, 1e4, -1e4, -1e-9, -1e4]] * B, dtype=dtype)
    adv = torch.tensor([[1e4], [-1e4], [1.0], [-1.0]], dtype=dtype).expand(B, T).contiguous()
    t = {"log_prob": lp.requires_grad_(True), "old": old, "beh": beh, "adv": adv}
    t["mask"] = torch.ones(B, T, dtype=torch.bool)
    t["off"] = torch.tensor([True, False, True, False])
    losses, grad, metrics = token_losses(t, off_policy_mode=mode)
    assert torch.isfinite(losses).all() and torch.isfinite(grad).all()
    assert all(math.isfinite(v) for v in metrics.values())


def test_input_errors_are_clear():
    t = to_tensors(make_batch())
    with pytest.raises(ValueError, match="behavior_log_prob"):
        mixed_token_losses(t["old"], t["log_prob"], t["adv"], t["mask"], t["off"])
    with pytest.raises(ValueError, match=r"off_policy_mask must be \[B\]"):
        mixed_token_losses(t["old"], t["log_prob"], t["adv"], t["mask"], t["off"][:3], behavior_log_prob=t["beh"])
    with pytest.raises(ValueError, match="same"):
        mixed_token_losses(t["old"][:, :3], t["log_prob"], t["adv"], t["mask"], t["off"], off_policy_mode="luffy_prob")
    with pytest.raises(ValueError, match="clip_ratio_c"):
        token_losses(t, clip_ratio_c=1.0)
    with pytest.raises(ValueError, match="gamma"):
        token_losses(t, gamma=0.0)
    with pytest.raises(ValueError, match="off_policy_mode"):
        token_losses(t, off_policy_mode="ratio")
    with pytest.raises(ValueError, match="only log_prob may require grad"):
        token_losses({**t, "adv": t["adv"].clone().requires_grad_(True)})


def test_the_tensor_math_imports_no_verl():
    code = "import sys, verl_ext.loss.mixed_policy; print('verl' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"
