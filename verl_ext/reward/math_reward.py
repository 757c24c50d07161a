"""Verifiable math reward with verl's custom-reward signature: binary correctness through math-verify.

Use in verl: `reward.custom_reward_function.path=<this file> reward.custom_reward_function.name=compute_score`
(verl loads it by file path; it only imports the installed `verl_ext` package, so that works).
Optional `reward.custom_reward_function.reward_kwargs`: `timeout_s`, `allow_unboxed` (see `compute_score`).

One scorer for every `data_source` (math, minerva, olympiad_bench, amc, aime, aime25, the training sets):
verl's default scorer raises for several of them.

How a response is scored:
1. `pred` = the content of the last complete `\\boxed{...}` / `\\fbox{...}` (or `\\boxed 5`), as the model
   wrote it, trimmed; without one, math-verify's own extraction over the text (`allow_unboxed`), else "".
2. Both `pred` and the ground truth get the same light normalisation (`normalize_answer`): `$` dropped,
   `4.5e33` -> `4.5 \\times 10^{33}`, `np.arcsin(x)` -> `\\arcsin(x)`, `-1./3` -> `-1/3`, a trailing `%`
   dropped. These are written forms that math-verify 0.9.0 misreads (`e` as Euler's number, `62.5\\%` as
   unparseable); found on the real benchmark ground truths.
3. Fast exact paths in the calling thread: identical strings, or both integers (`025` = `25`, `142.0` = `142`;
   math-verify compares integers exactly too). Otherwise math-verify `parse` + `verify` in a worker process
   with a wall-clock deadline (verl calls reward functions from threads, where math-verify's signal timeouts
   do not work, and sympy can hang inside C code); a miss kills and replaces the worker and scores 0.
Never raises on bad input: score 0 and a log line.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from verl_ext.reward import math_verify_worker as _mv
from verl_ext.reward.bounded_pool import BoundedProcessPool, CallTimeout, WorkerError, shared_pool

logger = logging.getLogger(__name__)

# Wall-clock bound of one math-verify call (seconds). verl's own math-verify scorer uses 30 s; a well-formed
# answer takes milliseconds, so 10 s only ever cuts pathological inputs. Overridable per run via reward_kwargs.
DEFAULT_TIMEOUT_S = 10.0
# Worker processes per Python process (each reward-loop worker has its own pool).
POOL_SIZE = int(os.environ.get("LTE_REWARD_WORKERS", min(4, os.cpu_count() or 1)))
# A "final answer" longer than this is not an answer (and would only feed sympy a huge expression): score 0.
MAX_ANSWER_CHARS = 1000
# How many of the last \boxed occurrences to try when the last ones are unbalanced (bounds the work).
_MAX_BOX_TRIES = 8
_MAX_BOX_SCAN = 20 * MAX_ANSWER_CHARS


def _get_pool() -> BoundedProcessPool:
    return shared_pool("math_verify", POOL_SIZE, preload=(_mv.__name__,))


def _bounded(fn: Callable, args: tuple, timeout_s: float, default: Any, what: str) -> Any:
    """Run a math-verify function in the worker pool; on a deadline miss or a worker failure: log, `default`."""
    try:
        return _get_pool().call(fn, args, timeout_s)
    except CallTimeout:
        logger.warning(
            "reward_math: %s timed out after %.1f s (scored as not equivalent): %s", what, timeout_s, _preview(args)
        )
    except WorkerError as e:
        logger.warning("reward_math: %s failed in the worker (%s): %s", what, e, _preview(args))
    return default


def _preview(args: tuple) -> str:
    return " | ".join(repr(a[:120] + "..." if isinstance(a, str) and len(a) > 120 else a) for a in args)


# ----------------------------------------------------------------------------------------------------------
# Extraction


_BOX_RE = re.compile(r"\\(?:boxed|fbox)\b")


def _braced_content(text: str, open_idx: int) -> str | None:
    """Content of the brace group opening at text[open_idx] == '{', or None if it does not close in time.

    The scan is bounded (a box over the bound counts as unclosed); boxes up to the bound are returned and then
    rejected with a log line if longer than MAX_ANSWER_CHARS.
    """
    depth = 0
    end = min(len(text), open_idx + _MAX_BOX_SCAN)
    i = open_idx
    while i < end:
        c = text[i]
        if c == "\\":  # an escaped character (\{, \}) does not count
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[open_idx + 1 : i]
        i += 1
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{...}` / `\\fbox{...}` (or `\\boxed x`), trimmed; None if none."""
    starts = [m.end() for m in _BOX_RE.finditer(text)][-_MAX_BOX_TRIES:]
    for pos in reversed(starts):
        rest = pos
        while rest < len(text) and text[rest] in " \t":
            rest += 1
        if rest < len(text) and text[rest] == "{":
            content = _braced_content(text, rest)
            if content is not None:
                return content.strip()
        elif rest > pos:  # "\boxed 5": the next token
            m = re.match(r"[^\s$]+", text[rest : rest + MAX_ANSWER_CHARS])
            if m:
                return m.group(0).rstrip(".,;").strip()
    return None


