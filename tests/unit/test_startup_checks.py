"""The recipe config composes against installed verl 0.9.1, passes verl's validation, and LTE refuses what it
cannot honour at start-up with a message naming the key and the fix."""

from __future__ import annotations

import pytest

from recipe.lte.main_lte import compose_config, prepare_config
from recipe.lte.startup_checks import (
    check_config,
    check_reference_data,
    lte_config,
    lte_loss_config,
    luffy_config,
    luffy_rows_without_reference,
)

IS_TOKEN = ["algorithm.rollout_correction.rollout_is=token"]


def _cfg(*overrides: str):
    return compose_config(["actor_rollout_ref.model.path=/models/any", *overrides])


def test_recipe_config_composes_and_passes_verl_validation():
    cfg = prepare_config(_cfg())
    assert cfg.reward.custom_reward_function.path.endswith("verl_ext/reward/math_reward.py")
    assert cfg.actor_rollout_ref.rollout.agent.agent_loop_manager_class == "recipe.lte.agent_loop.LTEAgentLoopManager"
    assert cfg.actor_rollout_ref.actor.policy_loss.loss_mode == "lte_mixed"
    lte = lte_config(cfg)
    assert (lte.mode, lte.pass_threshold, lte.min_failures_kept, lte.num_extra_rollouts) == ("lte", 1.0, 1, None)
    loss = lte_loss_config(cfg)
    assert (loss.gamma, loss.off_policy_mode, loss.aggregation) == (0.1, "behavior_ratio", "global")


@pytest.mark.parametrize("mode", ["grpo", "grpo_extra", "lte"])
def test_every_arm_composes(mode):
    assert lte_config(prepare_config(_cfg(f"lte.mode={mode}"))).mode == mode


# LUFFY's settings as the presets and the CPU demo take them (recipe/lte/config/preset/_luffy.yaml).
LUFFY = ("+preset=_luffy",)


def test_luffy_arm_composes_with_its_settings():
    cfg = prepare_config(_cfg(*LUFFY))
    assert lte_config(cfg).mode == "luffy"
    assert (luffy_config(cfg).num_on_policy, luffy_config(cfg).reference_groups) == (None, "all")
    assert lte_loss_config(cfg).off_policy_mode == "luffy_prob"
    # LUFFY's variant of the advantage statistics is accepted in this mode only
    prepare_config(_cfg(*LUFFY, "algorithm.adv_estimator=grpo_on_policy_stats"))
    with pytest.raises(ValueError, match=r"algorithm\.adv_estimator=grpo_on_policy_stats.*lte\.mode=luffy only"):
        check_config(_cfg("algorithm.adv_estimator=grpo_on_policy_stats"))


@pytest.mark.parametrize(
    "overrides, key",
    [
        # the reference solution has no behaviour log-probs
        (
            ["lte.mode=luffy", "actor_rollout_ref.rollout.calculate_log_probs=false"],
            "lte.loss.off_policy_mode=behavior_ratio",
        ),
        ([*LUFFY, "actor_rollout_ref.rollout.calculate_log_probs=true"], "calculate_log_probs=false"),
        ([*LUFFY, "lte.luffy.reference_groups=some"], "lte.luffy.reference_groups"),
        ([*LUFFY, "lte.luffy.num_on_policy=0"], "lte.luffy.num_on_policy"),
        ([*LUFFY, "+lte.luffy.typo=1"], "lte.luffy.typo"),
        ([*LUFFY, "algorithm.adv_estimator=gae"], "algorithm.adv_estimator"),
    ],
)
def test_luffy_refusals_name_the_key_and_the_fix(overrides, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        check_config(_cfg(*overrides))


def _parquet(path, references):
    import pandas as pd

    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "extra_info": {"index": 10 + i, "reference": r}}
            for i, r in enumerate(references)]  # fmt: skip
    pd.DataFrame(rows).to_parquet(path)
    return str(path)


