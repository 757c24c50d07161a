"""recipe/lte/core.py: LTE's decisions (classify, plan, render, replace, measure), each checked against
expectations written out by hand here -- never by calling the code under test."""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from recipe.lte.core import (
    ALL_PASS,
    ALL_TRUNCATED,
    CONCISE,
    CONCISE_HINT,
    EXTRA_KIND_CODES,
    EXTRA_STATUS_CODES,
    HINT,
    NONE_PASS,
    NONE_TRUNCATED,
    SOME_PASS,
    SOME_TRUNCATED,
    HintConfig,
    HintPlan,
    LTEConfig,
    RowInfo,
    choose_replacements,
    classify_group,
    classify_truncation,
    code_to_name,
    distinct_wrong_answers,
    exact_only,
    group_records,
    plan_hint,
    prompt_identity,
    quotable_answers,
    render_hint_text,
    render_hinted_messages,
    seeded_rng,
    shrink_to_fit,
    step_metrics,
    wants_extra_phase,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def numeric_eq(a: str, b: str) -> bool:
    """A simple deterministic stand-in for the math grader: equal as exact rationals ("0.5" == "1/2")."""
    try:
        return Fraction(a) == Fraction(b)
    except (ValueError, ZeroDivisionError):
        return False


def never_eq(a: str, b: str) -> bool:
    return False


# ---------------------------------------------------------------------------------------------------------
# Codes
# ---------------------------------------------------------------------------------------------------------


def test_code_tables_are_stable_and_invertible():
    # The integers travel through TransferQueue: changing them silently would misread rows.
    assert EXTRA_KIND_CODES == {"none": -1, "concise": 0, "concise_hint": 1, "hint": 2, "unhinted": 3, "reference": 10}
    assert EXTRA_STATUS_CODES == {
        "not_needed": 0,
        "ran": 1,
        "skipped_too_long": 2,
        "error": 3,
        "skipped_no_hint": 4,
        "skipped_bad_ground_truth": 5,
        "reference_truncated": 10,
    }
    assert code_to_name(EXTRA_KIND_CODES, 2) == "hint"
    assert code_to_name(EXTRA_KIND_CODES, -1) == "none"
    assert code_to_name(EXTRA_STATUS_CODES, 2) == "skipped_too_long"
    with pytest.raises(KeyError, match="unknown code 7"):
        code_to_name(EXTRA_STATUS_CODES, 7)


# ---------------------------------------------------------------------------------------------------------
# 1-2. Classification
# ---------------------------------------------------------------------------------------------------------


ALL_FLAG_TUPLES = [flags for g in range(1, 5) for flags in itertools.product([False, True], repeat=g)]


@pytest.mark.parametrize("passed", ALL_FLAG_TUPLES, ids=str)
def test_classify_group_every_combination(passed):
    if all(passed):
        expected = ALL_PASS
    elif any(passed):
        expected = SOME_PASS
    else:
        expected = NONE_PASS
    assert classify_group(list(passed)) == expected
    assert classify_group([int(p) for p in passed]) == expected  # 0/1 flags (as they come from tensors)


@pytest.mark.parametrize("mode", ["grpo", "grpo_extra", "lte"])
@pytest.mark.parametrize("group_class", [ALL_PASS, SOME_PASS, NONE_PASS])
def test_wants_extra_phase_only_none_pass_groups_outside_grpo(mode, group_class):
    assert wants_extra_phase(group_class, mode) == (group_class == NONE_PASS and mode in ("grpo_extra", "lte"))


def test_wants_extra_phase_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="unknown mode 'ppo'"):
        wants_extra_phase(NONE_PASS, "ppo")


@pytest.mark.parametrize("truncated", ALL_FLAG_TUPLES, ids=str)
def test_classify_truncation_every_combination(truncated):
    if all(truncated):
        expected = ALL_TRUNCATED
    elif any(truncated):
        expected = SOME_TRUNCATED
    else:
        expected = NONE_TRUNCATED
    assert classify_truncation(list(truncated)) == expected
    assert classify_truncation(tuple(int(t) for t in truncated)) == expected


@pytest.mark.parametrize("fn", [classify_group, classify_truncation])
def test_classify_empty_group_is_an_error(fn):
    with pytest.raises(ValueError, match="at least one response"):
        fn([])


# ---------------------------------------------------------------------------------------------------------
# 3. distinct_wrong_answers
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preds", "truncated", "expected"),
    [
        # first-seen order, exact duplicates dropped
        (["3", "1", "3", "2", "1"], [False] * 5, ["3", "1", "2"]),
        # duplicates after stripping whitespace; the stripped form is listed
        ([" 7 ", "7", "\n7\t", "8"], [False] * 4, ["7", "8"]),
        # empty / whitespace / None answers (no \boxed{}) are dropped
        (["", "  ", None, "5", ""], [False] * 5, ["5"]),
        # truncated responses' answers are excluded, even if they would be new
        (["9", "4", "6", "4"], [True, False, True, False], ["4"]),
        # everything truncated -> nothing
        (["1", "2"], [True, True], []),
        # numeric equivalence: "0.5" == "1/2" == "2/4" (first seen wins), "3" == "3.0"
        (["1/2", "0.5", "3", "2/4", "3.0", "x"], [False] * 6, ["1/2", "3", "x"]),
        # an equivalent answer seen only in a truncated response does not block the non-truncated one
        (["1/2", "0.5"], [True, False], ["0.5"]),
    ],
)
def test_distinct_wrong_answers(preds, truncated, expected):
    assert distinct_wrong_answers(preds, truncated, equivalent=numeric_eq) == expected


