"""math-verify calls that run inside a `BoundedProcessPool` worker (see verl_ext/reward/bounded_pool.py).

They run in the worker's main thread, so math-verify's own signal-based timeouts work here as a first, cheap
bound (the worker survives them); the pool's deadline is the hard bound. Parsed ground truths are cached per
worker: a GRPO group scores G responses against the same ground truth.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from sympy import Eq, Interval, Symbol, Union

# math-verify's own per-operation bound inside the worker (seconds, signal.alarm: whole seconds).
INNER_TIMEOUT_S = 5

# As verl's math_verify scorer: a ground truth is LaTeX; an answer may be LaTeX or a plain expression.
_GOLD_TARGETS = (LatexExtractionConfig(),)
_PRED_TARGETS = (ExprExtractionConfig(), LatexExtractionConfig())

logging.getLogger("math_verify").setLevel(logging.ERROR)  # its timeout warnings would flood the logs


@lru_cache(maxsize=8192)
def _parse_gold(gold: str) -> list:
    return parse("\\boxed{" + gold + "}", _GOLD_TARGETS, parsing_timeout=INNER_TIMEOUT_S)


@lru_cache(maxsize=8192)
def _parse_boxed_answer(answer: str) -> list:
    return parse("\\boxed{" + answer + "}", _PRED_TARGETS, parsing_timeout=INNER_TIMEOUT_S)


def _is_unambiguous_set(value: object) -> bool:
    """A set no reader takes for a point: an interval with a closed or infinite end, or a union (`(1, 2)` is not);
    also as the right side of `x \\in ...` (math-verify reads it as Eq(x, set))."""
    if isinstance(value, Eq) and isinstance(value.lhs, Symbol):
        value = value.rhs
    if isinstance(value, Interval):
        return not (value.left_open and value.right_open) or value.start.is_infinite or value.end.is_infinite
    return isinstance(value, Union)


def _verify(gold_parsed: list, pred_parsed: list) -> bool:
    if not gold_parsed or not pred_parsed:
        return False
    # An inequality answer (`x \ge 2`) is compared with a set ground truth (`[2, \infty)`) when that set cannot be
    # a point; math-verify does so only on request, because `(1, 2)` may be an ordered pair.
    as_set = any(_is_unambiguous_set(g) for g in gold_parsed)
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=INNER_TIMEOUT_S, allow_set_relation_comp=as_set))


def verify_answer(gold: str, answer: str) -> bool:
    """Is `answer` (the content of a \\boxed{}) equivalent to the ground truth `gold`?"""
    return _verify(_parse_gold(gold), _parse_boxed_answer(answer))


def answers_equivalent(a: str, b: str) -> bool:
    """Two answers as written: equivalent if either verifies as the gold of the other (verify is asymmetric)."""
    return verify_answer(a, b) or verify_answer(b, a)


def golds_read_as_math(golds: list[str]) -> list[bool]:
    """For each ground truth: does math-verify read a math expression from it (not only its raw text, or nothing)?

    Without one, `verify` can only compare strings: the ground truth is matched by an identically written answer
    or never (see verl_ext/reward/ground_truth.py). A parse that times out reads as nothing, as it does when scoring.
    """
    return [any(not isinstance(p, str) for p in _parse_gold(g)) for g in golds]


def _written(pred_parsed: list) -> str:
    return next((p for p in reversed(pred_parsed) if isinstance(p, str)), "").strip()


def extract_written(text: str) -> str:
    """math-verify's own extraction of the final answer from free text, as written ("" when none)."""
    return _written(parse(text, _PRED_TARGETS, parsing_timeout=INNER_TIMEOUT_S))


def extract_and_verify(gold: str, text: str) -> tuple[bool, str]:
    """No \\boxed{} in the response: math-verify's own extraction over the text, as verl's scorer does.

    Returns (correct, the extracted answer as written, "" when nothing was found).
    """
    pred_parsed = parse(text, _PRED_TARGETS, parsing_timeout=INNER_TIMEOUT_S)
    return _verify(_parse_gold(gold), pred_parsed), _written(pred_parsed)


def warm_up() -> None:
    """Run once in each new worker before it takes calls: math-verify imports its LaTeX and expression parsers
    lazily, and a first call in a fresh environment (no .pyc yet, a busy machine) can miss the caller's deadline on
    that alone, which would score it as wrong. Checks the answer too: a math-verify that reads these differently
    is not the one this module was written for."""
    if not (answers_equivalent("5", "5.0") and answers_equivalent("\\frac{1}{2}", "0.5")):
        raise RuntimeError("math-verify does not find 5 = 5.0 and 1/2 = 0.5: check its version (requirements/)")
    if extract_and_verify("7", "so the answer is 7.") != (True, "7"):
        raise RuntimeError("math-verify does not extract 7 from 'so the answer is 7.': check its version")


def verify_any(pairs: tuple[tuple[str, str], ...]) -> bool:
    """Does any (gold, answer) pair verify? The readings of one answer (decimal comma, percent), one round trip."""
    return any(verify_answer(gold, answer) for gold, answer in pairs)
