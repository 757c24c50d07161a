"""The math reward: extraction, equivalence, the real benchmark ground truths, bounded time, verl's loading."""

from __future__ import annotations

import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import pandas as pd
import pytest
import yaml

from verl_ext.reward import math_reward as rm
from verl_ext.reward import math_verify_worker as mv
from verl_ext.reward.math_reward import answers_equivalent, compute_score, extract_answer

REWARD_FILE = rm.__file__
GRADER_CASES = Path(__file__).parents[1] / "fixtures" / "reward" / "grader_cases.yaml"


def boxed(answer: str) -> str:
    return f"Some reasoning first.\nSo the final answer is $\\boxed{{{answer}}}$."


# ---------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    "text, expected",
    [
        ("\\boxed{5}", "5"),
        ("first \\boxed{3} then \\boxed{ 7 }", "7"),  # the last box, trimmed
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # nested braces
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not close the box
        ("\\fbox{x+1}", "x+1"),
        ("the answer is \\boxed 5.", "5"),
        ("\\boxed{12} and then a truncated \\boxed{\\frac{1}{", "12"),  # last COMPLETE box
        ("\\boxed{}", ""),
        ("The answer is 42", "42"),  # no box: math-verify's own extraction
        # boxes written together are one answer, joined by ", " in writing order, duplicates dropped
        ("$\\boxed{(2, 2)} \\quad \\text{and} \\quad \\boxed{(6, 2)}$", "(2, 2), (6, 2)"),
        ("\\boxed{1}, \\boxed{2}, and \\boxed{3}", "1, 2, 3"),
        ("\\boxed{1}\\boxed{2}", "1, 2"),
        ("\\boxed{5}.\n\n**Final Answer**\n\\boxed{5}", "5"),
        ("$x = \\boxed{3}$ and $y = \\boxed{2}$", "x = 3, y = 2"),  # labels kept: not the set {2, 3}
        ("$\\boxed{3}$ for the first part and \\boxed{4}", "3, 4"),
        # boxes with reasoning between them: the last one
        ("so \\boxed{3} is wrong; the answer is \\boxed{4}", "4"),
        ("\\boxed{3} no no no no \\boxed{4}", "4"),
        # a "final answer" phrase after the last box is the answer, as written
        (
            "so $\\boxed{255}$ more, $10,455 in all. Final Answer: The final answer is $10,455$. I hope it is correct.",
            "10,455",
        ),
        ("Final answer: $7$. Wait, correcting the base gives \\boxed{8}.", "8"),  # the box comes last
        ("We get \\boxed{5}. The final answer must satisfy the equation, and it does.", "5"),  # nothing after it
        ("We get \\boxed{5}. This is the final answer for part 2.", "5"),  # not a statement of the answer
        ("We get \\boxed{5}.\n\n**Final Answer:** 6", "6"),
        ("no answer here", ""),
        ("", ""),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_pred_is_what_the_model_wrote():
    out = compute_score("math", boxed("0.50"), "\\frac{1}{2}")
    assert out == {"score": 1.0, "acc": True, "pred": "0.50"}
    out = compute_score("math", boxed("\\dfrac{3}{4}"), "\\frac{1}{2}")
    assert out == {"score": 0.0, "acc": False, "pred": "\\dfrac{3}{4}"}


# ---------------------------------------------------------------- the four classes of issue #13

TWO_BOXES = "The pairs are $\\boxed{(2, 2)} \\quad \\text{and} \\quad \\boxed{(6, 2)}$."
BOXES_THEN_FINAL = (
    "Six months in the first CD earn $\\boxed{200}$, then $\\boxed{255}$ in the second, $10,455 in all.\n"
    "Final Answer: The final answer is $10,455$. I hope it is correct."
)


def test_several_boxes_are_one_answer():
    assert compute_score("math", TWO_BOXES, "(2, 2), (6, 2)") == {"score": 1.0, "acc": True, "pred": "(2, 2), (6, 2)"}
    assert compute_score("math", TWO_BOXES, "(6, 2), (2, 2)")["score"] == 1.0  # a set: any order
    assert compute_score("math", TWO_BOXES, "(6, 2)")["score"] == 0.0  # half the answer is not the answer
    one_box_too_few = "The pairs are $\\boxed{(2, 2)}$."
    assert compute_score("math", one_box_too_few, "(2, 2), (6, 2)")["score"] == 0.0
    hedged = "It is \\boxed{4} or \\boxed{5}."
    assert compute_score("math", hedged, "4") == {"score": 0.0, "acc": False, "pred": "4, 5"}
    swapped = "So $x = \\boxed{3}$ and $y = \\boxed{2}$."
    assert compute_score("math", swapped, "x = 2, y = 3") == {"score": 0.0, "acc": False, "pred": "x = 3, y = 2"}
    assert compute_score("math", swapped, "x = 3, y = 2")["score"] == 1.0


@pytest.mark.parametrize("written", ["28 pct", "28 percent", "28 percentage", "28\\text{ percent}", "28 \\%", "28%"])
def test_percent_words_in_the_box(written):
    assert compute_score("math", boxed(written), "28\\%") == {"score": 1.0, "acc": True, "pred": written}
    assert compute_score("math", boxed(written), "28")["score"] == 1.0
    assert compute_score("math", boxed(written.replace("28", "29")), "28\\%")["score"] == 0.0


@pytest.mark.parametrize(
    "gold, answer, expected",
    [
        ("28\\%", "0.28", 1.0),  # 28% is 0.28
        ("0.28", "28\\%", 1.0),
        ("12.5\\%", "\\frac{1}{8}", 1.0),
        ("28\\%", "0.28\\%", 0.0),  # both percents: the numbers themselves must match
        ("0.28", "28", 0.0),  # no percent anywhere: 28 is not 0.28
        ("5\\%", "0.5", 0.0),
        ("28\\%", "2.8", 0.0),
    ],
)
def test_percent_is_also_a_fraction_of_100(gold, answer, expected):
    assert compute_score("math", boxed(answer), gold)["score"] == expected


def test_a_final_answer_written_after_the_boxes_wins():
    assert compute_score("math", BOXES_THEN_FINAL, "10455") == {"score": 1.0, "acc": True, "pred": "10,455"}
    assert compute_score("math", BOXES_THEN_FINAL, "255")["score"] == 0.0
    # only boxes count when the caller says so
    assert compute_score("math", BOXES_THEN_FINAL, "255", allow_unboxed=False) == {
        "score": 1.0,
        "acc": True,
        "pred": "255",
    }


@pytest.mark.parametrize(
    "gold, answer, expected",
    [
        ("1,22", "1.22", 1.0),  # a decimal comma
        ("1.22", "1,22", 1.0),
        ("0,111", "0.111", 1.0),  # three digits after a lone 0: still a decimal comma
        ("1000,99", "1000.99", 1.0),
        ("-2,1", "1, -2", 1.0),  # the list reading stays
        ("1,22", "1.2", 0.0),
        ("10455", "10,455", 1.0),  # thousands
        ("10455", "10{,}455", 1.0),
        ("12000023", "12,\\!000,\\!023", 1.0),
        ("7425000", "7\\,425\\,000", 1.0),
        ("10455", "10.455", 0.0),  # three digits after a comma are thousands, not decimals
        ("32349", "32, 349", 0.0),  # a comma and a space: two numbers
    ],
)
def test_decimal_comma_and_thousands(gold, answer, expected):
    assert compute_score("math", boxed(answer), gold)["score"] == expected


@pytest.mark.parametrize(
    "answer, percent_as_fraction, readings",
    [
        ("10,455", False, ("10,455", "10455")),
        ("1,22", False, ("1,22", "1.22")),
        ("0,111", False, ("0,111", "0.111")),
        ("1, 22", False, ("1, 22",)),
        ("1,000,000", False, ("1,000,000", "1000000")),
        ("$28\\%$", False, ("28",)),
        ("28 percent", True, ("28", "0.28")),
        ("12.5\\%", True, ("12.5", "0.125")),
        ("x\\%", True, ("x",)),  # not a number: no fraction reading
    ],
)
def test_answer_readings(answer, percent_as_fraction, readings):
    assert rm.answer_readings(answer, percent_as_fraction=percent_as_fraction) == readings


@pytest.mark.parametrize(
    "between, joins",
    [
        ("", True),
        (", ", True),
        (" \\quad \\text{and} \\quad ", True),
        ("$ and $", True),
        (" \\) and \\( y_2 = ", True),
        ("\\text{ for part (a) and }", True),
        (", or ", True),
        (".\n\n", True),
        (" then ", False),
        (", so the answer is ", False),
        (".\n\n**Final Answer**\n", False),
        (" no no no no ", False),
        (" and the perimeter is ", False),
        ("x" * 300, False),
    ],
)
def test_which_boxes_are_written_together(between, joins):
    assert rm._connects(between) is joins


def test_ground_truth_written_as_a_solution():
    solution = "Setting $x = 0$ first, the rest follows, so $n = \\boxed{1,-2}.$"
    assert compute_score("math", "The integers are \\boxed{-2} and \\boxed{1}.", solution)["score"] == 1.0
    stated = "Final Answer: The final answer is $28\\%$. I hope it is correct."
    assert compute_score("math", boxed("28\\%"), stated)["score"] == 1.0
    assert compute_score("math", boxed("27\\%"), stated)["score"] == 0.0


def test_inequality_against_a_set_that_cannot_be_a_point():
    assert compute_score("math", boxed("x \\geq 2"), "[2, \\infty)")["score"] == 1.0
    assert compute_score("math", boxed("x > 2"), "[2, \\infty)")["score"] == 0.0
    assert compute_score("math", boxed("-2 \\le x \\le 7"), "x \\in [-2,7]")["score"] == 1.0
    # `(1, 2)` may be an ordered pair: an inequality is not taken for it (math-verify's default)
    assert compute_score("math", boxed("1 < x < 2"), "(1, 2)")["score"] == 0.0


def test_hint_answers_from_several_boxes_are_compared_as_sets():
    # LTE lists the distinct wrong answers; the same set written in another order is one answer.
    from recipe.lte.core import distinct_wrong_answers

    preds = ["(2, 2), (6, 2)", "(6, 2), (2, 2)", "x = 3, y = 2", "y = 2, x = 3", "28 percent", "28\\%"]
    got = distinct_wrong_answers(preds, [False] * len(preds), equivalent=answers_equivalent)
    assert got == ["(2, 2), (6, 2)", "x = 3, y = 2", "28 percent"]


# ---------------------------------------------------------------- public graders' behaviours (own case set)


def _grader_cases() -> list[tuple[str, str, int, str]]:
    data = yaml.safe_load(GRADER_CASES.read_text())
    cases = []
    for c in data["cases"]:
        response = c["response"] if "response" in c else data["boxed_response"].replace("ANSWER", c["boxed"])
        cases.append((c["class"], str(c["gold"]), int(c["expected"]), response))
    return cases


def test_grader_case_set_is_well_formed():
    data = yaml.safe_load(GRADER_CASES.read_text())
    assert "ANSWER" in data["boxed_response"]
    for i, c in enumerate(data["cases"]):
        assert set(c) <= {"class", "expected", "gold", "boxed", "response", "note"}, i
        assert c["expected"] in (0, 1) and c["gold"] is not None and ("boxed" in c) != ("response" in c), i
    classes = Counter(c["class"] for c in data["cases"])
    assert all(classes[k] >= 20 for k in ("multi_box", "percent", "final_answer", "decimal_comma")), classes
    assert len(data["cases"]) >= 300 and sum(1 - c["expected"] for c in data["cases"]) >= 80


def test_every_grader_case_gets_its_verdict():
    cases = _grader_cases()
    with ThreadPoolExecutor(4) as ex:
        scores = list(ex.map(lambda c: compute_score("math", c[3], c[1])["score"], cases))
    wrong = [(k, g, e, r[-80:]) for (k, g, e, r), s in zip(cases, scores, strict=True) if s != e]
    assert not wrong, wrong


# ---------------------------------------------------------------- equivalence


EQUIVALENT = [
    ("\\frac{1}{2}", "0.5"),
    ("\\frac{1}{2}", "1/2"),
    ("$\\frac{1}{2}$", "\\dfrac12"),
    ("025", "25"),  # AIME's leading zeros
    ("142.0", "142"),  # AMC's trailing .0
    ("-4.0", "-4"),
    ("(0,4]", "(0, 4]"),  # interval
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),  # tuple
    ("\\{1,2\\}", "\\{2,1\\}"),  # set
    ("$69$,$84$", "84, 69"),  # OlympiadBench multi-answer
    ("3\\sqrt{13}", "\\sqrt{117}"),
    ("6 - 5i", "6-5i"),
    ("4.5e33", "4.5 \\times 10^{33}"),  # Minerva's scientific notation
    ("1e-5", "0.00001"),
    ("np.arcsin(10/13)", "\\arcsin\\frac{10}{13}"),  # Minerva's numpy-written answer
    ("-1./3", "-\\frac{1}{3}"),
    ("62.5%", "62.5"),
    ("$8 \\%$", "8\\%"),
    ("90^\\circ", "90"),
    ("x=5", "5"),
]

