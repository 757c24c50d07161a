"""Which ground truths the math reward can never match (verl_ext/reward/ground_truth.py), checked against the reward.

Each verdict is hand-derived from the reward's rules (module docstring of verl_ext/reward/ground_truth.py) and then
confirmed by scoring answers with ``compute_score`` itself: a usable ground truth is matched by some
well-formed boxed answer; an unusable one by none of the natural candidates.
"""

from __future__ import annotations

import pandas as pd
import pytest

from verl_ext.reward.ground_truth import (
    EMPTY,
    MISSING,
    OK,
    UNPARSEABLE,
    VERBATIM_ONLY,
    classify_golds,
    gold_text,
    parse_golds,
    unusable_ground_truth,
    well_formed,
)
from verl_ext.reward.math_reward import compute_score

# (raw ground truth, verdict with parse_all, why)
CASES = [
    (None, MISSING, "no value"),
    (float("nan"), MISSING, "pandas' missing float"),
    ("", EMPTY, "nothing"),
    ("   ", EMPTY, "blank"),
    ("$ $", EMPTY, "the reward drops '$': nothing left"),
    ("\\frac{1}{", UNPARSEABLE, "math-verify reads only the raw text; unbalanced braces: no boxed answer equals it"),
    ("\\sqrt{", UNPARSEABLE, "same"),
    ("}{", UNPARSEABLE, "math-verify reads nothing; a box closes at the first '}'"),
    ("{", UNPARSEABLE, "math-verify reads only text; unbalanced"),
    ("42", OK, "integer: the reward's fast path"),
    (42, OK, "an int column"),
    (142.0, OK, "a float that is an integer"),
    ("025", OK, "integer with leading zero"),
    ("\\frac{1}{2}", OK, "math-verify reads 1/2"),
    ("\\frac{1}{2", OK, "unbalanced, but math-verify still reads 1/2: \\boxed{\\frac{1}{2}} matches it"),
    ("East", OK, "math-verify reads a product of symbols"),
    (["1", "3"], OK, "a list is joined as '1, 3', read as a set"),
    ("E_{1},E_{2}", VERBATIM_ONLY, "math-verify reads only the text; balanced: \\boxed{E_{1},E_{2}} matches"),
    ("\\frac{1}{}", VERBATIM_ONLY, "same"),
]


def _expected(verdict: str, parse_all: bool) -> str:
    return OK if verdict == VERBATIM_ONLY and not parse_all else verdict


@pytest.fixture(scope="module")
def verdicts() -> dict[bool, dict]:
    golds = [gold_text(raw) for raw, _, _ in CASES]
    return {p: classify_golds(golds, parse_all=p, workers=2) for p in (False, True)}


@pytest.mark.parametrize("parse_all", [False, True])
@pytest.mark.parametrize(("raw", "verdict", "why"), CASES, ids=[repr(c[0]) for c in CASES])
def test_verdicts(verdicts, raw, verdict, why, parse_all):
    assert verdicts[parse_all][gold_text(raw)] == _expected(verdict, parse_all), why


@pytest.mark.parametrize(("raw", "verdict", "why"), CASES, ids=[repr(c[0]) for c in CASES])
def test_rollout_stage_check_agrees(raw, verdict, why):
    expected = verdict if verdict in (MISSING, EMPTY, UNPARSEABLE) else None
    assert unusable_ground_truth(raw) == expected, why


def _score(answer: str, raw) -> float:
    return compute_score("test", f"The answer is \\boxed{{{answer}}}.", raw)["score"]


@pytest.mark.parametrize(
    ("raw", "answer"),
    [
        ("\\frac{1}{2", "\\frac{1}{2}"),
        ("\\frac{1}{2", "0.5"),
        ("East", "East"),
        (["1", "3"], "3, 1"),
        ("E_{1},E_{2}", "E_{1},E_{2}"),
        ("\\frac{1}{}", "\\frac{1}{}"),
        ("025", "25"),
        (142.0, "142"),
    ],
)
def test_usable_ground_truths_are_matched_by_the_reward(raw, answer):
    assert _score(answer, raw) == 1.0


@pytest.mark.parametrize(
    ("raw", "candidates"),
    [
        ("\\frac{1}{", ["\\frac{1}{}", "\\frac{1}{1}", "1", "{\\frac{1}{}"]),
        ("\\sqrt{", ["\\sqrt{}", "\\sqrt{1}", "{\\sqrt{}"]),
        ("}{", ["}{", "{}", ""]),
        ("{", ["{}", "{{}", ""]),
        ("", ["", "0"]),
        (None, ["None", ""]),
        ("$ $", ["$ $", ""]),
    ],
)
def test_unusable_ground_truths_are_never_matched(raw, candidates):
    assert all(_score(c, raw) == 0.0 for c in candidates)


def test_verbatim_only_is_not_matched_by_an_equivalent_rewrite():
    # Why it is worth a warning: math-verify compares these as strings only.
    assert _score("\\frac{1}{}", "\\frac{1}{}") == 1.0 and _score("\\frac{1}{ }", "\\frac{1}{}") == 0.0


def test_well_formed_follows_the_reward_extraction():
    assert well_formed("\\frac{1}{2}") and well_formed("E_{1},E_{2}")
    assert not well_formed("\\frac{1}{") and not well_formed("}{") and not well_formed("")
    assert not well_formed("1" * 1001)  # longer than MAX_ANSWER_CHARS: the reward never scores such an answer
    assert not well_formed("$5$")  # not normalised (the reward compares normalised text)


def test_a_parse_past_its_deadline_reads_as_nothing():
    # Real worker processes with a deadline no parse meets: each ground truth is retried alone, then reads as
    # nothing (as when the reward scores against it).
    assert parse_golds(["\\frac{1}{2}", "x^2+1"], workers=1, timeout_s=1e-4) == {"\\frac{1}{2}": False, "x^2+1": False}
    assert parse_golds(["\\frac{1}{2}", "x^2+1"], workers=1) == {"\\frac{1}{2}": True, "x^2+1": True}


def test_every_shared_benchmark_ground_truth_is_usable(six_benchmarks_path):
    golds = [gold_text(r["ground_truth"]) for r in pd.read_parquet(six_benchmarks_path)["reward_model"]]
    verdicts = classify_golds(golds)
    assert {g: v for g, v in verdicts.items() if v not in (OK, VERBATIM_ONLY)} == {}
