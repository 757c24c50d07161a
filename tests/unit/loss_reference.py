"""Independent references for the LTE loss tests: every formula written out by hand in plain Python floats, one
token at a time, and the test batches. No verl, no code under test."""

from __future__ import annotations

import math

import torch

GAMMA = 0.1
CLIP_LO, CLIP_HI, CLIP_C = 0.2, 0.28, 3.0
OFF_POLICY_MODES = ("behavior_ratio", "luffy_prob", "on_policy")
AGG_MODES = ["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


def hand_ppo(lp: float, old: float, a: float) -> tuple[float, float]:
    """verl's dual-clip PPO token loss and its derivative d/d lp, written out by hand."""
    d = lp - old
    inside = -20.0 < d < 20.0
    r = math.exp(min(max(d, -20.0), 20.0))
    l_unclipped = -a * r
    l_clipped = -a * min(max(r, 1 - CLIP_LO), 1 + CLIP_HI)
    if l_unclipped >= l_clipped:
        loss, grad = l_unclipped, -a * r
    else:  # the clipped term wins only when r is outside the clip range: constant in lp
        loss, grad = l_clipped, 0.0
    if a < 0 and -a * CLIP_C < loss:
        loss, grad = -a * CLIP_C, 0.0
    return loss, (grad if inside else 0.0)


def hand_off(lp: float, beh: float | None, a: float, gamma: float = GAMMA) -> tuple[float, float]:
    """-A x/(x+gamma) and its derivative -A gamma x/(x+gamma)^2 (x = exp(lp - beh), or exp(lp) when beh is None)."""
    d = lp if beh is None else lp - beh
    inside = beh is None or -20.0 < d < 20.0
    x = math.exp(min(max(d, -20.0), 20.0) if beh is not None else d)
    return -a * x / (x + gamma), (-a * gamma * x / (x + gamma) ** 2 if inside else 0.0)


def hand_agg(L, G, M, mode: str) -> tuple[float, list[list[float]]]:
    """Aggregate per-token losses L (and d loss_token/d lp G) over mask M as verl's agg_loss defines each mode."""
    B, T = len(M), len(M[0])
    lens = [sum(row) for row in M]
    rows = [i for i in range(B) if lens[i] > 0]
    w = [[0.0] * T for _ in range(B)]  # d total / d loss_token
    if mode in ("token-mean", "token-sum"):
        n = sum(lens) if mode == "token-mean" else 1
        for i in range(B):
            for t in range(T):
                w[i][t] = M[i][t] / n if n else 0.0
    else:
        for i in rows:
            for t in range(T):
                per_row = 1.0 / lens[i] if mode == "seq-mean-token-mean" else 1.0
                w[i][t] = M[i][t] * per_row / len(rows) / (T if mode == "seq-mean-token-sum-norm" else 1)
    loss = sum(w[i][t] * L[i][t] for i in range(B) for t in range(T))
    grad = [[w[i][t] * G[i][t] for t in range(T)] for i in range(B)]
    return loss, grad


def hand_mixed(batch, mode: str, agg: str, aggregation: str = "global"):
    """The whole LTE loss and its gradient on log_prob, by hand."""
    lp, old, beh, adv, mask, off = (batch[k] for k in ("log_prob", "old", "beh", "adv", "mask", "off"))
    B, T = len(mask), len(mask[0])
    L = [[0.0] * T for _ in range(B)]
    G = [[0.0] * T for _ in range(B)]
    for i in range(B):
        for t in range(T):
            if off[i] and mode != "on_policy":
                L[i][t], G[i][t] = hand_off(lp[i][t], beh[i][t] if mode == "behavior_ratio" else None, adv[i][t])
            else:
                L[i][t], G[i][t] = hand_ppo(lp[i][t], old[i][t], adv[i][t])
    if aggregation == "global":
        return hand_agg(L, G, mask, agg)
    loss, grad = 0.0, [[0.0] * T for _ in range(B)]
    for part in (0, 1):
        part_mask = [[m if bool(off[i]) == bool(part) else 0 for m in mask[i]] for i in range(B)]
        part_loss, part_grad = hand_agg(L, G, part_mask, agg)
        loss += part_loss
        grad = [[grad[i][t] + part_grad[i][t] for t in range(T)] for i in range(B)]
    return loss, grad


def make_batch(seed=0, lengths=(7, 5, 3, 6, 0, 2, 4), off=(0, 1, 0, 1, 1, 0, 1), T=7, log_ratio_scale=1.5):
    """Python lists: log-probs < 0, log-ratios in +-log_ratio_scale (some clipped), behaviour log-probs +-2 away,
    mixed-sign per-token advantages; row 4 is a padding row (mask all zero) flagged off-policy."""
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    old = (-torch.rand(B, T, generator=g, dtype=torch.float64) * 3 - 0.05).tolist()
    delta = ((torch.rand(B, T, generator=g, dtype=torch.float64) * 2 - 1) * log_ratio_scale).tolist()
    lp = [[min(o + d, -0.01) for o, d in zip(ro, rd, strict=True)] for ro, rd in zip(old, delta, strict=True)]
    beh_delta = (torch.rand(B, T, generator=g, dtype=torch.float64) * 4 - 2).tolist()
    beh = [[x - d for x, d in zip(rl, rd, strict=True)] for rl, rd in zip(lp, beh_delta, strict=True)]
    adv = (torch.randn(B, T, generator=g, dtype=torch.float64) * 1.5).tolist()
    mask = [[1 if t < n else 0 for t in range(T)] for n in lengths]
    return {"log_prob": lp, "old": old, "beh": beh, "adv": adv, "mask": mask, "off": list(off)}


def to_tensors(batch, dtype=torch.float64):
    t = {k: torch.tensor(batch[k], dtype=dtype) for k in ("log_prob", "old", "beh", "adv")}
    t["log_prob"].requires_grad_(True)
    t["mask"] = torch.tensor(batch["mask"], dtype=torch.bool)
    t["off"] = torch.tensor(batch["off"], dtype=torch.bool)
    return t