def test_distinct_wrong_answers_string_dedupe_without_equivalence_match():
    # An equivalence that never matches still dedupes identical strings.
    assert distinct_wrong_answers(["a", "b", "a"], [False] * 3, equivalent=never_eq) == ["a", "b"]


@pytest.mark.parametrize(
    ("max_answers", "expected"),
    [(1, ["5"]), (2, ["5", "6"]), (3, ["5", "6", "7"]), (4, ["5", "6", "7"]), (8, ["5", "6", "7"])],
)
def test_distinct_wrong_answers_caps_count(max_answers, expected):
    # "5" repeats: the cap counts distinct answers, not responses.
    preds = ["5", "5", "6", "7", "6"]
    got = distinct_wrong_answers(preds, [False] * 5, equivalent=numeric_eq, max_answers=max_answers)
    assert got == expected


@pytest.mark.parametrize(
    ("max_chars", "expected"),
    [
        (1, ["1"]),
        (2, ["1", "22"]),
        (3, ["1", "22", "333"]),
        (4, ["4444", "1", "22", "333"]),
    ],
)
def test_distinct_wrong_answers_caps_chars(max_chars, expected):
    # Length is measured after stripping (" 22 " is 2 chars); too-long answers are skipped, order kept.
    preds = ["4444", "1", " 22 ", "333"]
    got = distinct_wrong_answers(preds, [False] * 4, equivalent=never_eq, max_answer_chars=max_chars)
    assert got == expected


def test_distinct_wrong_answers_too_long_answer_skipped_not_cut():
    long = "1" * 201
    assert distinct_wrong_answers([long, "2"], [False, False], equivalent=numeric_eq) == ["2"]
    assert distinct_wrong_answers(["1" * 200], [False], equivalent=numeric_eq) == ["1" * 200]


@pytest.mark.parametrize(("n_preds", "n_trunc"), [(2, 3), (3, 2), (0, 1)])
def test_distinct_wrong_answers_length_mismatch(n_preds, n_trunc):
    with pytest.raises(ValueError, match=rf"preds \({n_preds}\) and truncated \({n_trunc}\)"):
        distinct_wrong_answers(["1"] * n_preds, [False] * n_trunc, equivalent=numeric_eq)


def test_distinct_wrong_answers_with_the_reward_grader():
    # What the rollout stage injects: the reward's own equivalence (math-verify).
    from verl_ext.reward.math_reward import answers_equivalent

    preds = ["\\frac{1}{2}", "\\dfrac{1}{2}", "0.5", "3", "4", "3", "2^{2}"]
    # 0.5 == 1/2 and 2^{2} == 4 for the grader; first seen is listed
    assert distinct_wrong_answers(preds, [False] * 7, equivalent=answers_equivalent) == ["\\frac{1}{2}", "3", "4"]


# ---------------------------------------------------------------------------------------------------------
# 3. plan_hint
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fallback", [CONCISE, "skip"])
@pytest.mark.parametrize(
    ("preds", "truncated", "expected_by_fallback"),
    [
        # all truncated -> concise, whatever the (cut-off) texts contain and whatever the fallback
        (["1", "2", "3"], [True] * 3, {CONCISE: HintPlan(CONCISE), "skip": HintPlan(CONCISE)}),
        (["", "", ""], [True] * 3, {CONCISE: HintPlan(CONCISE), "skip": HintPlan(CONCISE)}),
        # some truncated, answers in the non-truncated failures -> concise_hint with those answers only
        (
            ["9", "4", "", "4", "0.5"],
            [True, False, True, False, False],
            {CONCISE: HintPlan(CONCISE_HINT, ("4", "0.5")), "skip": HintPlan(CONCISE_HINT, ("4", "0.5"))},
        ),
        # some truncated, no usable answer in the non-truncated ones -> concise (the fallback does not apply)
        (["9", "", " "], [True, False, False], {CONCISE: HintPlan(CONCISE), "skip": HintPlan(CONCISE)}),
        # none truncated, answers -> hint with the distinct answers
        (
            ["1/2", "0.5", "2", "1/2"],
            [False] * 4,
            {CONCISE: HintPlan(HINT, ("1/2", "2")), "skip": HintPlan(HINT, ("1/2", "2"))},
        ),
        # none truncated, no usable answer -> the fallback: concise, or skip (None)
        (["", None, "  "], [False] * 3, {CONCISE: HintPlan(CONCISE), "skip": None}),
        # none truncated, only over-long answers -> same as no answer
        (["7" * 300, "8" * 300], [False] * 2, {CONCISE: HintPlan(CONCISE), "skip": None}),
    ],
)
def test_plan_hint(preds, truncated, expected_by_fallback, fallback):
    got = plan_hint(preds, truncated, equivalent=numeric_eq, no_answer_fallback=fallback)
    assert got == expected_by_fallback[fallback]


def test_plan_hint_passes_caps_through():
    preds = ["1", "22", "333", "4444", "55555"]
    got = plan_hint(preds, [False] * 5, equivalent=never_eq, max_answers=2, max_answer_chars=3)
    assert got == HintPlan(HINT, ("1", "22"))
    got = plan_hint(preds, [False, True, False, False, False], equivalent=never_eq, max_answer_chars=4)
    assert got == HintPlan(CONCISE_HINT, ("1", "333", "4444"))