NOT_EQUIVALENT = [
    ("\\frac{1}{2}", "\\frac{1}{3}"),
    ("025", "205"),
    ("1000000", "1000001"),
    ("4.5e33", "4.5e34"),
    ("(1,2)", "(2,1)"),
    ("2", "2.0001"),
    ("-4", "4"),
    ("\\sqrt{2}", "2"),
]


@pytest.mark.parametrize("gold, pred", EQUIVALENT)
def test_equivalent_forms(gold, pred):
    assert compute_score("math", boxed(pred), gold)["score"] == 1.0
    assert answers_equivalent(gold, pred) and answers_equivalent(pred, gold)


@pytest.mark.parametrize("gold, pred", NOT_EQUIVALENT)
def test_different_answers(gold, pred):
    assert compute_score("math", boxed(pred), gold)["score"] == 0.0
    assert not answers_equivalent(gold, pred)


@pytest.mark.parametrize("a, b", [("025", "25"), ("-0", "0"), ("7.000", "7"), ("3", "4"), ("+12", "12")])
def test_integer_fast_path_agrees_with_math_verify(a, b):
    # The in-thread integer shortcut must give math-verify's own verdict (called directly, no shortcut).
    assert rm._fast_equal(a, b) == mv.verify_answer(a, b)


@pytest.mark.parametrize("source", ["math", "minerva", "olympiad_bench", "amc", "aime", "aime25", "math_dapo", "x"])
def test_every_data_source(source):
    assert compute_score(source, boxed("12"), "12")["score"] == 1.0


