"""LTE's rollout stage through verl 0.9.1's real agent-loop code, real TransferQueue, real reward-loop workers.

The only stand-in is the LLM server client (``ScriptedLLM``): vLLM cannot serve here, so it answers each prompt
from a script -- per problem, one list of responses for the original prompt and one for the hinted prompt.
Everything else is verl's: the dataset and collate function, the trainer's batch layout, the single-turn agent
loop, the postprocess that writes rows to TransferQueue, and the reward-loop workers running our math reward.
"""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pandas as pd
import pytest
import torch

N = 4  # G
RESPONSE_LENGTH = 24
HINT_MARK = "earlier attempts at this problem"  # in all three default templates
LONG = "step " * 40  # more tokens than RESPONSE_LENGTH: a truncated response

# problem tag -> (ground truth, original responses, hinted responses or an exception to raise)
SCRIPT = {
    "P_ALL": ("2", ["\\boxed{2}"] * 4, None),
    "P_SOME": ("3", ["\\boxed{3}", "\\boxed{4}", "\\boxed{3}", "\\boxed{5}"], None),
    # none truncated: distinct wrong answers 5 and 7 (5.0 is 5 under math equivalence, "" has no answer)
    "P_HINT": ("6", ["\\boxed{5}", "\\boxed{5.0}", "\\boxed{7}", "no answer"], ["\\boxed{6}", "\\boxed{1}"] * 2),
    # all truncated: concise; all 4 hinted correct, but one failure is kept (min_failures_kept=1)
    "P_TRUNC": ("8", [LONG] * 4, ["\\boxed{8}"] * 4),
    # some truncated: concise_hint listing 9; no hinted response is correct: nothing replaced
    "P_SOMETRUNC": ("1", [LONG, LONG, "\\boxed{9}", "\\boxed{9}"], ["\\boxed{2}"] * 4),
    # the hinted generation fails: the original group must survive unchanged
    "P_ERROR": ("4", ["\\boxed{0}"] * 4, RuntimeError("server died")),
}
# Ground truths the reward can never match (verl_ext/reward/ground_truth.py): all G fail, and no extra phase may run.
BAD_GT = {
    "P_GT_NONE": (None, ["\\boxed{1}"] * 4, ["\\boxed{1}"] * 4),
    "P_GT_EMPTY": ("", ["\\boxed{1}"] * 4, ["\\boxed{1}"] * 4),
    "P_GT_BROKEN": ("\\frac{1}{", ["\\boxed{\\frac{1}{1}}"] * 4, ["\\boxed{1}"] * 4),
}
SCRIPTS = {**SCRIPT, **BAD_GT}
ORIG_LOGPROB, HINT_LOGPROB = -0.25, -1.5


class ScriptedLLM:
    """Stand-in for verl's LLM server client (the vLLM boundary). Records every prompt it receives."""

    def __init__(self, tokenizer, script=SCRIPTS, delays=None):
        self.tokenizer = tokenizer
        self.script = script
        self.delays = delays or {}  # problem tag -> seconds each of its generations takes (a slow prompt)
        self.prompts: list[str] = []
        self.counters: dict[tuple[str, bool], int] = {}

    async def generate(self, request_id, prompt_ids, sampling_params, **kwargs):
        from verl.workers.rollout.replica import TokenOutput

        text = self.tokenizer.decode(prompt_ids)
        self.prompts.append(text)
        tag = next(t for t in sorted(self.script, key=len, reverse=True) if t in text)
        hinted = HINT_MARK in text
        _, orig, hint = self.script[tag]
        if tag in self.delays:
            await asyncio.sleep(self.delays[tag])
        if hinted and isinstance(hint, Exception):
            raise hint
        pool = hint if hinted else orig
        i = self.counters.get((tag, hinted), 0)
        self.counters[(tag, hinted)] = i + 1
        ids = self.tokenizer.encode(pool[i % len(pool)], add_special_tokens=False)
        ids = ids[:RESPONSE_LENGTH] if len(ids) >= RESPONSE_LENGTH else ids + [self.tokenizer.eos_token_id]
        logprob = HINT_LOGPROB if hinted else ORIG_LOGPROB
        log_probs = [logprob] * len(ids) if sampling_params.get("logprobs", True) else None  # as vLLM: on request
        return TokenOutput(token_ids=ids, log_probs=log_probs, stop_reason="completed")