def test_plan_hint_all_truncated_never_calls_the_grader():
    def boom(a, b):
        raise AssertionError("grader called")

    assert plan_hint(["1", "1"], [True, True], equivalent=boom) == HintPlan(CONCISE)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("boxed", ["", "\\frac12", "", "7"]),  # free-text extractions are not the model's final answers
        ("any", ["3", "\\frac12", "", "7"]),
    ],
)
def test_quotable_answers(source, expected):
    preds, boxed = ["3", "\\frac12", "", "7"], [False, True, False, True]
    assert quotable_answers(preds, boxed, source) == expected


def test_quotable_answers_errors():
    with pytest.raises(ValueError, match="differ in length"):
        quotable_answers(["1", "2"], [True], "boxed")
    with pytest.raises(ValueError, match="answer_source"):
        quotable_answers(["1"], [True], "text")


def test_free_text_answers_of_a_none_truncated_group_follow_the_no_answer_fallback():
    """Failures that never boxed an answer, "3" pulled from their text: with answer_source=boxed nothing is quoted
    and no_answer_fallback decides, as for a group with no answer at all."""
    preds, boxed, trunc = ["3", "3", "4"], [False, False, False], [False] * 3
    boxed_only = quotable_answers(preds, boxed, "boxed")
    assert plan_hint(boxed_only, trunc, equivalent=numeric_eq) == HintPlan(CONCISE)
    assert plan_hint(boxed_only, trunc, equivalent=numeric_eq, no_answer_fallback="skip") is None
    assert plan_hint(quotable_answers(preds, boxed, "any"), trunc, equivalent=numeric_eq) == HintPlan(HINT, ("3", "4"))


def test_exact_only_deduplicates_identical_strings_only():
    assert distinct_wrong_answers(["5", "5.0", "5", "7"], [False] * 4, equivalent=exact_only) == ["5", "5.0", "7"]


def test_plan_hint_empty_group_is_an_error():
    with pytest.raises(ValueError):
        plan_hint([], [], equivalent=numeric_eq)


# ---------------------------------------------------------------------------------------------------------
# 3. shrink_to_fit
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("budget", "expected"),
    [
        (99, ("a", "b", "c", "d")),  # everything fits
        (3, ("a", "b", "c")),
        (1, ("a",)),
        (0, None),  # a plan with answers never loses all of them: skipped instead
    ],
)
@pytest.mark.parametrize("kind", [HINT, CONCISE_HINT])
def test_shrink_to_fit_longest_fitting_prefix(kind, budget, expected):
    plan = HintPlan(kind, ("a", "b", "c", "d"))
    tried = []

    def fits(p: HintPlan) -> bool:
        tried.append(len(p.wrong_answers))
        assert p.kind == kind
        return len(p.wrong_answers) <= budget

    got = shrink_to_fit(plan, fits)
    assert got == (None if expected is None else HintPlan(kind, expected))
    assert 0 not in tried  # the empty list is never tried for a plan with answers
    assert tried[0] == 4  # longest first


def test_shrink_to_fit_is_prefix_not_subset():
    # Only "b" alone would fit, but the result is a prefix: first-seen answers are kept first.
    plan = HintPlan(HINT, ("a", "b", "c"))
    assert shrink_to_fit(plan, lambda p: "a" not in p.wrong_answers) is None
    assert shrink_to_fit(plan, lambda p: "c" not in p.wrong_answers) == HintPlan(HINT, ("a", "b"))


@pytest.mark.parametrize(("fits", "expected"), [(True, HintPlan(CONCISE)), (False, None)])
def test_shrink_to_fit_plan_without_answers(fits, expected):
    calls = []
    got = shrink_to_fit(HintPlan(CONCISE), lambda p: calls.append(p) or fits)
    assert got == expected
    assert calls == [HintPlan(CONCISE)]


# ---------------------------------------------------------------------------------------------------------
# 4. Rendering
# ---------------------------------------------------------------------------------------------------------

LATEX_PROMPT = "Let $f(x)=\\frac{x^{2}}{2}$. Find $\\sum_{k=1}^{n} f(k)$ in \\boxed{}. {0} {} {{x}}"


def test_render_hint_text_default_hint_exact():
    plan = HintPlan(HINT, ("\\frac{1}{2}", "{3}"))
    expected = (
        LATEX_PROMPT + "\n\n"
        "Note: earlier attempts at this problem gave the following final answers, and all of them are wrong:\n"
        "- \\frac{1}{2}\n"
        "- {3}\n"
        "Do not give any of these answers again. Solve the problem from scratch. "
        "Do not mention this note or the earlier attempts in your reasoning."
    )
    assert render_hint_text(LATEX_PROMPT, plan, HintConfig()) == expected


def test_render_hint_text_default_concise_exact():
    expected = (
        LATEX_PROMPT + "\n\n"
        "Note: earlier attempts at this problem ran out of space before reaching a final answer. "
        "Think concisely and reach the final answer well within the length limit. "
        "Do not mention this note or the earlier attempts in your reasoning."
    )
    assert render_hint_text(LATEX_PROMPT, HintPlan(CONCISE), HintConfig()) == expected


