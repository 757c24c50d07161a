"""LTE's decisions, as pure functions: no verl, no torch.

Read top to bottom, this is the method (arXiv 2510.26109, steps 2-5 of docs/method.md):

1. ``classify_group``: a scored group of G rollouts is all-pass, some-pass or none-pass; ``wants_extra_phase``:
   a none-pass group gets extra rollouts (not in the ``grpo`` arm, nor when its ground truth is unusable).
2. ``classify_truncation``: a none-pass group is further all / some / none truncated.
3. ``plan_hint``: what to tell the model -- ``concise`` (all truncated), ``concise_hint`` (some truncated:
   the wrong answers of the NON-truncated failures + "be concise") or ``hint`` (none truncated: the wrong
   answers, "do not give them again").
4. ``render_hinted_messages``: the hinted chat, from templates held in config.
5. ``choose_replacements``: which failed originals the correct extra responses replace (seeded, capped).
6. ``step_metrics``: what a step did, from the per-row LTE info the rollout stage writes.

The verl glue (``agent_loop.py``, ``trainer.py``) calls these and nothing else decides.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields

# ---------------------------------------------------------------------------------------------------------
# Names and codes. Per-row LTE info travels through verl's TransferQueue as numbers, so every category has a
# stable integer code.
# ---------------------------------------------------------------------------------------------------------

# "luffy": the paper's external-guidance baseline (recipe/lte/luffy.py): a reference solution per group, off-policy.
MODES = ("grpo", "grpo_extra", "lte", "luffy")

# The per-step LTE metrics of a run, one JSON record a line, in trainer.default_local_dir (written by the trainer,
# read by recipe.lte.tools.summary).
METRICS_FILE = "lte_metrics.jsonl"
# One record per group and step (which prompt was none-pass, hinted, rescued): ``group_records``.
GROUPS_FILE = "lte_groups.jsonl"

ALL_PASS, SOME_PASS, NONE_PASS = "all_pass", "some_pass", "none_pass"
GROUP_CLASSES = (ALL_PASS, SOME_PASS, NONE_PASS)

ALL_TRUNCATED, SOME_TRUNCATED, NONE_TRUNCATED = "all_truncated", "some_truncated", "none_truncated"

CONCISE, CONCISE_HINT, HINT = "concise", "concise_hint", "hint"
HINT_KINDS = (CONCISE, CONCISE_HINT, HINT)
# "unhinted" = GRPO-Extra's extra rollouts from the unchanged prompt; "none" = no extra phase for this group;
# "reference" = LUFFY's row: the dataset's reference solution (lte.mode=luffy).
REFERENCE = "reference"
EXTRA_KIND_CODES = {"none": -1, CONCISE: 0, CONCISE_HINT: 1, HINT: 2, "unhinted": 3, REFERENCE: 10}

# What happened to a group's extra phase.
REFERENCE_TRUNCATED = "reference_truncated"
EXTRA_STATUS_CODES = {
    "not_needed": 0,  # not a none-pass group, or mode == grpo
    "ran": 1,  # extra rollouts generated and scored (rescued or not)
    "skipped_too_long": 2,  # the hinted prompt did not fit rollout.prompt_length even with no answers listed
    "error": 3,  # the extra phase raised; the original group was kept unchanged
    "skipped_no_hint": 4,  # nothing to hint (no usable wrong answer and lte.hint.no_answer_fallback=skip)
    # the reward can never match the row's ground truth (missing, empty, unparseable): extra rollouts would all fail
    "skipped_bad_ground_truth": 5,
    REFERENCE_TRUNCATED: 10,  # lte.mode=luffy: the reference was added, cut to the response length
}
ON_BAD_ROWS = ("error", "skip")


def code_to_name(codes: Mapping[str, int], code: int) -> str:
    """Inverse of one of the code tables above."""
    for name, c in codes.items():
        if c == code:
            return name
    raise KeyError(f"unknown code {code}; known: {dict(codes)}")


# ---------------------------------------------------------------------------------------------------------
# Configuration: the `lte:` block of recipe/lte/config/lte_trainer.yaml. Defaults are the paper's choices;
# where the paper is silent, ours (the yaml says which).
# ---------------------------------------------------------------------------------------------------------

DEFAULT_HINT_TEMPLATE = (
    "{prompt}\n\n"
    "Note: earlier attempts at this problem gave the following final answers, and all of them are wrong:\n"
    "{answers}\n"
    "Do not give any of these answers again. Solve the problem from scratch. "
    "Do not mention this note or the earlier attempts in your reasoning."
)
DEFAULT_CONCISE_TEMPLATE = (
    "{prompt}\n\n"
    "Note: earlier attempts at this problem ran out of space before reaching a final answer. "
    "Think concisely and reach the final answer well within the length limit. "
    "Do not mention this note or the earlier attempts in your reasoning."
)
DEFAULT_CONCISE_HINT_TEMPLATE = (
    "{prompt}\n\n"
    "Note: some earlier attempts at this problem ran out of space before reaching a final answer, and the "
    "others gave the following final answers, all of which are wrong:\n"
    "{answers}\n"
    "Think concisely, reach the final answer well within the length limit, and do not give any of these "
    "answers again. Do not mention this note or the earlier attempts in your reasoning."
)
DEFAULT_ANSWER_ITEM = "- {answer}"
ANSWER_SOURCES = ("boxed", "any")


def _check_int(key: str, value: object, minimum: int | None = None) -> None:
    # YAML/CLI typos ("8", 1.5, null, true) must fail at start-up under their key, not as a TypeError mid-run.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{key} must be >= {minimum}, got {value}")


@dataclass
class HintConfig:
    """How hints are built (`lte.hint.*`)."""

    templates: dict[str, str] = field(
        default_factory=lambda: {
            HINT: DEFAULT_HINT_TEMPLATE,
            CONCISE: DEFAULT_CONCISE_TEMPLATE,
            CONCISE_HINT: DEFAULT_CONCISE_HINT_TEMPLATE,
        }
    )
    answer_item: str = DEFAULT_ANSWER_ITEM
    max_wrong_answers: int = 8  # ours: the paper lists the distinct wrong answers; G=8 bounds them anyway
    max_answer_chars: int = 200  # ours: longer "answers" are skipped (quoting them cut would misquote)
    # ours: a none-truncated group whose failures wrote no final answer has nothing to list.
    no_answer_fallback: str = CONCISE  # "concise" | "skip"
    # ours: which answers a hint may quote as "your final answers": "boxed" = only those the model gave as final
    # (in a \boxed{}); "any" = also the reward's free-text extraction (a stray number from "... so x = 3 ...").
    answer_source: str = "boxed"
    # ours: wall-clock bound (s) of one group's answer de-duplication with the reward's math equivalence (up to
    # G(G-1)/2 calls, milliseconds each, up to 10 s each on pathological input); past it: exact-string de-duplication.
    dedup_timeout_s: float = 30.0

    def validate(self) -> None:
        if not isinstance(self.templates, Mapping):
            raise ValueError(f"lte.hint.templates must be a mapping kind -> template, got {self.templates!r}")
        for kind in HINT_KINDS:
            if kind not in self.templates:
                raise ValueError(f"lte.hint.templates.{kind} is missing; give a template with a {{prompt}} field")
            tpl = self.templates[kind]
            if not isinstance(tpl, str):
                raise ValueError(f"lte.hint.templates.{kind} must be a string with a {{prompt}} field, got {tpl!r}")
            if "{prompt}" not in tpl:
                raise ValueError(f"lte.hint.templates.{kind} must contain {{prompt}} (the original user turn)")
            needs_answers = kind in (HINT, CONCISE_HINT)
            if needs_answers and "{answers}" not in tpl:
                raise ValueError(f"lte.hint.templates.{kind} must contain {{answers}} (the wrong answers)")
            if not needs_answers and "{answers}" in tpl:
                raise ValueError(f"lte.hint.templates.{kind} lists no answers; remove {{answers}} from it")
        if not isinstance(self.answer_item, str) or "{answer}" not in self.answer_item:
            raise ValueError(
                f"lte.hint.answer_item must contain {{answer}}, e.g. '- {{answer}}', got {self.answer_item!r}"
            )
        _check_int("lte.hint.max_wrong_answers", self.max_wrong_answers, minimum=1)
        _check_int("lte.hint.max_answer_chars", self.max_answer_chars, minimum=1)
        if self.no_answer_fallback not in (CONCISE, "skip"):
            raise ValueError(
                f"lte.hint.no_answer_fallback must be 'concise' or 'skip', got {self.no_answer_fallback!r}"
            )
        if self.answer_source not in ANSWER_SOURCES:
            raise ValueError(f"lte.hint.answer_source must be one of {ANSWER_SOURCES}, got {self.answer_source!r}")
        t = self.dedup_timeout_s
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ValueError(f"lte.hint.dedup_timeout_s must be a finite number of seconds > 0, got {t!r}")


@dataclass
class DataConfig:
    """What the start-up data check does with bad rows (`lte.data.*`; the check is `data_prep check`)."""

    # "error": refuse to start, with the report; "skip": drop the bad rows, count them and train on the rest.
    on_bad_rows: str = "error"

    def validate(self) -> None:
        if self.on_bad_rows not in ON_BAD_ROWS:
            raise ValueError(f"lte.data.on_bad_rows must be one of {ON_BAD_ROWS}, got {self.on_bad_rows!r}")


@dataclass
class LTEConfig:
    """The LTE decisions' settings (`lte.*`, loss settings aside: those are `lte.loss.*`, see verl_ext.loss.config)."""

    mode: str = "lte"  # "grpo" | "grpo_extra" | "lte" | "luffy": every arm of the paper from one switch
    pass_threshold: float = 1.0  # a response passes when its reward >= this (binary 0/1 correctness)
    # Open question in the paper: may all G failures be replaced? Replacing all makes the group all-pass and its
    # advantages zero again, so by default one failure is kept.
    min_failures_kept: int = 1
    num_extra_rollouts: int | None = None  # extra rollouts for a none-pass group; None = G (the paper)
    # Tokens that rollout.prompt_length must leave above data.max_prompt_length for the hint text (ours).
    min_hint_room_tokens: int = 256
    # Replacement choices are seeded by (seed, step, prompt_identity): reruns make the same choices.
    seed: int = 0
    hint: HintConfig = field(default_factory=HintConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"lte.mode must be one of {MODES}, got {self.mode!r}")
        if self.num_extra_rollouts is not None:
            _check_int("lte.num_extra_rollouts (null = rollout.n)", self.num_extra_rollouts, minimum=1)
        _check_int("lte.min_hint_room_tokens", self.min_hint_room_tokens, minimum=0)
        threshold = self.pass_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise ValueError(f"lte.pass_threshold must be a finite number (1.0 for 0/1 rewards), got {threshold!r}")
        _check_int("lte.min_failures_kept", self.min_failures_kept, minimum=0)
        _check_int("lte.seed", self.seed)
        self.hint.validate()
        self.data.validate()

    @classmethod
    def from_dict(cls, cfg: Mapping | None) -> LTEConfig:
        """Build from the `lte:` config block (a plain mapping); unknown keys are an error, not ignored."""
        cfg = dict(cfg or {})
        cfg.pop("loss", None)  # owned by verl_ext.loss.config.LTELossConfig
        cfg.pop("luffy", None)  # owned by recipe.lte.luffy.LuffyConfig
        hint = dict(cfg.pop("hint", None) or {})
        data = dict(cfg.pop("data", None) or {})
        known = {f.name for f in fields(cls)} - {"hint", "data"}
        unknown = set(cfg) - known
        if unknown:
            names = [f"lte.{k}" for k in sorted(unknown)]
            raise ValueError(
                f"unknown keys {names}: the lte.* keys are {sorted(known | {'hint', 'data', 'loss', 'luffy'})}"
            )
        for block, given, sub in (("hint", hint, HintConfig), ("data", data, DataConfig)):
            sub_known = {f.name for f in fields(sub)}
            if set(given) - sub_known:
                names = [f"lte.{block}.{k}" for k in sorted(set(given) - sub_known)]
                raise ValueError(f"unknown keys {names}: the lte.{block}.* keys are {sorted(sub_known)}")
        if "templates" in hint:
            templates = HintConfig().templates
            templates.update(dict(hint["templates"]))
            hint["templates"] = templates
        out = cls(**cfg, hint=HintConfig(**hint), data=DataConfig(**data))
        out.validate()
        return out


