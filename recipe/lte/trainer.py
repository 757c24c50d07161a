"""LTE's trainer glue: verl 0.9.1's V1 trainers (sync, and colocate_async with partial rollout), extended.

- ``LTETrainerMixin``: installs the mixed-policy loss (and the actor worker that counts each mini-batch's
  on-policy and hinted tokens) in the actor workers, logs LTE's metrics (and the rows the start-up data check
  dropped, ``recipe.lte.data_check``), keeps hinted rows out of verl's rollout-vs-training diagnostics, honours
  ``trainer.v1.sampler.poll_interval`` (verl 0.9.1 hard-codes its replay buffer's 2 s poll), watches the processes
  a step depends on and stops at a step boundary on request (``recipe/lte/process_watchdog.py``).
- ``LTETrainer(PPOTrainerSync)`` (``trainer.v1.trainer_mode=sync``, the paper's) and
  ``LTEColocateAsyncTrainer(PPOTrainerColocateAsync)`` (``colocate_async``: each step trains the first
  ``train_batch_size`` groups done and resumes the rest after the update, so a group's long extra phase no longer
  holds the step; docs/cost.md). The rollout stage is the same under both: verl's partial-rollout client resumes
  an interrupted request, first-phase or hinted, invisibly to the agent loop.
- ``LTETaskRunner(TaskRunnerV1)``: runs them under verl's own trainer names "sync" / "colocate_async" (verl's
  replay buffer keys its semantics on those literal names; a new name would silently switch behaviour).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os

import numpy as np
import ray
import torch
import transfer_queue as tq
from omegaconf import DictConfig, OmegaConf
from verl.trainer.main_ppo import TaskRunnerV1
from verl.trainer.ppo.utils import Role
from verl.trainer.ppo.v1 import trainer_base
from verl.trainer.ppo.v1.trainer_colocate_async import PPOTrainerColocateAsync
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils.checkpoint.checkpoint_manager import find_latest_ckpt_path

from recipe.lte import core, luffy
from recipe.lte.agent_loop import ROW_FIELDS, rows_from_fields
from recipe.lte.data_check import dropped_metrics
from recipe.lte.diagnostics import replace_with_on_policy_diagnostics
from recipe.lte.process_watchdog import ProcessWatchdog, Replica, RunFailure, actor_names, stall_bound_s
from recipe.lte.startup_checks import check_config, lte_config, lte_loss_config, watchdog_config
from verl_ext.advantage.grpo_on_policy_stats import ESTIMATOR, register_grpo_on_policy_stats, statistics_rows
from verl_ext.loss.ppo_loss import OFF_POLICY_FIELD, make_lte_loss_fn
from verl_ext.loss.training_worker import LTEActorRolloutRefWorker

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "INFO"))

# A file whose existence asks the run to stop at the next step boundary after saving (docs/robustness.md).
STOP_FILE_ENV = "LTE_STOP_FILE"


def rollout_progress(partition_id: str) -> tuple[int, int]:
    """(trajectories written, groups finished or failed) in a TransferQueue partition: grows while rollout runs."""
    items = (tq.kv_list(partition_id=partition_id) or {}).get(partition_id, {})
    trajectories = sum(1 for tag in items.values() if not tag.get("is_prompt", False))
    terminal = sum(1 for tag in items.values() if tag.get("is_prompt", False) and tag.get("status") != "running")
    return trajectories, terminal


def _is_number(v) -> bool:
    try:
        return np.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def format_step_line(step: int, m: dict) -> str:
    """``[LTE step 3] groups all/some/none 2/3/3 -> 2/5/1 | extra phases 3 (hint 2 ...), skipped 0, bad ground truth
    0, errors 0 | rescued 2, replaced 3 | on-policy acc 0.250``"""
    if not m:
        return f"[LTE step {step}] no LTE info in this batch"

    def g(key: str) -> int:
        return int(m.get(f"lte/{key}", 0))

    before = "/".join(str(g(f"groups/{c}_before")) for c in core.GROUP_CLASSES)
    after = "/".join(str(g(f"groups/{c}_after")) for c in core.GROUP_CLASSES)
    kinds = " ".join(f"{k} {g(f'extra/kind_{k}')}" for k in (*core.HINT_KINDS, "unhinted") if g(f"extra/kind_{k}"))
    skipped = g("extra/skipped_too_long") + g("extra/skipped_no_hint")
    # Groups whose ground truth the reward can never match: a data problem, so named apart from the skips.
    bad_gt = g("extra/skipped_bad_ground_truth")
    return (
        f"[LTE step {step}] groups all/some/none {before} -> {after} | extra phases {g('extra/ran')}"
        f"{' (' + kinds + ')' if kinds else ''}, skipped {skipped}, bad ground truth {bad_gt}, errors "
        f"{g('extra/error')} | rescued "
        f"{g('extra/rescued')}, replaced {g('extra/replaced')} | on-policy acc {m.get('lte/on_policy_acc', 0.0):.3f}"
    )


class LTETrainerMixin:
    """LTE's additions to a verl V1 trainer (put before the verl class in the bases): LTE's loss in the actor
    workers + LTE's per-step metrics + the replay buffer's poll interval + the process watchdog
    (``recipe/lte/process_watchdog.py``: the waits on rollout and weight sync end when a process they depend on
    dies) + a stop at a step boundary (``LTE_STOP_FILE``)."""

    def __init__(self, config: DictConfig):
        check_config(config)
        register_grpo_on_policy_stats()  # verl looks algorithm.adv_estimator up in this process
        super().__init__(config)
        self.lte = lte_config(config)
        # Rows the start-up data check dropped (lte.data.on_bad_rows=skip), logged with every step.
        self._data_metrics = dropped_metrics(config.trainer.default_local_dir)
        self.watchdog_cfg = watchdog_config(config)
        self.watchdog: ProcessWatchdog | None = None

    def _build_replay_buffer(self):
        # verl 0.9.1 polls for finished groups every 2 s and offers no key for it: a step's generation time is
        # rounded up to the next poll. Negligible for 100 s GPU rollouts, a third of a CPU demo step (docs/cost.md).
        buffer = super()._build_replay_buffer()
        interval = OmegaConf.select(self.config, "trainer.v1.sampler.poll_interval", default=None)
        if interval is not None:
            if not (isinstance(interval, int | float) and interval > 0):
                raise ValueError(f"trainer.v1.sampler.poll_interval={interval}: must be a number of seconds > 0")
            buffer.poll_interval = float(interval)
        return buffer

    def _init_resource_pool_mgr(self):
        super()._init_resource_pool_mgr()
        # The actor worker with the mini-batch-wide on-policy / hinted counts (lte.loss.aggregation=separate), in
        # place of verl's ActorRolloutRefWorker, as verl's own separate-async trainer swaps in its worker.
        for role in (Role.Actor, Role.ActorRollout, Role.ActorRolloutRef):
            if role in self.role_worker_mapping:
                self.role_worker_mapping[role] = ray.remote(LTEActorRolloutRefWorker)

    def on_init_end(self):
        if self.watchdog_cfg.enable:
            self.watchdog = self._build_watchdog()
        with self._failure_reported():
            self._watched(super().on_init_end, "the first weight sync to the rollout replicas")
        # verl installs partial(ppo_loss, config=<ActorConfig>) per worker; ours routes hinted rows through the
        # off-policy term (the flag reaches the loss as a per-row field of the micro-batch).
        loss_fn = make_lte_loss_fn(self.config.actor_rollout_ref.actor, lte_loss_config(self.config))
        self.actor_rollout_wg.set_loss_fn(loss_fn)
        logger.info(f"LTE mode={self.lte.mode}: mixed-policy loss installed in the actor workers")

    def fit(self, agent_loop_manager):
        if self.watchdog is not None:
            self.watchdog.watch_actors("agent-loop worker", list(agent_loop_manager.agent_loop_workers))
            self.replay_buffer.sample = self._watched_sample(self.replay_buffer.sample)
        with self._failure_reported():
            return super().fit(agent_loop_manager)

    def on_sample_end(self):
        self._watched(super().on_sample_end, "putting the rollout replicas to sleep")

    def on_step_end(self):
        if self._stop_requested():
            return  # no weight sync: no rollout follows
        self._watched(super().on_step_end, "the weight sync to the rollout replicas")

    def _stop_requested(self) -> bool:
        """A graceful stop (``touch $LTE_STOP_FILE``; the SLURM launcher does it before the time limit): save this
        step unless verl just did, then end the training loop after it. The file is removed (the sign, for the
        launcher, that the run stopped early), so a rerun of the same command resumes from this step."""
        path = os.environ.get(STOP_FILE_ENV)
        step, save_freq = self.global_steps, self.config.trainer.save_freq
        if not path or not os.path.exists(path) or step >= self.total_training_steps:
            return False  # at the last step the run ends anyway; the file stays: the launcher sees nothing to resume
        if not (save_freq > 0 and step % save_freq == 0):
            self._save_checkpoint()
        os.remove(path)  # taken: the launcher requeues the job; a rerun must not stop again at once
        print(
            f"[LTE stop] {STOP_FILE_ENV}={path} found: stopping after step {step} with its checkpoint saved; "
            "the same command resumes from it",
            flush=True,
        )
        self.total_training_steps = step  # verl's loop ends after this step's metrics are logged
        return True

    # ---- the watchdog -------------------------------------------------------------------------------------

    def _build_watchdog(self) -> ProcessWatchdog:
        """Every rollout replica (its /health and server actors), the FSDP, reward-loop workers and load balancer."""
        manager = self.llm_server_manager
        replicas = []
        for replica, address in zip(manager.get_replicas(), manager.get_addresses(), strict=True):
            names = actor_names(replica.servers, default=f"server_{replica.replica_rank}_{{}}")
            replicas.append(Replica(replica.replica_rank, address, list(zip(names, replica.servers, strict=True))))
        watchdog = ProcessWatchdog(self.watchdog_cfg, replicas, load_balancer=manager.global_load_balancer)
        watchdog.watch_actors("FSDP worker", list(self.actor_rollout_wg.workers))
        watchdog.watch_actors("reward-loop worker", list(self.reward_loop_manager.reward_loop_worker_handles or []))
        watchdog.watch_actors("the rollout load balancer", [manager.global_load_balancer])
        for replica in replicas:
            for name, handle in replica.servers:
                watchdog.watch_actors(f"the server actor {name} of rollout replica {replica.rank}", [handle])
        logger.info(
            f"watchdog: {len(replicas)} rollout replicas, checks every {self.watchdog_cfg.check_interval_s:g} s, "
            f"rollout stall bound {self._stall_bound():.0f} s"
        )
        return watchdog

    @contextlib.contextmanager
    def _failure_reported(self):
        """A failure of a process the step depends on, said plainly on the console before it ends the run (the
        traceback follows). A call on a dead actor outside the watched waits raises Ray's error, which names a
        class and an id: the watchdog's pings say which of the run's processes it was."""
        try:
            yield
        except RunFailure as e:
            self._report(e)
            raise
        except ray.exceptions.RayActorError as e:
            if self.watchdog is not None:
                try:
                    self.watchdog.check(settle_s=10.0)
                except RunFailure as failure:
                    self._report(failure)
                    raise failure from e
            raise

    def _report(self, failure: RunFailure) -> None:
        checkpoint = find_latest_ckpt_path(self.config.trainer.default_local_dir)  # what the rerun resumes from
        print(f"[LTE watchdog] {failure}", flush=True)
        print(
            "[LTE watchdog] ending the run; the same command resumes from "
            + (f"the last checkpoint, {checkpoint}" if checkpoint else "the start (no checkpoint yet)"),
            flush=True,
        )

    def _stall_bound(self) -> float:
        return stall_bound_s(self.watchdog_cfg, self.config.actor_rollout_ref.rollout.response_length, self.lte.mode)

    def _watched(self, fn, what: str):
        """``fn()`` under the watchdog (bounded by watchdog.stall_floor_s), or plainly when it is off."""
        if self.watchdog is None:
            return fn()
        return self.watchdog.wait(fn, what, self.watchdog_cfg.stall_floor_s)

    def _watched_sample(self, sample):
        """verl's ``ReplayBuffer.sample`` under the watchdog: it must see rollout progress within the stall bound."""

        def watched(*args, **kwargs):
            partition_id = kwargs.get("partition_id", args[1] if len(args) > 1 else "train")
            return self.watchdog.wait(
                lambda: sample(*args, **kwargs),
                f"the rollout (step {self.global_steps}, partition {partition_id})",
                self._stall_bound(),
                progress=lambda: rollout_progress(partition_id),
                bound_key="watchdog.stall_floor_s / watchdog.stall_s_per_token",
            )

        return watched

    def _compute_advantage(self, batch, metrics):
        if self.config.algorithm.adv_estimator == ESTIMATOR:
            batch = self._on_policy_stats_advantage(batch, metrics)
        else:
            batch = super()._compute_advantage(batch, metrics)
        # verl's rollout-vs-training diagnostics, logged by now, without the hinted rows (recipe/lte/diagnostics.py)
        replace_with_on_policy_diagnostics(batch, metrics, self.config.algorithm.get("rollout_correction", None))
        return batch

    def _on_policy_stats_advantage(self, batch, metrics):
        # grpo_on_policy_stats needs the rows' off-policy flags, in the order verl reads the batch (batch.keys).
        # Padding rows copy a real row's flag but have no response token: they count as on-policy (like the loss).
        data = tq.kv_batch_get(
            keys=batch.keys, partition_id=batch.partition_id, select_fields=[OFF_POLICY_FIELD, "response_mask"]
        )
        off = torch.as_tensor(data[OFF_POLICY_FIELD]).reshape(-1) != 0
        has_tokens = torch.tensor([int(m.sum()) > 0 for m in data["response_mask"].unbind()])
        with statistics_rows(~(off & has_tokens)):
            return super()._compute_advantage(batch, metrics)

    def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
        lte_metrics, groups = self._lte_metrics(batch)
        metrics.update(lte_metrics)
        metrics.update(self._data_metrics)
        out = super()._compute_metrics(batch, metrics, timing_raw, global_steps, epoch)
        self._report_step(global_steps, lte_metrics, metrics, groups)
        return out

    def _report_step(self, step: int, lte_metrics: dict, metrics: dict, groups: list[dict]) -> None:
        """One readable LTE line per step; the step's metrics appended to ``<default_local_dir>/lte_metrics.jsonl``
        (read by ``python -m recipe.lte.tools.summary`` for the end-of-run table and plots) and one record per
        group to ``lte_groups.jsonl`` (which prompts were none-pass, hinted, rescued)."""
        line = luffy.format_step_line if self.lte.mode == "luffy" else format_step_line
        print(line(step, lte_metrics), flush=True)
        record = {"step": step, **{k: float(v) for k, v in metrics.items() if _is_number(v)}}
        out_dir = self.config.trainer.default_local_dir
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, core.METRICS_FILE), "a") as f:
            f.write(json.dumps(record) + "\n")
        with open(os.path.join(out_dir, core.GROUPS_FILE), "a") as f:
            f.writelines(json.dumps({"step": step, **g}) + "\n" for g in groups)

    def _lte_metrics(self, batch) -> tuple[dict[str, float], list[dict]]:
        """``core.step_metrics`` and ``core.group_records`` over the batch's real rows (padding rows copy a real
        row: left out)."""
        real = [i for i, tag in enumerate(batch.tags) if not tag.get("is_padding", False)]
        if not real:
            return {}, []
        keys = [batch.keys[i] for i in real]
        data = tq.kv_batch_get(
            keys=keys,
            partition_id=batch.partition_id,
            select_fields=["uid", "index", "rm_scores", "response_mask", *ROW_FIELDS],
        )
        scores = [float(s.sum()) for s in data["rm_scores"].unbind()]
        passed = [s >= self.lte.pass_threshold for s in scores]
        uids = [str(u) for u in _as_list(data["uid"])]
        rows = rows_from_fields(uids, {k: data[k] for k in ROW_FIELDS}, passed)
        index_of = {u: _plain_index(i) for u, i in zip(uids, _as_list(data["index"]), strict=True)}
        step = luffy.step_metrics(rows, scores) if self.lte.mode == "luffy" else core.step_metrics(rows)
        # Counted here, before verl balances rows over the data-parallel ranks: the loss's off-policy token count
        # (actor/lte/off_policy_tokens, summed over ranks) must find them all, wherever each row landed.
        tokens = [int(m.sum()) for m in data["response_mask"].unbind()]
        step["lte/extra/off_policy_response_tokens"] = sum(t for t, r in zip(tokens, rows, strict=True) if r.off_policy)
        return step, core.group_records(rows, index_of)