def test_non_string_ground_truths():
    assert compute_score("aime", boxed("025"), 25)["score"] == 1.0
    assert compute_score("amc", boxed("142"), 142.0)["score"] == 1.0
    assert compute_score("olympiad_bench", boxed("1, 3"), ["1", "3"])["score"] == 1.0
    assert rm.answer_to_text(142.0) == "142" and rm.answer_to_text(["$2$", "$3$"]) == "$2$, $3$"


def test_unboxed_fallback_is_configurable():
    text = "After all this, the answer is 42"
    assert compute_score("math", text, "42") == {"score": 1.0, "acc": True, "pred": "42"}
    assert compute_score("math", text, "42", allow_unboxed=False) == {"score": 0.0, "acc": False, "pred": "42"}


# ---------------------------------------------------------------- the real ground truths


def _ground_truths(path) -> tuple[list[str], list[str]]:
    df = pd.read_parquet(path)
    return list(df.data_source), [str(r["ground_truth"]) for r in df.reward_model]


def test_every_real_ground_truth_verifies_against_itself(six_benchmarks_path):
    sources, gts = _ground_truths(six_benchmarks_path)
    # Public path (identical strings are a shortcut there) ...
    assert all(compute_score(s, boxed(g), g)["score"] == 1.0 for s, g in zip(sources, gts, strict=True))
    # ... and through math-verify itself, no shortcut: every normalised form must parse and match itself
    # (integers are left out: the integer shortcut is checked against math-verify above).
    norms = sorted({rm.normalize_answer(g) for g in gts} - {g for g in gts if rm._INT_RE.match(g)})
    failures = [n for n in norms if not mv.verify_answer(n, n)]  # main thread: math-verify's own timeouts work
    assert not failures, f"{len(failures)} ground truths do not verify against themselves: {failures[:20]}"