def _write_dataset(path, tags, script=SCRIPTS):
    rows = []
    for i, tag in enumerate(tags):
        gt = script[tag][0]
        rows.append(
            {
                "data_source": "lte_test",
                "prompt": [{"role": "user", "content": f"{tag}: compute it. Put the answer in \\boxed{{}}."}],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": gt},
                "extra_info": {"split": "train", "index": i},
            }
        )
    pd.DataFrame(rows).to_parquet(path)


def _config(tiny_model_dir, data_path, mode, *overrides):
    import verl_ext.reward.math_reward
    from recipe.lte.main_lte import compose_config

    return compose_config(
        [
            f"actor_rollout_ref.model.path={tiny_model_dir}",
            f"data.train_files={data_path}",
            f"data.val_files={data_path}",
            "data.max_prompt_length=256",
            f"data.max_response_length={RESPONSE_LENGTH}",
            "actor_rollout_ref.rollout.prompt_length=1024",
            f"actor_rollout_ref.rollout.n={N}",
            "actor_rollout_ref.rollout.val_kwargs.n=2",
            "reward.num_workers=1",
            f"reward.custom_reward_function.path={verl_ext.reward.math_reward.__file__}",
            f"lte.mode={mode}",
            *overrides,
        ]
    )


async def _run(worker, batch, partition):
    import transfer_queue as tq

    tags = [{"is_prompt": True, "status": "pending", "global_steps": 1} for _ in range(len(batch))]
    await tq.async_kv_batch_put(keys=list(batch["uid"]), partition_id=partition, tags=tags)
    await worker.generate_sequences(batch)
    while worker.background_tasks:
        await asyncio.gather(*list(worker.background_tasks))
    return (await tq.async_kv_list(partition_id=partition))[partition]


def _make_batch(config, tokenizer, data_path, uid_prefix, validate=False):
    from verl.utils import tensordict_utils as tu
    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn

    ds = RLHFDataset(data_files=[str(data_path)], tokenizer=tokenizer, config=config.data)
    batch_dict = collate_fn([ds[i] for i in range(len(ds))])
    batch_dict["uid"] = np.array([f"{uid_prefix}{i}" for i in range(len(ds))], dtype=object)
    batch = tu.get_tensordict(batch_dict)
    tu.assign_non_tensor_data(batch, "global_steps", 1)
    if validate:
        tu.assign_non_tensor_data(batch, "validate", True)
    return batch


@pytest.fixture(scope="module")
def reward_handles(ray_tq, tiny_model_dir, tmp_path_factory):
    from verl.experimental.reward_loop.reward_loop import RewardLoopManager

    path = tmp_path_factory.mktemp("rl") / "d.parquet"
    _write_dataset(path, ["P_ALL"])
    return RewardLoopManager(_config(tiny_model_dir, path, "lte")).reward_loop_worker_handles


def _worker(config, reward_handles, script=SCRIPTS, delays=None):
    from recipe.lte.agent_loop import LTEAgentLoopWorker

    # In-process instance of the actor class: the scripted client then needs no pickling.
    worker = LTEAgentLoopWorker(config, None, None, reward_handles)
    worker.llm_client = ScriptedLLM(worker.tokenizer, script, delays)
    return worker


def _read(keys, partition):
    import transfer_queue as tq

    from recipe.lte.agent_loop import ROW_FIELDS

    fields = ["uid", "prompts", "responses", "rm_scores", "rollout_log_probs", *ROW_FIELDS]
    data = tq.kv_batch_get(keys=keys, partition_id=partition, select_fields=fields)
    rows = {}
    for i, key in enumerate(keys):
        rows[key] = {
            "prompt_ids": data["prompts"][i].tolist(),
            "response": data["responses"][i].tolist(),
            "score": float(data["rm_scores"][i].sum()),
            "logprobs": data["rollout_log_probs"][i].tolist(),
            **{f: data[f][i].item() for f in ROW_FIELDS},
        }
    return rows


