"""LTE's start-up checks: settings LTE cannot honour are refused before anything starts, each naming the key and
the fix, all reported at once. Run by the entry point (``main_lte.prepare_config``) and again by ``LTETrainer``.
"""

from __future__ import annotations

import os

from omegaconf import DictConfig, OmegaConf

from recipe.lte import core, luffy
from recipe.lte.agent_loop import LTEAgentLoopManager
from recipe.lte.process_watchdog import WatchdogConfig
from verl_ext.advantage.grpo_on_policy_stats import ESTIMATOR as ON_POLICY_STATS
from verl_ext.loss.config import LTELossConfig, check_loss_config

# verl trainer modes LTE runs under: sync (the paper's) and colocate_async (partial rollout: cuts LTE's tail at GPU
# scale, docs/cost.md). separate_async (rollout on its own GPUs, several updates per weight sync) is not wired.
TRAINER_MODES = ("sync", "colocate_async")


def lte_config(config: DictConfig) -> core.LTEConfig:
    """``core.LTEConfig`` from the ``lte:`` block (validated)."""
    block = config.get("lte", None)
    return core.LTEConfig.from_dict(OmegaConf.to_container(block, resolve=True) if block is not None else None)


def luffy_config(config: DictConfig) -> luffy.LuffyConfig:
    """``luffy.LuffyConfig`` from ``lte.luffy`` (validated)."""
    block = OmegaConf.select(config, "lte.luffy", default=None)
    return luffy.LuffyConfig.from_dict(OmegaConf.to_container(block, resolve=True) if block is not None else None)


def lte_loss_config(config: DictConfig) -> LTELossConfig:
    """``LTELossConfig`` from ``lte.loss`` (validated)."""
    return LTELossConfig.from_config(OmegaConf.select(config, "lte.loss", default=None))


def watchdog_config(config: DictConfig) -> WatchdogConfig:
    """``WatchdogConfig`` from the ``watchdog:`` block (validated)."""
    block = config.get("watchdog", None)
    return WatchdogConfig.from_dict(OmegaConf.to_container(block, resolve=True) if block is not None else None)


def _refuse_rollout_correction_over_hinted_rows(config: DictConfig, refuse) -> None:
    """verl's rollout correction settings that would let hinted rows (rollout log-probs under another prompt) shape
    the on-policy rows' IS weights, or get IS weights themselves."""
    corr = OmegaConf.select(config, "algorithm.rollout_correction", default=None) or {}
    if corr.get("rollout_is", None) is None:
        return
    refuse(
        bool(corr.get("rollout_is_batch_normalize", False)),
        "algorithm.rollout_correction.rollout_is_batch_normalize=true normalises the IS weights by their batch mean, "
        "which would include the hinted rows' weights (rollout log-probs taken under the hinted prompt): set "
        "algorithm.rollout_correction.rollout_is_batch_normalize=false",
    )
    try:
        off_policy_mode = lte_loss_config(config).off_policy_mode
    except ValueError:  # reported by check_loss_config
        return
    refuse(
        off_policy_mode == "on_policy",
        "algorithm.rollout_correction.rollout_is with lte.loss.off_policy_mode=on_policy would weight hinted rows by "
        "pi_old(o|q) / pi_rollout(o|hint(q)), a ratio across two prompts: set algorithm.rollout_correction.rollout_is"
        "=null, or choose another lte.loss.off_policy_mode",
    )


