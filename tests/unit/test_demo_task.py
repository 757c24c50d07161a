"""The CPU demo: task, targets, parquet through verl's RLHFDataset, warm-up, quality guard, build cache (the build itself: tests/integration/test_demo_build.py)."""

from __future__ import annotations

import dataclasses
import json
import random

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from recipe.lte.core import CONCISE, CONCISE_HINT, HINT, HintConfig, HintPlan
from recipe.lte.demo import task
from recipe.lte.demo import warmup as W
from recipe.lte.demo.measure import measure
from recipe.lte.demo.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def demo_tok_dir(tmp_path_factory) -> str:
    """The demo's tokenizer (and an untrained model), as build_demo makes them."""
    return build_tiny_model(str(tmp_path_factory.mktemp("demo_tok")), W.tokenizer_corpus())


@pytest.fixture(scope="module")
def demo_tok(demo_tok_dir):
    return AutoTokenizer.from_pretrained(demo_tok_dir)


# ---------------------------------------------------------------------------------------------------------
# Task
# ---------------------------------------------------------------------------------------------------------


def test_problems_and_answers():
    problems = task.all_problems()
    assert len(problems) == 90 and len(set(problems)) == 90
    p = task.Problem(56)
    assert (p.text, p.answer, p.decoy) == ("Compute fifty-six mod ten.", "6", "7")
    assert task.Problem(39).decoy == "0"  # 9 + 1 wraps
    assert task.build_messages(p) == [
        {
            "role": "user",
            "content": "Compute fifty-six mod ten. Let's think step by step and output the final answer within \\boxed{}.",
        }
    ]
    words = [task.number_words(n) for n in (10, 13, 19, 20, 40, 71, 99)]
    assert words == ["ten", "thirteen", "nineteen", "twenty", "forty", "seventy-one", "ninety-nine"]
    with pytest.raises(ValueError, match="10..99"):
        task.number_words(9)


def test_ground_truths_score_one_with_the_reward():
    name, score = task.get_scorer()
    for p in task.all_problems():
        for response in (task.short_response(p.answer), task.long_response(p.answer)):
            out = score(task.DATA_SOURCE, response, p.answer)
            assert out["score"] == 1.0 and out["pred"] == p.answer, (name, p, out)
        assert score(task.DATA_SOURCE, task.short_response(p.decoy), p.answer)["score"] == 0.0
    # truncated filler (no box): no answer, score 0
    no_answer = {"score": 0.0, "acc": False, "pred": "", "pred_boxed": False}
    assert score(task.DATA_SOURCE, task.FILLER * 3, "6") == no_answer


def test_tier_shares_are_fixed():
    counts = {name: 0 for name in task.TIERS}
    for p in task.all_problems():
        counts[task.tier_of(p).name] += 1
    assert counts == {"easy": 40, "hard": 30, "long": 20}  # tens digits 1,4,6,9 / 2,5,8 / 3,7
    assert task.tier_of(task.Problem(27)).name == "hard"


def _problem_of_tier(name: str) -> task.Problem:
    return next(p for p in task.all_problems() if task.tier_of(p).name == name)


def test_target_distribution_by_hand():
    hard = _problem_of_tier("hard")
    t = task.target_distribution(hard)
    assert t.p_long == 0.0
    assert t.answer_probs[hard.answer] == pytest.approx(0.10)
    assert t.answer_probs[hard.decoy] == pytest.approx(0.70)
    others = [d for d in task.DIGITS if d not in (hard.answer, hard.decoy)]
    assert all(t.answer_probs[d] == pytest.approx(0.20 / 8) for d in others)

    # listing the decoy and one other digit: the remaining mass is 0.1 + 7 * 0.025 = 0.275
    h = task.target_distribution(hard, HintPlan(HINT, (hard.decoy, others[0])))
    assert h.answer_probs[hard.decoy] == 0.0 and h.answer_probs[others[0]] == 0.0
    assert h.answer_probs[hard.answer] == pytest.approx(0.10 / 0.275)
    assert sum(h.answer_probs.values()) == pytest.approx(1.0)

    long = _problem_of_tier("long")
    assert task.target_distribution(long).p_long == 0.5
    assert task.target_distribution(long, HintPlan(HINT, (long.decoy,))).p_long == 0.5  # says nothing on length
    assert task.target_distribution(long, HintPlan(CONCISE)).p_long == 0.0
    c = task.target_distribution(long, HintPlan(CONCISE_HINT, (long.decoy,)))
    assert c.p_long == 0.0 and c.answer_probs[long.answer] == pytest.approx(0.30 / 0.60)

    with pytest.raises(ValueError, match="lists the correct answer"):
        task.target_distribution(hard, HintPlan(HINT, (hard.answer,)))


def test_sampled_hint_plans_never_list_the_answer():
    rng = random.Random(0)
    kinds = set()
    for p in task.all_problems():
        for _ in range(20):
            plan = task.sample_hint_plan(p, rng)
            kinds.add(plan.kind)
            assert p.answer not in plan.wrong_answers
            assert len(set(plan.wrong_answers)) == len(plan.wrong_answers)
            assert (plan.kind == CONCISE) == (not plan.wrong_answers)
    assert kinds == {HINT, CONCISE, CONCISE_HINT}