def test_lte_mode_end_to_end_rollout_stage(ray_tq, tiny_model_dir, tmp_path, reward_handles):
    from recipe.lte import core
    from recipe.lte.agent_loop import ROW_FIELDS, rows_from_fields

    tags = list(SCRIPT)
    data_path = tmp_path / "train.parquet"
    _write_dataset(data_path, tags)
    config = _config(tiny_model_dir, data_path, "lte")
    worker = _worker(config, reward_handles)
    batch = _make_batch(config, worker.tokenizer, data_path, "lte-")
    listed = asyncio.run(_run(worker, batch, "train"))

    # Exactly G rows per prompt under keys {uid}_{0..G-1}_0, every prompt tagged finished.
    uids = [f"lte-{i}" for i in range(len(tags))]
    row_keys = sorted(k for k in listed if k.startswith("lte-") and k.count("_") == 2)
    assert row_keys == sorted(f"{u}_{s}_0" for u in uids for s in range(N))
    assert all(listed[u]["status"] == "finished" for u in uids)
    rows = _read(row_keys, "train")
    by_tag = {tag: [rows[f"lte-{i}_{s}_0"] for s in range(N)] for i, tag in enumerate(tags)}

    def fields_of(tag, name):
        return [r[name] for r in by_tag[tag]]

    # Group classes before LTE.
    expect_class = {"P_ALL": 0, "P_SOME": 1}
    for tag in tags:
        assert set(fields_of(tag, "lte_group_class")) == {expect_class.get(tag, 2)}

    # Extra phases: kinds and statuses as the plan says.
    kind, status = core.EXTRA_KIND_CODES, core.EXTRA_STATUS_CODES
    assert fields_of("P_ALL", "lte_extra_status")[0] == status["not_needed"]
    assert fields_of("P_HINT", "lte_extra_kind")[0] == kind["hint"]
    assert fields_of("P_TRUNC", "lte_extra_kind")[0] == kind["concise"]
    assert fields_of("P_SOMETRUNC", "lte_extra_kind")[0] == kind["concise_hint"]
    assert fields_of("P_ERROR", "lte_extra_status")[0] == status["error"]
    for tag in ("P_HINT", "P_TRUNC", "P_SOMETRUNC"):
        assert fields_of(tag, "lte_extra_status")[0] == status["ran"]

    # Replacements: G' = 2 -> 2 replaced; G' = 4 -> 3 replaced (one failure kept); G' = 0 -> none.
    assert sum(fields_of("P_HINT", "lte_replaced")) == 2
    assert sum(fields_of("P_TRUNC", "lte_replaced")) == 3
    assert sum(fields_of("P_SOMETRUNC", "lte_replaced")) == 0
    assert fields_of("P_HINT", "lte_extra_correct")[0] == 2
    assert fields_of("P_TRUNC", "lte_extra_correct")[0] == 4

    # Replaced rows: off-policy, correct, under the ORIGINAL prompt ids, with the hinted behaviour log-probs.
    for tag in tags:
        original_prompt = next(r["prompt_ids"] for r in by_tag[tag] if not r["lte_replaced"])
        for r in by_tag[tag]:
            assert r["prompt_ids"] == original_prompt
            assert r["lte_off_policy"] == r["lte_replaced"]
            if r["lte_replaced"]:
                assert r["score"] == 1.0 and r["lte_orig_pass"] == 0.0
                assert all(math.isclose(lp, HINT_LOGPROB) for lp in r["logprobs"])
            else:
                assert all(math.isclose(lp, ORIG_LOGPROB) for lp in r["logprobs"])
    # First-phase tokens of a group: its G rollouts' response lengths (where nothing was replaced, the rows').
    for tag in ("P_ALL", "P_SOME", "P_ERROR", "P_SOMETRUNC"):
        assert set(fields_of(tag, "lte_first_tokens")) == {sum(len(r["response"]) for r in by_tag[tag])}, tag
    # The errored group is the original group, untouched.
    assert fields_of("P_ERROR", "score") == [0.0] * N and sum(fields_of("P_ERROR", "lte_replaced")) == 0

    # The hint text that was sent: distinct wrong answers in first-seen order, 5.0 folded into 5.
    hinted = [p for p in worker.llm_client.prompts if HINT_MARK in p]
    p_hint = next(p for p in hinted if "P_HINT" in p)
    assert "- 5\n- 7\n" in p_hint and "5.0" not in p_hint
    assert "Do not give any of these answers again" in p_hint and "Do not mention this note" in p_hint
    p_st = next(p for p in hinted if "P_SOMETRUNC" in p)
    assert "- 9\n" in p_st and "Think concisely" in p_st
    assert "- " not in next(p for p in hinted if "P_TRUNC:" in p).split("Note:")[1]
    assert not any(t in p for p in hinted for t in ("P_ALL", "P_SOME:"))
    assert sum("P_HINT" in p for p in hinted) == N  # G extra rollouts

    # The step metrics read back from the rows.
    keys = sorted(rows)
    read = _read(keys, "train")
    fields = {f: torch.tensor([read[k][f] for k in keys]) for f in ROW_FIELDS}
    infos = rows_from_fields([k.rsplit("_", 2)[0] for k in keys], fields, [read[k]["score"] >= 1.0 for k in keys])
    m = core.step_metrics(infos)
    assert m["lte/groups/none_pass_before"] == 4 and m["lte/groups/some_pass_before"] == 1
    assert m["lte/groups/none_pass_after"] == 2 and m["lte/groups/some_pass_after"] == 3
    assert m["lte/extra/rescued"] == 2 and m["lte/extra/replaced"] == 5 and m["lte/extra/error"] == 1
    assert m["lte/on_policy_acc"] == pytest.approx(6 / 24)


