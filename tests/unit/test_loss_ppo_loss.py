"""The loss inside verl (verl_ext/loss/ppo_loss.py): aggregated as verl aggregates, against hand computations in plain
Python floats (tests/unit/loss_reference.py), against verl's vanilla PPO loss, and through verl's real `ppo_loss` on
micro-batches built the way verl builds them."""

from __future__ import annotations

import functools
import math
import pickle
from itertools import chain

import pytest
import torch
from loss_reference import (
    AGG_MODES,
    CLIP_C,
    CLIP_HI,
    CLIP_LO,
    GAMMA,
    OFF_POLICY_MODES,
    hand_mixed,
    hand_off,
    hand_ppo,
    make_batch,
    to_tensors,
)
from tensordict import TensorDict
from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla, get_policy_loss_fn
from verl.trainer.ppo.padding_utils import SYNTHETIC_PADDING_SEQ_LEN
from verl.utils import tensordict_utils as tu
from verl.utils.metric import Metric, reduce_metrics
from verl.utils.py_functional import append_to_dict
from verl.utils.tensordict_utils import list_of_dict_to_tensordict
from verl.workers.config import ActorConfig
from verl.workers.config.actor import PolicyLossConfig
from verl.workers.engine.utils import prepare_micro_batches
from verl.workers.utils.losses import ppo_loss

from verl_ext.loss.config import LOSS_MODE, LTELossConfig, check_loss_config
from verl_ext.loss.mixed_policy import PartCounts
from verl_ext.loss.ppo_loss import (
    OFF_POLICY_FIELD,
    PART_COUNTS_FIELD,
    compute_mixed_policy_loss,
    lte_ppo_loss,
    make_lte_loss_fn,
    register_lte_policy_loss,
)
from verl_ext.loss.training_worker import attach_part_counts, local_part_counts


def run_mixed(t, **kwargs):
    kwargs = {"clip_ratio_low": CLIP_LO, "clip_ratio_high": CLIP_HI, "clip_ratio_c": CLIP_C, "gamma": GAMMA} | kwargs
    loss, metrics = compute_mixed_policy_loss(
        t["old"], t["log_prob"], t["adv"], t["mask"], t["off"], behavior_log_prob=t["beh"], **kwargs
    )
    (grad,) = torch.autograd.grad(loss, t["log_prob"])
    return loss, grad, metrics


def actor_config(loss_agg_mode="token-mean", loss_mode="vanilla", **kw) -> ActorConfig:
    return ActorConfig(
        strategy="fsdp",
        rollout_n=1,
        ppo_micro_batch_size_per_gpu=2,
        clip_ratio_low=CLIP_LO,
        clip_ratio_high=CLIP_HI,
        clip_ratio_c=CLIP_C,
        loss_agg_mode=loss_agg_mode,
        policy_loss=PolicyLossConfig(loss_mode=loss_mode),
        **kw,
    )


# ----------------------------------------------------------------------------------------------------------------------
# values and gradients against hand computations