# ---------------------------------------------------------------------------------------------------------
# 1-2. Classification
# ---------------------------------------------------------------------------------------------------------


def classify_group(passed: Sequence[bool]) -> str:
    """all_pass / some_pass / none_pass for one group's pass flags."""
    if not passed:
        raise ValueError("classify_group needs at least one response")
    n_pass = sum(bool(p) for p in passed)
    if n_pass == len(passed):
        return ALL_PASS
    return SOME_PASS if n_pass else NONE_PASS


def wants_extra_phase(group_class: str, mode: str) -> bool:
    """Does a group call for extra rollouts? A none-pass group in the ``grpo_extra`` and ``lte`` arms does -- unless
    the reward can never match its ground truth (the caller checks that: ``skipped_bad_ground_truth``)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; one of {MODES}")
    return group_class == NONE_PASS and mode != "grpo"


def classify_truncation(truncated: Sequence[bool]) -> str:
    """all_truncated / some_truncated / none_truncated for a (none-pass) group's truncation flags."""
    if not truncated:
        raise ValueError("classify_truncation needs at least one response")
    n = sum(bool(t) for t in truncated)
    if n == len(truncated):
        return ALL_TRUNCATED
    return SOME_TRUNCATED if n else NONE_TRUNCATED


# ---------------------------------------------------------------------------------------------------------
# 3. The hint plan
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HintPlan:
    """What the hinted prompt says: its kind and the wrong answers it lists (in first-seen order)."""

    kind: str
    wrong_answers: tuple[str, ...] = ()