def test_grpo_extra_mode_is_unhinted_and_on_policy(ray_tq, tiny_model_dir, tmp_path, reward_handles):
    data_path = tmp_path / "train.parquet"
    _write_dataset(data_path, ["P_TRUNC", "P_SOME"])
    config = _config(tiny_model_dir, data_path, "grpo_extra")
    worker = _worker(config, reward_handles)
    listed = asyncio.run(_run(worker, _make_batch(config, worker.tokenizer, data_path, "gx-"), "train"))
    keys = sorted(k for k in listed if k.startswith("gx-") and k.count("_") == 2)
    rows = _read(keys, "train")
    assert not any(HINT_MARK in p for p in worker.llm_client.prompts)
    # Unhinted extras of P_TRUNC are all truncated (the script repeats the original answers): nothing replaced.
    assert sum(rows[f"gx-0_{s}_0"]["lte_replaced"] for s in range(N)) == 0
    assert rows["gx-0_0_0"]["lte_extra_kind"] == 3 and rows["gx-0_0_0"]["lte_extra_status"] == 1
    assert all(r["lte_off_policy"] == 0.0 for r in rows.values())
    assert sum(p.count("P_TRUNC") for p in worker.llm_client.prompts) == 2 * N


def test_grpo_mode_and_validation_take_no_extra_phase(ray_tq, tiny_model_dir, tmp_path, reward_handles):
    data_path = tmp_path / "train.parquet"
    _write_dataset(data_path, ["P_HINT"])
    config = _config(tiny_model_dir, data_path, "grpo")
    worker = _worker(config, reward_handles)
    listed = asyncio.run(_run(worker, _make_batch(config, worker.tokenizer, data_path, "g-"), "train"))
    keys = sorted(k for k in listed if k.startswith("g-") and k.count("_") == 2)
    assert len(keys) == N and len(worker.llm_client.prompts) == N
    assert all(r["lte_extra_status"] == 0 for r in _read(keys, "train").values())

    # Validation: verl's path, untouched -- val_kwargs.n rows, no LTE fields, no extra rollouts.
    import transfer_queue as tq

    config = _config(tiny_model_dir, data_path, "lte")
    worker = _worker(config, reward_handles)
    listed = asyncio.run(_run(worker, _make_batch(config, worker.tokenizer, data_path, "v-", validate=True), "val"))
    keys = sorted(k for k in listed if k.startswith("v-") and k.count("_") == 2)
    assert len(keys) == 2 and not any(HINT_MARK in p for p in worker.llm_client.prompts)
    data = tq.kv_batch_get(keys=keys, partition_id="val")
    assert "lte_off_policy" not in data.keys()


def test_hint_that_does_not_fit_is_skipped_and_counted(ray_tq, tiny_model_dir, tmp_path, reward_handles):
    data_path = tmp_path / "train.parquet"
    _write_dataset(data_path, ["P_HINT"])
    config = _config(tiny_model_dir, data_path, "lte")
    worker = _worker(config, reward_handles)
    batch = _make_batch(config, worker.tokenizer, data_path, "long-")
    # Leave no room: the prompt fits exactly, any hint does not.
    prompt_len = int(batch["attention_mask"][0].sum()) if "attention_mask" in batch else None
    messages = list(batch["raw_prompt"][0])
    ids = worker.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    own = len(ids["input_ids"] if hasattr(ids, "keys") else ids)
    assert prompt_len is None or prompt_len == own
    worker.config.actor_rollout_ref.rollout.prompt_length = own
    listed = asyncio.run(_run(worker, batch, "train"))
    keys = sorted(k for k in listed if k.startswith("long-") and k.count("_") == 2)
    rows = _read(keys, "train")
    assert len(keys) == N
    assert all(r["lte_extra_status"] == 2 for r in rows.values())  # skipped_too_long
    assert not any(HINT_MARK in p for p in worker.llm_client.prompts)


def _rows_by_tag(worker, batch, prefix, tags):
    listed = asyncio.run(_run(worker, batch, "train"))
    keys = sorted(k for k in listed if k.startswith(prefix) and k.count("_") == 2)
    rows = _read(keys, "train")
    return {tag: [rows[f"{prefix}{i}_{s}_0"] for s in range(N)] for i, tag in enumerate(tags)}


