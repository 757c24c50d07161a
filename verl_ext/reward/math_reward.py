"""Verifiable math reward with verl's custom-reward signature: binary correctness through math-verify.

Use in verl: `reward.custom_reward_function.path=<this file> reward.custom_reward_function.name=compute_score`
(verl loads it by file path; it only imports the installed `verl_ext` package, so that works).
Optional `reward.custom_reward_function.reward_kwargs`: `timeout_s`, `allow_unboxed` (see `compute_score`).

One scorer for every `data_source` (math, minerva, olympiad_bench, amc, aime, aime25, the training sets):
verl's default scorer raises for several of them.

How a response is scored (docs/reward.md has the details and how it was measured against public graders):
1. `pred`, the final answer as the model wrote it: the last complete `\\boxed{...}` / `\\fbox{...}` (or
   `\\boxed 5`), trimmed, together with the boxes written with it (`\\boxed{(2, 2)} \\text{ and } \\boxed{(6, 2)}`
   -> `(2, 2), (6, 2)`; `x = \\boxed{3}, y = \\boxed{2}` -> `x = 3, y = 2`); a "final answer is ..." stated after the
   last box overrides it (math-verify reads it there); without a box, math-verify's own extraction over the text
   (`allow_unboxed`), else "". A ground truth written as a solution stands for its boxed / stated answer.
2. Both sides get the same light normalisation (`normalize_answer`): `$` and `\\$` dropped, `4.5e33` ->
   `4.5 \\times 10^{33}`, `np.arcsin(x)` -> `\\arcsin(x)`, `-1./3` -> `-1/3`, a trailing percent (`%`, `\\%`,
   `percent`, `pct`) dropped, `14{,}916` / `12,\\!000` -> plain commas, `4 4/9` -> 4 + 4/9, `\\mathrm{e}` -> `e`:
   written forms math-verify 0.9.0 misreads. Each side may stand for more than one reading (`answer_readings`):
   `10,455` is also 10455, `1,22` also 1.22 (decimal comma), a percent also x/100 when only one side has one; the
   answer is right if any reading of it verifies against any reading of the ground truth.
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
from decimal import Decimal
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
# How many of the last \boxed occurrences to look at (unbalanced ones are skipped; bounds the work).
_MAX_BOX_TRIES = 12
_MAX_BOX_SCAN = 20 * MAX_ANSWER_CHARS


def _get_pool() -> BoundedProcessPool:
    return shared_pool("math_verify", POOL_SIZE, preload=(_mv.__name__,), warm_up=_mv.warm_up)


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
# Extraction: the final answer as the model wrote it


_BOX_RE = re.compile(r"\\(?:boxed|fbox)\b")
# Between two boxes of ONE answer (`\boxed{(2, 2)} \quad \text{and} \quad \boxed{(6, 2)}`, `x = \boxed{1},
# y = \boxed{2}`): after dropping math delimiters, LaTeX spacing and \text wrappers, only punctuation, an optional
# "... and"/"... or" of at most five words ("for part (a) and") and an optional label ("y_2 ="). Anything else
# ("then", "so the answer is", "**Final Answer**") separates an intermediate box from the final one.
_BETWEEN_NOISE_RE = re.compile(
    r"\\(?:quad|qquad|[,;:! \\]|[()\[\]]|text(?:bf|rm|it|normal)?|mbox|mathrm|hspace\{[^}]*\})|\$|~|[{}]"
)
_CONNECTOR_RE = re.compile(
    r"[\s.,;&]*(?:(?:\S+\s+){0,4}?(?:and|or)\b[\s.,;&]*)?(?:[A-Za-z](?:_\w+)?(?:\s*\([^()]{0,20}\))?\s*=\s*)?",
    re.IGNORECASE,
)
_MAX_BETWEEN_CHARS = 200
_LABEL_BEFORE_RE = re.compile(r"(?<![A-Za-z\\])([A-Za-z](?:_\{?\w+\}?)?)\s*=\s*(?:\$|\\\(|\\\[)?\s*$")
# A final answer stated after the last box overrides it (`... \boxed{255} ... The final answer is $10,455$`): "final
# answer is" or "final answer:" (also `**Final Answer:**`), not "the final answer must ..." or "... for part 2".
_FINAL_PHRASE_RE = re.compile(r"final\s+answer\W{0,4}?(?:is\b|:)", re.IGNORECASE)
_MAX_TAIL_SCAN = 20_000  # the phrase is searched near the end only (bounds the work on huge responses)
_MAX_TAIL_CHARS = 2_000  # text handed to math-verify's extraction after the phrase


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


def _box_at(text: str, pos: int) -> tuple[int, str] | None:
    """(end index, content) of the box whose command ends at `pos` (`\\boxed{x}` or `\\boxed x`), None if open."""
    rest = pos
    while rest < len(text) and text[rest] in " \t":
        rest += 1
    if rest < len(text) and text[rest] == "{":
        content = _braced_content(text, rest)
        return None if content is None else (rest + len(content) + 2, content.strip())
    if rest > pos:  # "\boxed 5": the next token
        m = re.match(r"[^\s$]+", text[rest : rest + MAX_ANSWER_CHARS])
        if m:
            return rest + m.end(), m.group(0).rstrip(".,;").strip()
    return None


def _connects(between: str) -> bool:
    """Does the text between two boxes join them into one answer (see _CONNECTOR_RE)?"""
    if len(between) > _MAX_BETWEEN_CHARS:
        return False
    return _CONNECTOR_RE.fullmatch(" ".join(_BETWEEN_NOISE_RE.sub(" ", between).split())) is not None


def last_box_group(text: str) -> tuple[list[str], int] | None:
    """The last complete box and the boxes joined to it (see _CONNECTOR_RE), as written, duplicates dropped.

    Returns (contents in writing order, end index of the last box), or None without a complete box.
    """
    boxes: list[tuple[int, int, str]] = []  # (start, end, content), the last _MAX_BOX_TRIES box commands
    for m in list(_BOX_RE.finditer(text))[-_MAX_BOX_TRIES:]:
        found = _box_at(text, m.end())
        if found is not None:
            boxes.append((m.start(), found[0], found[1]))
    boxes = [b for b in boxes if not any(o[0] < b[0] and b[1] <= o[1] for o in boxes)]  # nested: keep the outer
    if not boxes:
        return None
    group = [boxes[-1]]
    for box in reversed(boxes[:-1]):
        if box[1] > group[0][0] or not _connects(text[box[1] : group[0][0]]):
            break
        group.insert(0, box)
    labels = [_label_before(text, start) for start, _, _ in group] if len(group) > 1 else [""]
    if not all(labels):  # `x = \boxed{3}` and `y = \boxed{2}` stay `x = 3, y = 2`, not the set {2, 3}
        labels = [""] * len(group)
    contents: list[str] = []
    for (_, _, content), label in zip(group, labels, strict=True):
        written = f"{label} = {content}" if label else content
        if written not in contents:
            contents.append(written)
    return contents, group[-1][1]


def _label_before(text: str, start: int) -> str:
    """The variable a box is assigned to (`y_2 = \\boxed{...}` -> `y_2`), "" if none."""
    m = _LABEL_BEFORE_RE.search(text, max(0, start - 40), start)
    return m.group(1) if m else ""


def extract_boxed(text: str) -> str | None:
    """The final boxed answer as written: the last complete `\\boxed{...}` / `\\fbox{...}` (or `\\boxed x`), trimmed,
    with the boxes written together with it (`\\boxed{1}, \\boxed{2}` -> `1, 2`); None if there is no box."""
    found = last_box_group(text)
    return None if found is None else ", ".join(found[0])


def _final_phrase_tail(text: str, after: int) -> str | None:
    """The text from the last "final answer" phrase on, if that phrase comes after index `after`; else None."""
    matches = list(_FINAL_PHRASE_RE.finditer(text, max(after, len(text) - _MAX_TAIL_SCAN)))
    return text[matches[-1].start() : matches[-1].start() + _MAX_TAIL_CHARS] if matches else None


def extract_answer(text: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
    """The final answer as the model wrote it: the last box (group), unless a "final answer" phrase follows it,
    else math-verify's extraction from the text; "" when there is none."""
    if not isinstance(text, str) or not text:
        return ""
    group = last_box_group(text)
    tail = _final_phrase_tail(text, group[1]) if group else None
    if tail is not None:
        written = _bounded(_mv.extract_written, (tail,), timeout_s, "", "answer extraction")
        if written:
            return written
    if group is not None:
        return ", ".join(group[0])
    return _bounded(_mv.extract_written, (text,), timeout_s, "", "answer extraction")


