"""LTE's rollout stage: verl 0.9.1's TransferQueue agent-loop worker, extended.

Per training prompt (``LTEAgentLoopWorker._run_prompt``):
  1. sample G rollouts and score them, without writing them yet;
  2. for a none-pass group (all G fail), sample G extra rollouts -- from the hinted prompt (``lte``) or the
     unchanged prompt (``grpo_extra``) -- in the same vLLM wake window, i.e. before the group is tagged
     ``finished`` and the trainer puts the replicas to sleep; never for a group whose ground truth the
     project's reward can never match (``skipped_bad_ground_truth``, verl_ext/reward/ground_truth.py);
  3. put correct extra responses in place of chosen failures, re-attached to the ORIGINAL prompt ids;
  4. write exactly G rows, each carrying the off-policy flag and its LTE info (``row_fields``).
Any error in step 2-3 keeps the original group as sampled. Validation prompts take verl's path untouched.
All decisions are made by ``recipe.lte.core``; this file only moves data.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ray
import torch
import transfer_queue as tq
from omegaconf import OmegaConf
from verl.experimental.agent_loop import AgentLoopOutput
from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics
from verl.trainer.ppo.v1.agent_loop_tq import AgentLoopManagerTQ, AgentLoopWorkerTQ, apply_greedy_sampling_params
from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder

from recipe.lte import core, luffy
from verl_ext.loss.ppo_loss import OFF_POLICY_FIELD
from verl_ext.reward.ground_truth import unusable_ground_truth
from verl_ext.reward.math_reward import DEFAULT_TIMEOUT_S, answers_equivalent

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "INFO"))

# Set while a group is being sampled: the postprocess hook then scores and returns outputs instead of writing.
_COLLECTING: contextvars.ContextVar[bool] = contextvars.ContextVar("lte_collecting", default=False)

# Per-row LTE info written into TransferQueue next to verl's fields. 0-d tensors on every training row: they
# stack into [B] tensors in the trainer batch and in each loss micro-batch (plain Python values would not).
ROW_FIELDS = {
    OFF_POLICY_FIELD: torch.float32,  # 1.0 = hinted response, trained with the off-policy loss
    "lte_replaced": torch.float32,  # 1.0 = an extra response put in place of a failure
    "lte_orig_pass": torch.float32,  # the on-policy response originally in this slot passed
    "lte_group_class": torch.int64,  # core.GROUP_CLASSES index, before LTE
    "lte_extra_kind": torch.int64,  # core.EXTRA_KIND_CODES
    "lte_extra_status": torch.int64,  # core.EXTRA_STATUS_CODES
    "lte_extra_correct": torch.int64,  # G'
    "lte_extra_tokens": torch.int64,  # response tokens generated in the group's extra phase
    "lte_extra_seconds": torch.float32,  # wall time of the group's extra phase
    "lte_first_tokens": torch.int64,  # response tokens of the group's G first-phase rollouts
    "lte_dedup_timeout": torch.float32,  # 1.0 = the group's answer de-duplication ran past lte.hint.dedup_timeout_s
}


def row_fields(
    *, off_policy: bool, replaced: bool, orig_passed: bool, group: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """The LTE fields of one training row; ``group`` holds the group-level info (see ``_GroupInfo``)."""
    values = {
        OFF_POLICY_FIELD: float(off_policy),
        "lte_replaced": float(replaced),
        "lte_orig_pass": float(orig_passed),
        "lte_group_class": core.GROUP_CLASSES.index(group["group_class"]),
        "lte_extra_kind": core.EXTRA_KIND_CODES[group["extra_kind"]],
        "lte_extra_status": core.EXTRA_STATUS_CODES[group["extra_status"]],
        "lte_extra_correct": group["extra_correct"],
        "lte_extra_tokens": group["extra_tokens"],
        "lte_extra_seconds": group["extra_seconds"],
        "lte_first_tokens": group["first_tokens"],
        "lte_dedup_timeout": float(group["dedup_timeout"]),
    }
    return {k: torch.tensor(v, dtype=ROW_FIELDS[k]) for k, v in values.items()}


def first_phase_info(group: Sequence[AgentLoopOutput], passed: Sequence[bool]) -> dict:
    """A group's ``row_fields`` ``group`` values after its first phase (no extra phase yet), one place for every
    mode so that a new field reaches them all."""
    return {
        "group_class": core.classify_group(list(passed)),
        "extra_kind": "none",
        "extra_status": "not_needed",
        "extra_correct": 0,
        "extra_tokens": 0,
        "extra_seconds": 0.0,
        "first_tokens": sum(len(o.response_ids) for o in group),
        "dedup_timeout": False,
    }


def rows_from_fields(uids: Sequence[str], fields: Mapping[str, Any], passed: Sequence[bool]) -> list[core.RowInfo]:
    """Decode ``row_fields`` of a batch (``[B]`` tensors) back into ``core.RowInfo`` for ``core.step_metrics``."""

    def col(name: str) -> list:
        return torch.as_tensor(fields[name]).reshape(-1).tolist()

    off, rep, orig = col(OFF_POLICY_FIELD), col("lte_replaced"), col("lte_orig_pass")
    cls, kind, status = col("lte_group_class"), col("lte_extra_kind"), col("lte_extra_status")
    correct, tokens, seconds = col("lte_extra_correct"), col("lte_extra_tokens"), col("lte_extra_seconds")
    first_tokens = col("lte_first_tokens")
    dedup_timeout = col("lte_dedup_timeout")
    return [
        core.RowInfo(
            uid=str(uids[i]),
            passed=bool(passed[i]),
            orig_passed=bool(orig[i]),
            replaced=bool(rep[i]),
            off_policy=bool(off[i]),
            group_class=core.GROUP_CLASSES[int(cls[i])],
            extra_kind=core.code_to_name(core.EXTRA_KIND_CODES, int(kind[i])),
            extra_status=core.code_to_name(core.EXTRA_STATUS_CODES, int(status[i])),
            extra_correct=int(correct[i]),
            extra_tokens=int(tokens[i]),
            extra_seconds=float(seconds[i]),
            first_tokens=int(first_tokens[i]),
            dedup_timeout=bool(dedup_timeout[i]),
        )
        for i in range(len(uids))
    ]


def uses_project_reward(config) -> bool:
    """Is the run scored by the project's math reward (verl_ext/reward/math_reward.py)? Its notion of a usable
    ground truth is the one checked; another reward function's is unknown here."""
    import verl_ext.reward.math_reward

    fn = OmegaConf.select(config, "reward.custom_reward_function", default=None) or {}
    path = fn.get("path")
    return (
        bool(path)
        and os.path.realpath(path) == os.path.realpath(verl_ext.reward.math_reward.__file__)
        and (fn.get("name") or "compute_score") == "compute_score"
    )