def test_hinted_messages_are_the_lte_rendering():
    p = task.Problem(23)
    msgs = task.hinted_messages(p, HintPlan(HINT, ("7", "1")))
    assert len(msgs) == 1 and msgs[0]["role"] == "user"
    expected = HintConfig().templates[HINT].replace("{prompt}", task.build_messages(p)[0]["content"])
    assert msgs[0]["content"] == expected.replace("{answers}", "- 7\n- 1")


# ---------------------------------------------------------------------------------------------------------
# Tokenizer, lengths, parquet
# ---------------------------------------------------------------------------------------------------------


def test_response_tokens_and_length_budgets(demo_tok):
    rt = W.ResponseTokens.from_tokenizer(demo_tok)
    assert sorted(demo_tok.decode([rt.digit_ids[d]]) for d in task.DIGITS) == list(task.DIGITS)
    short = len(demo_tok(task.short_response("3"), add_special_tokens=False)["input_ids"]) + 1  # + eos
    long = len(demo_tok(task.long_response("3"), add_special_tokens=False)["input_ids"]) + 1
    # a short answer fits the recommended response budget, the filler response does not
    assert short <= task.RECOMMENDED_MAX_RESPONSE_LENGTH < long
    # the longest hinted prompt at G=4 (four listed answers) fits the recommended prompt budget
    longest = max(
        len(
            W.prompt_ids(
                demo_tok, task.hinted_messages(p, HintPlan(kind, ("0", "1", "2", "3")[: 4 if kind == HINT else 3]))
            )
        )
        for p in task.all_problems()
        if p.answer not in "0123"
        for kind in (HINT, CONCISE_HINT)
    )
    assert longest <= task.RECOMMENDED_MAX_PROMPT_LENGTH