def test_render_hint_text_default_concise_hint_exact():
    expected = (
        LATEX_PROMPT + "\n\n"
        "Note: some earlier attempts at this problem ran out of space before reaching a final answer, and the "
        "others gave the following final answers, all of which are wrong:\n"
        "- 42\n"
        "Think concisely, reach the final answer well within the length limit, and do not give any of these "
        "answers again. Do not mention this note or the earlier attempts in your reasoning."
    )
    assert render_hint_text(LATEX_PROMPT, HintPlan(CONCISE_HINT, ("42",)), HintConfig()) == expected


def test_render_hint_text_custom_templates():
    hint = HintConfig(
        templates={HINT: "[{answers}] {prompt}", CONCISE: "short: {prompt}", CONCISE_HINT: "{prompt}|{answers}"},
        answer_item="<{answer}>",
    )
    assert render_hint_text("Q{1}", HintPlan(HINT, ("a", "b")), hint) == "[<a>\n<b>] Q{1}"
    assert render_hint_text("Q", HintPlan(CONCISE), hint) == "short: Q"
    assert render_hint_text("Q", HintPlan(CONCISE_HINT, ("x",)), hint) == "Q|<x>"


@pytest.mark.parametrize(
    ("prompt", "answers"),
    [
        # placeholders inside the *content* must not be substituted again
        ("Count the $\\text{answers}$ of $x^2=1$.", ("2",)),
        ("Is {prompt} a word?", ("yes",)),
        ("Q", ("{prompt}", "{answers}", "{answer}")),
        # regex-replacement escapes in content are literal text
        ("\\g<0> \\1 \\n", ("\\1", "\\g<0>")),
    ],
)
def test_render_hint_text_placeholders_in_content_survive(prompt, answers):
    hint = HintConfig(
        templates={HINT: "{prompt}\nWRONG:\n{answers}", CONCISE: "{prompt}", CONCISE_HINT: "{prompt}{answers}"}
    )
    expected = prompt + "\nWRONG:\n" + "\n".join("- " + a for a in answers)
    assert render_hint_text(prompt, HintPlan(HINT, answers), hint) == expected


def test_default_templates_say_what_the_paper_requires():
    t = HintConfig().templates
    for kind in (HINT, CONCISE_HINT):
        assert "{answers}" in t[kind]  # the wrong answers are listed
        assert "wrong" in t[kind].lower()
        assert "do not give any of these answers again" in t[kind].lower()
    for kind in (CONCISE, CONCISE_HINT):
        assert "concise" in t[kind].lower()
    assert "concise" not in t[HINT].lower()  # Hint(q, A) is about answers, not length
    assert "{answers}" not in t[CONCISE]  # Concise(q) has no answers to show
    for kind in (HINT, CONCISE, CONCISE_HINT):
        assert t[kind].startswith("{prompt}")  # the original problem stays intact, hint after it
        assert "do not mention this note" in t[kind].lower()


MESSAGES = [
    {"role": "system", "content": "You are {helpful}."},
    {"role": "user", "content": "first {q}"},
    {"role": "assistant", "content": "an answer"},
    {"role": "user", "content": "second \\frac{a}{b}"},
    {"role": "assistant", "content": "trailing"},
]


def test_render_hinted_messages_changes_only_last_user_turn():
    hint = HintConfig(
        templates={HINT: "{prompt} / {answers}", CONCISE: "C {prompt}", CONCISE_HINT: "{prompt}{answers}"}
    )
    original = copy.deepcopy(MESSAGES)
    out = render_hinted_messages(MESSAGES, HintPlan(HINT, ("{1}",)), hint)
    assert out == [
        {"role": "system", "content": "You are {helpful}."},
        {"role": "user", "content": "first {q}"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": "second \\frac{a}{b} / - {1}"},
        {"role": "assistant", "content": "trailing"},
    ]
    assert MESSAGES == original  # input not mutated
    assert all(o is not m for o, m in zip(out, MESSAGES, strict=True))  # copies, safe to edit


def test_render_hinted_messages_keeps_extra_keys():
    msgs = [{"role": "user", "content": "Q", "name": "alice"}]
    out = render_hinted_messages(
        msgs,
        HintPlan(CONCISE),
        HintConfig(templates={HINT: "{prompt}{answers}", CONCISE: "{prompt}!", CONCISE_HINT: "{prompt}{answers}"}),
    )
    assert out == [{"role": "user", "content": "Q!", "name": "alice"}]


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [{"role": "system", "content": "s"}],
        [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}],
    ],
)
def test_render_hinted_messages_no_user_turn(messages):
    with pytest.raises(ValueError, match="no user turn"):
        render_hinted_messages(messages, HintPlan(CONCISE), HintConfig())


@pytest.mark.parametrize("content", [[{"type": "text", "text": "Q"}, {"type": "image"}], None, 3])
def test_render_hinted_messages_non_text_content(content):
    msgs = [{"role": "user", "content": "earlier text"}, {"role": "user", "content": content}]
    with pytest.raises(ValueError, match="text user turn"):
        render_hinted_messages(msgs, HintPlan(CONCISE), HintConfig())


# ---------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------


def test_default_config_is_valid_and_the_papers():
    cfg = LTEConfig()
    cfg.validate()
    assert cfg.mode == "lte"
    assert cfg.pass_threshold == 1.0
    assert cfg.min_failures_kept == 1
    assert cfg.hint.no_answer_fallback == CONCISE
    assert cfg.hint.answer_source == "boxed" and cfg.hint.dedup_timeout_s == 30.0
    assert cfg.data.on_bad_rows == "error"
    assert LTEConfig.from_dict({"data": {"on_bad_rows": "skip"}}).data.on_bad_rows == "skip"
    assert LTEConfig.from_dict(None) == cfg
    assert LTEConfig.from_dict({}) == cfg