# "Are these two answers the same?" -- injected by the caller (the rollout stage passes the reward's own
# math-verify equivalence), so this module stays pure.
Equivalence = Callable[[str, str], bool]


def quotable_answers(preds: Sequence[str], boxed: Sequence[bool], answer_source: str = "boxed") -> list[str]:
    """The answers a hint may quote as the model's final answers ("" for the others).

    ``boxed[i]``: ``preds[i]`` is what the model gave as final (a ``\\boxed{}``), not the reward's free-text
    extraction. ``answer_source="boxed"`` keeps only those; ``"any"`` keeps every answer.
    """
    if len(preds) != len(boxed):
        raise ValueError(f"preds ({len(preds)}) and boxed ({len(boxed)}) differ in length")
    if answer_source not in ANSWER_SOURCES:
        raise ValueError(f"answer_source must be one of {ANSWER_SOURCES}, got {answer_source!r}")
    return [p if (b or answer_source == "any") else "" for p, b in zip(preds, boxed, strict=True)]


def exact_only(a: str, b: str) -> bool:
    """The equivalence of exact-string de-duplication (``distinct_wrong_answers`` compares the strings itself)."""
    return False


def distinct_wrong_answers(
    preds: Sequence[str],
    truncated: Sequence[bool],
    *,
    equivalent: Equivalence,
    max_answers: int = 8,
    max_answer_chars: int = 200,
) -> list[str]:
    """The distinct final answers of the NON-truncated failures, first-seen order.

    Empty answers and answers longer than ``max_answer_chars`` are dropped; two answers are the same when they
    are equal as stripped strings or ``equivalent`` says so. At most ``max_answers`` are returned.
    """
    if len(preds) != len(truncated):
        raise ValueError(f"preds ({len(preds)}) and truncated ({len(truncated)}) differ in length")
    kept: list[str] = []
    for pred, trunc in zip(preds, truncated, strict=True):
        answer = (pred or "").strip()
        if trunc or not answer or len(answer) > max_answer_chars:
            continue
        if any(answer == k or equivalent(answer, k) for k in kept):
            continue
        kept.append(answer)
        if len(kept) == max_answers:
            break
    return kept


