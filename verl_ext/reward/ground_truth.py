"""Ground truths the project's math reward (verl_ext/reward/math_reward.py) can never match, found before training.

The reward scores a response 1 only when the ground truth, normalised as the reward normalises it
(`answer_to_text`, `normalize_answer`), is not empty and either
- equals the response's boxed answer as a string (the fast path), or
- math-verify, parsing it as `\\boxed{<ground truth>}`, reads a math expression from it and finds the answer
  equivalent. When math-verify reads no expression (nothing, or only the raw text), `verify` only compares
  strings: the ground truth is then matched by an identically written answer, or never.

So each distinct ground truth gets one verdict:
- `missing`: None or NaN (the reward sees "");
- `empty`: nothing left after normalisation (e.g. "$ $");
- `unparseable`: math-verify reads no expression from it AND no well-formed boxed answer can equal it (its
  braces do not balance as the reward's `extract_boxed` counts them, or it is longer than MAX_ANSWER_CHARS),
  e.g. `\\frac{1}{`. Only an answer written with the same broken LaTeX could match it: we count that as never;
- `verbatim_only`: math-verify reads no expression, but `\\boxed{<it>}` written identically scores 1
  (e.g. `E_{1},E_{2}`): usable, worth a warning (`1/2` would not match `\\frac{1}{2}` there);
- `ok`: math-verify reads an expression (integers are decided without it, as the reward's fast path does).

The first three are errors (`UNUSABLE`). Deciding them needs math-verify only for ground truths that are not
well-formed (few); `verbatim_only` needs a parse of every distinct non-integer ground truth (`parse_all=True`),
run in parallel worker processes with a deadline per call.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

from verl_ext.reward import math_verify_worker as _mv
from verl_ext.reward.bounded_pool import BoundedProcessPool, CallTimeout, WorkerError, WorkerStartError
from verl_ext.reward.math_reward import (
    _INT_RE,
    DEFAULT_TIMEOUT_S,
    MAX_ANSWER_CHARS,
    _get_pool,
    answer_to_text,
    extract_boxed,
    normalize_answer,
)

logger = logging.getLogger(__name__)

MISSING, EMPTY, UNPARSEABLE, VERBATIM_ONLY, OK = "missing", "empty", "unparseable", "verbatim_only", "ok"
UNUSABLE = (MISSING, EMPTY, UNPARSEABLE)
# Ground truths sent to a worker per call: amortises the pipe round trip over cheap parses (about 10 ms each).
CHUNK = 32


def gold_text(value: Any) -> str | None:
    """The ground truth as the reward compares it (normalised text); None when missing (None or NaN)."""
    if value is None:
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and math.isnan(float(value)):
        return None
    return normalize_answer(answer_to_text(value))


def well_formed(gold: str) -> bool:
    """Would `\\boxed{<gold>}` written identically score 1 on the reward's fast path (exact string match)?"""
    return (
        0 < len(gold) <= MAX_ANSWER_CHARS
        and extract_boxed("\\boxed{" + gold + "}") == gold
        and normalize_answer(gold) == gold
    )


def _verdict(gold: str | None, reads_as_math: bool | None) -> str:
    """The verdict of a normalised ground truth; `reads_as_math` None means not parsed (decided without it)."""
    if gold is None:
        return MISSING
    if not gold:
        return EMPTY
    if _INT_RE.match(gold) or reads_as_math:
        return OK
    if reads_as_math is None:  # not parsed: only well-formed ones are left unparsed, and they are usable
        return OK
    return VERBATIM_ONLY if well_formed(gold) else UNPARSEABLE


def needs_parse(gold: str | None, parse_all: bool) -> bool:
    """Does the verdict of this normalised ground truth depend on math-verify's parse?"""
    if not gold or _INT_RE.match(gold):
        return False
    return parse_all or not well_formed(gold)


def _parse_chunk(pool: BoundedProcessPool, golds: list[str], timeout_s: float) -> list[bool]:
    """math-verify's reading of a chunk. A chunk past its deadline (or whose worker died) is retried one ground
    truth at a time; one that still fails reads as nothing, as it does when the reward scores against it. A
    worker that cannot start is the machine's problem: it raises."""
    try:
        return pool.call(_mv.golds_read_as_math, (golds,), timeout_s * (2 if len(golds) > 1 else 1))
    except WorkerStartError:
        raise
    except (CallTimeout, WorkerError) as e:
        if len(golds) == 1:
            logger.warning("ground_truth: math-verify could not parse %r (%s): reads as nothing", golds[0][:120], e)
            return [False]
    out = []
    for g in golds:
        out += _parse_chunk(pool, [g], timeout_s)
    return out


def parse_golds(golds: Iterable[str], workers: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict:
    """{ground truth: does math-verify read an expression from it}, each distinct one parsed once, `workers`
    processes in parallel (default: one per CPU)."""
    todo = sorted(set(golds))
    if not todo:
        return {}
    workers = max(1, min(workers or os.cpu_count() or 1, -(-len(todo) // CHUNK)))
    chunks = [todo[i : i + CHUNK] for i in range(0, len(todo), CHUNK)]
    pool = BoundedProcessPool(workers, preload=(_mv.__name__,))
    try:
        with ThreadPoolExecutor(workers) as ex:
            results = list(ex.map(lambda c: _parse_chunk(pool, c, timeout_s), chunks))
    finally:
        pool.close()
    return {g: r for chunk, res in zip(chunks, results, strict=True) for g, r in zip(chunk, res, strict=True)}


def classify_golds(
    golds: Iterable[str | None],
    *,
    parse_all: bool = False,
    workers: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> dict[str | None, str]:
    """{normalised ground truth (None = missing): verdict} for every distinct one in `golds`.

    `parse_all=False` parses only what an error verdict depends on (not well-formed ground truths): every
    `verbatim_only` then reads `ok`. `parse_all=True` parses every distinct non-integer ground truth.
    """
    distinct = set(golds)
    parsed = parse_golds((g for g in distinct if needs_parse(g, parse_all)), workers, timeout_s)
    return {g: _verdict(g, parsed.get(g)) for g in distinct}


@lru_cache(maxsize=1 << 16)
def _unusable_text(gold: str | None) -> str | None:
    if not needs_parse(gold, parse_all=False):
        verdict = _verdict(gold, None)
    else:
        try:
            reads = _get_pool().call(_mv.golds_read_as_math, ([gold],), DEFAULT_TIMEOUT_S)[0]
        except (CallTimeout, WorkerError) as e:
            # Not proven unusable: the caller goes ahead (a busy machine must not cost a group its extra phase).
            logger.warning("ground_truth: could not check %r (%s): treated as usable", gold[:120], e)
            return None
        verdict = _verdict(gold, reads)
    return verdict if verdict in UNUSABLE else None


def unusable_ground_truth(value: Any) -> str | None:
    """`missing`, `empty` or `unparseable` when the reward can never match `value` (a raw ground truth, as the
    reward receives it), else None. Cached; blocks for at most about DEFAULT_TIMEOUT_S (a math-verify parse in
    the reward's worker pool, only for ground truths that are not well-formed)."""
    return _unusable_text(gold_text(value))