# four rescuable groups: every failure answers 5, two of the four hinted answers are right (2 of 4 slots replaced)
RESCUE = {f"P_R{k}": ("6", ["\\boxed{5}"] * 4, ["\\boxed{6}", "\\boxed{1}"] * 2) for k in range(4)}


def test_replacement_choices_repeat_across_runs_and_follow_the_seed(ray_tq, tiny_model_dir, tmp_path, reward_handles):
    """verl draws a fresh uuid4 uid per prompt and step: two identical runs (same data, same step, same lte.seed)
    differ only in uids and must replace the same slots; another lte.seed replaces other ones."""
    tags = list(RESCUE)
    data_path = tmp_path / "train.parquet"
    _write_dataset(data_path, tags, RESCUE)

    def replaced_slots(seed, prefix):
        config = _config(tiny_model_dir, data_path, "lte", f"lte.seed={seed}")
        worker = _worker(config, reward_handles, RESCUE)
        by_tag = _rows_by_tag(worker, _make_batch(config, worker.tokenizer, data_path, prefix), prefix, tags)
        return {tag: tuple(int(r["lte_replaced"]) for r in rows) for tag, rows in by_tag.items()}

    first, rerun, other_seed = replaced_slots(0, "run1-"), replaced_slots(0, "run2-"), replaced_slots(1, "run3-")
    assert all(sum(slots) == 2 for slots in first.values()), first
    assert rerun == first
    assert other_seed != first


def test_slow_answer_deduplication_does_not_hold_up_other_prompts(
    ray_tq, tiny_model_dir, tmp_path, reward_handles, monkeypatch
):
    """The de-duplication's math equivalence blocks (a process-pool call, up to 10 s on bad input). With a slow
    one, another prompt's rollouts must complete meanwhile, and past lte.hint.dedup_timeout_s the hint falls back
    to exact-string de-duplication, counted per group."""
    import time

    import recipe.lte.agent_loop as agent_loop
    from recipe.lte import core

    calls = []

    def slow_equivalent(a, b, timeout_s=10.0):
        start = time.monotonic()
        time.sleep(min(1.0, timeout_s))
        calls.append((start, time.monotonic()))
        return False

    monkeypatch.setattr(agent_loop, "answers_equivalent", slow_equivalent)
    script = {
        "P_DEDUP": ("9", ["\\boxed{1}", "\\boxed{2}", "\\boxed{3}", "\\boxed{4}"], ["\\boxed{9}"] * 4),  # 6 calls
        "P_SLOW": ("2", ["\\boxed{2}"] * 4, None),  # all pass; each generation takes 1.5 s
    }
    tags = list(script)
    data_path = tmp_path / "train.parquet"
    _write_dataset(data_path, tags, script)
    bound = 4.0
    config = _config(tiny_model_dir, data_path, "lte", f"lte.hint.dedup_timeout_s={bound}")
    worker = _worker(config, reward_handles, script, delays={"P_SLOW": 1.5})
    finished = {}
    run_prompt = worker._run_prompt

    async def timed_run_prompt(prompt, *args, **kwargs):
        await run_prompt(prompt, *args, **kwargs)
        finished[prompt["uid"]] = time.monotonic()

    worker._run_prompt = timed_run_prompt
    by_tag = _rows_by_tag(worker, _make_batch(config, worker.tokenizer, data_path, "dd-"), "dd-", tags)

    dedup_start, dedup_end = calls[0][0], calls[-1][1]
    assert finished["dd-1"] < dedup_end, "P_SLOW's rollouts waited for P_DEDUP's de-duplication"
    assert dedup_end - dedup_start < bound + 0.5  # no call past the bound
    assert len(calls) < 6  # the 6 comparisons would take 6 s
    hinted = next(p for p in worker.llm_client.prompts if HINT_MARK in p)
    assert "- 1\n- 2\n- 3\n- 4\n" in hinted  # exact-string de-duplication
    assert [r["lte_dedup_timeout"] for r in by_tag["P_DEDUP"]] == [1.0] * N
    assert [r["lte_dedup_timeout"] for r in by_tag["P_SLOW"]] == [0.0] * N
    assert by_tag["P_DEDUP"][0]["lte_extra_status"] == core.EXTRA_STATUS_CODES["ran"]