def check_config(config: DictConfig) -> None:
    """Refuse configurations LTE cannot honour. Each error names the key and the fix."""
    lte = lte_config(config)
    rollout = config.actor_rollout_ref.rollout
    errors: list[str] = []
    try:
        watchdog_config(config)
        luffy_config(config)
    except ValueError as e:
        errors.append(str(e))
    try:  # the loss's own refusals: loss mode, behaviour log-probs, rollout correction
        check_loss_config(OmegaConf.select(config, "lte.loss"), config.actor_rollout_ref, config.algorithm)
    except ValueError as e:
        errors.append(str(e))

    def refuse(cond: bool, msg: str) -> None:
        if cond:
            errors.append(msg)

    refuse(not config.trainer.get("use_v1", True), "trainer.use_v1=false: LTE extends the V1 trainer; set it true")
    refuse(
        config.trainer.v1.trainer_mode not in TRAINER_MODES,
        f"trainer.v1.trainer_mode={config.trainer.v1.trainer_mode}: LTE runs under {' or '.join(TRAINER_MODES)}; "
        "set one of them",
    )
    refuse(
        lte.mode == "luffy" and config.trainer.v1.trainer_mode != "sync",
        f"trainer.v1.trainer_mode={config.trainer.v1.trainer_mode} with lte.mode=luffy: the LUFFY arm runs under the "
        "sync trainer only (the one it was tested under); set trainer.v1.trainer_mode=sync",
    )
    estimators = ("grpo", ON_POLICY_STATS) if lte.mode == "luffy" else ("grpo",)
    refuse(
        config.algorithm.adv_estimator not in estimators,
        f"algorithm.adv_estimator={config.algorithm.adv_estimator}: lte.mode={lte.mode} is defined on GRPO's group "
        f"advantages; set algorithm.adv_estimator to one of {list(estimators)}"
        + ("" if lte.mode == "luffy" else f" ({ON_POLICY_STATS} is LUFFY's, lte.mode=luffy only)"),
    )
    refuse(rollout.n < 2, f"actor_rollout_ref.rollout.n={rollout.n}: groups need at least 2 rollouts")
    manager = rollout.get("agent", {}).get("agent_loop_manager_class")
    refuse(
        manager != f"{LTEAgentLoopManager.__module__}.{LTEAgentLoopManager.__qualname__}",
        f"actor_rollout_ref.rollout.agent.agent_loop_manager_class={manager}: LTE's rollout stage is "
        "recipe.lte.agent_loop.LTEAgentLoopManager; set it so",
    )
    rm = config.reward.get("reward_model", {})
    refuse(
        bool(rm.get("enable", False)) and not rm.get("enable_resource_pool", False),
        "reward.reward_model.enable=true without reward.reward_model.enable_resource_pool: a colocated reward "
        "model scores after rollout, but LTE must see scores during rollout; give it its own resource pool or "
        "use the rule-based reward",
    )
    refuse(
        bool(config.get("distillation", {}).get("enabled", False)),
        "distillation.enabled=true: on-policy distillation is not supported with LTE; set it to false",
    )
    refuse(
        bool(rollout.get("enable_rollout_routing_replay", False)),
        "actor_rollout_ref.rollout.enable_rollout_routing_replay=true: routing records of hinted responses belong "
        "to another prompt; set it to false",
    )
    if lte.mode == "lte":
        _refuse_rollout_correction_over_hinted_rows(config, refuse)
        room = rollout.prompt_length - config.data.max_prompt_length
        refuse(
            room < lte.min_hint_room_tokens,
            f"actor_rollout_ref.rollout.prompt_length={rollout.prompt_length} leaves {room} tokens above "
            f"data.max_prompt_length={config.data.max_prompt_length} for the hint, fewer than "
            f"lte.min_hint_room_tokens={lte.min_hint_room_tokens}; raise rollout.prompt_length to at least "
            f"{config.data.max_prompt_length + lte.min_hint_room_tokens}",
        )
        refuse(
            not config.data.get("filter_overlong_prompts", False),
            "data.filter_overlong_prompts=false: prompts longer than data.max_prompt_length would leave no room "
            "for a hint; set it to true",
        )
    if lte.mode == "luffy":
        errors += _luffy_refusals(config)
    if errors:
        raise ValueError("LTE cannot run with this configuration:\n  - " + "\n  - ".join(errors))