def _templates(**override):
    t = dict(HintConfig().templates)
    t.update(override)
    return t


@pytest.mark.parametrize(
    "templates",
    [
        {HINT: "{prompt}{answers}", CONCISE: "{prompt}"},
        {HINT: "{prompt}{answers}", CONCISE_HINT: "{prompt}{answers}"},
        {},
    ],
)
def test_hint_config_missing_template(templates):
    # (from_dict cannot produce this: a partial `templates` block keeps the other defaults)
    missing = next(k for k in (CONCISE, CONCISE_HINT, HINT) if k not in templates)  # checked in this order
    with pytest.raises(ValueError, match=rf"lte\.hint\.templates\.{missing} is missing"):
        HintConfig(templates=templates).validate()


@pytest.mark.parametrize("templates", [None, "{prompt}", [HINT]])
def test_hint_config_templates_not_a_mapping(templates):
    with pytest.raises(ValueError, match=r"lte\.hint\.templates must be a mapping"):
        HintConfig(templates=templates).validate()


@pytest.mark.parametrize(
    ("hint_kwargs", "key"),
    [
        ({"templates": _templates(hint="{answers} only")}, "lte.hint.templates.hint"),
        ({"templates": _templates(concise="no prompt here")}, "lte.hint.templates.concise"),
        ({"templates": _templates(hint="{prompt} but no answers")}, "lte.hint.templates.hint"),
        ({"templates": _templates(concise_hint="{prompt} but no answers")}, "lte.hint.templates.concise_hint"),
        ({"templates": _templates(concise="{prompt} {answers}")}, "lte.hint.templates.concise"),
        ({"answer_item": "- answer"}, "lte.hint.answer_item"),
        ({"max_wrong_answers": 0}, "lte.hint.max_wrong_answers"),
        ({"max_wrong_answers": -3}, "lte.hint.max_wrong_answers"),
        ({"max_answer_chars": 0}, "lte.hint.max_answer_chars"),
        ({"no_answer_fallback": "hint"}, "lte.hint.no_answer_fallback"),
        ({"no_answer_fallback": "Concise"}, "lte.hint.no_answer_fallback"),
        ({"answer_source": "text"}, "lte.hint.answer_source"),
        ({"dedup_timeout_s": 0}, "lte.hint.dedup_timeout_s"),
        ({"dedup_timeout_s": "30"}, "lte.hint.dedup_timeout_s"),
        ({"dedup_timeout_s": float("inf")}, "lte.hint.dedup_timeout_s"),
    ],
)
def test_hint_config_validate_names_the_key(hint_kwargs, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        HintConfig(**hint_kwargs).validate()
    # the same error through the config-block entry point
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        LTEConfig.from_dict({"hint": hint_kwargs})


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        ({"mode": "ppo"}, "lte.mode"),
        ({"mode": "LTE"}, "lte.mode"),
        ({"min_failures_kept": -1}, "lte.min_failures_kept"),
    ],
)
def test_lte_config_validate_names_the_key(cfg, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        LTEConfig(**cfg).validate()
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        LTEConfig.from_dict(cfg)


@pytest.mark.parametrize(
    ("block", "key"),
    [
        ({"min_failures_kept": "1"}, "lte.min_failures_kept"),
        ({"min_failures_kept": 1.5}, "lte.min_failures_kept"),
        ({"min_failures_kept": True}, "lte.min_failures_kept"),
        ({"seed": None}, "lte.seed"),
        ({"seed": "0"}, "lte.seed"),
        ({"pass_threshold": "1.0"}, "lte.pass_threshold"),
        ({"pass_threshold": float("nan")}, "lte.pass_threshold"),
        ({"pass_threshold": None}, "lte.pass_threshold"),
        ({"hint": {"max_wrong_answers": "8"}}, "lte.hint.max_wrong_answers"),
        ({"hint": {"max_answer_chars": None}}, "lte.hint.max_answer_chars"),
        ({"hint": {"templates": {"hint": None}}}, "lte.hint.templates.hint"),
        ({"hint": {"answer_item": None}}, "lte.hint.answer_item"),
        ({"data": {"on_bad_rows": "drop"}}, "lte.data.on_bad_rows"),
        ({"data": {"on_bad_rows": None}}, "lte.data.on_bad_rows"),
    ],
)
def test_config_wrong_types_name_the_key(block, key):
    # A YAML/CLI typo must fail at start-up with the key's name, not deep in a rollout with a TypeError.
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        LTEConfig.from_dict(block)


@pytest.mark.parametrize(
    ("block", "unknown"),
    [
        ({"mdoe": "lte"}, "mdoe"),
        ({"mode": "lte", "G": 8}, "G"),
        ({"hint": {"max_answers": 3}}, "max_answers"),
        ({"hint": {"template": {}}}, "template"),
        ({"data": {"on_bad_row": "skip"}}, "on_bad_row"),
    ],
)
def test_from_dict_rejects_unknown_keys(block, unknown):
    with pytest.raises(ValueError, match=rf"unknown keys .*'lte\.((hint|data)\.)?{unknown}'"):
        LTEConfig.from_dict(block)


def test_from_dict_values_and_partial_template_override():
    cfg = LTEConfig.from_dict(
        {
            "mode": "grpo_extra",
            "pass_threshold": 0.5,
            "min_failures_kept": 0,
            "seed": 7,
            "hint": {
                "templates": {"hint": "WRONG: {answers}\n{prompt}"},
                "max_wrong_answers": 3,
                "max_answer_chars": 50,
                "no_answer_fallback": "skip",
                "answer_item": "* {answer}",
            },
            "loss": {"gamma": 0.1, "anything": "goes"},  # owned by verl_ext.loss.config: ignored here
        }
    )
    assert (cfg.mode, cfg.pass_threshold, cfg.min_failures_kept, cfg.seed) == ("grpo_extra", 0.5, 0, 7)
    assert cfg.hint.templates[HINT] == "WRONG: {answers}\n{prompt}"
    # the templates not given keep their defaults
    assert cfg.hint.templates[CONCISE] == HintConfig().templates[CONCISE]
    assert cfg.hint.templates[CONCISE_HINT] == HintConfig().templates[CONCISE_HINT]
    assert (cfg.hint.max_wrong_answers, cfg.hint.max_answer_chars) == (3, 50)
    assert (cfg.hint.no_answer_fallback, cfg.hint.answer_item) == ("skip", "* {answer}")


def test_from_dict_does_not_mutate_input_or_defaults():
    block = {"hint": {"templates": {"concise": "C {prompt}"}}, "loss": {"x": 1}}
    original = copy.deepcopy(block)
    LTEConfig.from_dict(block)
    assert block == original
    assert HintConfig().templates[CONCISE].startswith("{prompt}\n\nNote: earlier attempts")


def test_from_dict_accepts_omegaconf():
    from omegaconf import OmegaConf

    block = OmegaConf.create({"mode": "grpo", "hint": {"templates": {"concise": "C {prompt}"}}, "loss": {"g": 1}})
    cfg = LTEConfig.from_dict(block)
    assert cfg.mode == "grpo"
    assert cfg.hint.templates[CONCISE] == "C {prompt}"
    assert cfg.hint.templates[HINT] == HintConfig().templates[HINT]


# ---------------------------------------------------------------------------------------------------------
# 5. seeded_rng and choose_replacements
# ---------------------------------------------------------------------------------------------------------


def test_prompt_identity_is_the_prompt_not_the_uid():
    q = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "What is 2+2?"}]
    same = [dict(m) for m in q]
    assert prompt_identity(q, 7) == prompt_identity(same, 7)
    assert prompt_identity(q, 7) != prompt_identity(q, 8)  # another dataset row with the same text
    assert prompt_identity(q, 7) != prompt_identity([q[0], {"role": "user", "content": "What is 2+3?"}], 7)
    assert prompt_identity(q, 7) != prompt_identity(q[1:], 7)
    # verl hands raw_prompt as a numpy object array of dicts, and the index as a numpy integer
    import numpy as np

    assert prompt_identity(np.array(q, dtype=object), np.int64(7)) == prompt_identity(q, 7)