@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("mode", OFF_POLICY_MODES)
def test_loss_and_grad_match_hand_computation(mode, agg):
    batch = make_batch(seed=0)
    loss, grad, _ = run_mixed(to_tensors(batch), off_policy_mode=mode, loss_agg_mode=agg)
    want_loss, want_grad = hand_mixed(batch, mode, agg)
    assert loss.item() == pytest.approx(want_loss, rel=1e-9, abs=1e-12)
    torch.testing.assert_close(grad, torch.tensor(want_grad, dtype=torch.float64), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("mode", ["behavior_ratio", "luffy_prob"])
def test_separate_normalisers_match_hand(mode, agg):
    """aggregation='separate': (1/Z) sum over on-policy + (1/Z') sum over off-policy, single micro-batch."""
    batch = make_batch(seed=2)
    loss, grad, _ = run_mixed(to_tensors(batch), off_policy_mode=mode, loss_agg_mode=agg, aggregation="separate")
    want_loss, want_grad = hand_mixed(batch, mode, agg, aggregation="separate")
    assert loss.item() == pytest.approx(want_loss, rel=1e-9)
    torch.testing.assert_close(grad, torch.tensor(want_grad, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    # with verl's global info for a mini-batch that is this one micro-batch, and its part counts (by hand: rows
    # 1, 3, 6 hinted with 5 + 6 + 4 tokens; rows 0, 2, 5 on-policy with 7 + 3 + 2; row 4 is padding)
    t = to_tensors(batch)
    n_tok, n_rows = int(t["mask"].sum()), int((t["mask"].sum(-1) > 0).sum())
    info = {"dp_size": 1, "batch_num_tokens": n_tok, "global_batch_size": n_rows, "loss_scale_factor": None}
    counts = PartCounts(on_tokens=12, off_tokens=15, on_rows=3, off_rows=3)
    loss_g, grad_g, _ = run_mixed(t, off_policy_mode=mode, loss_agg_mode=agg, aggregation="separate",
                                  global_batch_info=info, part_counts=counts)  # fmt: skip
    assert loss_g.item() == pytest.approx(want_loss, rel=1e-9)
    torch.testing.assert_close(grad_g, grad, rtol=1e-9, atol=1e-12)
    with pytest.raises(RuntimeError, match="on-policy and hinted counts"):
        run_mixed(t, off_policy_mode=mode, loss_agg_mode=agg, aggregation="separate", global_batch_info=info)


def test_separate_with_an_empty_part_is_finite():
    for off in ((0,) * 7, (1,) * 7):
        batch = make_batch(seed=3, off=off)
        loss, grad, _ = run_mixed(to_tensors(batch), aggregation="separate")
        want, _ = hand_mixed(batch, "behavior_ratio", "token-mean", aggregation="separate")
        assert loss.item() == pytest.approx(want, rel=1e-9)
        assert torch.isfinite(grad).all()


def test_separate_refuses_token_sum():
    with pytest.raises(ValueError, match="normalising loss_agg_mode"):
        run_mixed(to_tensors(make_batch()), loss_agg_mode="token-sum", aggregation="separate")


GLOBAL_INFOS = [{}, {"dp_size": 2, "batch_num_tokens": 61, "global_batch_size": 16, "loss_scale_factor": None}]


@pytest.mark.parametrize("with_is_weights", [False, True])
@pytest.mark.parametrize("info", GLOBAL_INFOS, ids=["local", "global"])
@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("mode", OFF_POLICY_MODES)
def test_no_off_policy_rows_equals_vanilla_exactly(mode, agg, info, with_is_weights):
    """float32, as in training: loss and gradient bit-for-bit equal to compute_policy_loss_vanilla; its metrics
    to float32 rounding (counted exactly here, summed in float32 there)."""
    batch = make_batch(seed=4, off=(0,) * 7)
    t = to_tensors(batch, dtype=torch.float32)
    weights = torch.rand(t["adv"].shape, generator=torch.Generator().manual_seed(5)) * 2 if with_is_weights else None
    config = actor_config(agg)
    config.global_batch_info.update(info)
    lp_vanilla = t["log_prob"].detach().clone().requires_grad_(True)
    want, want_metrics = compute_policy_loss_vanilla(
        t["old"], lp_vanilla, t["adv"], t["mask"], agg, config=config, rollout_is_weights=weights
    )
    (want_grad,) = torch.autograd.grad(want, lp_vanilla)
    loss, grad, metrics = run_mixed(
        t, off_policy_mode=mode, loss_agg_mode=agg, global_batch_info=info, rollout_is_weights=weights
    )
    assert torch.equal(loss, want)
    assert torch.equal(grad, want_grad)
    for k, v in want_metrics.items():
        assert metrics[k] == pytest.approx(v, rel=1e-6, abs=1e-7), k


@pytest.mark.parametrize("agg", AGG_MODES)
def test_on_policy_ablation_equals_vanilla_with_flags_set(agg):
    batch = make_batch(seed=6)
    t = to_tensors(batch, dtype=torch.float32)
    lp_vanilla = t["log_prob"].detach().clone().requires_grad_(True)
    want, _ = compute_policy_loss_vanilla(t["old"], lp_vanilla, t["adv"], t["mask"], agg, config=actor_config(agg))
    (want_grad,) = torch.autograd.grad(want, lp_vanilla)
    loss, grad, metrics = run_mixed(t, off_policy_mode="on_policy", loss_agg_mode=agg)
    assert torch.equal(loss, want) and torch.equal(grad, want_grad)
    assert "actor/lte/f_mean" not in metrics and metrics["actor/lte/off_policy_tokens"] == 5 + 6 + 4


# ----------------------------------------------------------------------------------------------------------------------
# masks, padding rows, all-off-policy, extremes, micro-batching


def test_padding_rows_contribute_nothing():
    """A padding row (response_mask all zero) flagged off-policy, with garbage values, changes nothing."""
    batch = make_batch(seed=7)
    t = to_tensors(batch)
    t["log_prob"].data[4] = 5.0
    t["beh"][4] = -300.0
    t["adv"][4] = 1e6
    loss, grad, metrics = run_mixed(t)
    keep = [i for i in range(7) if i != 4]
    sub = {k: [v[i] for i in keep] for k, v in batch.items()}
    want, want_grad = hand_mixed(sub, "behavior_ratio", "token-mean")
    assert loss.item() == pytest.approx(want, rel=1e-9)
    assert torch.equal(grad[4], torch.zeros(7, dtype=torch.float64))
    torch.testing.assert_close(grad[keep], torch.tensor(want_grad, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    assert metrics["actor/lte/off_policy_tokens"] == 5 + 6 + 4 and metrics["actor/lte/on_policy_tokens"] == 7 + 3 + 2


@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("mode", ["behavior_ratio", "luffy_prob"])
def test_all_off_policy_batch(mode, agg):
    batch = make_batch(seed=9, off=(1,) * 7)
    loss, grad, m = run_mixed(to_tensors(batch), off_policy_mode=mode, loss_agg_mode=agg)
    want, want_grad = hand_mixed(batch, mode, agg)
    assert loss.item() == pytest.approx(want, rel=1e-9)
    torch.testing.assert_close(grad, torch.tensor(want_grad, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    assert m["actor/lte/on_policy_tokens"] == 0 and "actor/lte/on_policy_clipfrac" not in m
    assert m["actor/lte/off_policy_loss_share"] == pytest.approx(1.0)


@pytest.mark.parametrize("mode", ["behavior_ratio", "luffy_prob"])
def test_hinted_padding_rows_only_still_equal_vanilla_exactly(mode):
    """verl's padding rows copy row 0's fields, so they can carry flag 1; with no real hinted row the loss must
    still be verl's vanilla bit for bit."""
    batch = make_batch(seed=12, off=(0, 0, 0, 0, 1, 0, 0))  # row 4 is the padding row
    t = to_tensors(batch, dtype=torch.float32)
    lp_vanilla = t["log_prob"].detach().clone().requires_grad_(True)
    want, _ = compute_policy_loss_vanilla(
        t["old"], lp_vanilla, t["adv"], t["mask"], "token-mean", config=actor_config()
    )
    (want_grad,) = torch.autograd.grad(want, lp_vanilla)
    loss, grad, m = run_mixed(t, off_policy_mode=mode)
    assert torch.equal(loss, want) and torch.equal(grad, want_grad)
    assert m["actor/lte/off_policy_tokens"] == 0


@pytest.mark.parametrize("aggregation", ["global", "separate"])
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
@pytest.mark.parametrize("mode", OFF_POLICY_MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extreme_log_ratios_stay_finite(mode, agg, aggregation, dtype):
    B, T = 4, 6
    lp = torch.tensor([[-1e4, -80.0, -1e-7, 0.0, -30.0, -5.0]] * B, dtype=dtype)
    old = torch.tensor([[0.0, -1e4, -1e4, -1e-9, 50.0, -5.0]] * B, dtype=dtype)
    beh = torch.tensor([[0.0, -1e4, 1e4, -1e4, -1e-9, -1e4]] * B, dtype=dtype)
    adv = torch.tensor([[1e4], [-1e4], [1.0], [-1.0]], dtype=dtype).expand(B, T).contiguous()
    t = {"log_prob": lp.requires_grad_(True), "old": old, "beh": beh, "adv": adv}
    t["mask"] = torch.ones(B, T, dtype=torch.bool)
    t["off"] = torch.tensor([True, False, True, False])
    loss, grad, metrics = run_mixed(t, off_policy_mode=mode, loss_agg_mode=agg, aggregation=aggregation)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert all(math.isfinite(v) for v in metrics.values())


@pytest.mark.parametrize("agg", ["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean"])
def test_global_aggregation_is_micro_batch_invariant(agg):
    """With verl's global batch info, summed micro-batch losses equal the whole mini-batch's (verl's guarantee)."""
    batch = make_batch(seed=11, lengths=(7, 5, 3, 6, 0, 2, 4, 1), off=(0, 1, 0, 1, 1, 0, 1, 1))
    t = to_tensors(batch)
    info = {"dp_size": 1, "batch_num_tokens": int(t["mask"].sum()), "global_batch_size": 8, "loss_scale_factor": None}
    whole, whole_grad, _ = run_mixed(t, loss_agg_mode=agg, global_batch_info=info)
    total = 0.0
    for s in (slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)):
        part = {k: (v[s] if k != "log_prob" else v.detach()[s].clone().requires_grad_(True)) for k, v in t.items()}
        loss, _, _ = run_mixed(part, loss_agg_mode=agg, global_batch_info=info)
        total += loss.item()
    assert total == pytest.approx(whole.item(), rel=1e-12)
    assert torch.isfinite(whole_grad).all()


def test_registered_lte_mixed_refuses_to_run_without_the_lte_loss_fn():
    t = to_tensors(make_batch(), dtype=torch.float32)
    register_lte_policy_loss()
    fn = get_policy_loss_fn(LOSS_MODE)
    with pytest.raises(RuntimeError, match="set_loss_fn"):
        fn(t["old"], t["log_prob"], t["adv"], t["mask"], "token-mean", actor_config(loss_mode=LOSS_MODE), None)


# ----------------------------------------------------------------------------------------------------------------------
# once through verl's real ppo_loss, on micro-batches built the way verl builds them


def tq_rows(specs, seed=0):
    """Rows as the agent loop writes them to TransferQueue (AgentLoopOutput.as_dict + _agent_loop_postprocess),
    plus the fields the trainer adds (old_log_probs, ref_log_prob, advantages: nested per response) and a verl
    synthetic padding row (padding_utils.construct_minimal_padding_template: 1-token response, mask 0, flag copied
    from row 0). Two test-only fields travel with each row: `row_id` and `seq_log_probs` (the model's per-position
    log-probs of the whole sequence, so a micro-batch's model output does not depend on how rows were cut)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for prompt_len, resp_len, off in specs:
        prompts = torch.randint(3, 60, (prompt_len,), generator=g)
        responses = torch.randint(3, 60, (resp_len,), generator=g)
        mask = torch.ones(resp_len, dtype=torch.int64)
        input_ids = torch.cat([prompts, responses])
        rows.append(
            {
                "prompts": prompts,
                "responses": responses,
                "response_mask": mask,
                "loss_mask": mask,
                "input_ids": input_ids,
                "position_ids": torch.arange(input_ids.numel()),
                "rollout_log_probs": -torch.rand(resp_len, generator=g) * 3,
                OFF_POLICY_FIELD: torch.tensor(float(off)),
                "old_log_probs": -torch.rand(resp_len, generator=g) * 3,
                "ref_log_prob": -torch.rand(resp_len, generator=g) * 3,
                "advantages": torch.full((resp_len,), float(torch.randn((), generator=g))),
                "seq_log_probs": -torch.rand(input_ids.numel(), generator=g) * 3,
            }
        )
    pad = {k: v.clone() for k, v in rows[0].items()}
    pad_prompts = torch.full((SYNTHETIC_PADDING_SEQ_LEN - 1,), 2)
    pad_resp = torch.full((1,), 2)
    zeros = torch.zeros(1, dtype=torch.int64)
    pad.update(prompts=pad_prompts, responses=pad_resp, response_mask=zeros, loss_mask=zeros,
               input_ids=torch.cat([pad_prompts, pad_resp]), position_ids=torch.arange(SYNTHETIC_PADDING_SEQ_LEN),
               rollout_log_probs=torch.zeros(1), old_log_probs=torch.zeros(1), ref_log_prob=torch.zeros(1),
               advantages=torch.zeros(1), seq_log_probs=-torch.ones(SYNTHETIC_PADDING_SEQ_LEN))  # fmt: skip
    rows.append(pad)
    for i, r in enumerate(rows):
        r["row_id"] = torch.tensor(i)
    return rows


def engine_split(rows, *, dp_size=1, batch_num_tokens=None, counts=True, **split):
    """One rank's mini-batch as verl's engine gets it, cut into micro-batches by verl's own prepare_micro_batches:
    LTETrainingWorker.train_batch's part counts (unless `counts` is False, or a given PartCounts: the DP sum), then
    what FSDPEngine.forward_backward_batch assigns before splitting. `split`: use_dynamic_bsz and
    micro_batch_size_per_gpu or max_token_len_per_gpu."""
    data = list_of_dict_to_tensordict(rows)
    split = {"use_dynamic_bsz": False, "micro_batch_size_per_gpu": 2} | split
    tu.assign_non_tensor(data, global_batch_size=len(rows), **split)
    if counts is True:
        attach_part_counts(data, dp_group=None)
    elif counts:
        tu.assign_non_tensor(data, **{PART_COUNTS_FIELD: tuple(counts)})
    if batch_num_tokens is None:
        batch_num_tokens = int(data["loss_mask"].values().sum())
    tu.assign_non_tensor(data, batch_num_tokens=batch_num_tokens, dp_size=dp_size)
    micro_batches, _ = prepare_micro_batches(data, dp_group=None, same_micro_num_in_dp=True)
    return micro_batches


def tq_mini_batch(specs, seed=0, micro_batch_size=2):
    """`tq_rows` cut by verl into micro-batches of `micro_batch_size` rows."""
    rows = tq_rows(specs, seed)
    return rows, engine_split(rows, micro_batch_size_per_gpu=micro_batch_size)


def model_output_for(micro_batch, seed):
    """What the engine hands the loss in no-padding mode: nested [b, j] per-position log-probs and entropy of the
    whole sequence (position k predicts token k+1). The leaf `values` lets the test read gradients."""
    n = int(micro_batch["input_ids"].values().numel())
    g = torch.Generator().manual_seed(seed)
    values = (-torch.rand(n, generator=g) * 3).requires_grad_(True)
    offsets = micro_batch["input_ids"].offsets()
    entropy = torch.rand(n, generator=g).requires_grad_(True)
    return values, {
        "log_probs": torch.nested.nested_tensor_from_jagged(values, offsets=offsets),
        "entropy": torch.nested.nested_tensor_from_jagged(entropy, offsets=offsets),
    }


SPECS = [(5, 6, 0), (3, 4, 1), (6, 2, 0), (4, 7, 1), (2, 5, 1)]  # (prompt_len, response_len, hinted)


def _run_all(loss_fn, micro_batches, seeds):
    total, grads, metrics = 0.0, [], []
    for mb, seed in zip(micro_batches, seeds, strict=True):
        values, out = model_output_for(mb, seed)
        loss, m = loss_fn(model_output=out, data=mb, dp_group=None)
        loss.backward()
        total += loss.item()
        grads.append(values.grad)
        metrics.append(m)
    return total, grads, metrics


def test_through_verl_ppo_loss_equals_vanilla_without_hinted_rows():
    """Flags all 0 -> lte_ppo_loss is verl's ppo_loss (policy loss, entropy bonus, KL loss, metrics), exactly."""
    specs = [(p, r, 0) for p, r, _ in SPECS]
    kw = {"entropy_coeff": 0.01, "use_kl_loss": True, "kl_loss_coef": 0.05, "kl_loss_type": "low_var_kl"}
    vanilla = functools.partial(ppo_loss, config=actor_config(**kw))
    lte = make_lte_loss_fn(actor_config(loss_mode=LOSS_MODE, **kw), {"gamma": 0.1})
    seeds = [10, 11, 12]
    _, mbs_a = tq_mini_batch(specs)
    _, mbs_b = tq_mini_batch(specs)
    total_a, grads_a, metrics_a = _run_all(vanilla, mbs_a, seeds)
    total_b, grads_b, metrics_b = _run_all(lte, mbs_b, seeds)
    assert total_a == total_b
    for ga, gb in zip(grads_a, grads_b, strict=True):
        assert torch.equal(ga, gb)
    for ma, mb in zip(metrics_a, metrics_b, strict=True):
        for k, v in ma.items():
            va, vb = (v.values, mb[k].values) if isinstance(v, Metric) else ([v], [mb[k]])
            assert type(v) is type(mb[k]) and (not isinstance(v, Metric) or v.aggregation == mb[k].aggregation), k
            assert vb == pytest.approx(va, rel=1e-6, abs=1e-7), k  # clip fractions: float32 rounding in verl's
        assert mb["actor/lte/off_policy_tokens"].values == [0]


def test_through_verl_ppo_loss_with_hinted_rows_matches_hand():
    """Hinted rows get -A f(pi_theta/pi_behaviour), the padding row nothing; summed over verl's micro-batches the loss
    is the global token-mean, and the gradient on the model's log-prob output is the hand one."""
    rows, mbs = tq_mini_batch(SPECS, seed=3)
    lte = make_lte_loss_fn(actor_config(loss_mode=LOSS_MODE), LTELossConfig())
    pickle.loads(pickle.dumps(lte))  # set_loss_fn ships it to Ray workers
    seeds = [20, 21, 22]
    total, grads, metrics = _run_all(lte, mbs, seeds)

    z = sum(len(r["responses"]) for r in rows[:-1])  # the padding row has no loss tokens
    want = 0.0
    row = 0
    for mb, seed, grad in zip(mbs, seeds, grads, strict=True):
        values, _ = model_output_for(mb, seed)
        seq_ends = mb["input_ids"].offsets()[1:].tolist()
        for end in seq_ends:
            r = rows[row]
            resp_len = len(r["responses"])
            for t in range(resp_len):
                pos = end - resp_len - 1 + t  # position predicting response token t
                lp, a = values[pos].item(), r["advantages"][t].item()
                if not r["response_mask"][t]:
                    want_l, want_g = 0.0, 0.0
                elif r[OFF_POLICY_FIELD]:
                    want_l, want_g = hand_off(lp, r["rollout_log_probs"][t].item(), a)
                else:
                    want_l, want_g = hand_ppo(lp, r["old_log_probs"][t].item(), a)
                want += want_l / z
                assert grad[pos].item() == pytest.approx(want_g / z, rel=1e-5, abs=1e-9)
            row += 1
    assert row == len(rows)
    assert total == pytest.approx(want, rel=1e-5)

    # verl's metric path: per micro-batch append (postprocess_batch_func), DP gather (1 rank), then
    # TrainingWorker.train_mini_batch's flattening and the trainer's reduce_metrics
    per_rank = {}
    for m in metrics:
        append_to_dict(per_rank, m)
    gathered = {k: [v] for k, v in per_rank.items()}
    flat = {k: Metric.aggregate_dp(v) if isinstance(v[0], Metric) else list(chain.from_iterable(v)) for k, v in gathered.items()}  # fmt: skip
    final = {}
    append_to_dict(final, flat)
    reduced = reduce_metrics(final)
    assert reduced["actor/lte/off_policy_tokens"] == 4 + 7 + 5
    assert reduced["actor/lte/on_policy_tokens"] == 6 + 2
    assert "actor/pg_loss" in reduced and "actor/lte/f_mean" in reduced
    # micro-batches: rows (0,1), (2,3), (4,pad): each has hinted tokens -> f_mean is the mean of three micro means
    assert len(flat["actor/lte/f_mean"]) == 3


def test_through_verl_ppo_loss_errors():
    rows, mbs = tq_mini_batch(SPECS)
    values, out = model_output_for(mbs[0], 0)
    with pytest.raises(ValueError, match="loss_mode=lte_mixed|set it to lte_mixed"):
        lte_ppo_loss(actor_config(), out, mbs[0], lte_loss=LTELossConfig())
    no_flag = mbs[0].exclude(OFF_POLICY_FIELD)
    with pytest.raises(KeyError, match=OFF_POLICY_FIELD):
        lte_ppo_loss(actor_config(loss_mode=LOSS_MODE), out, no_flag, lte_loss=LTELossConfig())
    no_beh = mbs[0].exclude("rollout_log_probs")
    with pytest.raises(KeyError, match="calculate_log_probs=true"):
        lte_ppo_loss(actor_config(loss_mode=LOSS_MODE), out, no_beh, lte_loss=LTELossConfig())
    # LUFFY's mode needs no behaviour log-probs
    loss, _ = lte_ppo_loss(
        actor_config(loss_mode=LOSS_MODE), out, no_beh, lte_loss=LTELossConfig(off_policy_mode="luffy_prob")
    )
    assert torch.isfinite(loss)
    bad = mbs[0].clone()
    bad[OFF_POLICY_FIELD] = torch.tensor([0.0, 0.5])
    with pytest.raises(ValueError, match="row 1 has 0.5"):
        lte_ppo_loss(actor_config(loss_mode=LOSS_MODE), out, bad, lte_loss=LTELossConfig())


def test_make_lte_loss_fn_from_verls_composed_config():
    """The install path the trainer uses: verl's real hydra config -> check -> picklable partial with an ActorConfig."""
    from hydra import compose, initialize_config_module

    overrides = [
        f"actor_rollout_ref.actor.policy_loss.loss_mode={LOSS_MODE}",
        "actor_rollout_ref.rollout.calculate_log_probs=true",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        "+lte.loss.gamma=0.2",
    ]
    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=overrides)
    lte_cfg = check_loss_config(cfg.lte.loss, cfg.actor_rollout_ref, cfg.algorithm)
    fn = pickle.loads(pickle.dumps(make_lte_loss_fn(cfg.actor_rollout_ref.actor, lte_cfg)))
    assert isinstance(fn.keywords["config"], ActorConfig)
    assert fn.keywords["config"].policy_loss.loss_mode == LOSS_MODE and fn.keywords["lte_loss"].gamma == 0.2
    _, mbs = tq_mini_batch(SPECS)
    _, out = model_output_for(mbs[0], 0)
    loss, metrics = fn(model_output=out, data=mbs[0], dp_group=None)
    assert torch.isfinite(loss) and "actor/lte/off_policy_tokens" in metrics


# ----------------------------------------------------------------------------------------------------------------------
# aggregation=separate through verl: Z and Z' are the whole mini-batch's, however verl cuts it


def run_cut(loss_fn, micro_batches):
    """Summed micro-batch losses and, per row id, d(sum)/d(the model's per-position log-probs of that row)."""
    total, grads = 0.0, {}
    for mb in micro_batches:
        values = mb["seq_log_probs"].values().detach().clone().requires_grad_(True)
        offsets = mb["input_ids"].offsets()
        out = {"log_probs": torch.nested.nested_tensor_from_jagged(values, offsets=offsets)}
        loss, _ = loss_fn(model_output=out, data=mb, dp_group=None)
        loss.backward()
        total += loss.item()
        bounds = offsets.tolist()
        for i, rid in enumerate(mb["row_id"].tolist()):
            grads[rid] = values.grad[bounds[i] : bounds[i + 1]]
    return total, grads


def hand_rows(rows, weight):
    """sum over rows and response tokens of weight(row) * token loss (hand_off for hinted rows, hand_ppo otherwise),
    and its gradient on each row's per-position log-probs (position P-1+t predicts response token t)."""
    loss, grads = 0.0, {}
    for i, r in enumerate(rows):
        lp = r["seq_log_probs"].tolist()
        g = [0.0] * len(lp)
        p_len = len(r["prompts"])
        for t in range(len(r["responses"])):
            if not r["response_mask"][t]:
                continue
            pos, a = p_len - 1 + t, r["advantages"][t].item()
            if r[OFF_POLICY_FIELD]:
                tok_loss, tok_grad = hand_off(lp[pos], r["rollout_log_probs"][t].item(), a)
            else:
                tok_loss, tok_grad = hand_ppo(lp[pos], r["old_log_probs"][t].item(), a)
            loss += weight(i) * tok_loss
            g[pos] = weight(i) * tok_grad
        grads[i] = g
    return loss, grads


def hand_separate(rows, agg):
    """The paper's 1/Z' (hinted) + 1/Z (on-policy) over the whole mini-batch, as per-row weights by hand."""
    lens = [int(r["response_mask"].sum()) for r in rows]
    hinted = [bool(r[OFF_POLICY_FIELD]) and n > 0 for r, n in zip(rows, lens, strict=True)]
    tokens = {h: sum(n for n, x in zip(lens, hinted, strict=True) if x == h) for h in (False, True)}
    n_rows = {h: sum(1 for n, x in zip(lens, hinted, strict=True) if x == h and n > 0) for h in (False, True)}

    def weight(i):
        if agg == "token-mean":
            return 1.0 / tokens[hinted[i]]
        per_row = 1.0 / lens[i] if agg == "seq-mean-token-mean" else 1.0
        return per_row / n_rows[hinted[i]]

    return hand_rows(rows, weight)


def assert_matches_hand(total, grads, want_loss, want_grads):
    assert total == pytest.approx(want_loss, rel=2e-5)
    assert sorted(grads) == sorted(want_grads)
    for rid, g in grads.items():
        torch.testing.assert_close(g, torch.tensor(want_grads[rid]), rtol=2e-5, atol=1e-9)


CUTS = [
    {"micro_batch_size_per_gpu": 1},
    {"micro_batch_size_per_gpu": 2},
    {"micro_batch_size_per_gpu": 3},
    {"micro_batch_size_per_gpu": 6},
    {"use_dynamic_bsz": True, "max_token_len_per_gpu": 128},  # the padding row alone is 128 tokens
    {"use_dynamic_bsz": True, "max_token_len_per_gpu": 150},
    {"use_dynamic_bsz": True, "max_token_len_per_gpu": 4096},
]
SEPARATE_SPECS = [(5, 6, 0), (3, 40, 1), (6, 2, 0), (4, 7, 1), (2, 25, 0)]  # (prompt_len, response_len, hinted)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
@pytest.mark.parametrize("cut", CUTS, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_separate_through_verl_matches_hand_for_every_micro_batch_cut(cut, agg):
    """Fixed-size and token-budget (dynamic bsz) micro-batches, verl's own prepare_micro_batches: the summed loss and
    every gradient are the hand computation over the whole mini-batch, so they do not depend on the cut."""
    rows = tq_rows(SEPARATE_SPECS, seed=5)
    lte = make_lte_loss_fn(actor_config(agg, loss_mode=LOSS_MODE), {"aggregation": "separate"})
    total, grads = run_cut(lte, engine_split(rows, **cut))
    assert_matches_hand(total, grads, *hand_separate(rows, agg))


def nested_mini_batch(rows, **split):
    """One rank's mini-batch (dp_size 1) as the engine gets it, uncut: per-row vectors nested, as TransferQueue hands
    them (equal lengths would otherwise stack densely), verl's global batch info, LTETrainingWorker's part counts,
    and the split settings `split` for verl's prepare_micro_batches."""
    data = TensorDict(
        {k: torch.nested.as_nested_tensor([r[k] for r in rows], layout=torch.jagged) if rows[0][k].dim() else torch.stack([r[k] for r in rows]) for k in rows[0]},
        batch_size=[len(rows)],
    )  # fmt: skip
    n_tokens = sum(int(r["loss_mask"].sum()) for r in rows)
    tu.assign_non_tensor(data, global_batch_size=len(rows), batch_num_tokens=n_tokens, dp_size=1, **split)
    attach_part_counts(data)
    return data


def set_partitions(items):
    """Every way of cutting `items` into non-empty groups (order of groups and within a group aside)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in set_partitions(rest):
        yield [[first], *part]
        for i in range(len(part)):
            yield [*part[:i], [first, *part[i]], *part[i + 1 :]]


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_separate_is_the_same_for_every_partition_of_the_mini_batch(agg):
    """Every one of the 52 ways of cutting a 5-row mini-batch (2 on-policy and 2 hinted rows, and verl's padding
    row) into micro-batches, contiguous or not (verl's dynamic batch size regroups rows by length): the summed loss
    and every gradient are the hand computation over the whole mini-batch."""
    rows = tq_rows(SEPARATE_SPECS[:4], seed=5)
    data = nested_mini_batch(rows)
    lte = make_lte_loss_fn(actor_config(agg, loss_mode=LOSS_MODE), {"aggregation": "separate"})
    want = hand_separate(rows, agg)
    partitions = list(set_partitions(list(range(len(rows)))))
    assert len(partitions) == 52  # the Bell number B5
    for blocks in partitions:
        cut = [tu.index_select_tensor_dict(data, torch.tensor(block)) for block in blocks]
        assert_matches_hand(*run_cut(lte, cut), *want)


EXAMPLE_SPLITS = [
    {"use_dynamic_bsz": False, "micro_batch_size_per_gpu": 1},
    {"use_dynamic_bsz": False, "micro_batch_size_per_gpu": 3},
    {"use_dynamic_bsz": True, "max_token_len_per_gpu": 104},  # a row is 4 prompt + 100 response tokens
    {"use_dynamic_bsz": True, "max_token_len_per_gpu": 208},  # two micro-batches: 2 rows and 1, as in the issue
    {"use_dynamic_bsz": True, "max_token_len_per_gpu": 4096},
]


def test_separate_weights_of_the_issue_example_for_every_cut():
    """Rows A (hinted, 100 tokens), B, C (on-policy, 100 each): A weighs 1/100, B and C 1/200 each, whatever the
    micro-batches -- each of the 5 partitions of {A, B, C} (the issue's [A, B] [C] among them: per-micro-batch
    estimates gave A 1/150, B 1/150, C 1/300), and verl's own cuts with and without dynamic batch size."""
    rows = tq_rows([(4, 100, 1), (4, 100, 0), (4, 100, 0)], seed=6)[:3]  # no padding row: exactly the example
    lte = make_lte_loss_fn(actor_config(loss_mode=LOSS_MODE), {"aggregation": "separate"})
    want = hand_rows(rows, lambda i: (1 / 100, 1 / 200, 1 / 200)[i])
    data = nested_mini_batch(rows)
    assert tu.get_non_tensor_data(data, PART_COUNTS_FIELD, None) == (200, 100, 2, 1)
    partitions = list(set_partitions([0, 1, 2]))
    assert len(partitions) == 5 and [[0, 1], [2]] in partitions
    for blocks in partitions:
        assert_matches_hand(*run_cut(lte, [tu.index_select_tensor_dict(data, torch.tensor(b)) for b in blocks]), *want)
    sizes = []
    for split in EXAMPLE_SPLITS:
        micro_batches, _ = prepare_micro_batches(nested_mini_batch(rows, **split), dp_group=None)
        sizes.append(sorted(len(mb) for mb in micro_batches))
        assert_matches_hand(*run_cut(lte, micro_batches), *want)
    assert sizes == [[1, 1, 1], [3], [1, 1, 1], [1, 2], [3]]


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
@pytest.mark.parametrize(
    "cuts",
    [
        ({"micro_batch_size_per_gpu": 1}, {"micro_batch_size_per_gpu": 3}),
        ({"use_dynamic_bsz": True, "max_token_len_per_gpu": 150}, {"micro_batch_size_per_gpu": 1}),
    ],
    ids=["fixed", "dynamic"],
)
def test_separate_with_two_dp_ranks_matches_hand(cuts, agg):
    """DP size 2, simulated: each rank holds half of the mini-batch (the hinted rows unevenly spread), its counts are
    summed over the ranks (the all-reduce of attach_part_counts), verl's loss scales by dp_size and FSDP averages the
    ranks' gradients. The result is the hand computation over the whole mini-batch."""
    rows = tq_rows(SEPARATE_SPECS, seed=7)
    halves = (rows[:3], rows[3:])  # rank 0: one hinted of 3 rows; rank 1: one hinted + the padding row
    counts = PartCounts(*(sum(c) for c in zip(*(local_part_counts(list_of_dict_to_tensordict(h)).tolist() for h in halves), strict=True)))  # fmt: skip
    n_tokens = sum(int(r["loss_mask"].sum()) for r in rows)
    lte = make_lte_loss_fn(actor_config(agg, loss_mode=LOSS_MODE), {"aggregation": "separate"})
    total, grads = 0.0, {}
    for half, cut in zip(halves, cuts, strict=True):
        mbs = engine_split(half, dp_size=2, batch_num_tokens=n_tokens, counts=counts, **cut)
        rank_total, rank_grads = run_cut(lte, mbs)
        total += rank_total / 2  # FSDP averages gradients (and verl's loss metric) over the DP ranks
        grads.update({rid: g / 2 for rid, g in rank_grads.items()})  # row ids are the mini-batch's
    assert_matches_hand(total, grads, *hand_separate(rows, agg))


def test_separate_through_verl_without_the_mini_batch_counts_is_refused():
    """Inside verl (global batch info present) a micro-batch without its mini-batch's counts must not fall back to an
    estimate: the LTE actor worker is missing."""
    rows = tq_rows(SEPARATE_SPECS)
    lte = make_lte_loss_fn(actor_config(loss_mode=LOSS_MODE), {"aggregation": "separate"})
    with pytest.raises(RuntimeError, match="LTEActorRolloutRefWorker"):
        run_cut(lte, engine_split(rows, counts=False))
    # aggregation=global needs no counts
    run_cut(make_lte_loss_fn(actor_config(loss_mode=LOSS_MODE), {}), engine_split(rows, counts=False))


def test_the_lte_actor_worker_is_verls_with_the_counting_training_worker():
    """What the LTE trainer puts in place of verl's ActorRolloutRefWorker: verl's worker whose actor class is
    LTETrainingWorker; its train_batch keeps verl's dispatch registration (the e2e run trains through it)."""
    from verl.single_controller.base.decorator import MAGIC_ATTR
    from verl.workers.engine_workers import ActorRolloutRefWorker, TrainingWorker

    from verl_ext.loss.training_worker import LTEActorRolloutRefWorker, LTETrainingWorker

    assert issubclass(LTEActorRolloutRefWorker, ActorRolloutRefWorker)
    assert LTEActorRolloutRefWorker.actor_worker_cls is LTETrainingWorker
    assert LTEActorRolloutRefWorker.ref_worker_cls is TrainingWorker
    assert issubclass(LTETrainingWorker, TrainingWorker)
    assert getattr(LTETrainingWorker.train_batch, MAGIC_ATTR) == getattr(TrainingWorker.train_batch, MAGIC_ATTR)