def _as_list(values) -> list:
    return values.tolist() if hasattr(values, "tolist") else list(values)


def _plain_index(value):
    """A dataset index as JSON can hold it (verl's RLHFDataset passes ``extra_info.index`` through as is)."""
    if hasattr(value, "item"):
        value = value.item()
    return value if isinstance(value, int | str) or value is None else str(value)


class LTETrainer(LTETrainerMixin, PPOTrainerSync):
    """``PPOTrainerSync`` + LTE (``trainer.v1.trainer_mode=sync``, the paper's setting)."""


class LTEColocateAsyncTrainer(LTETrainerMixin, PPOTrainerColocateAsync):
    """``PPOTrainerColocateAsync`` + LTE (``trainer.v1.trainer_mode=colocate_async``, partial rollout)."""


# Under verl's own names: its replay buffer and trainers compare trainer_mode with these literals.
LTE_TRAINERS = {"sync": LTETrainer, "colocate_async": LTEColocateAsyncTrainer}


class LTETaskRunner(TaskRunnerV1.__ray_actor_class__):
    """``TaskRunnerV1`` that runs LTE's trainers, in this (the task runner's) process only."""

    # Ray 2.60 needs __init__ defined on the subclass of an actor class.
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)

    def run(self, config: DictConfig):
        trainer_base.TRAINER_REGISTRY.update(LTE_TRAINERS)
        return super().run(config)