RNG_KEYS = [(0,), (0, 3, "uid-a"), (1, 3, "uid-a"), (0, 4, "uid-a"), (0, 3, "uid-b"), (0, 3, "uid-a", 1)]


def _draws(seed_and_keys) -> list[float]:
    rng = seeded_rng(*seed_and_keys)
    return [rng.random() for _ in range(5)]


def test_seeded_rng_same_inputs_same_sequence():
    for sk in RNG_KEYS:
        assert _draws(sk) == _draws(sk)


def test_seeded_rng_different_inputs_different_sequences():
    seqs = [tuple(_draws(sk)) for sk in RNG_KEYS]
    assert len(set(seqs)) == len(RNG_KEYS)


def test_seeded_rng_same_across_processes():
    # str hashing is randomised per process; the rng must not depend on it.
    code = (
        "import json; from recipe.lte.core import seeded_rng\n"
        f"keys = {RNG_KEYS!r}\n"
        "out = []\n"
        "for sk in keys:\n"
        "    r = seeded_rng(*sk); out.append([r.random() for _ in range(5)])\n"
        "print(json.dumps(out))\n"
    )
    here = [_draws(sk) for sk in RNG_KEYS]
    for hashseed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hashseed, "PYTHONPATH": str(REPO_ROOT)}
        res = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True
        )
        assert json.loads(res.stdout) == here


@pytest.mark.parametrize(
    ("n_failed", "n_correct", "min_kept", "expected_k"),
    [
        # min_failures_kept = 1 (default): cap = n_failed - 1
        (4, 0, 1, 0),
        (4, 1, 1, 1),
        (4, 3, 1, 3),
        (4, 4, 1, 3),
        (4, 8, 1, 3),
        (1, 1, 1, 0),
        (1, 5, 1, 0),
        (0, 3, 1, 0),
        # min_failures_kept = 0: all failures may go
        (4, 4, 0, 4),
        (4, 6, 0, 4),
        (4, 2, 0, 2),
        (1, 1, 0, 1),
        (0, 2, 0, 0),
        # min_failures_kept = G (=4): nothing is ever replaced
        (4, 4, 4, 0),
        (4, 8, 4, 0),
        (2, 2, 4, 0),
        # in between
        (6, 5, 2, 4),
        (6, 3, 2, 3),
    ],
)
def test_choose_replacements_count(n_failed, n_correct, min_kept, expected_k):
    failed = [10 + 2 * i for i in range(n_failed)]  # slot ids need not be contiguous
    extras = [100 + i for i in range(n_correct)]
    for seed in range(5):
        pairs = choose_replacements(failed, extras, min_failures_kept=min_kept, rng=seeded_rng(seed))
        assert len(pairs) == expected_k
        slots = [s for s, _ in pairs]
        used = [e for _, e in pairs]
        assert slots == sorted(slots)
        assert len(set(slots)) == expected_k and set(slots) <= set(failed)
        assert len(set(used)) == expected_k and set(used) <= set(extras)


