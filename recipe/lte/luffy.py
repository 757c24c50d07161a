"""The LUFFY arm (``lte.mode=luffy``): LUFFY's decisions as pure functions, no verl, no torch.

LUFFY (arXiv 2504.14945, "Learning to Reason under Off-Policy Guidance") is the paper's external-guidance baseline:
per prompt, G-1 on-policy rollouts plus ONE off-policy response -- the dataset's reference solution (a DeepSeek-R1
trace in Openr1-Math-46k-8192), placed under the original prompt and trained with f(p) = p / (p + gamma) of the
current policy's token probability (``lte.loss.off_policy_mode=luffy_prob``). Read top to bottom:

1. ``LuffyConfig``: the ``lte.luffy`` block; where LUFFY's code and descriptions of LUFFY differ, a key.
2. ``take_reference`` / ``reference_text``: the reference solution a training row carries (``extra_info.reference``,
   written by ``python -m data_prep openr1``).
3. ``reference_response``: its response token ids under the original prompt -- as LUFFY builds them.
4. ``reference_slot``: where the reference goes in a group (an added row, or in place of a failure).
5. ``step_metrics`` / ``format_step_line``: what a step did, from the per-row info the rollout stage writes.

The verl glue: ``agent_loop.py`` (the rollout stage), ``verl_ext/advantage/`` (advantage statistics over the
on-policy rows only, an option), ``verl_ext/loss/`` (the loss). Sources of each choice: docs/decisions.md.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from recipe.lte import core

# Where a training row carries its reference solution: ``extra_info[REFERENCE_KEY]`` (a string; None = none).
REFERENCE_KEY = "reference"

# Which groups get the reference solution.
REFERENCE_GROUPS = ("all", "none_pass")

# The think prefix LUFFY strips from a reference when the rendered prompt already ends with it
# (LUFFY luffy/verl/verl/mix_src/rl_dataset_with_target.py, __getitem__).
THINK_PREFIX = "<think>\n"


@dataclass
class LuffyConfig:
    """The ``lte.luffy`` block (used in ``lte.mode=luffy`` only)."""

    # On-policy rollouts per group; None = rollout.n - 1, so a group has rollout.n rows with the reference
    # (LUFFY exp_scripts/train.sh: rollout.n=8 with n_prefix=1 -> 7 on-policy + 1 off-policy).
    num_on_policy: int | None = None
    # "all": every group gets the reference as an extra row (LUFFY's code: n_prefix=1 for every prompt).
    # "none_pass": rollout.n on-policy rollouts; only a group where none passes gets the reference, in place of
    # one of its failures (chosen at random, seeded) -- the reading "external guidance only where the model fails".
    reference_groups: str = "all"

    def validate(self) -> None:
        if self.num_on_policy is not None:
            core._check_int("lte.luffy.num_on_policy (null = rollout.n - 1)", self.num_on_policy, minimum=1)
        if self.reference_groups not in REFERENCE_GROUPS:
            raise ValueError(
                f"lte.luffy.reference_groups must be one of {list(REFERENCE_GROUPS)}, got {self.reference_groups!r} "
                "(all = LUFFY's code)"
            )

    @classmethod
    def from_dict(cls, cfg: Mapping | None) -> LuffyConfig:
        """Build from the ``lte.luffy`` block; unknown keys are an error, not ignored."""
        cfg = dict(cfg or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(
                f"unknown keys {['lte.luffy.' + k for k in unknown]}: the lte.luffy.* keys are {sorted(known)}"
            )
        out = cls(**cfg)
        out.validate()
        return out

    def on_policy_rollouts(self, n: int) -> int:
        """On-policy rollouts per group for ``rollout.n = n``."""
        if self.reference_groups == "none_pass":
            return self.num_on_policy or n
        return self.num_on_policy or n - 1


# ---------------------------------------------------------------------------------------------------------
# 2. The reference solution of a row
# ---------------------------------------------------------------------------------------------------------


def reference_text(value: Any) -> str | None:
    """The reference solution as text, from the forms a dataset holds it in: a string, an assistant message
    ``{"role": "assistant", "content": ...}``, or a list of them (Openr1-Math-46k-8192's ``target`` column; LUFFY
    uses the first, rl_dataset_with_target.py). None when there is none or it is blank."""
    if hasattr(value, "tolist") and not isinstance(value, str):
        value = value.tolist()
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    if isinstance(value, Mapping):
        value = value.get("content")
    if not isinstance(value, str) or not value.strip():
        return None
    return value


def take_reference(prompt: dict) -> str | None:
    """Remove the reference solution from a training row's fields and return it (None when absent).

    Removed in every mode: a ~20 KB R1 trace would otherwise be stored with each of the G rows of the prompt."""
    extra = prompt.get("extra_info")
    if not isinstance(extra, Mapping) or REFERENCE_KEY not in extra:
        return None
    prompt["extra_info"] = {k: v for k, v in extra.items() if k != REFERENCE_KEY}
    return reference_text(extra[REFERENCE_KEY])


# ---------------------------------------------------------------------------------------------------------
# 3. Its response tokens
# ---------------------------------------------------------------------------------------------------------


def strip_think_prefix(prompt_text: str, reference: str) -> str:
    """LUFFY's rule: when the rendered prompt ends with ``<think>\\n`` (a chat template that opens the thinking
    block itself), a reference starting with it loses it, so the block is not opened twice."""
    if prompt_text.endswith(THINK_PREFIX) and reference.startswith(THINK_PREFIX):
        return reference[len(THINK_PREFIX) :]
    return reference


def reference_response(token_ids: Sequence[int], eos_token_id: int, response_length: int) -> tuple[list[int], bool]:
    """The reference's response ids and whether they were truncated.

    As LUFFY builds them (mix_vllm_rollout.py): the reference's tokens followed by the tokenizer's EOS, cut to the
    response length; a cut reference has no EOS, like a truncated rollout."""
    if not token_ids:
        raise ValueError("the reference solution tokenizes to nothing: an empty response cannot be trained")
    ids = [*token_ids, eos_token_id]
    if len(ids) > response_length:
        return ids[:response_length], True
    return ids, False


# ---------------------------------------------------------------------------------------------------------
# 4. Where it goes
# ---------------------------------------------------------------------------------------------------------


def reference_slot(passed: Sequence[bool], reference_groups: str, rng: random.Random) -> int | None:
    """The row index the reference takes in a group whose on-policy rows passed as ``passed``; None = not added.

    ``all``: a new last row (index ``len(passed)``). ``none_pass``: a random one of the failures, only when none
    passed."""
    if reference_groups == "all":
        return len(passed)
    if reference_groups == "none_pass":
        return rng.randrange(len(passed)) if not any(passed) else None
    raise ValueError(f"unknown lte.luffy.reference_groups {reference_groups!r}")


# ---------------------------------------------------------------------------------------------------------
# 5. Step metrics
# ---------------------------------------------------------------------------------------------------------


def is_reference(row: core.RowInfo) -> bool:
    """A reference row: in lte.mode=luffy the only off-policy row (the group-level ``extra_kind`` says a group got
    one, on all its rows)."""
    return row.off_policy


def is_on_policy_slot(row: core.RowInfo) -> bool:
    """A row whose slot was sampled on-policy (a reference that replaced a failure included; an added one not)."""
    return not (row.off_policy and not row.replaced)


def step_metrics(rows: Sequence[core.RowInfo], scores: Sequence[float], prefix: str = "lte/") -> dict[str, float]:
    """Per-step metrics of a LUFFY batch (padding rows removed); ``scores`` are the rows' rewards.

    The group keys are LTE's (``groups/*_before`` over the on-policy rows, ``*_after`` with the reference), so the
    summary and plots read a LUFFY run too; ``extra/*`` count references; ``luffy/*`` describe the references under
    the project's reward. The references' probability under the policy is the loss's
    ``actor/lte/off_policy_prob_mean``."""
    if len(rows) != len(scores):
        raise ValueError(f"rows ({len(rows)}) and scores ({len(scores)}) differ in length")
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r.uid, []).append(i)
    m: dict[str, float] = {}
    if not groups:
        return m
    n_groups = len(groups)
    before = {c: 0 for c in core.GROUP_CLASSES}
    after = {c: 0 for c in core.GROUP_CLASSES}
    rescued = 0
    for idx in groups.values():
        ref = [i for i in idx if is_reference(rows[i])]
        on = [i for i in idx if is_on_policy_slot(rows[i])]
        cls_before = core.classify_group([rows[i].orig_passed for i in on])
        cls_after = core.classify_group([rows[i].passed for i in idx])
        before[cls_before] += 1
        after[cls_after] += 1
        rescued += bool(ref) and cls_before == core.NONE_PASS and cls_after != core.NONE_PASS
    for c in core.GROUP_CLASSES:
        m[f"{prefix}groups/{c}_before"] = before[c]
        m[f"{prefix}groups/{c}_before_share"] = before[c] / n_groups
        m[f"{prefix}groups/{c}_after"] = after[c]
        m[f"{prefix}groups/{c}_after_share"] = after[c] / n_groups
    refs = [i for i, r in enumerate(rows) if is_reference(r)]
    on_slots = [r for r in rows if is_on_policy_slot(r)]
    truncated = sum(rows[i].extra_status == core.REFERENCE_TRUNCATED for i in refs)
    m[f"{prefix}extra/ran"] = len(refs)
    m[f"{prefix}extra/kind_{core.REFERENCE}"] = len(refs)
    m[f"{prefix}extra/rescued"] = rescued
    m[f"{prefix}extra/correct"] = sum(rows[i].passed for i in refs)
    m[f"{prefix}extra/replaced"] = sum(rows[i].replaced for i in refs)
    m[f"{prefix}extra/off_policy_rows"] = sum(r.off_policy for r in rows)
    m[f"{prefix}extra/tokens"] = sum(rows[i].extra_tokens for i in refs)
    m[f"{prefix}on_policy_acc"] = sum(r.orig_passed for r in on_slots) / len(on_slots)
    m[f"{prefix}acc_after"] = sum(r.passed for r in rows) / len(rows)
    if refs:  # a step without a reference has no reference statistics (a logged 0 would read as "all failed")
        m[f"{prefix}luffy/reference_reward_mean"] = sum(scores[i] for i in refs) / len(refs)
        m[f"{prefix}luffy/reference_pass_rate"] = m[f"{prefix}extra/correct"] / len(refs)
        m[f"{prefix}luffy/reference_truncated"] = truncated
        m[f"{prefix}luffy/reference_tokens_mean"] = m[f"{prefix}extra/tokens"] / len(refs)
    return m


def format_step_line(step: int, m: Mapping[str, float]) -> str:
    """``[LTE step 3] luffy | on-policy groups all/some/none 2/3/3 -> 2/5/1 | references 8 (pass 7, ...) | ...``"""
    if not m:
        return f"[LTE step {step}] no LTE info in this batch"

    def g(key: str) -> int:
        return int(m.get(f"lte/{key}", 0))

    before = "/".join(str(g(f"groups/{c}_before")) for c in core.GROUP_CLASSES)
    after = "/".join(str(g(f"groups/{c}_after")) for c in core.GROUP_CLASSES)
    return (
        f"[LTE step {step}] luffy | groups all/some/none {before} -> {after} | references {g('extra/ran')} "
        f"(pass {g('extra/correct')}, truncated {g('luffy/reference_truncated')}, replaced {g('extra/replaced')}) "
        f"| rescued {g('extra/rescued')} | on-policy acc {m.get('lte/on_policy_acc', 0.0):.3f}"
    )