# ----------------------------------------------------------------------------------------------------------
# Normalisation: the written forms an answer may stand for


_SCI_RE = re.compile(r"^([+-]?\d+(?:\.\d*)?)\s*[eE]\s*([+-]?\d+)$")
_NUMPY_RE = re.compile(r"\b(?:np|numpy|math|sympy|sp)\.([A-Za-z]+)")
_DOT_BEFORE_NON_DIGIT_RE = re.compile(r"(?<=\d)\.(?![\d.])")
# A trailing percent in any of the ways models write it: `28\%`, `28 %`, `28 percent`, `28 pct`, `28\text{ percent}`.
_PERCENT_RE = re.compile(
    r"\s*(?:\\?%|\\percent|\\text\{\s*\\?%\s*\}|(?:\\(?:text|mbox|mathrm)\{\s*)?(?:percentage|percent|pct)\.?\}?)$",
    re.IGNORECASE,
)
# LaTeX's thousands idioms: `14{,}916`, `12,\!000`, `10\,000`.
_THOUSANDS_IDIOM_RE = re.compile(r"(?<=\d)(?:\s*\{\s*,\s*\}\s*|,\\!\s*|\\,(?=\d{3}))")
_UPRIGHT_E = "\\mathrm{e}"
_MIXED_RE = re.compile(r"^([+-]?)(\d+)\s+(\d+)\s*/\s*(\d+)$")
_INT_RE = re.compile(r"^([+-]?)0*(\d{1,64})(?:\.0*)?$")
_NUMBER_RE = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)$")
_THOUSANDS_RE = re.compile(r"^[+-]?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?$")
_DECIMAL_COMMA_RE = re.compile(r"^[+-]?\d+,\d+$")


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