def plan_hint(
    preds: Sequence[str],
    truncated: Sequence[bool],
    *,
    equivalent: Equivalence,
    max_answers: int = 8,
    max_answer_chars: int = 200,
    no_answer_fallback: str = CONCISE,
) -> HintPlan | None:
    """The hint for a none-pass group (all ``preds`` are wrong), or None when there is nothing to say.

    - all truncated: ``concise`` (no answers to show);
    - some truncated: ``concise_hint`` with the wrong answers of the non-truncated failures; if none of them
      wrote a usable answer, ``concise`` (the truncation is still worth telling);
    - none truncated: ``hint`` with the wrong answers; if no failure wrote a usable answer (e.g. no \\boxed{}),
      ``no_answer_fallback``: ``concise`` (default: asks for a focused answer) or ``skip`` (None).
    """
    trunc_class = classify_truncation(truncated)
    if trunc_class == ALL_TRUNCATED:
        return HintPlan(CONCISE)
    answers = distinct_wrong_answers(
        preds, truncated, equivalent=equivalent, max_answers=max_answers, max_answer_chars=max_answer_chars
    )
    if trunc_class == SOME_TRUNCATED:
        return HintPlan(CONCISE_HINT, tuple(answers)) if answers else HintPlan(CONCISE)
    if answers:
        return HintPlan(HINT, tuple(answers))
    return HintPlan(CONCISE) if no_answer_fallback == CONCISE else None