def _ground_truth(prompt: Mapping[str, Any]) -> tuple[bool, Any]:
    """(known, value): the row's ``reward_model.ground_truth`` as the reward receives it."""
    rm = prompt.get("reward_model")
    if not isinstance(rm, Mapping):
        return False, None
    return True, rm.get("ground_truth")


def _pred(output: AgentLoopOutput) -> str:
    """The final answer the reward extracted (verl_ext.reward.math_reward's ``pred``), "" when absent."""
    info = output.extra_fields.get("reward_extra_info") or {}
    pred = info.get("pred", "")
    if isinstance(pred, list | tuple):  # some reward managers keep per-turn lists
        pred = pred[-1] if pred else ""
    return "" if pred is None else str(pred)


def _pred_boxed(output: AgentLoopOutput) -> bool | None:
    """Whether ``pred`` is an answer the model gave as final (math_reward's ``pred_boxed``); None when not reported."""
    value = (output.extra_fields.get("reward_extra_info") or {}).get("pred_boxed")
    if isinstance(value, list | tuple):
        value = value[-1] if value else None
    return None if value is None else bool(value)


class _DedupDeadline(Exception):
    """A group's answer de-duplication ran past ``lte.hint.dedup_timeout_s``."""


def plan_hint_within(
    preds: list[str], truncated: list[bool], hint: core.HintConfig
) -> tuple[core.HintPlan | None, bool]:
    """``core.plan_hint`` with the reward's math equivalence, the whole de-duplication bounded by
    ``hint.dedup_timeout_s`` (each call gets the time left); past it, the plan with exact-string de-duplication.

    Returns (plan, timed_out). Blocks for up to about the bound: the rollout stage runs it in a thread.
    """
    deadline = time.monotonic() + hint.dedup_timeout_s

    def equivalent(a: str, b: str) -> bool:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _DedupDeadline
        same = answers_equivalent(a, b, timeout_s=min(DEFAULT_TIMEOUT_S, left))
        if time.monotonic() >= deadline:  # the call may have been cut short: its "no" is no verdict
            raise _DedupDeadline
        return same

    kwargs = {
        "max_answers": hint.max_wrong_answers,
        "max_answer_chars": hint.max_answer_chars,
        "no_answer_fallback": hint.no_answer_fallback,
    }
    try:
        return core.plan_hint(preds, truncated, equivalent=equivalent, **kwargs), False
    except _DedupDeadline:
        return core.plan_hint(preds, truncated, equivalent=core.exact_only, **kwargs), True