def _strip_dollars(s: str) -> str:
    return s.replace("\\$", "").replace("$", "").strip()  # math delimiters, and a currency sign `\$16,\!386.20`


def normalize_answer(answer: str) -> str:
    """Written forms math-verify 0.9.0 misreads, rewritten the same way on both sides (see the module doc)."""
    s = _strip_dollars(answer.strip())
    s = _PERCENT_RE.sub("", s).strip()
    s = _THOUSANDS_IDIOM_RE.sub(",", s) if any(c in s for c in "{\\") else s
    m = _SCI_RE.match(s)
    if m:
        mantissa = m.group(1).rstrip(".") or "0"
        s = f"{mantissa} \\times 10^{{{int(m.group(2))}}}"
    s = _NUMPY_RE.sub(r"\\\1", s)
    s = s.replace(_UPRIGHT_E, "e")  # upright e is Euler's number, as the italic e math-verify reads
    m = _MIXED_RE.match(s)
    if m and 0 < int(m.group(3)) < int(m.group(4)):  # `4 4/9` is 4 + 4/9 (a mixed number), not 4 * 4/9
        s = f"{m.group(1)}({m.group(2)}+\\frac{{{m.group(3)}}}{{{m.group(4)}}})"
    s = _DOT_BEFORE_NON_DIGIT_RE.sub("", s)
    return s.strip()


def _has_percent(answer: str) -> bool:
    return _PERCENT_RE.search(_strip_dollars(answer.strip())) is not None


def answer_readings(answer: str, percent_as_fraction: bool = False) -> tuple[str, ...]:
    """The normalised forms a written answer may stand for, the answer as normalised first.

    - a number with commas: `10,455` is also 10455 (thousands), `1,22` and `0,111` also 1.22 and 0.111
      (a decimal comma: one comma, not followed by exactly three digits, or after a lone 0); math-verify's own
      reading (a list, or thousands) stays the first;
    - `percent_as_fraction`: a percent `28%` is also 0.28 (the caller asks for it when only one side has a percent;
      `28%` against `28` is the plain-number reading, as math-verify and MATH's grader read it).
    """
    norm = normalize_answer(answer)
    readings = [norm]
    if "," in norm:
        if _THOUSANDS_RE.match(norm):
            readings.append(norm.replace(",", ""))
        elif _DECIMAL_COMMA_RE.match(norm):
            readings.append(norm.replace(",", "."))
    if percent_as_fraction and _has_percent(answer):
        for r in list(readings):
            if _NUMBER_RE.match(r):
                readings.append(format(Decimal(r) / 100, "f"))
    return tuple(dict.fromkeys(readings))


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
def _verify_normalized(golds: tuple[str, ...], preds: tuple[str, ...], timeout_s: float) -> bool:
    """Does any reading of the answer verify against any reading of the ground truth? Fast paths first."""
    pairs = [(g, p) for g in golds for p in preds if g and p]
    fast = [_fast_equal(g, p) for g, p in pairs]
    if any(fast):
        return True
    slow = tuple(pair for pair, verdict in zip(pairs, fast, strict=True) if verdict is None)
    if not slow:
        return False
    return _bounded(_mv.verify_any, (slow,), timeout_s, False, "verification")


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