def shrink_to_fit(plan: HintPlan, fits: Callable[[HintPlan], bool]) -> HintPlan | None:
    """The longest prefix of ``plan``'s answer list whose rendered prompt ``fits``; None if even the shortest
    does not. A plan with answers never loses all of them (its text refers to them): it is then skipped."""
    if plan.wrong_answers:
        for k in range(len(plan.wrong_answers), 0, -1):
            candidate = HintPlan(plan.kind, plan.wrong_answers[:k])
            if fits(candidate):
                return candidate
        return None
    return plan if fits(plan) else None


# ---------------------------------------------------------------------------------------------------------
# 4. Rendering
# ---------------------------------------------------------------------------------------------------------


def render_hint_text(prompt: str, plan: HintPlan, hint: HintConfig) -> str:
    """The hinted user turn: the original user turn ``prompt`` wrapped by the template of ``plan.kind``."""
    answers = "\n".join(hint.answer_item.replace("{answer}", a) for a in plan.wrong_answers)
    fill = {"{prompt}": prompt, "{answers}": answers}
    # One pass over the template: str.format would choke on LaTeX braces, and chained str.replace would splice the
    # answer list into a prompt that itself contains "{answers}" (e.g. "\\text{answers}").
    return re.sub(r"\{prompt\}|\{answers\}", lambda m: fill[m.group(0)], hint.templates[plan.kind])


def render_hinted_messages(messages: Sequence[Mapping], plan: HintPlan, hint: HintConfig) -> list[dict]:
    """A copy of the chat ``messages`` whose LAST user turn carries the hint; other turns unchanged."""
    out = [dict(m) for m in messages]
    for m in reversed(out):
        if m.get("role") == "user":
            if not isinstance(m.get("content"), str):
                raise ValueError("LTE hints need a text user turn; got non-text content (multimodal prompts)")
            m["content"] = render_hint_text(m["content"], plan, hint)
            return out
    raise ValueError(f"no user turn in the prompt to attach the hint to: roles {[m.get('role') for m in out]}")