class LTEAgentLoopWorker(AgentLoopWorkerTQ.__ray_actor_class__):
    """``AgentLoopWorkerTQ`` with LTE's extra rollouts for none-pass groups (see the module docstring)."""

    # Ray 2.60 needs __init__ defined on the subclass of an actor class (else super() fails at actor start).
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        lte_block = self.config.get("lte", None)
        block = OmegaConf.to_container(lte_block, resolve=True) if lte_block else {}
        self.lte = core.LTEConfig.from_dict(block)
        self.luffy = luffy.LuffyConfig.from_dict(block.get("luffy"))
        self._token_builder = None
        self._check_ground_truth = uses_project_reward(self.config)

    # ---- sampling -----------------------------------------------------------------------------------------

    async def _agent_loop_postprocess(self, output, validate, **kwargs):
        if not _COLLECTING.get():
            return await super()._agent_loop_postprocess(output, validate, **kwargs)
        outputs = output if isinstance(output, list) else [output]
        if len(outputs) != 1:
            raise ValueError(
                f"LTE needs one output per rollout, the agent loop returned {len(outputs)}: use a single-turn "
                "agent loop (actor_rollout_ref.rollout.agent.default_agent_loop=single_turn_agent)"
            )
        await self._compute_score(outputs, kwargs=kwargs)
        if outputs[0].reward_score is None:
            raise RuntimeError(
                "LTE needs rewards computed inside the agent loop (reward loop workers); "
                "a colocated reward model gives none: set reward.reward_model.enable=false"
            )
        return outputs[0]

    async def _sample(
        self, prompt: dict, params: dict, trajectory: dict, trace: bool, session_ids: range
    ) -> list[AgentLoopOutput]:
        """Run one scored, unwritten rollout per session id; raise the first error after all have settled."""
        token = _COLLECTING.set(True)
        try:  # tasks copy the context when created, so they see _COLLECTING set
            tasks = [
                asyncio.create_task(
                    self._run_agent_loop(params, trajectory=trajectory, trace=trace, session_id=s, **prompt)
                )
                for s in session_ids
            ]
        finally:
            _COLLECTING.reset(token)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return results

    # ---- the per-prompt flow ------------------------------------------------------------------------------

    async def _run_prompt(self, prompt: dict, sampling_params: dict, trajectory: dict, trace: bool = False) -> None:
        if trajectory["validate"]:
            return await super()._run_prompt(prompt, sampling_params, trajectory=trajectory, trace=trace)
        uid = prompt["uid"]
        await tq.async_kv_put(key=uid, partition_id="train", tag={"status": "running"})
        status = "failure"
        try:
            n = prompt.pop("__rollout_n__", self.config.actor_rollout_ref.rollout.n)
            params = dict(sampling_params)
            if not prompt.pop("__do_sample__", True):
                apply_greedy_sampling_params(params)
            reference = luffy.take_reference(prompt)  # in every mode: never stored with each of the G rows
            if self.lte.mode == "luffy":
                rows = await self._luffy_rows(prompt, params, trajectory, trace, n, reference)
            else:
                group = await self._sample(prompt, params, trajectory, trace, range(n))
                rows = await self._apply_lte(prompt, params, trajectory, trace, group)
            kwargs = {k: v for k, v in prompt.items() if k != "agent_name"}
            await asyncio.gather(
                *(
                    super(LTEAgentLoopWorker, self)._agent_loop_postprocess(out, False, session_id=i, **kwargs, **f)
                    for i, (out, f) in enumerate(rows)
                )
            )
            status = "finished"
        except Exception:
            logger.exception(f"LTE rollout failed for uid={uid}; the group is marked failed")
        await tq.async_kv_put(key=uid, partition_id="train", tag={"status": status})

    async def _apply_lte(
        self, prompt: dict, params: dict, trajectory: dict, trace: bool, group: list[AgentLoopOutput]
    ) -> list[tuple[AgentLoopOutput, dict]]:
        """The final G rows with their LTE fields. Errors in the extra phase keep the original group."""
        n = len(group)
        threshold = self.lte.pass_threshold
        passed = [o.reward_score >= threshold for o in group]
        info = first_phase_info(group, passed)
        final = list(group)
        replaced = [False] * n
        if core.wants_extra_phase(info["group_class"], self.lte.mode) and await self._ground_truth_unusable(prompt):
            info["extra_status"] = "skipped_bad_ground_truth"
        elif core.wants_extra_phase(info["group_class"], self.lte.mode):
            start = time.monotonic()
            try:
                final, replaced = await self._extra_phase(prompt, params, trajectory, trace, group, info)
            except Exception:
                logger.exception(f"LTE extra phase failed for uid={prompt['uid']}; keeping the original group")
                final, replaced = list(group), [False] * n
                info["extra_status"] = "error"
            info["extra_seconds"] = time.monotonic() - start
        off_policy = self.lte.mode == "lte"
        return [
            (
                final[i],
                row_fields(
                    off_policy=replaced[i] and off_policy, replaced=replaced[i], orig_passed=passed[i], group=info
                ),
            )
            for i in range(n)
        ]

    async def _ground_truth_unusable(self, prompt: dict) -> bool:
        """Can the reward never match this row's ground truth? (Cached per ground truth; the rare math-verify parse
        runs in a thread, off the event loop.) Known only with the project's reward and a ``reward_model`` field."""
        known, value = _ground_truth(prompt)
        if not (self._check_ground_truth and known):
            return False
        reason = await asyncio.to_thread(unusable_ground_truth, value)
        if reason:
            logger.warning(
                f"LTE: no extra phase for uid={prompt['uid']}: its ground truth {value!r:.80} is {reason} "
                "(the reward can never match it; python -m data_prep check finds such rows before training)"
            )
        return reason is not None

    async def _extra_phase(
        self, prompt: dict, params: dict, trajectory: dict, trace: bool, group: list[AgentLoopOutput], info: dict
    ) -> tuple[list[AgentLoopOutput], list[bool]]:
        """Sample G extra rollouts for a none-pass group and swap correct ones in; fills ``info``."""
        n = len(group)
        messages = list(prompt["raw_prompt"])
        if self.lte.mode == "lte":
            plan = await self._plan_hint(group, info)
            if plan is None:
                info["extra_status"] = "skipped_no_hint"
                return list(group), [False] * n
            # No silent left-truncation of a long hint: drop listed answers until it fits, else skip the group.
            limit = self.config.actor_rollout_ref.rollout.prompt_length
            plan = core.shrink_to_fit(plan, lambda p: self._prompt_len(messages, p) <= limit)
            if plan is None:
                info["extra_status"] = "skipped_too_long"
                return list(group), [False] * n
            messages = core.render_hinted_messages(messages, plan, self.lte.hint)
            info["extra_kind"] = plan.kind
        else:
            info["extra_kind"] = "unhinted"
        m = self.lte.num_extra_rollouts or n
        # Session ids n.. are never written: the rows that reach the trainer keep ids 0..n-1.
        extras = await self._sample({**prompt, "raw_prompt": messages}, params, trajectory, trace, range(n, n + m))
        info["extra_status"] = "ran"
        info["extra_tokens"] = sum(len(o.response_ids) for o in extras)
        correct = [j for j, o in enumerate(extras) if o.reward_score >= self.lte.pass_threshold]
        info["extra_correct"] = len(correct)
        # Seeded by the prompt itself, not verl's per-step uuid4 uid: identical runs make identical choices.
        identity = core.prompt_identity(prompt["raw_prompt"], trajectory.get("sample_index"))
        rng = core.seeded_rng(self.lte.seed, trajectory["step"], identity)
        pairs = core.choose_replacements(range(n), correct, min_failures_kept=self.lte.min_failures_kept, rng=rng)
        final, replaced = list(group), [False] * n
        for slot, j in pairs:
            # Deep copy: a shallow one shares extra_fields. The response (and its behaviour log-probs under the
            # hinted prompt) is kept; the prompt becomes the original one it is trained under.
            swapped = extras[j].model_copy(deep=True)
            swapped.prompt_ids = list(group[slot].prompt_ids)
            final[slot], replaced[slot] = swapped, True
        return final, replaced

    async def _plan_hint(self, group: list[AgentLoopOutput], info: dict) -> core.HintPlan | None:
        """The hint for this none-pass group (``core.plan_hint`` on its quotable answers and truncation).

        Planned in a thread: de-duplicating the answers calls the reward's math equivalence (a blocking call into
        its process pool), which on the event loop would stall every other rollout of this worker.
        """
        rollout, hint = self.config.actor_rollout_ref.rollout, self.lte.hint
        preds, boxed = [_pred(o) for o in group], [_pred_boxed(o) for o in group]
        if hint.answer_source == "boxed" and any(p and b is None for p, b in zip(preds, boxed, strict=True)):
            raise ValueError(
                "lte.hint.answer_source=boxed needs the reward to say which answers were boxed ('pred_boxed' next to "
                "'pred' in its result, as verl_ext/reward/math_reward.py returns): add it, or set "
                "lte.hint.answer_source=any"
            )
        answers = core.quotable_answers(preds, [bool(b) for b in boxed], hint.answer_source)
        truncated = [len(o.response_ids) >= rollout.response_length for o in group]
        plan, timed_out = await asyncio.to_thread(plan_hint_within, answers, truncated, hint)
        if timed_out:
            info["dedup_timeout"] = True
            logger.warning(
                f"LTE: de-duplicating the wrong answers took over lte.hint.dedup_timeout_s={hint.dedup_timeout_s}; "
                "the hint lists them de-duplicated as exact strings"
            )
        return plan

    def _prompt_len(self, messages: list, plan: core.HintPlan) -> int:
        """Token count of the hinted prompt, built exactly as the agent loop builds it (Continuous Token)."""
        if self._token_builder is None:
            self._token_builder = create_continuous_token_builder(
                self.tokenizer,
                hf_model_type=self.hf_model_type,
                chat_template_kwargs=self.config.data.get("apply_chat_template_kwargs", {}),
                mm_processor_kwargs=self.mm_processor_kwargs,
                processor=self.processor,
            )
        hinted = core.render_hinted_messages(messages, plan, self.lte.hint)
        return len(self._token_builder.build_initial_tokens(hinted))

    # ---- LUFFY (lte.mode=luffy): on-policy rollouts plus the dataset's reference solution ---------------------

    async def _luffy_rows(
        self, prompt: dict, params: dict, trajectory: dict, trace: bool, n: int, reference: str | None
    ) -> list[tuple[AgentLoopOutput, dict]]:
        """LUFFY's group (``recipe.lte.luffy``): on-policy rollouts, and the reference solution under the original
        prompt as an off-policy row -- an added row, or (``reference_groups=none_pass``) in place of a failure."""
        if reference is None:
            raise ValueError(
                f"training row {prompt.get('index')} (extra_info.index) has no reference solution "
                f"(extra_info.{luffy.REFERENCE_KEY}); lte.mode=luffy trains on it: rebuild the data with "
                "python -m data_prep openr1_luffy, or drop the row"
            )
        m = self.luffy.on_policy_rollouts(n)
        group = await self._sample(prompt, params, trajectory, trace, range(m))
        passed = [o.reward_score >= self.lte.pass_threshold for o in group]
        info = first_phase_info(group, passed)  # of the on-policy rollouts
        # Seeded by the prompt's identity, not verl's per-step uuid4 uid: a rerun repeats the choice (issue 12).
        identity = core.prompt_identity(prompt["raw_prompt"], trajectory.get("sample_index"))
        rng = core.seeded_rng(self.lte.seed, trajectory["step"], identity)
        slot = luffy.reference_slot(passed, self.luffy.reference_groups, rng)
        final, orig, off, replaced = list(group), list(passed), [False] * m, [False] * m
        if slot is not None:
            start = time.monotonic()
            ref, truncated = await self._reference_output(prompt, group[0], reference, session_id=slot)
            info["extra_kind"] = core.REFERENCE
            info["extra_status"] = core.REFERENCE_TRUNCATED if truncated else "ran"
            info["extra_correct"] = int(ref.reward_score >= self.lte.pass_threshold)
            info["extra_tokens"] = len(ref.response_ids)
            info["extra_seconds"] = time.monotonic() - start
            if slot == m:  # an added row: no on-policy response was sampled for it
                final, orig, off, replaced = [*final, ref], [*orig, False], [*off, True], [*replaced, False]
            else:
                final[slot], off[slot], replaced[slot] = ref, True, True
        return [
            (final[i], row_fields(off_policy=off[i], replaced=replaced[i], orig_passed=orig[i], group=info))
            for i in range(len(final))
        ]

    async def _reference_output(
        self, prompt: dict, sibling: AgentLoopOutput, reference: str, session_id: int
    ) -> tuple[AgentLoopOutput, bool]:
        """The reference solution as a scored agent-loop output under the original prompt's ids (``sibling``'s, an
        on-policy rollout of the group), and whether it was cut to the response length. No behaviour log-probs: no
        model generated it."""
        tok = self.tokenizer
        prompt_ids = sibling.prompt_ids
        text = luffy.strip_think_prefix(tok.decode(prompt_ids[-16:]), reference)
        response, truncated = luffy.reference_response(
            tok.encode(text, add_special_tokens=False),
            tok.eos_token_id,
            self.config.actor_rollout_ref.rollout.response_length,
        )
        out = AgentLoopOutput(
            prompt_ids=list(prompt_ids),
            response_ids=response,
            response_mask=[1] * len(response),
            num_turns=2,
            metrics=AgentLoopMetrics(),
            # The single-turn agent loop's schema; the weights versions of the group's rollouts (verl's trainer reads
            # them as every row's staleness tags).
            extra_fields={
                "turn_scores": [],
                "tool_rewards": [],
                **{k: sibling.extra_fields.get(k) for k in ("min_global_steps", "max_global_steps")},
            },
        )
        kwargs = {k: v for k, v in prompt.items() if k != "agent_name"}
        await self._compute_score([out], kwargs={**kwargs, "session_id": session_id})  # the project's reward
        if out.reward_score is None:
            raise RuntimeError("the reference solution got no reward: LTE needs the reward loop workers")
        return out, truncated


class LTEAgentLoopManager(AgentLoopManagerTQ):
    """``AgentLoopManagerTQ`` whose workers are ``LTEAgentLoopWorker``s.

    Selected by ``actor_rollout_ref.rollout.agent.agent_loop_manager_class`` in the recipe config.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.agent_loop_workers_class = ray.remote(LTEAgentLoopWorker)