def test_luffy_refuses_training_rows_without_a_reference_naming_them(tmp_path):
    good = _parquet(tmp_path / "good.parquet", ["<think>a</think> \\boxed{1}", "b"])
    bad = _parquet(tmp_path / "bad.parquet", ["ok", None, "  \n", "ok", ""])
    assert luffy_rows_without_reference(good) == []
    assert luffy_rows_without_reference(bad) == [11, 12, 14]  # extra_info.index of None, blank, empty
    assert luffy_rows_without_reference(bad, batch_rows=2) == [11, 12, 14]  # streamed in batches
    check_reference_data(_cfg(*LUFFY, f"data.train_files={good}"))
    with pytest.raises(ValueError, match=r"bad\.parquet: 3 rows have no reference solution .*\[11, 12, 14\]") as err:
        check_reference_data(_cfg(*LUFFY, f"data.train_files=[{good},{bad}]"))
    assert "python -m data_prep openr1_luffy" in str(err.value) and "good.parquet" not in str(err.value)
    # a file without the field at all: every row, by row number
    import pandas as pd

    pd.DataFrame([{"prompt": [{"role": "user", "content": "q"}], "extra_info": {"index": 5}}] * 2).to_parquet(
        tmp_path / "plain.parquet"
    )
    assert luffy_rows_without_reference(str(tmp_path / "plain.parquet")) == [5, 5]
    # other arms do not read the data
    check_reference_data(_cfg(f"data.train_files={bad}"))