# ---------------------------------------------------------------------------------------------------------
# 5. Replacement
# ---------------------------------------------------------------------------------------------------------


def prompt_identity(messages: Sequence[Mapping], index: object = None) -> str:
    """A stable identity of a training prompt -- its dataset index and its chat content -- for seeding its choices.

    verl's per-step ``uid`` is a fresh uuid4, so choices seeded with it differ between two identical runs.
    """
    turns = [[str(m.get("role")), str(m.get("content"))] for m in messages]
    return hashlib.sha256(json.dumps([str(index), turns]).encode()).hexdigest()


def seeded_rng(seed: int, *keys: object) -> random.Random:
    """A Random seeded by ``seed`` and ``keys`` -- the same across processes (unlike ``hash()`` of a str)."""
    digest = hashlib.sha256(repr((seed, *keys)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def choose_replacements(
    failed_slots: Sequence[int],
    correct_extras: Sequence[int],
    *,
    min_failures_kept: int = 1,
    rng: random.Random,
) -> list[tuple[int, int]]:
    """Pairs (failed slot, correct extra) to swap: each correct extra response replaces one failed original.

    At most ``len(failed_slots) - min_failures_kept`` replacements, so a capped group keeps a failure and a
    non-zero advantage. Both the slots and, when there are more correct extras than room, the extras used are
    chosen at random with ``rng``. Returned sorted by slot.
    """
    room = max(0, len(failed_slots) - min_failures_kept)
    k = min(room, len(correct_extras))
    if k == 0:
        return []
    slots = rng.sample(list(failed_slots), k)
    extras = rng.sample(list(correct_extras), k)
    return sorted(zip(slots, extras, strict=True))


# ---------------------------------------------------------------------------------------------------------
# 6. Step metrics
# ---------------------------------------------------------------------------------------------------------


@dataclass
class RowInfo:
    """The LTE info one training row carries (written by the rollout stage, read back by the trainer)."""

    uid: str
    passed: bool  # this row (after replacement) passes
    orig_passed: bool  # the on-policy response originally in this slot passed
    replaced: bool  # this row is an extra response put in place of a failure
    off_policy: bool  # trained with the off-policy loss (hinted)
    group_class: str  # of the original group, before LTE
    extra_kind: str  # key of EXTRA_KIND_CODES
    extra_status: str  # key of EXTRA_STATUS_CODES
    extra_correct: int  # G': correct extra responses of this group
    extra_tokens: int  # response tokens generated in this group's extra phase
    extra_seconds: float  # wall time of this group's extra phase
    first_tokens: int = 0  # response tokens of this group's G first-phase rollouts (before any replacement)
    dedup_timeout: bool = False  # this group's answer de-duplication ran past lte.hint.dedup_timeout_s


def step_metrics(rows: Sequence[RowInfo], prefix: str = "lte/") -> dict[str, float]:
    """Per-step LTE metrics from the rows of one training batch (padding rows already removed).

    Group counts and shares before and after LTE, extra phases by kind and outcome, rescued groups,
    replaced responses, extra tokens and time, and the true on-policy accuracy (``critic/score/mean``
    counts replaced rows).
    """
    groups: dict[str, list[RowInfo]] = {}
    for r in rows:
        groups.setdefault(r.uid, []).append(r)
    n_groups = len(groups)
    m: dict[str, float] = {}
    if n_groups == 0:
        return m
    before = {c: 0 for c in GROUP_CLASSES}
    after = {c: 0 for c in GROUP_CLASSES}
    kinds = {k: 0 for k in EXTRA_KIND_CODES if k not in ("none", REFERENCE)}  # LUFFY's: recipe.lte.luffy
    status = {s: 0 for s in EXTRA_STATUS_CODES if s not in ("not_needed", REFERENCE_TRUNCATED)}
    rescued = extra_tokens = extra_correct = first_tokens = dedup_timeouts = 0
    extra_seconds: list[float] = []
    for g in groups.values():
        head = g[0]
        first_tokens += head.first_tokens
        before[head.group_class] += 1
        after[classify_group([r.passed for r in g])] += 1
        if head.extra_status != "not_needed":
            status[head.extra_status] += 1
        dedup_timeouts += head.dedup_timeout
        if head.extra_status == "ran":
            kinds[head.extra_kind] += 1
            extra_tokens += head.extra_tokens
            extra_correct += head.extra_correct
            extra_seconds.append(head.extra_seconds)
            rescued += any(r.replaced for r in g)
    for c in GROUP_CLASSES:
        m[f"{prefix}groups/{c}_before"] = before[c]
        m[f"{prefix}groups/{c}_before_share"] = before[c] / n_groups
        m[f"{prefix}groups/{c}_after"] = after[c]
        m[f"{prefix}groups/{c}_after_share"] = after[c] / n_groups
    for k, v in kinds.items():
        m[f"{prefix}extra/kind_{k}"] = v
    for s, v in status.items():
        m[f"{prefix}extra/{s}"] = v
    ran = status["ran"]
    m[f"{prefix}extra/rescued"] = rescued
    if ran:  # a step without an extra phase has no rescue rate (a logged 0 would read as "all failed")
        m[f"{prefix}extra/rescue_rate"] = rescued / ran
    m[f"{prefix}extra/correct"] = extra_correct
    m[f"{prefix}extra/replaced"] = sum(r.replaced for r in rows)
    m[f"{prefix}extra/off_policy_rows"] = sum(r.off_policy for r in rows)
    m[f"{prefix}extra/tokens"] = extra_tokens
    m[f"{prefix}first/tokens"] = first_tokens
    # LTE's decode work beyond GRPO's this step: the floor of its generation-time overhead (docs/cost.md).
    m[f"{prefix}extra/token_share"] = extra_tokens / first_tokens if first_tokens else 0.0
    m[f"{prefix}extra/dedup_timeouts"] = dedup_timeouts
    if extra_seconds:
        m[f"{prefix}extra/seconds_max"] = max(extra_seconds)
        m[f"{prefix}extra/seconds_mean"] = sum(extra_seconds) / len(extra_seconds)
    m[f"{prefix}on_policy_acc"] = sum(r.orig_passed for r in rows) / len(rows)
    m[f"{prefix}acc_after"] = sum(r.passed for r in rows) / len(rows)
    return m


def group_records(rows: Sequence[RowInfo], index_of: Mapping[str, object] | None = None) -> list[dict]:
    """One record per group of a training batch: what LTE did to that prompt (for per-prompt analyses, e.g.
    which prompts a hint rescued). ``index_of`` maps a uid to the prompt's dataset index (``extra_info.index``).

    Fields: uid, index, group_class (before LTE), extra_kind, extra_status, extra_correct (G'), and row counts:
    passed_before (on-policy passes), passed_after, replaced, off_policy.
    """
    groups: dict[str, list[RowInfo]] = {}
    for r in rows:
        groups.setdefault(r.uid, []).append(r)
    index_of = index_of or {}
    return [
        {
            "uid": uid,
            "index": index_of.get(uid),
            "group_class": g[0].group_class,
            "extra_kind": g[0].extra_kind,
            "extra_status": g[0].extra_status,
            "extra_correct": g[0].extra_correct,
            "passed_before": sum(r.orig_passed for r in g),
            "passed_after": sum(r.passed for r in g),
            "replaced": sum(r.replaced for r in g),
            "off_policy": sum(r.off_policy for r in g),
        }
        for uid, g in groups.items()
    ]