def _plain_number(s: str) -> Fraction | None:
    s = s.replace("$", "").strip()
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def test_answers_of_other_problems_score_zero(six_benchmarks_path):
    """Random pairs of different problems. Expected 1 only where the two ground truths are the same answer by an
    independent check: identical after dropping `$`/spaces, or both plain numbers with equal exact values
    (e.g. AMC's `4.0` and MATH's `4`); every other pair must score 0."""
    sources, gts = _ground_truths(six_benchmarks_path)
    rng = random.Random(0)
    pairs = [(i, j) for i, j in ((rng.randrange(len(gts)), rng.randrange(len(gts))) for _ in range(160)) if i != j]
    # Plus pairs of different problems whose answers ARE the same number written differently (AMC's `4.0`).
    amc = [i for i, s in enumerate(sources) if s == "amc"]
    for i in amc[:40]:
        j = next(
            (j for j in range(len(gts)) if sources[j] != "amc" and _plain_number(gts[j]) == _plain_number(gts[i])), None
        )
        if j is not None:
            pairs.append((i, j))

    def expected(a: str, b: str) -> float:
        if a.replace("$", "").replace(" ", "") == b.replace("$", "").replace(" ", ""):
            return 1.0
        fa, fb = _plain_number(a), _plain_number(b)
        return 1.0 if fa is not None and fa == fb else 0.0

    with ThreadPoolExecutor(4) as ex:
        scores = list(ex.map(lambda p: compute_score(sources[p[0]], boxed(gts[p[1]]), gts[p[0]])["score"], pairs))
    wrong = [(gts[i], gts[j], s) for (i, j), s in zip(pairs, scores, strict=True) if s != expected(gts[i], gts[j])]
    assert not wrong, wrong
    assert sum(scores) >= 10  # the equal-number pairs were found and scored 1


