"""recipe/lte/agent_loop.py: plan_hint_within, the hint plan with the reward's math equivalence under a deadline for
the whole group (the rollout stage runs it in a thread; tests/integration/test_agent_loop.py shows other prompts'
rollouts go on meanwhile)."""

from __future__ import annotations

import time

import recipe.lte.agent_loop as agent_loop
from recipe.lte.core import HINT, HintConfig, HintPlan


def test_within_the_bound_the_math_equivalence_deduplicates(monkeypatch):
    seen = []

    def equivalent(a, b, timeout_s):
        seen.append(timeout_s)
        return {a, b} == {"5", "5.0"}

    monkeypatch.setattr(agent_loop, "answers_equivalent", equivalent)
    plan, timed_out = agent_loop.plan_hint_within(["5", "5.0", "7"], [False] * 3, HintConfig(dedup_timeout_s=30.0))
    assert (plan, timed_out) == (HintPlan(HINT, ("5", "7")), False)
    assert seen and all(0 < t <= 10.0 for t in seen)  # each call: the reward's 10 s, or less when less is left


def test_past_the_bound_it_falls_back_to_exact_strings(monkeypatch):
    calls = []

    def slow(a, b, timeout_s):
        calls.append(timeout_s)
        time.sleep(min(0.2, timeout_s))
        return True  # would fold everything into the first answer

    monkeypatch.setattr(agent_loop, "answers_equivalent", slow)
    start = time.monotonic()
    plan, timed_out = agent_loop.plan_hint_within(["5", "5.0", "7", "5"], [False] * 4, HintConfig(dedup_timeout_s=0.3))
    assert time.monotonic() - start < 0.3 + 0.5  # no call started past the bound (slack: a shared machine)
    assert (plan, timed_out) == (HintPlan(HINT, ("5", "5.0", "7")), True)
    assert len(calls) <= 2 and calls[-1] <= 0.3


def test_the_last_call_gets_only_the_time_left(monkeypatch):
    calls = []

    def slow(a, b, timeout_s):
        calls.append(timeout_s)
        time.sleep(0.25)
        return False

    monkeypatch.setattr(agent_loop, "answers_equivalent", slow)
    agent_loop.plan_hint_within(["1", "2", "3"], [False] * 3, HintConfig(dedup_timeout_s=0.4))
    # the first call may use the whole bound; the next only what the first left (at most 0.4 - 0.25)
    assert 0 < calls[0] <= 0.4 and len(calls) <= 2
    assert len(calls) == 1 or 0 < calls[1] <= 0.15 + 1e-6