def test_choose_replacements_deterministic_for_a_seed():
    failed, extras = [0, 2, 3, 5, 7], [0, 1, 2, 3, 4, 5]
    a = choose_replacements(failed, extras, min_failures_kept=1, rng=seeded_rng(0, 12, "u"))
    b = choose_replacements(failed, extras, min_failures_kept=1, rng=seeded_rng(0, 12, "u"))
    assert a == b
    outs = {tuple(choose_replacements(failed, extras, rng=seeded_rng(s))) for s in range(50)}
    assert len(outs) > 1  # but not constant across seeds


@pytest.mark.parametrize(
    ("failed", "extras", "min_kept", "n_outcomes"),
    [
        # k = 2 of 3 slots (3 ways), both extras used, 2 pairings -> 6
        ([0, 1, 2], [10, 11], 1, 6),
        # k = 1: any of 2 slots x any of 3 extras -> 6
        ([0, 1], [10, 11, 12], 1, 6),
        # k = 2 of 3 slots (3) x ordered pick of 2 of 3 extras (6) -> 18
        ([0, 1, 2], [10, 11, 12], 1, 18),
        # k = 3 of 3, min_kept = 0: 3! pairings with 3 of 4 extras (4 * 6) -> 24
        ([0, 1, 2], [10, 11, 12, 13], 0, 24),
        # k = 1 of 4 slots, 1 extra -> 4
        ([0, 1, 2, 3], [10], 1, 4),
    ],
)
def test_choose_replacements_reaches_every_combination(failed, extras, min_kept, n_outcomes):
    seen = {
        tuple(choose_replacements(failed, extras, min_failures_kept=min_kept, rng=seeded_rng(s, "combo")))
        for s in range(600)
    }
    assert len(seen) == n_outcomes


def test_choose_replacements_does_not_mutate_inputs():
    failed, extras = [3, 1, 2], (7, 8, 9)
    choose_replacements(failed, extras, min_failures_kept=0, rng=seeded_rng(1))
    assert failed == [3, 1, 2] and extras == (7, 8, 9)


# ---------------------------------------------------------------------------------------------------------
# 6. step_metrics
# ---------------------------------------------------------------------------------------------------------


def _row(uid, passed, orig_passed, replaced, off_policy, group_class, kind, status, correct, tokens, seconds, *rest):
    return RowInfo(
        uid, passed, orig_passed, replaced, off_policy, group_class, kind, status, correct, tokens, seconds, *rest
    )


def _group(
    uid, flags, group_class, kind="none", status="not_needed", correct=0, tokens=0, seconds=0.0, first=100, dedup=False
):
    """flags: one (passed, orig_passed, replaced, off_policy) per row; the group fields repeat on every row."""
    return [_row(uid, *f, group_class, kind, status, correct, tokens, seconds, first, dedup) for f in flags]


ON_PASS = (True, True, False, False)
ON_FAIL = (False, False, False, False)
HINTED_IN = (True, False, True, True)  # a correct hinted response in a failed slot
UNHINTED_IN = (True, False, True, False)  # GRPO-Extra: a correct extra rollout, on-policy


def _batch() -> list[RowInfo]:
    groups = [
        _group("a", [ON_PASS] * 4, ALL_PASS),
        _group("b", [ON_PASS, ON_FAIL, ON_PASS, ON_FAIL], SOME_PASS),
        # none-pass, hinted, 3 correct extras replace 3 of 4 failures (min_failures_kept = 1)
        _group("c", [HINTED_IN, ON_FAIL, HINTED_IN, HINTED_IN], NONE_PASS, HINT, "ran", 3, 1200, 2.5, first=1300),
        # none-pass, concise hint ran, nothing correct; its answers' de-duplication timed out
        _group("d", [ON_FAIL] * 4, NONE_PASS, CONCISE, "ran", 0, 800, 1.5, dedup=True),
        # none-pass, hint did not fit: no generation, its kind must not count as a run
        _group("e", [ON_FAIL] * 4, NONE_PASS, HINT, "skipped_too_long", 0, 0, 0.0),
        # none-pass, extra phase raised: its (partial) tokens and time must not count
        _group("f", [ON_FAIL] * 4, NONE_PASS, CONCISE_HINT, "error", 0, 999, 7.0),
        # none-pass, GRPO-Extra's unhinted rollouts: 1 correct, on-policy replacement
        _group("g", [ON_FAIL, UNHINTED_IN, ON_FAIL, ON_FAIL], NONE_PASS, "unhinted", "ran", 1, 500, 0.5),
        # none-pass, nothing to hint (no answers, no_answer_fallback = skip)
        _group("h", [ON_FAIL] * 4, NONE_PASS, "none", "skipped_no_hint"),
        # none-pass, the reward can never match its ground truth: no extra phase
        _group("i", [ON_FAIL] * 4, NONE_PASS, "none", "skipped_bad_ground_truth"),
    ]
    # interleave the groups' rows: grouping must be by uid, not by position
    return [r for rows in itertools.zip_longest(*groups) for r in rows if r is not None]


