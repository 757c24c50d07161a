"""The responses the rollout model (``rollout_sim.py``) runs on: pass rates and lengths, stated as distributions.

Per prompt q: a pass probability ``p_q ~ Beta(pass_a, pass_b)`` and a length scale
``m_q = median_len * exp(prompt_sigma * z_q) * exp(difficulty_slope * (0.5 - p_q))`` (harder prompts think longer).
Per response: it would pass with probability ``p_q``; its length is log-normal around ``m_q`` (times
``fail_len_factor`` for a failure: wrong answers ramble), spread ``sample_sigma``; a response reaching
``max_len`` is truncated there and fails (no final answer). None-pass groups get pre-sampled extra responses:
unhinted (``grpo_extra``) from the same distributions; hinted (``lte``): pass probability ``p_q + hint_lift``
(capped at 1), lengths times ``concise_len_factor`` when the hint asks for concision (some first-phase response
was truncated: ``concise`` / ``concise_hint``), and the prompt ``hint_tokens`` longer.

Everything is seeded: the same ``(workload, seed)`` gives the same groups, so GRPO and LTE run on the same
first-phase samples. ``workload_stats`` measures what a workload is (shares of group classes, truncation, mean
length), which is what ``docs/cost.md`` quotes.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from rollout_sim import Group, Response


@dataclass(frozen=True)
class Workload:
    batch: int = 128  # prompts per step (paper)
    g: int = 8  # rollouts per prompt (paper)
    max_len: int = 8192  # max response tokens (paper)
    prompt_len: int = 200  # prompt tokens (mean)
    prompt_len_sigma: float = 0.3
    hint_tokens: int = 120  # added by a hint (listed wrong answers + instructions)
    pass_a: float = 0.45
    pass_b: float = 0.55
    median_len: float = 1600.0
    prompt_sigma: float = 0.5
    sample_sigma: float = 0.5
    difficulty_slope: float = 0.8
    fail_len_factor: float = 1.4
    mode: str = "lte"  # lte (hinted extras) | grpo_extra (unhinted extras) | grpo (no extras)
    hint_lift: float = 0.15
    concise_len_factor: float = 0.6


def _response(rng: random.Random, p: float, median: float, w: Workload) -> Response:
    passed = rng.random() < p
    length = median * (1.0 if passed else w.fail_len_factor) * math.exp(rng.gauss(0.0, w.sample_sigma))
    length = max(1, int(length))
    if length >= w.max_len:
        return Response(w.max_len, False)
    return Response(length, passed)


def sample_group(rng: random.Random, w: Workload) -> Group:
    """One prompt: its G responses, and the extra responses it would get if none passes."""
    p = rng.betavariate(w.pass_a, w.pass_b)
    median = w.median_len * math.exp(w.prompt_sigma * rng.gauss(0.0, 1.0) + w.difficulty_slope * (0.5 - p))
    prompt = max(16, int(w.prompt_len * math.exp(w.prompt_len_sigma * rng.gauss(0.0, 1.0))))
    first = tuple(_response(rng, p, median, w) for _ in range(w.g))
    # Drawn for every group (used only for none-pass ones), so that the first phase's draws do not depend on mode.
    truncated = any(r.length >= w.max_len for r in first)
    if w.mode == "lte":
        extra_p = min(1.0, p + w.hint_lift)
        extra_median = median * (w.concise_len_factor if truncated else 1.0)
        extra_prompt = prompt + w.hint_tokens
    else:
        extra_p, extra_median, extra_prompt = p, median, prompt
    extra = tuple(_response(rng, extra_p, extra_median, w) for _ in range(w.g))
    if w.mode == "grpo":
        extra = ()
    return Group(prompt_len=prompt, first=first, extra=extra, extra_prompt_len=extra_prompt)


def sample_steps(w: Workload, steps: int, seed: int) -> list[list[Group]]:
    rng = random.Random(seed)
    return [[sample_group(rng, w) for _ in range(w.batch)] for _ in range(steps)]


def workload_stats(steps: list[list[Group]], max_len: int) -> dict[str, float]:
    """Group classes, truncation (length ``max_len``) and lengths of the first phase; extra responses of
    none-pass groups (``extra_share``: their tokens / first-phase tokens, before any cap)."""
    groups = [g for step in steps for g in step]
    first = [r for g in groups for r in g.first]
    none = [g for g in groups if g.none_pass]
    extra = [r for g in none for r in g.extra]
    return {
        "groups": len(groups),
        "all_pass": sum(all(r.passed for r in g.first) for g in groups) / len(groups),
        "none_pass": len(none) / len(groups),
        "none_pass_truncated": sum(any(r.length >= max_len for r in g.first) for g in none) / max(1, len(none)),
        "pass_rate": sum(r.passed for r in first) / len(first),
        "truncated": sum(r.length >= max_len for r in first) / len(first),
        "mean_len": sum(r.length for r in first) / len(first),
        "none_pass_mean_len": sum(r.length for g in none for r in g.first) / max(1, len(none) * len(none[0].first))
        if none
        else 0.0,
        "extra_mean_len": sum(r.length for r in extra) / len(extra) if extra else 0.0,
        "extra_pass_rate": sum(r.passed for r in extra) / len(extra) if extra else 0.0,
        "extra_share": sum(r.length for r in extra) / sum(r.length for r in first),
    }