def test_luffy_reference_check_reads_json_lines_files_as_verl_does(tmp_path):
    import pandas as pd

    rows = [{"extra_info": {"index": 7, "reference": "ok"}}, {"extra_info": {"index": 8, "reference": " "}},
            {"extra_info": {"index": None}}, {"prompt": "no extra_info"}]  # fmt: skip
    path = tmp_path / "train.jsonl"
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    assert luffy_rows_without_reference(str(path)) == [8, 2, 3]  # blank; no field (row 2); no extra_info (row 3)
    with pytest.raises(ValueError, match=r"train\.jsonl: 3 rows have no reference solution"):
        check_reference_data(_cfg(*LUFFY, f"data.train_files={path}"))


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["algorithm.adv_estimator=gae"], "algorithm.adv_estimator"),
        (["algorithm.rollout_correction.rollout_rs=token_k1"], "algorithm.rollout_correction.rollout_rs"),
        (["algorithm.rollout_correction.bypass_mode=true"], "algorithm.rollout_correction.bypass_mode"),
        (["reward.reward_model.enable=true"], "reward.reward_model.enable"),
        (["distillation.enabled=true"], "distillation.enabled"),
        (["actor_rollout_ref.rollout.enable_rollout_routing_replay=true"], "enable_rollout_routing_replay"),
        (["actor_rollout_ref.rollout.prompt_length=1100"], "actor_rollout_ref.rollout.prompt_length"),
        (["data.filter_overlong_prompts=false"], "data.filter_overlong_prompts"),
        (["actor_rollout_ref.actor.policy_loss.loss_mode=vanilla"], "policy_loss.loss_mode"),
        (["actor_rollout_ref.rollout.calculate_log_probs=false"], "calculate_log_probs"),
        (["actor_rollout_ref.rollout.n=1"], "actor_rollout_ref.rollout.n"),
        (["trainer.v1.trainer_mode=separate_async"], "trainer.v1.trainer_mode"),
        (["actor_rollout_ref.rollout.agent.agent_loop_manager_class=x.Y"], "agent_loop_manager_class"),
        (["lte.mode=bogus"], "lte.mode"),
        (["lte.loss.gamma=0"], "lte.loss.gamma"),
        (["lte.loss.off_policy_mode=bogus"], "lte.loss.off_policy_mode"),
        (["+lte.typo=1"], "lte.typo"),
        (["lte.hint.answer_source=text"], "lte.hint.answer_source"),
        (IS_TOKEN + ["algorithm.rollout_correction.rollout_is_batch_normalize=true"], "rollout_is_batch_normalize"),
        (IS_TOKEN + ["lte.loss.off_policy_mode=on_policy"], "algorithm.rollout_correction.rollout_is"),
    ],
)
def test_startup_refusals_name_the_key(overrides, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        check_config(_cfg(*overrides))


def test_hint_room_is_only_required_when_hints_are_sent():
    check_config(_cfg("lte.mode=grpo_extra", "actor_rollout_ref.rollout.prompt_length=1024"))
    with pytest.raises(ValueError, match="at least 1280"):
        check_config(_cfg("actor_rollout_ref.rollout.prompt_length=1024"))


def test_rollout_is_weights_that_leave_hinted_rows_alone_are_allowed():
    """Per-token / per-sequence IS weights of on-policy rows do not depend on hinted rows (the loss does not apply
    them to hinted rows); batch normalisation is fine where no row is hinted."""
    check_config(_cfg(*IS_TOKEN))
    check_config(_cfg("algorithm.rollout_correction.rollout_is=sequence"))
    check_config(_cfg(*IS_TOKEN, "algorithm.rollout_correction.rollout_is_batch_normalize=true", "lte.mode=grpo_extra"))


def test_luffy_mode_does_not_need_rollout_log_probs():
    check_config(_cfg("lte.loss.off_policy_mode=luffy_prob", "actor_rollout_ref.rollout.calculate_log_probs=false"))


@pytest.mark.parametrize("mode", ["lte", "grpo", "grpo_extra"])
def test_partial_rollout_trainer_is_accepted_for_the_paper_arms(mode):
    check_config(_cfg(f"lte.mode={mode}", "trainer.v1.trainer_mode=colocate_async"))


def test_luffy_refuses_the_partial_rollout_trainer():
    with pytest.raises(ValueError, match=r"trainer.v1.trainer_mode=colocate_async with lte.mode=luffy"):
        check_config(_cfg(*LUFFY, "trainer.v1.trainer_mode=colocate_async"))


def test_all_problems_are_reported_at_once():
    with pytest.raises(ValueError) as err:
        check_config(_cfg("algorithm.adv_estimator=gae", "distillation.enabled=true"))
    assert "algorithm.adv_estimator" in str(err.value) and "distillation.enabled" in str(err.value)


def _replay_buffer(*overrides: str):
    """verl's replay buffer as LTE's trainer for the config's mode builds it (the method needs only the config)."""
    from recipe.lte.trainer import LTE_TRAINERS

    config = prepare_config(_cfg(*overrides))
    trainer = object.__new__(LTE_TRAINERS[config.trainer.v1.trainer_mode])
    trainer.config = config
    trainer.trainer_mode = config.trainer.v1.trainer_mode
    return trainer._build_replay_buffer()


def test_replay_buffer_poll_interval_is_verls_unless_set():
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

    default = _replay_buffer()
    assert type(default) is ReplayBuffer and default.poll_interval == 2.0  # verl 0.9.1's hard-coded value
    assert _replay_buffer("+trainer.v1.sampler.poll_interval=0.1").poll_interval == 0.1
    with pytest.raises(ValueError, match=r"trainer.v1.sampler.poll_interval=0: must be"):
        _replay_buffer("+trainer.v1.sampler.poll_interval=0")


def test_partial_rollout_trainer_builds_verls_async_buffer_with_the_poll_interval():
    from verl.trainer.ppo.v1.replay_buffer import ReplayBufferAsync

    buffer = _replay_buffer("trainer.v1.trainer_mode=colocate_async", "+trainer.v1.sampler.poll_interval=0.1")
    assert type(buffer) is ReplayBufferAsync and buffer.poll_interval == 0.1


def test_lte_trainers_extend_verls_trainer_of_the_same_name():
    from verl.trainer.ppo.v1 import trainer_base
    from verl.trainer.ppo.v1.trainer_colocate_async import PPOTrainerColocateAsync
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    from recipe.lte.trainer import LTE_TRAINERS, LTETrainerMixin

    assert set(LTE_TRAINERS) <= set(trainer_base.TRAINER_REGISTRY)  # verl's own names, nothing new
    for name, verl_cls in {"sync": PPOTrainerSync, "colocate_async": PPOTrainerColocateAsync}.items():
        cls = LTE_TRAINERS[name]
        # LTE's additions come first in the MRO, so their super() calls reach verl's trainer of that mode.
        assert cls.__mro__[1] is LTETrainerMixin and cls.__mro__[2] is verl_cls