def test_free_text_numbers_are_not_quoted_as_final_answers_unless_asked(
    ray_tq, tiny_model_dir, tmp_path, reward_handles
):
    """Failures without a \\boxed{}: the reward's free-text extraction finds "3", but the model never gave it as its
    final answer. lte.hint.answer_source=boxed (default): nothing to quote, the group follows no_answer_fallback
    (concise); =any: the hint lists 3."""
    from recipe.lte import core

    script = {"P_FREE": ("6", ["x = 3, not sure"] * 4, ["\\boxed{6}"] * 4)}
    data_path = tmp_path / "train.parquet"
    _write_dataset(data_path, ["P_FREE"], script)
    kinds, hints = {}, {}
    for source in ("boxed", "any"):
        config = _config(tiny_model_dir, data_path, "lte", f"lte.hint.answer_source={source}")
        worker = _worker(config, reward_handles, script)
        prefix = f"free-{source}-"
        rows = _rows_by_tag(worker, _make_batch(config, worker.tokenizer, data_path, prefix), prefix, ["P_FREE"])
        kinds[source] = rows["P_FREE"][0]["lte_extra_kind"]
        hints[source] = next(p for p in worker.llm_client.prompts if HINT_MARK in p)
    assert kinds == {"boxed": core.EXTRA_KIND_CODES["concise"], "any": core.EXTRA_KIND_CODES["hint"]}
    assert "- 3\n" not in hints["boxed"] and "- 3\n" in hints["any"]


# ---- lte.mode=luffy: on-policy rollouts + the dataset's reference solution -------------------------------------

LUFFY_REFS = {
    "P_SOME": "<think>\nthree</think> \\boxed{3}",  # passes; the chat template does not open <think>: kept whole
    "P_HINT": "Six. \\boxed{6}",  # a none-pass group: the reference passes
    "P_ALL": LONG + "\\boxed{2}",  # longer than the response length: cut, no EOS, no answer left
}
LUFFY_OVERRIDES = ("lte.loss.off_policy_mode=luffy_prob", "actor_rollout_ref.rollout.calculate_log_probs=false")


def _write_luffy_dataset(path, refs):
    _write_dataset(path, list(refs))
    df = pd.read_parquet(path)
    df["extra_info"] = [{**e, "reference": refs[t]} for e, t in zip(df["extra_info"], refs, strict=True)]
    df.to_parquet(path)


def _luffy_run(tiny_model_dir, tmp_path, reward_handles, prefix, refs, *extra):
    data_path = tmp_path / f"{prefix}.parquet"
    _write_luffy_dataset(data_path, refs)
    config = _config(tiny_model_dir, data_path, "luffy", *LUFFY_OVERRIDES, *extra)
    worker = _worker(config, reward_handles)
    listed = asyncio.run(_run(worker, _make_batch(config, worker.tokenizer, data_path, prefix), "train"))
    keys = sorted(k for k in listed if k.startswith(prefix) and k.count("_") == 2)
    return config, worker, listed, keys


class _Batch:
    """What verl's _compute_advantage reads of its KVBatchMeta: the keys, the partition, the length."""

    def __init__(self, keys):
        self.keys, self.partition_id = list(keys), "train"

    def __len__(self):
        return len(self.keys)


def _advantages(config, keys, estimator):
    """The LTE trainer's own _compute_advantage on the rows in TransferQueue; advantages per key (first token)."""
    import transfer_queue as tq

    from recipe.lte.trainer import LTETrainer
    from verl_ext.advantage.grpo_on_policy_stats import register_grpo_on_policy_stats

    register_grpo_on_policy_stats()
    config.algorithm.adv_estimator = estimator
    trainer = LTETrainer.__new__(LTETrainer)  # only the advantage step: no workers
    trainer.config = config
    trainer._compute_advantage(_Batch(keys), {})
    data = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=["advantages"])
    return {k: float(a[0]) for k, a in zip(keys, data["advantages"].unbind(), strict=True)}