def extract_answer(text: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
    """The final answer as the model wrote it: last \\boxed/\\fbox content, else math-verify's extraction, else ""."""
    if not isinstance(text, str) or not text:
        return ""
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    return _bounded(_mv.extract_written, (text,), timeout_s, "", "answer extraction")


# ----------------------------------------------------------------------------------------------------------
# Normalisation and equivalence


_SCI_RE = re.compile(r"^([+-]?\d+(?:\.\d*)?)\s*[eE]\s*([+-]?\d+)$")
_NUMPY_RE = re.compile(r"\b(?:np|numpy|math|sympy|sp)\.([A-Za-z]+)")
_DOT_BEFORE_NON_DIGIT_RE = re.compile(r"(?<=\d)\.(?![\d.])")
_PERCENT_RE = re.compile(r"\s*(?:\\?%|\\percent)$")
_INT_RE = re.compile(r"^([+-]?)0*(\d{1,64})(?:\.0*)?$")


def answer_to_text(value: Any) -> str:
    """A ground truth of any stored type as one answer string: AIME ints, AMC floats (`142.0` -> `142`),
    OlympiadBench lists (`["1", "3"]` -> `1, 3`)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return str(int(value)) if value.is_integer() else repr(value)
    if hasattr(value, "tolist"):  # numpy scalars and arrays (verl stores columns as numpy objects)
        return answer_to_text(value.tolist())
    if isinstance(value, list | tuple):
        parts = [answer_to_text(v) for v in value]
        return ", ".join(p for p in parts if p)
    return str(value).strip()


def normalize_answer(answer: str) -> str:
    """Written forms math-verify 0.9.0 misreads, rewritten the same way on both sides (see the module doc)."""
    s = answer.strip()
    s = re.sub(r"(?<!\\)\$", "", s).strip()
    s = _PERCENT_RE.sub("", s)
    m = _SCI_RE.match(s)
    if m:
        mantissa = m.group(1).rstrip(".") or "0"
        s = f"{mantissa} \\times 10^{{{int(m.group(2))}}}"
    s = _NUMPY_RE.sub(r"\\\1", s)
    s = _DOT_BEFORE_NON_DIGIT_RE.sub("", s)
    return s.strip()


def _fast_equal(a: str, b: str) -> bool | None:
    """Exact verdicts that need no sympy: identical strings, or two integers. None: ask math-verify."""
    if a == b:
        return bool(a)
    ma, mb = _INT_RE.match(a), _INT_RE.match(b)
    if ma and mb:
        sign_a = "-" if ma.group(1) == "-" and ma.group(2).strip("0") else ""
        sign_b = "-" if mb.group(1) == "-" and mb.group(2).strip("0") else ""
        return (sign_a, ma.group(2).lstrip("0") or "0") == (sign_b, mb.group(2).lstrip("0") or "0")
    return None


@lru_cache(maxsize=1 << 16)
def _verify_normalized(gold: str, pred: str, timeout_s: float) -> bool:
    fast = _fast_equal(gold, pred)
    if fast is not None:
        return fast
    return _bounded(_mv.verify_answer, (gold, pred), timeout_s, False, "verification")


def _usable(answer: str, what: str) -> bool:
    if not answer:
        return False
    if len(answer) > MAX_ANSWER_CHARS:
        logger.warning(
            "reward_math: %s of %d chars is longer than MAX_ANSWER_CHARS=%d: scored 0",
            what,
            len(answer),
            MAX_ANSWER_CHARS,
        )
        return False
    return True


def answers_equivalent(a: str, b: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Are two answers, both as written (e.g. `\\frac{1}{2}` and `0.5`), the same answer? Never raises."""
    try:
        na, nb = normalize_answer(answer_to_text(a)), normalize_answer(answer_to_text(b))
        if not (_usable(na, "answer") and _usable(nb, "answer")):
            return False
        fast = _fast_equal(na, nb)
        if fast is not None:
            return fast
        return _verify_normalized(na, nb, timeout_s) or _verify_normalized(nb, na, timeout_s)
    except Exception:
        logger.exception("reward_math: answers_equivalent failed on %s", _preview((str(a), str(b))))
        return False


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: dict | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    allow_unboxed: bool = True,
    **kwargs: Any,
) -> dict:
    """verl custom reward: {"score": 1.0 or 0.0, "acc": bool, "pred": the model's final answer as written,
    "pred_boxed": True when pred is a \\boxed{} the model wrote, False when it is a free-text extraction or ""}.

    `allow_unboxed`: without a \\boxed{}, fall back to math-verify's extraction from the text (as verl's own
    math-verify scorer does); False scores such responses 0 (pred is still reported).
    `data_source`, `extra_info` and other kwargs verl passes are accepted and unused: one rule for all sources.
    """
    pred, pred_boxed = "", False
    correct = False
    try:
        if not isinstance(solution_str, str):
            logger.warning("reward_math: solution_str is %s, not str: scored 0", type(solution_str).__name__)
            solution_str = ""
        gold = normalize_answer(answer_to_text(ground_truth))
        if not gold:
            logger.warning("reward_math: empty ground truth (data_source=%r): scored 0", data_source)
        boxed = extract_boxed(solution_str)
        if boxed is not None:
            pred, pred_boxed = boxed, True
            norm = normalize_answer(pred)
            correct = bool(gold) and _usable(norm, "boxed answer") and _verify_normalized(gold, norm, timeout_s)
        elif solution_str:
            if gold and allow_unboxed:
                correct, pred = _bounded(
                    _mv.extract_and_verify, (gold, solution_str), timeout_s, (False, ""), "unboxed extraction"
                )
            else:
                pred = extract_answer(solution_str, timeout_s)
    except Exception:  # the reward must never take a training step down
        logger.exception("reward_math: compute_score failed (data_source=%r): scored 0", data_source)
        correct = False
    return {"score": 1.0 if correct else 0.0, "acc": bool(correct), "pred": pred, "pred_boxed": pred_boxed}