def test_heldout_split_covers_every_tier_and_answer_and_never_reaches_training():
    heldout, train = task.heldout_problems(), task.train_problems()
    # (tens + units) % 5 == 0, by hand: two units digits per tens digit.
    assert [p.n for p in heldout if p.n < 40] == [14, 19, 23, 28, 32, 37]
    assert len(heldout) == 18 and len(train) == 72
    assert {p.n for p in heldout}.isdisjoint(p.n for p in train)
    assert {p.n for p in heldout} | {p.n for p in train} == set(task.NUMBERS)
    assert {p.n for p in task.val_problems()} <= {p.n for p in train}
    by_tens = {t: sum(p.n // 10 == t for p in heldout) for t in range(1, 10)}
    assert set(by_tens.values()) == {2}  # every tens digit, hence every tier in the tiers' proportions
    assert {p.answer for p in heldout} == set(task.DIGITS)


def test_parquet_has_verl_columns_and_loads_in_rlhf_dataset(tmp_path, demo_tok):
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from verl_ext.reward.math_reward import compute_score

    paths = task.write_parquet(tmp_path)
    assert sorted(paths) == ["heldout", "train", "val"]
    train, val, heldout = paths["train"], paths["val"], paths["heldout"]
    df = pd.read_parquet(train)
    assert list(df.columns) == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    assert len(df) == 72 and len(pd.read_parquet(val)) == len(task.val_problems()) == 24
    assert [e["n"] for e in pd.read_parquet(heldout)["extra_info"]] == [p.n for p in task.heldout_problems()]
    row = df.iloc[10]
    p = task.train_problems()[10]
    assert row["data_source"] == task.DATA_SOURCE
    assert row["reward_model"] == {"style": "rule", "ground_truth": p.answer}
    assert row["extra_info"]["split"] == "train" and row["extra_info"]["index"] == 10
    assert row["extra_info"]["n"] == p.n
    # the reference solution --mode luffy trains on: a correct response in the demo's format
    assert row["extra_info"]["reference"] == f"\\boxed{{{p.answer}}}" == task.short_response(p.answer)
    assert compute_score(task.DATA_SOURCE, row["extra_info"]["reference"], p.answer)["score"] == 1.0

    config = OmegaConf.create(
        {
            "max_prompt_length": task.RECOMMENDED_MAX_PROMPT_LENGTH,
            "filter_overlong_prompts": True,
            "cache_dir": str(tmp_path / "cache"),
        }
    )
    ds = RLHFDataset(data_files=[train, val, heldout], tokenizer=demo_tok, config=config)
    assert len(ds) == 72 + 24 + 18  # nothing filtered as over-long
    item = ds[10]
    assert item["raw_prompt"] == task.build_messages(p)
    assert item["reward_model"]["ground_truth"] == p.answer and item["index"] == 10


# ---------------------------------------------------------------------------------------------------------
# Warm-up
# ---------------------------------------------------------------------------------------------------------


def test_example_soft_targets_sit_on_the_branch_and_the_digit(demo_tok):
    rt = W.ResponseTokens.from_tokenizer(demo_tok)
    long = _problem_of_tier("long")
    plan = HintPlan(CONCISE_HINT, (long.decoy,))
    ex = W.make_example(demo_tok, rt, long, plan, random.Random(0))
    assert ex.input_ids[: ex.prompt_len] == W.prompt_ids(demo_tok, task.hinted_messages(long, plan))
    first, digit = sorted(ex.soft)
    assert first == ex.prompt_len - 1
    assert ex.soft[first] == {rt.short_first_id: 1.0, rt.long_first_id: 0.0}  # concise: never the filler
    assert ex.input_ids[digit + 1] in rt.digit_ids.values()
    assert ex.soft[digit][rt.digit_ids[long.decoy]] == 0.0
    assert ex.soft[digit][rt.digit_ids[long.answer]] == pytest.approx(0.5)

    ids, attn, targets, decision = W.collate([ex], len(demo_tok), demo_tok.pad_token_id)
    assert decision[0].nonzero().flatten().tolist() == [first, digit]
    sums = targets.sum(-1)[0]
    assert torch.all(sums[: ex.prompt_len - 1] == 0)  # no loss on the prompt
    assert torch.allclose(sums[ex.prompt_len - 1 : len(ex.input_ids) - 1], torch.ones(1))
    assert targets[0, -2, demo_tok.eos_token_id] == 1.0  # the last target is the end of the turn


def test_lr_schedule_by_hand():
    cfg = W.WarmupConfig(lr=1.0, warmup_steps=10)
    assert W.lr_at(0, cfg, 110) == pytest.approx(0.1)
    assert W.lr_at(9, cfg, 110) == pytest.approx(1.0)
    assert W.lr_at(10, cfg, 110) == pytest.approx(1.0)
    assert W.lr_at(60, cfg, 110) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way: cos = 0
    assert W.lr_at(110, cfg, 110) == pytest.approx(0.1)


def test_warmup_smoke_trains_saves_and_reloads(tmp_path, demo_tok_dir, fast_warmup):
    with W.torch_threads(1):  # as build_demo trains (two threads crawl on a busy 2-core machine)
        _warmup_smoke(tmp_path, demo_tok_dir, fast_warmup)


def _warmup_smoke(tmp_path, demo_tok_dir, fast_warmup):
    tok = AutoTokenizer.from_pretrained(demo_tok_dir)
    model = AutoModelForCausalLM.from_pretrained(demo_tok_dir, attn_implementation="sdpa")
    before = [p.detach().clone() for p in model.parameters()]
    cfg = dataclasses.replace(fast_warmup, steps=8, lr=1e-2, warmup_steps=1)
    losses = W.warmup(model, tok, cfg, steps=cfg.steps, seed=0, log_every=0)
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]  # from random init, the format tokens are learned within a few steps
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))

    model.save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    ids = torch.tensor([W.prompt_ids(tok, task.build_messages(task.Problem(44)))])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, again(ids).logits)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["head_dim"] == 64

    stats = measure(again, tok, problems=task.all_problems()[:6], rounds=1, max_response_length=8, seed=0)
    assert stats["groups"] == 6 and 0.0 <= stats["success_rate"] <= 1.0
    assert stats["all_pass_share"] + stats["some_pass_share"] + stats["none_pass_share"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------------
# Build: quality guard and cache
# ---------------------------------------------------------------------------------------------------------


def test_summarize_by_hand():
    from recipe.lte.demo.measure import summarize

    ok, bad, cut = (True, "6", False), (False, "7", False), (False, "", True)
    firsts = [[ok, ok], [ok, bad], [bad, cut], [bad, (False, "2", False)]]  # all / some / none / none pass
    failed = [HintPlan(CONCISE_HINT, ("7",)), HintPlan(HINT, ("7", "2"))]
    extras = {
        "hinted": [[ok, bad], [(False, "3", False), cut]],  # group 1 rescued; 1 of 3 finished repeats
        "unhinted": [[bad, bad], [bad, (False, "2", False)]],  # nothing rescued; all 4 repeat
    }
    s = summarize(firsts, failed, extras)
    assert s["groups"] == 4
    assert s["success_rate"] == pytest.approx(3 / 8) and s["truncated_rate"] == pytest.approx(1 / 8)
    assert (s["all_pass_share"], s["some_pass_share"], s["none_pass_share"]) == (0.25, 0.25, 0.5)
    assert s["hint_kinds"] == {CONCISE_HINT: 1, HINT: 1}
    assert (s["rescue_hinted"], s["rescue_unhinted"]) == (0.5, 0.0)
    assert (s["extra_success_hinted"], s["extra_success_unhinted"]) == (0.25, 0.0)
    assert s["repeat_hinted"] == pytest.approx(1 / 3) and s["repeat_unhinted"] == 1.0
    with pytest.raises(ValueError, match="extras"):
        summarize(firsts, failed, {"hinted": extras["hinted"][:1]})