def test_luffy_mode_adds_the_reference_under_the_original_prompt(ray_tq, tiny_model_dir, tmp_path, reward_handles):
    import transfer_queue as tq

    from recipe.lte import core

    config, worker, listed, keys = _luffy_run(
        tiny_model_dir, tmp_path, reward_handles, "lf-", LUFFY_REFS, "algorithm.norm_adv_by_std_in_grpo=false"
    )
    tok = worker.tokenizer
    tags = list(LUFFY_REFS)
    # G rows a prompt: G-1 on-policy (the LLM is asked G-1 times, never with a hint) + the reference as session G-1
    assert keys == sorted(f"lf-{i}_{s}_0" for i in range(len(tags)) for s in range(N))
    assert all(listed[f"lf-{i}"]["status"] == "finished" for i in range(len(tags)))
    assert len(worker.llm_client.prompts) == len(tags) * (N - 1)
    assert not any(HINT_MARK in p for p in worker.llm_client.prompts)
    fields = ["uid", "prompts", "responses", "response_mask", "rm_scores", "lte_off_policy", "lte_replaced",
              "lte_orig_pass", "lte_extra_kind", "lte_extra_status", "lte_extra_correct", "lte_extra_tokens"]  # fmt: skip
    data = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=fields)
    row = {k: {f: data[f][j] for f in fields} for j, k in enumerate(keys)}
    # No row carries rollout log-probs (calculate_log_probs=false): the reference has none to give
    assert "rollout_log_probs" not in tq.kv_batch_get(keys=keys, partition_id="train").keys()
    kind, status = core.EXTRA_KIND_CODES, core.EXTRA_STATUS_CODES
    for i, tag in enumerate(tags):
        ref, on = row[f"lf-{i}_{N - 1}_0"], [row[f"lf-{i}_{s}_0"] for s in range(N - 1)]
        # the ORIGINAL prompt's ids, as every on-policy row of the group has them
        assert all(r["prompts"].tolist() == ref["prompts"].tolist() for r in on)
        # the reference's tokens + EOS, cut to the response length (then no EOS); every token trained
        ids = tok.encode(LUFFY_REFS[tag], add_special_tokens=False) + [tok.eos_token_id]
        cut = len(ids) > RESPONSE_LENGTH
        assert ref["responses"].tolist() == ids[:RESPONSE_LENGTH]
        assert ref["response_mask"].tolist() == [1] * min(len(ids), RESPONSE_LENGTH)
        assert (ref["lte_off_policy"].item(), ref["lte_replaced"].item(), ref["lte_orig_pass"].item()) == (1, 0, 0)
        assert all(r["lte_off_policy"].item() == 0 for r in on)
        # scored by the project's reward: the cut reference lost its \boxed{} answer
        assert float(ref["rm_scores"].sum()) == (0.0 if cut else 1.0)
        assert cut == (tag == "P_ALL")
        assert ref["lte_extra_kind"].item() == kind["reference"] and ref["lte_extra_correct"].item() == int(not cut)
        assert ref["lte_extra_status"].item() == status["reference_truncated" if cut else "ran"]
        assert ref["lte_extra_tokens"].item() == min(len(ids), RESPONSE_LENGTH)

    # Advantages by the trainer's own step, against the rows' rewards by hand (no std normalisation, LUFFY's):
    # grpo = reward - mean of the group's G rewards; grpo_on_policy_stats = reward - mean of the G-1 on-policy ones.
    score = {k: float(row[k]["rm_scores"].sum()) for k in keys}
    for estimator, stats_rows in (("grpo", range(N)), ("grpo_on_policy_stats", range(N - 1))):
        adv = _advantages(config, keys, estimator)
        for i in range(len(tags)):
            group = [f"lf-{i}_{s}_0" for s in range(N)]
            mean = sum(score[group[s]] for s in stats_rows) / len(stats_rows)
            for k in group:
                assert adv[k] == pytest.approx(score[k] - mean, abs=1e-6), (estimator, k)
    # e.g. P_HINT (none of the on-policy rows pass, the reference does): the reference's advantage is 1 - 1/4
    # under grpo, 1 - 0 under grpo_on_policy_stats
    assert adv[f"lf-1_{N - 1}_0"] == pytest.approx(1.0)


def test_luffy_none_pass_groups_get_the_reference_in_place_of_a_failure(
    ray_tq, tiny_model_dir, tmp_path, reward_handles
):
    refs = {"P_SOME": LUFFY_REFS["P_SOME"], "P_HINT": LUFFY_REFS["P_HINT"]}
    _, worker, _, keys = _luffy_run(
        tiny_model_dir, tmp_path, reward_handles, "np-", refs, "lte.luffy.reference_groups=none_pass"
    )
    import transfer_queue as tq

    data = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=["lte_off_policy", "lte_replaced"])
    off = dict(zip(keys, data["lte_off_policy"].tolist(), strict=True))
    rep = dict(zip(keys, data["lte_replaced"].tolist(), strict=True))
    assert len(keys) == 2 * N and len(worker.llm_client.prompts) == 2 * N  # G on-policy each
    assert sum(off[f"np-0_{s}_0"] for s in range(N)) == 0  # P_SOME has a pass: no reference
    assert sum(off[f"np-1_{s}_0"] for s in range(N)) == 1  # P_HINT: one failure replaced by the reference
    assert [off[f"np-1_{s}_0"] for s in range(N)] == [rep[f"np-1_{s}_0"] for s in range(N)]


