"""LTE's loss with the batch split over 2 data-parallel ranks equals 1 rank on the same batch.

Two real processes joined by torch.distributed over gloo (the backend the CPU runs use). Each rank holds the same
tiny policy (a linear layer + log-softmax over a small vocabulary), gets its share of the rows -- a reordered split
with every hinted row on one rank or the other, as verl's batch balancing reorders rows between ranks -- and does
what verl's FSDP engine does for a step (``FSDPEngine.forward_backward_batch``): the global token count by
all-reduce, ``dp_size`` in the loss's global batch info, backward, then gradients averaged over ranks (FSDP's
reduce-scatter). The averaged gradient and the mean of the ranks' losses must equal one rank's on the whole batch,
and both must equal the hand computation of tests/unit/loss_reference.py (chained through the policy by autograd).
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from loss_reference import CLIP_C, CLIP_HI, CLIP_LO, GAMMA, hand_mixed, make_batch

from verl_ext.loss.ppo_loss import compute_mixed_policy_loss

VOCAB, FEAT = 11, 5
LENGTHS = (7, 5, 3, 6, 2, 4, 1, 6)
OFF = (0, 1, 0, 1, 0, 1, 1, 0)  # hinted rows 1, 3, 5, 6
# Rank 0 gets rows 6, 1, 2, 4 and rank 1 rows 0, 3, 5, 7: an uneven split of tokens and of hinted rows, in another
# order than the batch's.
SPLIT = ((6, 1, 2, 4), (0, 3, 5, 7))
AGGS = ("token-mean", "seq-mean-token-mean")  # normalised by global tokens / by global rows


def _policy() -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(FEAT, VOCAB).double()


def _inputs(seed: int = 21) -> dict:
    """Per-token features and sampled tokens, and the batch's old/behaviour log-probs and advantages (the policy's
    own log-probs are shifted by random log-ratios so that some PPO clips are active)."""
    batch = make_batch(seed=seed, lengths=LENGTHS, off=OFF)
    g = torch.Generator().manual_seed(seed)
    B, T = len(LENGTHS), len(batch["mask"][0])
    feats = torch.randn(B, T, FEAT, generator=g, dtype=torch.float64)
    tokens = torch.randint(0, VOCAB, (B, T), generator=g)
    with torch.no_grad():
        lp = _log_prob(_policy(), feats, tokens)
    shift = (torch.rand(B, T, generator=g, dtype=torch.float64) * 2 - 1) * 0.6
    old = (lp - shift).tolist()
    beh = (lp + (torch.rand(B, T, generator=g, dtype=torch.float64) * 4 - 2)).tolist()
    return {**batch, "log_prob": lp.tolist(), "old": old, "beh": beh, "feats": feats, "tokens": tokens}


def _log_prob(policy: torch.nn.Module, feats: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(policy(feats), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _step(policy: torch.nn.Module, x: dict, rows: list[int], agg: str, dp_size: int) -> tuple[float, list]:
    """One rank's forward/backward on ``rows``, verl's way: global counts by all-reduce (when dp_size > 1)."""
    sel = torch.tensor(rows)
    mask = torch.tensor(x["mask"], dtype=torch.bool)[sel]
    n_tok = mask.sum().clone()
    n_rows = (mask.sum(-1) > 0).sum().clone()
    if dp_size > 1:
        dist.all_reduce(n_tok)
        dist.all_reduce(n_rows)
    info = {"dp_size": dp_size, "batch_num_tokens": n_tok.item(), "global_batch_size": n_rows.item()}
    log_prob = _log_prob(policy, x["feats"][sel], x["tokens"][sel])
    loss, _ = compute_mixed_policy_loss(
        torch.tensor(x["old"], dtype=torch.float64)[sel],
        log_prob,
        torch.tensor(x["adv"], dtype=torch.float64)[sel],
        mask,
        torch.tensor(x["off"], dtype=torch.bool)[sel],
        behavior_log_prob=torch.tensor(x["beh"], dtype=torch.float64)[sel],
        clip_ratio_low=CLIP_LO, clip_ratio_high=CLIP_HI, clip_ratio_c=CLIP_C, gamma=GAMMA,
        loss_agg_mode=agg, global_batch_info=info,
    )  # fmt: skip
    policy.zero_grad()
    loss.backward()
    grads = [p.grad.detach().clone() for p in policy.parameters()]
    if dp_size > 1:
        for g in grads:  # FSDP/DDP: gradients averaged over the data-parallel ranks
            dist.all_reduce(g)
            g /= dp_size
        total = torch.tensor(loss.item(), dtype=torch.float64)
        dist.all_reduce(total)
        return total.item() / dp_size, grads  # verl reports the mean of the ranks' pg_loss
    return loss.item(), grads


def _rank(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        for agg in AGGS:
            loss, grads = _step(_policy(), _inputs(), list(SPLIT[rank]), agg, dp_size=2)
            out[(rank, agg)] = (loss, [g.tolist() for g in grads])
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_rank_checked_by_hand(x: dict, agg: str) -> tuple[float, list[torch.Tensor]]:
    """One rank on the whole batch; its loss and gradient checked against the hand computation (the loss and
    d loss / d log_prob per token by hand, chained through the policy by autograd)."""
    one_loss, one_grads = _step(_policy(), x, list(range(len(LENGTHS))), agg, dp_size=1)
    fields = {k: x[k] for k in ("log_prob", "old", "beh", "adv", "mask", "off")}
    want_loss, want_dlp = hand_mixed(fields, "behavior_ratio", agg)
    policy = _policy()
    lp = _log_prob(policy, x["feats"], x["tokens"])
    want_grads = torch.autograd.grad(
        lp, list(policy.parameters()), grad_outputs=torch.tensor(want_dlp, dtype=torch.float64)
    )
    assert one_loss == pytest.approx(want_loss, rel=1e-10), agg
    for got, want in zip(one_grads, want_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13)
    assert max(g.abs().max().item() for g in want_grads) > 1e-3  # a gradient that could be wrong
    return one_loss, one_grads


def test_two_ranks_give_the_loss_and_gradient_of_one_rank_and_of_the_hand_computation() -> None:
    x = _inputs()
    assert sorted(SPLIT[0] + SPLIT[1]) == list(range(len(LENGTHS)))
    hinted = {i for i, o in enumerate(OFF) if o}
    assert hinted & set(SPLIT[0]) and hinted & set(SPLIT[1])  # hinted rows land on both ranks
    one_rank = {agg: _one_rank_checked_by_hand(x, agg) for agg in AGGS}

    # two ranks over gloo (one pair of processes for both modes: each start imports torch and verl)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.start_processes(_rank, args=(_free_port(), out), nprocs=2, start_method="spawn", join=True)
        results = dict(out)
    for agg, (one_loss, one_grads) in one_rank.items():
        for rank in (0, 1):
            loss, grads = results[(rank, agg)]
            assert loss == pytest.approx(one_loss, rel=1e-10), (agg, rank)
            for got, want in zip(grads, one_grads, strict=True):
                torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), want, rtol=1e-10, atol=1e-13)
