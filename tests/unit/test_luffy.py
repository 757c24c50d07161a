"""The LUFFY arm's pieces, each against a hand computation written out here: the pure decisions
(recipe/lte/luffy.py), the advantage estimator with on-policy statistics (verl_ext/advantage/, through verl's own
advantage dispatch), and the loss on a reference row (-A f(p) per token, with LUFFY's preset settings)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from recipe.lte import core, luffy
from recipe.lte.luffy import LuffyConfig

# ---------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------


def test_config_defaults_are_luffys_and_unknown_keys_are_refused():
    cfg = LuffyConfig.from_dict(None)
    assert (cfg.num_on_policy, cfg.reference_groups) == (None, "all")
    assert cfg.on_policy_rollouts(8) == 7  # LUFFY: n=8 with n_prefix=1
    assert LuffyConfig.from_dict({"reference_groups": "none_pass"}).on_policy_rollouts(8) == 8
    assert LuffyConfig.from_dict({"num_on_policy": 5}).on_policy_rollouts(8) == 5
    with pytest.raises(ValueError, match=r"unknown keys \['lte\.luffy\.n_prefix'\]"):
        LuffyConfig.from_dict({"n_prefix": 1})
    for bad, key in (({"num_on_policy": 0}, "num_on_policy"), ({"num_on_policy": "7"}, "num_on_policy"),
                     ({"reference_groups": "some"}, "reference_groups")):  # fmt: skip
        with pytest.raises(ValueError, match=f"lte.luffy.{key}"):
            LuffyConfig.from_dict(bad)


def test_the_lte_block_leaves_the_luffy_block_to_luffy_config():
    assert core.LTEConfig.from_dict({"mode": "luffy", "luffy": {"reference_groups": "none_pass"}}).mode == "luffy"
    with pytest.raises(ValueError, match="'luffy'"):  # listed among the known keys
        core.LTEConfig.from_dict({"lufy": {}})


# ---------------------------------------------------------------------------------------------------------
# The reference of a row, and its tokens
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("<think>x</think> \\boxed{2}", "<think>x</think> \\boxed{2}"),
        ([{"role": "assistant", "content": "sol"}], "sol"),  # Openr1-Math-46k-8192's `target`
        (np.array([{"role": "assistant", "content": "first"}, {"content": "second"}], dtype=object), "first"),
        ({"role": "assistant", "content": "sol"}, "sol"),
        (None, None),
        ("   \n", None),
        ([], None),
        ([{"role": "assistant", "content": ""}], None),
        (3, None),
    ],
)
def test_reference_text_forms(value, expected):
    assert luffy.reference_text(value) == expected


def test_take_reference_removes_it_from_the_row_without_touching_the_dataset_dict():
    extra = {"index": 4, "reference": [{"role": "assistant", "content": "R"}]}
    prompt = {"uid": "u", "extra_info": extra}
    assert luffy.take_reference(prompt) == "R"
    assert prompt["extra_info"] == {"index": 4} and extra["reference"]  # a copy was changed, not the dataset's
    assert luffy.take_reference(prompt) is None  # gone
    assert luffy.take_reference({"uid": "u"}) is None
    blank = {"extra_info": {"reference": "  "}}
    assert luffy.take_reference(blank) is None and "reference" not in blank["extra_info"]


def test_strip_think_prefix_only_when_the_prompt_opens_the_block():
    assert luffy.strip_think_prefix("<|im_start|>assistant\n<think>\n", "<think>\nabc") == "abc"
    assert luffy.strip_think_prefix("<|im_start|>assistant\n", "<think>\nabc") == "<think>\nabc"
    assert luffy.strip_think_prefix("...<think>\n", "abc") == "abc"


@pytest.mark.parametrize(
    "ids, length, expected, truncated",
    [
        ([5, 6, 7], 10, [5, 6, 7, 2], False),  # + EOS
        ([5, 6, 7], 4, [5, 6, 7, 2], False),  # exactly fits with its EOS
        ([5, 6, 7], 3, [5, 6, 7], True),  # cut: no EOS, like a truncated rollout
        ([5, 6, 7], 2, [5, 6], True),
    ],
)
def test_reference_response(ids, length, expected, truncated):
    assert luffy.reference_response(ids, 2, length) == (expected, truncated)


def test_reference_response_refuses_an_empty_reference():
    with pytest.raises(ValueError, match="empty response"):
        luffy.reference_response([], 2, 8)


def test_reference_slot():
    rng = random.Random(0)
    assert luffy.reference_slot([True, False, False], "all", rng) == 3  # an added last row
    assert luffy.reference_slot([False, False, False], "all", rng) == 3
    assert luffy.reference_slot([True, False, False], "none_pass", rng) is None
    slots = {luffy.reference_slot([False] * 4, "none_pass", core.seeded_rng(0, 1, f"u{k}")) for k in range(200)}
    assert slots == {0, 1, 2, 3}  # every failure can be the one replaced
    assert luffy.reference_slot([False] * 4, "none_pass", core.seeded_rng(0, 1, "u")) == luffy.reference_slot(
        [False] * 4, "none_pass", core.seeded_rng(0, 1, "u")
    )
    with pytest.raises(ValueError, match="reference_groups"):
        luffy.reference_slot([False], "some", rng)


# ---------------------------------------------------------------------------------------------------------
# Step metrics
# ---------------------------------------------------------------------------------------------------------


def _row(uid, passed, *, ref=False, replaced=False, orig=None, status="ran", tokens=0, cls="none_pass"):
    return core.RowInfo(
        uid=uid,
        passed=passed,
        orig_passed=passed if orig is None else orig,
        replaced=replaced,
        off_policy=ref,
        group_class=cls,
        extra_kind=core.REFERENCE,
        extra_status=status,
        extra_correct=0,
        extra_tokens=tokens,
        extra_seconds=0.0,
    )


def test_step_metrics_hand_computed():
    rows = [
        # a: 1 of 3 on-policy pass, the reference passes
        _row("a", True, cls="some_pass"), _row("a", False, cls="some_pass"), _row("a", False, cls="some_pass"),
        _row("a", True, ref=True, orig=False, tokens=40, cls="some_pass"),
        # b: none pass, the reference passes: rescued
        _row("b", False), _row("b", False), _row("b", False), _row("b", True, ref=True, orig=False, tokens=30),
        # c: none pass, the reference was cut and fails
        _row("c", False), _row("c", False), _row("c", False),
        _row("c", False, ref=True, orig=False, tokens=50, status=core.REFERENCE_TRUNCATED),
    ]  # fmt: skip
    scores = [1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0.0]
    m = luffy.step_metrics(rows, scores)
    expected = {
        "lte/groups/all_pass_before": 0, "lte/groups/some_pass_before": 1, "lte/groups/none_pass_before": 2,
        "lte/groups/all_pass_after": 0, "lte/groups/some_pass_after": 2, "lte/groups/none_pass_after": 1,
        "lte/extra/ran": 3, "lte/extra/kind_reference": 3, "lte/extra/rescued": 1, "lte/extra/correct": 2,
        "lte/extra/replaced": 0, "lte/extra/off_policy_rows": 3, "lte/extra/tokens": 120,
        "lte/on_policy_acc": 1 / 9,  # over the 9 on-policy rows, not the 12 rows
        "lte/acc_after": 3 / 12,
        "lte/luffy/reference_reward_mean": 2 / 3, "lte/luffy/reference_pass_rate": 2 / 3,
        "lte/luffy/reference_truncated": 1, "lte/luffy/reference_tokens_mean": 40,
    }  # fmt: skip
    for c in core.GROUP_CLASSES:
        for when in ("before", "after"):
            expected[f"lte/groups/{c}_{when}_share"] = expected[f"lte/groups/{c}_{when}"] / 3
    assert m.keys() == expected.keys()
    for k, v in expected.items():
        assert m[k] == pytest.approx(v), k
    line = luffy.format_step_line(2, m)
    assert line == (
        "[LTE step 2] luffy | groups all/some/none 0/1/2 -> 0/2/1 | references 3 (pass 2, truncated 1, replaced 0) "
        "| rescued 1 | on-policy acc 0.111"
    )


def test_step_metrics_none_pass_groups_replace_a_failure():
    # reference_groups=none_pass: group a kept its 4 on-policy rows (one passed); group b's slot 2 holds the reference
    rows = [_row("a", p, cls="some_pass", status="not_needed") for p in (True, False, False, False)]
    rows += [_row("b", False), _row("b", False), _row("b", True, ref=True, replaced=True, orig=False), _row("b", False)]
    m = luffy.step_metrics(rows, [1, 0, 0, 0, 0, 0, 1, 0])
    assert (m["lte/groups/none_pass_before"], m["lte/groups/none_pass_after"], m["lte/extra/rescued"]) == (1, 0, 1)
    assert (m["lte/extra/ran"], m["lte/extra/replaced"], m["lte/extra/off_policy_rows"]) == (1, 1, 1)
    assert m["lte/on_policy_acc"] == 1 / 8  # the replaced slot was sampled on-policy (and failed)
    assert m["lte/luffy/reference_pass_rate"] == 1.0


def test_step_metrics_without_references_has_no_reference_statistics():
    rows = [_row("a", p, cls="some_pass", status="not_needed") for p in (True, False)]
    m = luffy.step_metrics(rows, [1.0, 0.0])
    assert m["lte/extra/ran"] == 0 and not any(k.startswith("lte/luffy/") for k in m)
    assert luffy.step_metrics([], []) == {}
    with pytest.raises(ValueError, match="differ in length"):
        luffy.step_metrics(rows, [1.0])


# ---------------------------------------------------------------------------------------------------------
# Advantages: statistics over the on-policy rows (algorithm.adv_estimator=grpo_on_policy_stats)
# ---------------------------------------------------------------------------------------------------------

# uid, score, on-policy: u1 = 1 of 3 on-policy pass + a passing reference; u2 = none pass + a passing reference;
# u3 = one on-policy row + a failing reference.
BATCH = [("u1", 1, 1), ("u1", 0, 1), ("u1", 0, 1), ("u1", 1, 0), ("u2", 0, 1), ("u2", 0, 1), ("u2", 0, 1),
         ("u2", 1, 0), ("u3", 1, 1), ("u3", 0, 0)]  # fmt: skip
EPS = 1e-6
S3 = math.sqrt(((1 - 1 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)  # unbiased std of [1, 0, 0]
HAND = {
    # no std: reward - mean of the on-policy rewards; a group of one on-policy row has mean 0 (verl's rule)
    False: [2 / 3, -1 / 3, -1 / 3, 2 / 3, 0, 0, 0, 1, 1, 0],
    # std: u1 / S3; u2's on-policy std is 0 -> 1 (LUFFY's rule; else the reference would get 1/eps); u3's std is 1
    True: [(1 - 1 / 3) / (S3 + EPS), -1 / 3 / (S3 + EPS), -1 / 3 / (S3 + EPS), (1 - 1 / 3) / (S3 + EPS),
           0, 0, 0, 1 / (1 + EPS), 1 / (1 + EPS), 0],
}  # fmt: skip


def _verl_batch(rows, T=3):
    from verl import DataProto

    lengths = [1 + i % T for i in range(len(rows))]
    mask = torch.tensor([[1] * n + [0] * (T - n) for n in lengths], dtype=torch.float32)
    scores = torch.zeros(len(rows), T)
    for i, (_, s, _) in enumerate(rows):
        scores[i, lengths[i] - 1] = s  # outcome reward on the last token
    data = DataProto.from_dict(tensors={"token_level_rewards": scores, "response_mask": mask})
    data.non_tensor_batch["uid"] = np.array([u for u, _, _ in rows], dtype=object)
    keys = [f"{u}_{i}_0" for i, (u, _, _) in enumerate(rows)]
    return data, keys, mask


@pytest.mark.parametrize("norm", [False, True])
def test_on_policy_stats_advantages_through_verls_dispatch(norm):
    """The trainer's path: verl's compute_advantage_for_multi_trajectories -> registry -> our estimator."""
    from omegaconf import OmegaConf
    from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

    from verl_ext.advantage.grpo_on_policy_stats import ESTIMATOR, register_grpo_on_policy_stats, statistics_rows

    register_grpo_on_policy_stats()
    data, keys, mask = _verl_batch(BATCH)
    config = OmegaConf.create({"norm_adv_by_std_in_grpo": norm})
    with statistics_rows(torch.tensor([bool(on) for _, _, on in BATCH])):
        out = compute_advantage_for_multi_trajectories(
            data, batch_keys=keys, adv_estimator=ESTIMATOR, num_repeat=4, norm_adv_by_std_in_grpo=norm, config=config
        )
    expected = torch.tensor(HAND[norm], dtype=torch.float32).unsqueeze(-1) * mask
    torch.testing.assert_close(out.batch["advantages"], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.batch["returns"], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("norm", [False, True])
def test_on_policy_stats_equal_verls_grpo_when_every_row_counts(norm):
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    from verl_ext.advantage.grpo_on_policy_stats import on_policy_stats_advantages

    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 2, (40,), generator=g).float()
    index = np.array([f"u{i // 5}" for i in range(38)] + ["solo", "other"], dtype=object)  # groups of 5, 3, 1, 1
    ours = on_policy_stats_advantages(scores, index, torch.ones(40, dtype=torch.bool), norm)
    verls, _ = compute_grpo_outcome_advantage(scores.unsqueeze(-1), torch.ones(40, 1), index, 1e-6, norm)
    # bit for bit (a group of equal scores: 0 either way, whether its std 0 is kept or replaced by 1)
    torch.testing.assert_close(ours, verls[:, 0], rtol=0, atol=0)


def test_on_policy_stats_refuses_without_the_flags_or_without_an_on_policy_row():
    from verl_ext.advantage.grpo_on_policy_stats import (
        compute_grpo_on_policy_stats_advantage,
        on_policy_stats_advantages,
    )

    with pytest.raises(RuntimeError, match="without the batch's off-policy flags"):
        compute_grpo_on_policy_stats_advantage(torch.zeros(2, 3), torch.ones(2, 3), np.array(["a", "a"]))
    with pytest.raises(ValueError, match="group 'a' has no on-policy row"):
        on_policy_stats_advantages(torch.zeros(2), ["a", "a"], torch.tensor([False, False]), False)


# ---------------------------------------------------------------------------------------------------------
# The loss with LUFFY's preset settings: -A f(p) on the reference row, -A r (no clip) on on-policy rows
# ---------------------------------------------------------------------------------------------------------


def test_loss_on_the_reference_row_is_minus_a_f_p_per_token_and_on_policy_rows_are_unclipped():
    """luffy_prob, gamma 0.1, clip bounds 1.0 / 1e9 / 1e9 and seq-mean-token-sum-norm over T (preset/_luffy.yaml)."""
    from verl_ext.loss.mixed_policy import mixed_token_losses
    from verl_ext.loss.ppo_loss import compute_mixed_policy_loss

    T = 4
    lp = [[-0.1, -2.0, -0.7, -4.0], [-0.3, -1.2, -3.5, -0.05], [-1.0, -0.2, -0.6, -2.5]]
    old = [[-0.9, -0.1, -0.7, -1.0], [-2.9, -1.0, -0.1, -0.06], [-0.2, -0.2, -2.6, -0.5]]  # ratios far outside 0.8-1.2
    adv = [0.75, -0.5, -0.25]  # per row, as GRPO gives
    mask = [[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]]
    off = [False, True, False]  # row 1 is the reference

    def hand(i, t):
        if off[i]:
            p = math.exp(lp[i][t])
            return -adv[i] * p / (p + 0.1), -adv[i] * 0.1 * p / (p + 0.1) ** 2
        r = math.exp(lp[i][t] - old[i][t])
        return -adv[i] * r, -adv[i] * r  # no clip, no dual clip: d(-A r)/d logp = -A r

    log_prob = torch.tensor(lp, dtype=torch.float64, requires_grad=True)
    args = (
        torch.tensor(old, dtype=torch.float64),
        log_prob,
        torch.tensor(adv, dtype=torch.float64).unsqueeze(-1).expand(3, T).clone(),
        torch.tensor(mask, dtype=torch.float64),
        torch.tensor(off),
    )
    clip = {"clip_ratio_low": 1.0, "clip_ratio_high": 1e9, "clip_ratio_c": 1e9}
    terms = mixed_token_losses(*args, off_policy_mode="luffy_prob", gamma=0.1, **clip)
    for i in range(3):
        for t in range(T):
            if mask[i][t]:
                assert terms.losses[i, t].item() == pytest.approx(hand(i, t)[0], rel=1e-12), (i, t)
    assert not bool(terms.clipped.any()) and not bool(terms.clipped_lower.any())
    loss, metrics = compute_mixed_policy_loss(
        *args, off_policy_mode="luffy_prob", gamma=0.1, loss_agg_mode="seq-mean-token-sum-norm",
        global_batch_info={"loss_scale_factor": T}, **clip,
    )  # fmt: skip
    loss.backward()
    # seq-mean-token-sum-norm: sum of a row's token losses, mean over the 3 rows, / T
    hand_loss = sum(hand(i, t)[0] for i in range(3) for t in range(T) if mask[i][t]) / 3 / T
    assert loss.item() == pytest.approx(hand_loss, rel=1e-12)
    hand_grad = [[hand(i, t)[1] / 3 / T if mask[i][t] else 0.0 for t in range(T)] for i in range(3)]
    torch.testing.assert_close(log_prob.grad, torch.tensor(hand_grad, dtype=torch.float64), rtol=1e-10, atol=1e-14)
    # the reference's probability under the policy, as logged
    p_ref = [math.exp(x) for x in lp[1]]
    assert metrics["actor/lte/off_policy_prob_mean"] == pytest.approx(sum(p_ref) / 4)
    assert metrics["actor/pg_clipfrac"] == 0.0