def test_step_metrics_hand_computed():
    rows = _batch()
    assert len(rows) == 36 and rows[0].uid == "a" and rows[1].uid == "b"
    expected = {
        # before: a all, b some, c-i none (9 groups)
        "lte/groups/all_pass_before": 1,
        "lte/groups/all_pass_before_share": 1 / 9,
        "lte/groups/some_pass_before": 1,
        "lte/groups/some_pass_before_share": 1 / 9,
        "lte/groups/none_pass_before": 7,
        "lte/groups/none_pass_before_share": 7 / 9,
        # after: a all; b, c (3 of 4 pass), g (1 of 4) some; d, e, f, h, i none
        "lte/groups/all_pass_after": 1,
        "lte/groups/all_pass_after_share": 1 / 9,
        "lte/groups/some_pass_after": 3,
        "lte/groups/some_pass_after_share": 3 / 9,
        "lte/groups/none_pass_after": 5,
        "lte/groups/none_pass_after_share": 5 / 9,
        # extra phases that ran, by kind: c hint, d concise, g unhinted
        "lte/extra/kind_concise": 1,
        "lte/extra/kind_concise_hint": 0,
        "lte/extra/kind_hint": 1,
        "lte/extra/kind_unhinted": 1,
        "lte/extra/ran": 3,
        "lte/extra/skipped_too_long": 1,
        "lte/extra/error": 1,
        "lte/extra/skipped_no_hint": 1,
        "lte/extra/skipped_bad_ground_truth": 1,
        "lte/extra/rescued": 2,  # c, g
        "lte/extra/rescue_rate": 2 / 3,
        "lte/extra/correct": 4,  # 3 + 0 + 1
        "lte/extra/replaced": 4,  # 3 rows in c, 1 in g
        "lte/extra/off_policy_rows": 3,  # c's hinted rows only
        "lte/extra/tokens": 2500,  # 1200 + 800 + 500
        "lte/first/tokens": 2100,  # 8 groups * 100 + c's 1300: every group's first phase, also those skipped
        "lte/extra/token_share": 2500 / 2100,
        "lte/extra/dedup_timeouts": 1,  # d (a group, not its 4 rows)
        "lte/extra/seconds_max": 2.5,
        "lte/extra/seconds_mean": 1.5,  # (2.5 + 1.5 + 0.5) / 3
        "lte/on_policy_acc": 6 / 36,  # a: 4, b: 2 originally passed
        "lte/acc_after": 10 / 36,  # + 3 in c, 1 in g
    }
    got = step_metrics(rows)
    assert set(got) == set(expected)
    assert got == pytest.approx(expected, rel=1e-12, abs=0)


def test_step_metrics_prefix():
    got = step_metrics(_batch(), prefix="train/lte_")
    assert got["train/lte_extra/rescued"] == 2
    assert all(k.startswith("train/lte_") for k in got)


def test_step_metrics_no_extra_phase_ran():
    # plain GRPO step: no division by zero, zero counts, and no rate or time where nothing was tried
    rows = _group("x", [ON_PASS, ON_FAIL], SOME_PASS) + _group("y", [ON_FAIL, ON_FAIL], NONE_PASS)
    got = step_metrics(rows, prefix="")
    assert got["extra/ran"] == 0
    assert "extra/rescue_rate" not in got
    assert "extra/seconds_max" not in got and "extra/seconds_mean" not in got
    assert got["extra/tokens"] == 0 and got["extra/dedup_timeouts"] == 0
    assert got["first/tokens"] == 200 and got["extra/token_share"] == 0.0
    assert step_metrics(_group("z", [ON_FAIL], NONE_PASS, first=0), prefix="")["extra/token_share"] == 0.0
    assert got["groups/none_pass_before"] == got["groups/none_pass_after"] == 1
    assert got["groups/none_pass_after_share"] == 0.5
    assert got["on_policy_acc"] == got["acc_after"] == 0.25
    assert all(math.isfinite(v) for v in got.values())


def test_step_metrics_empty():
    assert step_metrics([]) == {}


def test_group_records_one_per_group_by_hand():
    index_of = {uid: i for i, uid in enumerate("abcdefghi")}
    recs = {r["uid"]: r for r in group_records(_batch(), index_of)}
    assert sorted(recs) == list("abcdefghi")  # grouped by uid, not by position
    assert recs["c"] == {
        "uid": "c",
        "index": 2,
        "group_class": NONE_PASS,
        "extra_kind": HINT,
        "extra_status": "ran",
        "extra_correct": 3,
        "passed_before": 0,
        "passed_after": 3,
        "replaced": 3,
        "off_policy": 3,
    }
    assert (recs["b"]["passed_before"], recs["b"]["passed_after"], recs["b"]["replaced"]) == (2, 2, 0)
    assert (recs["g"]["extra_kind"], recs["g"]["replaced"], recs["g"]["off_policy"]) == ("unhinted", 1, 0)
    assert recs["e"]["extra_status"] == "skipped_too_long" and recs["e"]["replaced"] == 0
    assert group_records(_batch())[0]["index"] is None  # no index known
    assert group_records([]) == []


def test_core_imports_nothing_heavy():
    # The decisions stay readable and testable on their own: no verl, torch, ray or reward import.
    code = "import sys, recipe.lte.core; print(sorted(m for m in ('verl', 'torch', 'ray', 'verl_ext') if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"
