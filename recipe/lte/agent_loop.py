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
from verl_ext.reward.math_reward import answers_equivalent

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
    }
    return {k: torch.tensor(v, dtype=ROW_FIELDS[k]) for k, v in values.items()}


def rows_from_fields(uids: Sequence[str], fields: Mapping[str, Any], passed: Sequence[bool]) -> list[core.RowInfo]:
    """Decode ``row_fields`` of a batch (``[B]`` tensors) back into ``core.RowInfo`` for ``core.step_metrics``."""

    def col(name: str) -> list:
        return torch.as_tensor(fields[name]).reshape(-1).tolist()

    off, rep, orig = col(OFF_POLICY_FIELD), col("lte_replaced"), col("lte_orig_pass")
    cls, kind, status = col("lte_group_class"), col("lte_extra_kind"), col("lte_extra_status")
    correct, tokens, seconds = col("lte_extra_correct"), col("lte_extra_tokens"), col("lte_extra_seconds")
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
        info = {
            "group_class": core.classify_group(passed),
            "extra_kind": "none",
            "extra_status": "not_needed",
            "extra_correct": 0,
            "extra_tokens": 0,
            "extra_seconds": 0.0,
        }
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
            plan = self._plan_hint(group)
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
        rng = core.seeded_rng(self.lte.seed, trajectory["step"], prompt["uid"])
        pairs = core.choose_replacements(range(n), correct, min_failures_kept=self.lte.min_failures_kept, rng=rng)
        final, replaced = list(group), [False] * n
        for slot, j in pairs:
            # Deep copy: a shallow one shares extra_fields. The response (and its behaviour log-probs under the
            # hinted prompt) is kept; the prompt becomes the original one it is trained under.
            swapped = extras[j].model_copy(deep=True)
            swapped.prompt_ids = list(group[slot].prompt_ids)
            final[slot], replaced[slot] = swapped, True
        return final, replaced

    def _plan_hint(self, group: list[AgentLoopOutput]) -> core.HintPlan | None:
        """The hint for this none-pass group (``core.plan_hint`` on its answers and truncation)."""
        rollout, hint = self.config.actor_rollout_ref.rollout, self.lte.hint
        return core.plan_hint(
            [_pred(o) for o in group],
            [len(o.response_ids) >= rollout.response_length for o in group],
            equivalent=answers_equivalent,  # the reward's own notion of "the same answer"
            max_answers=hint.max_wrong_answers,
            max_answer_chars=hint.max_answer_chars,
            no_answer_fallback=hint.no_answer_fallback,
        )

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
        info = {
            "group_class": core.classify_group(passed),  # of the on-policy rollouts
            "extra_kind": "none",
            "extra_status": "not_needed",
            "extra_correct": 0,
            "extra_tokens": 0,
            "extra_seconds": 0.0,
        }
        rng = core.seeded_rng(self.lte.seed, trajectory["step"], prompt["uid"])
        slot = luffy.reference_slot(passed, self.luffy.reference_groups, rng)
        final, orig, off, replaced = list(group), list(passed), [False] * m, [False] * m
        if slot is not None:
            start = time.monotonic()
            ref, truncated = await self._reference_output(prompt, group[0].prompt_ids, reference, session_id=slot)
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
        self, prompt: dict, prompt_ids: list[int], reference: str, session_id: int
    ) -> tuple[AgentLoopOutput, bool]:
        """The reference solution as a scored agent-loop output under ``prompt_ids`` (the original prompt's ids),
        and whether it was cut to the response length. No behaviour log-probs: no model generated it."""
        tok = self.tokenizer
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
            extra_fields={"turn_scores": [], "tool_rewards": []},  # the single-turn agent loop's schema
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