@lru_cache(maxsize=1 << 14)
def _readings_pair(gold: str, pred: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Readings of both sides; a percent also means /100 only where the other side has no percent."""
    pct_gold, pct_pred = _has_percent(gold), _has_percent(pred)
    return (
        answer_readings(gold, percent_as_fraction=pct_gold and not pct_pred),
        answer_readings(pred, percent_as_fraction=pct_pred and not pct_gold),
    )


def _equivalent(gold: str, pred: str, timeout_s: float, what: str) -> bool:
    """Is the written answer `pred` the written ground truth `gold` (math-verify's asymmetric verify)?"""
    if max(len(gold), len(pred)) > 2 * MAX_ANSWER_CHARS:  # not an answer: log which side, do not normalise
        _usable(gold, "ground truth") and _usable(pred, what)
        return False
    golds, preds = _readings_pair(gold, pred)
    if not (_usable(golds[0], "ground truth") and _usable(preds[0], what)):
        return False
    return _verify_normalized(golds, preds, timeout_s)


def answers_equivalent(a: str, b: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Are two answers, both as written (e.g. `\\frac{1}{2}` and `0.5`), the same answer? Never raises."""
    try:
        ta, tb = answer_to_text(a), answer_to_text(b)
        return _equivalent(ta, tb, timeout_s, "answer") or _equivalent(tb, ta, timeout_s, "answer")
    except Exception:
        logger.exception("reward_math: answers_equivalent failed on %s", _preview((str(a), str(b))))
        return False


@lru_cache(maxsize=8192)
def _ground_truth_answer(text: str, timeout_s: float) -> str:
    """A ground truth is an answer; one written as a solution (`... so $n = \\boxed{1,-2}$.`, or `Final Answer:
    The final answer is $28\\%$.`) stands for its boxed / stated final answer. "" when there is no answer."""
    group = last_box_group(text) if _BOX_RE.search(text) else None
    if group is not None:
        text = ", ".join(group[0])
    elif _FINAL_PHRASE_RE.search(text):
        text = _bounded(_mv.extract_written, (text,), timeout_s, "", "ground-truth extraction") or text
    return text if normalize_answer(text) else ""


def clear_caches() -> None:
    """Forget cached verdicts and ground truths (benchmarks measure cold work)."""
    _verify_normalized.cache_clear()
    _ground_truth_answer.cache_clear()
    _readings_pair.cache_clear()


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
    "pred_boxed": True when pred is an answer the model gave as final (its last \\boxed{}, or a "final answer"
    it stated after that box), False when it is math-verify's extraction from unboxed text, or ""}.

    `allow_unboxed`: without a \\boxed{}, fall back to math-verify's extraction from the text (as verl's own
    math-verify scorer does); a "final answer" phrase after the last box is read the same way. False: only
    boxes count, a response without one scores 0 (pred is still reported).
    `data_source`, `extra_info` and other kwargs verl passes are accepted and unused: one rule for all sources.
    """
    pred, pred_boxed = "", False
    correct = False
    try:
        if not isinstance(solution_str, str):
            logger.warning("reward_math: solution_str is %s, not str: scored 0", type(solution_str).__name__)
            solution_str = ""
        gold = _ground_truth_answer(answer_to_text(ground_truth), timeout_s)
        if not gold:
            logger.warning("reward_math: empty ground truth (data_source=%r): scored 0", data_source)
        group = last_box_group(solution_str)
        tail = _final_phrase_tail(solution_str, group[1]) if group and allow_unboxed else None
        if tail is not None:  # a "final answer" phrase after the last box: math-verify reads the answer there
            correct, pred = _verified_extraction(gold, tail, timeout_s)
        if group is not None and not pred:
            pred = ", ".join(group[0])
            correct = bool(gold) and _equivalent(gold, pred, timeout_s, "boxed answer")
        elif group is None and solution_str:
            if gold and allow_unboxed:
                correct, pred = _verified_extraction(gold, solution_str, timeout_s)
            else:
                pred = extract_answer(solution_str, timeout_s)
        pred_boxed = group is not None and bool(pred)  # a box, or a final answer stated after the last box
    except Exception:  # the reward must never take a training step down
        logger.exception("reward_math: compute_score failed (data_source=%r): scored 0", data_source)
        correct = False
    return {"score": 1.0 if correct else 0.0, "acc": bool(correct), "pred": pred, "pred_boxed": pred_boxed}


def _verified_extraction(gold: str, text: str, timeout_s: float) -> tuple[bool, str]:
    """math-verify's extraction over `text`, verified against `gold`; if it says no, the extracted answer as
    written also gets our readings (percent words, decimal comma). Returns (correct, answer as written)."""
    if not gold:
        return False, _bounded(_mv.extract_written, (text,), timeout_s, "", "answer extraction")
    norm_gold = normalize_answer(gold)
    correct, written = _bounded(_mv.extract_and_verify, (norm_gold, text), timeout_s, (False, ""), "unboxed extraction")
    if not correct and written:
        correct = _equivalent(gold, written, timeout_s, "extracted answer")
    if not correct and _UPRIGHT_E in text:  # read the text as normalize_answer reads answers; keep `written` as is
        plain = text.replace(_UPRIGHT_E, "e")
        correct = _bounded(_mv.extract_and_verify, (norm_gold, plain), timeout_s, (False, ""), "unboxed extraction")[0]
    return correct, written