# ---------------------------------------------------------------- robustness and time bounds

# `9^{9^{9^{9}}}` makes sympy evaluate an astronomically large integer power inside C code. Measured here: in a
# thread with math-verify's timeouts disabled (the only way math-verify runs in a thread) it had not returned
# after 100 s and, holding the GIL, it froze the whole process.
HANG = "9^{9^{9^{9}}}"


def test_hanging_expression_is_bounded():
    pool = rm._get_pool()
    restarts = pool.restarts
    t0 = time.monotonic()
    out = compute_score("math", boxed(HANG), "5", timeout_s=2.0)
    elapsed = time.monotonic() - t0
    assert out == {"score": 0.0, "acc": False, "pred": HANG}
    assert pool.restarts == restarts + 1  # the worker really missed its deadline and was killed
    assert elapsed < 30  # generous: the bound is 2 s plus a worker restart, not the hang
    # The pool still works afterwards.
    assert compute_score("math", boxed("\\frac{2}{4}"), "0.5")["score"] == 1.0


def test_hang_in_answers_equivalent_is_bounded():
    assert answers_equivalent(HANG, "9^{9^{9^{8}}}", timeout_s=1.0) is False


@pytest.mark.parametrize(
    "solution",
    [
        "",
        None,
        12345,
        "\\boxed{",
        "\\boxed{\\frac{1}{2}",
        "}}}}{{{\\boxed}}}",
        "\\boxed{" + "{" * 5000,
        "\\boxed{" * 20000,
        "x" * 2_000_000 + "\\boxed{3}",
        "\\boxed{" + "1+" * 2000 + "1}",  # longer than MAX_ANSWER_CHARS
        "\x00\xff\ud800 garbage \\boxed{\x00}",
        "\\boxed{1}, " * 50_000,  # a huge run of boxes written together: only the last ones are looked at
        "\\boxed{1} " + "final answer is " * 100_000,  # the phrase is looked for near the end only
        "\\boxed{7} Final answer: " + "{" * 5000,
    ],
)
def test_garbage_never_raises(solution, caplog):
    out = compute_score("math", solution, "3")
    assert set(out) == {"score", "acc", "pred"} and isinstance(out["pred"], str)
    if not (isinstance(solution, str) and solution.endswith("\\boxed{3}")):
        assert out["score"] == 0.0 and out["acc"] is False
    else:
        assert out["score"] == 1.0


def test_garbage_ground_truth_and_answers():
    assert compute_score("math", boxed("3"), None)["score"] == 0.0
    assert compute_score("math", boxed("3"), "")["score"] == 0.0
    assert answers_equivalent("", "") is False
    assert answers_equivalent(None, "3") is False  # type: ignore[arg-type]
    assert answers_equivalent("\\frac{", "}") is False


def test_too_long_answer_is_logged(caplog):
    with caplog.at_level("WARNING", logger="verl_ext.reward.math_reward"):
        assert compute_score("math", boxed("1+" * 600 + "1"), "1201")["score"] == 0.0
    assert "MAX_ANSWER_CHARS" in caplog.text


# ---------------------------------------------------------------- as verl loads and calls it


def test_loaded_by_path_through_verl_and_called_from_threads():
    """verl's own loader (by file path, reward_kwargs merged) and its calling convention: keyword arguments, from
    executor threads (as verl's reward managers call `run_in_executor`)."""
    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import get_custom_reward_fn

    config = OmegaConf.create(
        {
            "reward": {
                "custom_reward_function": {
                    "path": REWARD_FILE,
                    "name": "compute_score",
                    "reward_kwargs": {"timeout_s": 5.0},
                }
            }
        }
    )
    fn = get_custom_reward_fn(config)
    cases = [("\\frac{1}{2}", "0.5", 1.0), ("025", "25", 1.0), ("7", "8", 0.0), ("(1,2]", "(1, 2]", 1.0)] * 3
    with ThreadPoolExecutor(8) as ex:
        outs = list(
            ex.map(
                lambda c: fn(
                    data_source="olympiad_bench",
                    solution_str=boxed(c[1]),
                    ground_truth=c[0],
                    extra_info={"index": 0, "num_turns": 2, "rollout_reward_scores": {}},
                ),
                cases,
            )
        )
    assert [o["score"] for o in outs] == [c[2] for c in cases]
    assert [o["pred"] for o in outs] == [c[1] for c in cases]
