"""The math reward: extraction, equivalence, the real benchmark ground truths, bounded time, verl's loading."""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import pandas as pd
import pytest

from verl_ext.reward import math_reward as rm
from verl_ext.reward import math_verify_worker as mv
from verl_ext.reward.math_reward import answers_equivalent, compute_score, extract_answer

REWARD_FILE = rm.__file__


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
        ("no answer here", ""),
        ("", ""),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_pred_is_what_the_model_wrote():
    out = compute_score("math", boxed("0.50"), "\\frac{1}{2}")
    assert out == {"score": 1.0, "acc": True, "pred": "0.50", "pred_boxed": True}
    out = compute_score("math", boxed("\\dfrac{3}{4}"), "\\frac{1}{2}")
    assert out == {"score": 0.0, "acc": False, "pred": "\\dfrac{3}{4}", "pred_boxed": True}


def test_pred_boxed_says_whether_the_model_gave_the_answer_as_final():
    """A number pulled from free text is not the model's final answer: pred_boxed tells the hint (lte.hint.answer_source)."""
    free = "so x = 3 ... not sure"
    assert compute_score("math", free, "6")["pred_boxed"] is False
    assert compute_score("math", free, "6", allow_unboxed=False)["pred_boxed"] is False
    assert compute_score("math", "", "6") == {"score": 0.0, "acc": False, "pred": "", "pred_boxed": False}
    assert compute_score("math", free + " " + boxed("4"), "6")["pred_boxed"] is True


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
    want = {"score": 1.0, "acc": True, "pred": "42", "pred_boxed": False}
    assert compute_score("math", text, "42") == want
    assert compute_score("math", text, "42", allow_unboxed=False) == want | {"score": 0.0, "acc": False}


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
    assert out == {"score": 0.0, "acc": False, "pred": HANG, "pred_boxed": True}
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
    ],
)
def test_garbage_never_raises(solution, caplog):
    out = compute_score("math", solution, "3")
    assert set(out) == {"score", "acc", "pred", "pred_boxed"} and isinstance(out["pred"], str)
    assert isinstance(out["pred_boxed"], bool)
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
