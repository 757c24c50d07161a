"""The rollout model (benchmarks/rollout_sim.py) against hand computations on cases small enough to do by hand."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from rollout_sim import (  # noqa: E402
    Engine,
    Group,
    Policy,
    Response,
    Simulation,
    StepResult,
    Trainer,
    simulate,
    summarize,
)
from rollout_workload import Workload, sample_steps, workload_stats  # noqa: E402

FAIL, PASS = False, True


def group(first: list[tuple[int, bool]], extra: list[tuple[int, bool]] = (), prompt: int = 1, extra_prompt: int = 0):
    return Group(
        prompt_len=prompt,
        first=tuple(Response(n, p) for n, p in first),
        extra=tuple(Response(n, p) for n, p in extra),
        extra_prompt_len=extra_prompt,
    )


def sync(engine: Engine, groups: list[Group], policy: Policy = Policy(), trainer: Trainer = Trainer()) -> StepResult:
    (result,) = simulate(engine, trainer, policy, [groups])
    return result


def test_one_request_takes_one_iteration_per_token() -> None:
    r = sync(Engine(t_iter_s=1.0), [group([(7, PASS)])])
    assert r.gen_s == 7.0 and r.first_tokens == 7 and r.extra_tokens == 0


def test_iteration_time_grows_with_running_sequences() -> None:
    # Lengths 3 and 5 together: 3 iterations with 2 sequences (1 + 2*0.5 = 2 s), then 2 with one (1.5 s).
    r = sync(Engine(t_iter_s=1.0, t_seq_s=0.5), [group([(3, PASS), (5, FAIL)])])
    assert r.gen_s == pytest.approx(3 * 2.0 + 2 * 1.5)


def test_iteration_time_counts_context_and_prefill_tokens() -> None:
    # Prompt 10, 3 tokens: the context held is 10, 11, 12 tokens in the three iterations; 10 prefilled in the first.
    r = sync(Engine(t_ctx_s=0.1, t_prefill_token_s=0.01), [group([(3, PASS)], prompt=10)])
    assert r.gen_s == pytest.approx(0.1 * (10 + 11 + 12) + 0.01 * 10)


def test_kv_cache_full_preempts_the_latest_request_which_recomputes_later() -> None:
    # KV for 10 tokens; two requests of prompt 2 + 4 tokens. After 3 iterations both hold 5 tokens (10): the next
    # token does not fit, so B (admitted last) is preempted with 3 tokens; A ends at t=4; B is readmitted,
    # prefills its 2 + 3 tokens again and ends one iteration later.
    e = Engine(kv_capacity_tokens=10, t_iter_s=1.0, t_prefill_token_s=0.1)
    r = sync(e, [group([(4, PASS), (4, FAIL)], prompt=2)])
    assert r.recompute_tokens == 5
    assert r.first_tokens == 8  # generated tokens, not recomputed ones
    assert r.gen_s == pytest.approx(4 * 1.0 + 0.1 * 4 + (1.0 + 0.1 * 5))  # first iteration prefills 2 + 2


def test_a_request_larger_than_the_kv_cache_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit kv_capacity_tokens=10"):
        sync(Engine(kv_capacity_tokens=10, t_iter_s=1.0), [group([(20, PASS)], prompt=2)])


def test_max_num_seqs_queues_the_rest() -> None:
    r = sync(Engine(max_num_seqs=1, t_iter_s=1.0), [group([(2, PASS), (3, FAIL)])])
    assert r.gen_s == 5.0


def test_least_in_flight_routing_spreads_requests_over_replicas() -> None:
    # Three requests on two replicas: 5 and 1 on replica 0, 4 on replica 1. Per-sequence time makes the
    # placement visible: replica 0 runs 2 sequences for 1 iteration (2 s) then 1 for 4 (1 s each).
    e = Engine(replicas=2, t_seq_s=1.0)
    r = sync(e, [group([(5, PASS), (4, FAIL), (1, FAIL)])])
    assert r.gen_s == pytest.approx(2.0 + 4 * 1.0)


def test_lte_extra_phase_starts_when_the_groups_last_response_is_scored() -> None:
    # First phase 2 and 4 tokens, both wrong; scored 0.5 s after their last token: the extra phase starts at 4.5
    # on the idle server and its longest response (3) ends at 7.5, scored at 8.0.
    g = group([(2, FAIL), (4, FAIL)], extra=[(3, PASS), (1, FAIL)])
    t = Trainer(t_score_s=0.5)
    lte = sync(Engine(t_iter_s=1.0), [g], Policy(mode="lte"), t)
    grpo = sync(Engine(t_iter_s=1.0), [g], Policy(mode="grpo"), t)
    assert grpo.gen_s == pytest.approx(4.5) and grpo.extra_phases == 0
    assert lte.gen_s == pytest.approx(8.0) and lte.extra_phases == 1
    assert (lte.first_tokens, lte.extra_tokens) == (6, 4)


def test_group_start_overlaps_the_extra_phase_with_other_groups_barrier_does_not() -> None:
    # X fails (2, 2 tokens; extras 3, 3), Y passes (6 tokens). Group start: X's extras join the iteration that
    # starts when X ends (t=2) and end at t=5, before Y (t=6). Barrier: they start when Y ends (t=6), end at t=9.
    groups = [group([(2, FAIL), (2, FAIL)], extra=[(3, PASS), (3, FAIL)]), group([(6, PASS), (6, FAIL)])]
    e = Engine(t_iter_s=1.0)
    assert sync(e, groups, Policy(mode="lte", extra_start="group")).gen_s == pytest.approx(6.0)
    assert sync(e, groups, Policy(mode="lte", extra_start="barrier")).gen_s == pytest.approx(9.0)


def test_extra_phase_length_cap_cuts_and_fails_long_responses() -> None:
    g = group([(2, FAIL), (2, FAIL)], extra=[(10, PASS), (1, PASS)])
    r = sync(Engine(t_iter_s=1.0), [g], Policy(mode="lte", extra_max_len=4))
    assert r.gen_s == pytest.approx(2 + 4) and r.extra_tokens == 5 and r.rescued == 1
    assert sync(Engine(t_iter_s=1.0), [g], Policy(mode="lte", extra_max_len=1)).rescued == 0  # both cut
    # The cut response failed, so only the 1-token one replaces a failure: rows 1 + 2 tokens, prompts 2 * 1.
    assert r.train_tokens == 2 * 1 + 1 + 2


def test_train_tokens_replace_failures_and_keep_one() -> None:
    # Two correct extras for a group of 3 failures: min_failures_kept=1 lets both in.
    g = group([(5, FAIL), (6, FAIL), (7, FAIL)], extra=[(1, PASS), (2, PASS), (3, PASS)], prompt=10)
    r = sync(Engine(t_iter_s=1.0), [g], Policy(mode="lte"), Trainer(t_token_s=0.01, t_fixed_s=2.0))
    assert r.train_tokens == 3 * 10 + 1 + 2 + 7
    assert r.train_s == pytest.approx(2.0 + 0.01 * r.train_tokens)
    assert r.step_s == pytest.approx(r.gen_s + r.train_s)


def test_hinted_prompt_length_is_used_for_the_extra_phase() -> None:
    g = group([(1, FAIL)], extra=[(1, PASS)], prompt=4, extra_prompt=9)
    r = sync(Engine(t_ctx_s=1.0), [g], Policy(mode="lte"))
    assert r.gen_s == pytest.approx(4 + 9)


def test_sync_steps_follow_each_other_after_training() -> None:
    sim = Simulation(Engine(t_iter_s=1.0), Trainer(t_fixed_s=10.0), Policy())
    results = sim.run_sync([[group([(3, PASS)])], [group([(2, PASS)])]])
    assert [r.gen_s for r in results] == [3.0, 2.0] and sim.now == pytest.approx(3 + 10 + 2 + 10)


def test_async_partial_rollout_trains_the_first_groups_done_and_resumes_the_rest() -> None:
    # B=1, one warm-up batch: g1 (2 tokens) and g2 (5) start together. Step 1 ends at t=2 with g1; g2 is aborted
    # with 2 tokens. Training 10 s. Step 2 resumes g2 (prefill 1 + 2 tokens) beside the new g3 (1 token): g3 ends
    # at t=13 and is trained in step 2; g2, aborted again with 3 tokens, resumes at t=23 (prefill 1 + 3), ends at
    # t=25 and is trained in step 3, two updates after its rollout began.
    e = Engine(t_iter_s=1.0)
    t = Trainer(kind="async", t_fixed_s=10.0, async_warmup=1)
    steps = [[group([(2, PASS)])], [group([(5, PASS)])], [group([(1, PASS)])]]
    results = simulate(e, t, Policy(), steps, batch=1)
    assert [r.gen_s for r in results] == [2.0, 1.0, 2.0]
    assert [r.staleness for r in results] == [0.0, 0.0, 2.0]
    assert [r.extra_staleness for r in results] == [None, None, None]  # GRPO: no extra phases
    assert [r.recompute_tokens for r in results] == [0, 3, 4]
    # Tokens are counted where they were generated: 2 + 2 (g1, g2 before the abort), 1 + 1, 2.
    assert [r.first_tokens for r in results] == [4, 2, 2]


def test_async_rejects_the_barrier_variant() -> None:
    with pytest.raises(ValueError, match="barrier"):
        simulate(Engine(), Trainer(kind="async"), Policy(mode="lte", extra_start="barrier"), [[group([(1, PASS)])]])


def test_summarize_extra_share_is_extra_over_first_phase_tokens() -> None:
    steps = [StepResult(1.0, 1.0, 100, 20, 0, 1, 0, rescued=1), StepResult(3.0, 1.0, 300, 0, 0, 0, 0)]
    s = summarize(steps)
    assert s["extra_share"] == pytest.approx(20 / 400) and s["step_s"] == pytest.approx(3.0)
    assert s["rescued"] == 0.5


# ---- workload ------------------------------------------------------------------------------------------------


def test_workload_is_seeded_and_modes_share_first_phase_samples() -> None:
    w = Workload(batch=16)
    a, b = sample_steps(w, 2, seed=3), sample_steps(w, 2, seed=3)
    assert a == b and a != sample_steps(w, 2, seed=4)
    extra = sample_steps(Workload(batch=16, mode="grpo_extra"), 2, seed=3)
    grpo = sample_steps(Workload(batch=16, mode="grpo"), 2, seed=3)
    assert (
        [[g.first for g in s] for s in a]
        == [[g.first for g in s] for s in extra]
        == [[g.first for g in s] for s in grpo]
    )
    assert all(g.extra == () for s in grpo for g in s)


def test_workload_truncates_at_max_len_as_failures() -> None:
    w = Workload(batch=64, max_len=512, median_len=600.0)
    groups = [g for s in sample_steps(w, 2, seed=0) for g in s]
    responses = [r for g in groups for r in g.first]
    assert max(r.length for r in responses) == 512
    assert not any(r.passed for r in responses if r.length == 512)
    stats = workload_stats(sample_steps(w, 2, seed=0), w.max_len)
    assert stats["truncated"] == pytest.approx(sum(r.length == 512 for r in responses) / len(responses))


def test_workload_hint_makes_truncated_groups_extra_responses_shorter() -> None:
    # Same seed, concise factor 0.5 vs 1: every extra response of a group with a truncation is shorter or equal
    # (equal only when both hit max_len or both round to 1), those of other groups identical.
    base = dict(batch=64, max_len=2048, median_len=1500.0)
    short = sample_steps(Workload(**base, concise_len_factor=0.5), 1, seed=1)[0]
    same = sample_steps(Workload(**base, concise_len_factor=1.0), 1, seed=1)[0]
    checked = 0
    for g1, g2 in zip(short, same, strict=True):
        if any(r.length == 2048 for r in g1.first):
            assert all(a.length <= b.length for a, b in zip(g1.extra, g2.extra, strict=True))
            checked += 1
        else:
            assert g1.extra == g2.extra
    assert checked > 0


def test_workload_stats_by_hand() -> None:
    steps = [[group([(6, PASS), (4, FAIL)]), group([(8, FAIL), (2, FAIL)], extra=[(5, PASS), (5, FAIL)])]]
    s = workload_stats(steps, max_len=8)
    assert s["none_pass"] == 0.5 and s["all_pass"] == 0.0 and s["none_pass_truncated"] == 1.0
    assert s["truncated"] == 0.25 and s["mean_len"] == 5.0 and s["pass_rate"] == 0.25
    assert s["none_pass_mean_len"] == 5.0 and s["extra_mean_len"] == 5.0
    assert s["extra_share"] == pytest.approx(10 / 20) and math.isclose(s["extra_pass_rate"], 0.5)


# ---- the GPU-scale presets -------------------------------------------------------------------------------------


def test_gpu_engine_for_qwen3_4b_by_hand() -> None:
    from gpu_cost_model import engine_for, trainer_for

    e = engine_for("qwen3-4b")
    # 8 x H100 80 GB, TP 1: KV = (0.6 * 80 GB - 8.04 GB weights - 2 GB) / (2 * 36 * 8 * 128 * 2 B per token).
    assert e.replicas == 8
    assert e.kv_capacity_tokens == int((48e9 - 8.04e9 - 2e9) / 147456)
    assert e.t_iter_s == pytest.approx(8.04e9 / (3.35e12 * 0.7) + 2e-3)
    assert e.t_ctx_s == pytest.approx(147456 / (3.35e12 * 0.7))
    assert e.t_seq_s == pytest.approx(8.04e9 / (989e12 * 0.5))
    t = trainer_for("qwen3-4b")
    assert t.t_token_s == pytest.approx(10 * 4.02e9 / (8 * 989e12 * 0.35))


def test_gpu_engine_for_qwen3_8b_splits_over_two_gpus() -> None:
    from gpu_cost_model import engine_for

    e = engine_for("qwen3-8b")
    assert e.replicas == 4
    assert e.kv_capacity_tokens == int(2 * (48e9 - 8.19e9 - 2e9) / 147456)
    assert e.t_iter_s == pytest.approx(8.19e9 / (3.35e12 * 0.7) + 2e-3)


def test_async_lte_groups_with_an_extra_phase_are_trained_later() -> None:
    # B=1, one warm-up batch. g1 fails at t=2 and starts its extra phase (3 tokens); g2 passes at t=4: step 1
    # trains g2 and aborts g1's extra phase with 2 tokens. After the 10 s update (t=14) it resumes beside the new
    # g3 (1 token): both end at t=15, g1 scored first -> step 2 trains g1, one update after its rollout began;
    # g3, scored during that update, fills step 3 at once (generation time 0).
    e = Engine(t_iter_s=1.0)
    t = Trainer(kind="async", t_fixed_s=10.0, async_warmup=1)
    steps = [[group([(2, FAIL)], extra=[(3, PASS)])], [group([(4, PASS)])], [group([(1, PASS)])]]
    results = simulate(e, t, Policy(mode="lte"), steps, batch=1)
    assert [r.gen_s for r in results] == [4.0, 1.0, 0.0]
    assert [r.extra_staleness for r in results] == [None, 1.0, None]
    assert [r.rescued for r in results] == [0, 1, 0]
    assert [r.staleness for r in results] == [0.0, 1.0, 1.0]