def _luffy_refusals(config: DictConfig) -> list[str]:
    """What lte.mode=luffy cannot honour: its off-policy row is an external solution that no model generated."""
    errors = []
    off_policy_mode = OmegaConf.select(config, "lte.loss.off_policy_mode", default="behavior_ratio")
    if off_policy_mode != "luffy_prob":
        errors.append(
            f"lte.loss.off_policy_mode={off_policy_mode} with lte.mode=luffy: the reference solution has no behaviour "
            "log-probs (no model generated it); set lte.loss.off_policy_mode=luffy_prob (LUFFY's f(p) = p/(p+gamma))"
        )
    if config.actor_rollout_ref.rollout.get("calculate_log_probs", False):
        errors.append(
            "actor_rollout_ref.rollout.calculate_log_probs=true with lte.mode=luffy: the reference row has no rollout "
            "log-probs, and a batch read drops a field that some rows lack for every row (verl's trainer then fails "
            "in its rollout-vs-actor metrics; a made-up value would feed them and rollout correction); set "
            "actor_rollout_ref.rollout.calculate_log_probs=false"
        )
    return errors


def check_reference_data(config: DictConfig) -> None:
    """In lte.mode=luffy, refuse training rows without a reference solution (``extra_info.reference``), naming them.

    Reads only that field of each local parquet in ``data.train_files``; files that are not local are left to verl.
    """
    if lte_config(config).mode != "luffy":
        return
    files = config.data.train_files
    files = [files] if isinstance(files, str) else list(files)
    problems = []
    for path in files:
        if not os.path.isfile(path):
            continue
        missing = luffy_rows_without_reference(path)
        if missing:
            problems.append(
                f"{path}: {len(missing)} rows have no reference solution (extra_info.{luffy.REFERENCE_KEY}), e.g. rows "
                f"{missing[:10]} (extra_info.index)"
            )
    if problems:
        raise ValueError(
            "lte.mode=luffy trains on each row's reference solution:\n  - "
            + "\n  - ".join(problems)
            + "\nbuild the data with python -m data_prep openr1_luffy (it keeps Openr1-Math-46k-8192's `target`), "
            "or drop those rows"
        )


def luffy_rows_without_reference(path: str, batch_rows: int = 2048) -> list[int]:
    """``extra_info.index`` (the row number where absent) of the rows of a parquet with no usable reference solution.

    Streams the ``extra_info`` column of a parquet in batches: the 46k R1 traces of Openr1-Math-46k-8192 are most of
    the file. A ``.json`` / ``.jsonl`` file (verl's dataset reads those too) is read whole."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if path.endswith((".json", ".jsonl")):
        return _json_rows_without_reference(path)
    parquet = pq.ParquetFile(path)
    if "extra_info" not in parquet.schema_arrow.names:
        return list(range(parquet.metadata.num_rows))
    missing: list[int] = []
    row = 0
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=["extra_info"]):
        extra = batch.column(0)
        names = {extra.type.field(i).name for i in range(extra.type.num_fields)}
        n = len(extra)
        if luffy.REFERENCE_KEY in names:
            has_text = pc.match_substring_regex(pc.struct_field(extra, luffy.REFERENCE_KEY), r"\S")
            blank = pc.invert(pc.fill_null(has_text, False)).to_pylist()
        else:
            blank = [True] * n
        index = pc.struct_field(extra, "index").to_pylist() if "index" in names else [None] * n
        missing += [index[i] if index[i] is not None else row + i for i in range(n) if blank[i]]
        row += n
    return missing


def _json_rows_without_reference(path: str) -> list[int]:
    """``luffy_rows_without_reference`` for a JSON (lines) file, read as ``data_prep.check`` reads it."""
    import pandas as pd

    frame = pd.read_json(path, lines=path.endswith(".jsonl"), dtype=False)
    extras = frame["extra_info"].tolist() if "extra_info" in frame.columns else [None] * len(frame)
    missing = []
    for row, extra in enumerate(extras):
        extra = extra if isinstance(extra, dict) else {}
        if luffy.reference_text(extra.get(luffy.REFERENCE_KEY)) is None:
            missing.append(extra["index"] if extra.get("index") is not None else row)
    return missing