def test_luffy_row_without_a_reference_fails_its_group_naming_the_row(
    ray_tq, tiny_model_dir, tmp_path, reward_handles, caplog
):
    _, worker, listed, keys = _luffy_run(tiny_model_dir, tmp_path, reward_handles, "nr-", {"P_SOME": "  "})
    assert listed["nr-0"]["status"] == "failure" and keys == []  # never trained on an empty response
    assert "training row 0 (extra_info.index) has no reference solution" in caplog.text
    assert worker.llm_client.prompts == []


def test_rollout_log_probs_must_be_on_every_row_or_none(ray_tq, tiny_model_dir, tmp_path, reward_handles):
    """Why lte.mode=luffy refuses rollout.calculate_log_probs=true: the reference row has no log-probs, and a
    TransferQueue batch read leaves out a field that some of the rows lack -- while verl's trainer reads
    rollout_log_probs for the whole batch whenever calculate_log_probs=true."""
    import transfer_queue as tq

    refs = {"P_SOME": LUFFY_REFS["P_SOME"]}
    # the worker runs without the start-up checks: on-policy rows get log-probs, the reference none
    _, _, _, keys = _luffy_run(
        tiny_model_dir, tmp_path, reward_handles, "lp-", refs, "actor_rollout_ref.rollout.calculate_log_probs=true"
    )
    on_policy = [k for k in keys if not k.startswith(f"lp-0_{N - 1}_")]
    assert tq.kv_batch_get(keys=on_policy, partition_id="train", select_fields=["rollout_log_probs"]) is not None
    # With the reference row in the batch the field is silently dropped for EVERY row: verl's trainer would then
    # fail in its rollout-vs-actor metrics (KeyError) or, worse, skip rollout correction for the whole batch.
    data = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=["rollout_log_probs", "responses"])
    assert "responses" in data.keys() and "rollout_log_probs" not in data.keys()


@pytest.mark.parametrize("mode", ["lte", "grpo_extra"])
def test_unusable_ground_truth_gets_no_extra_phase(ray_tq, tiny_model_dir, tmp_path, reward_handles, mode):
    """Whatever slipped past the start-up check: a none-pass group whose ground truth the reward can never match
    costs no extra rollouts; it is counted under its own status, in the metrics and the step line."""
    from recipe.lte import core
    from recipe.lte.agent_loop import ROW_FIELDS, rows_from_fields
    from recipe.lte.trainer import format_step_line

    tags = [*BAD_GT, "P_HINT"]
    data_path = tmp_path / "train.parquet"
    _write_dataset(data_path, tags)
    config = _config(tiny_model_dir, data_path, mode)
    worker = _worker(config, reward_handles)
    prefix = f"bad-{mode.replace('_', '')}-"  # row keys are {uid}_{session}_{index}: no "_" in the uid
    listed = asyncio.run(_run(worker, _make_batch(config, worker.tokenizer, data_path, prefix), "train"))
    keys = sorted(k for k in listed if k.startswith(prefix) and k.count("_") == 2)
    rows = _read(keys, "train")
    assert len(keys) == N * len(tags)
    for i, tag in enumerate(tags):
        group = [rows[f"{prefix}{i}_{s}_0"] for s in range(N)]
        sent = sum(tag in p for p in worker.llm_client.prompts)
        if tag in BAD_GT:
            assert {r["lte_extra_status"] for r in group} == {core.EXTRA_STATUS_CODES["skipped_bad_ground_truth"]}
            assert {r["lte_extra_kind"] for r in group} == {core.EXTRA_KIND_CODES["none"]}
            assert [r["score"] for r in group] == [0.0] * N and sum(r["lte_replaced"] for r in group) == 0
            assert sent == N, tag  # the G on-policy rollouts only
        else:
            assert {r["lte_extra_status"] for r in group} == {core.EXTRA_STATUS_CODES["ran"]}
            assert sent == 2 * N  # G + G extra
    fields = {f: torch.tensor([rows[k][f] for k in keys]) for f in ROW_FIELDS}
    infos = rows_from_fields([k.rsplit("_", 2)[0] for k in keys], fields, [rows[k]["score"] >= 1.0 for k in keys])
    m = core.step_metrics(infos)
    assert m["lte/extra/skipped_bad_ground_truth"] == 3 and m["lte/extra/ran"] == 1
    assert "bad ground truth 3" in format_step_line(1, m)
