"""Every paper preset composes against installed verl, passes verl's validation + LTE's start-up refusals + the GPU
layout checks, and carries the paper's values (docs/method.md). run_lte.sh itself: tests/integration/test_run_lte_sh.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from recipe.lte.tools.dry_run import compose_and_check
from recipe.lte.tools.presets import DEFAULT_GPU_PRESET, check_layout, data_files, list_presets, preset_overrides

REPO = Path(__file__).resolve().parents[2]

# The arms of the paper's tables (name -> lte.mode, entropy_coeff, model).
ARMS = {
    "qwen3-4b-grpo": ("grpo", 0.0, "Qwen/Qwen3-4B-Base"),
    "qwen3-4b-grpo-extra": ("grpo_extra", 0.0, "Qwen/Qwen3-4B-Base"),
    "qwen3-4b-lte": ("lte", 0.0, "Qwen/Qwen3-4B-Base"),
    "qwen3-4b-lte-dagger": ("lte", 0.001, "Qwen/Qwen3-4B-Base"),
    "qwen3-4b-grpo-ent": ("grpo", 0.001, "Qwen/Qwen3-4B-Base"),
    "qwen3-4b-grpo-extra-ent": ("grpo_extra", 0.001, "Qwen/Qwen3-4B-Base"),
    "qwen3-8b-grpo": ("grpo", 0.0, "Qwen/Qwen3-8B-Base"),
    "qwen3-8b-grpo-extra": ("grpo_extra", 0.0, "Qwen/Qwen3-8B-Base"),
    "qwen3-8b-lte": ("lte", 0.0, "Qwen/Qwen3-8B-Base"),
    "qwen3-8b-lte-dagger": ("lte", 0.001, "Qwen/Qwen3-8B-Base"),
    # LUFFY (the external-guidance baseline): LUFFY's train.sh sets entropy_coeff=0.001
    "qwen3-4b-luffy": ("luffy", 0.001, "Qwen/Qwen3-4B-Base"),
    "qwen3-8b-luffy": ("luffy", 0.001, "Qwen/Qwen3-8B-Base"),
}


def test_the_presets_are_exactly_the_paper_arms():
    assert list_presets() == sorted(ARMS)
    assert DEFAULT_GPU_PRESET == "qwen3-4b-lte"


@pytest.fixture(scope="module")
def composed():
    """Each preset composed once (with a local model path: no weights are read)."""
    return {name: compose_and_check(name, ["actor_rollout_ref.model.path=/local/weights"]) for name in ARMS}


@pytest.mark.parametrize("name", sorted(ARMS))
def test_preset_carries_the_paper_values(composed, name):
    cfg = composed[name]
    arr = cfg.actor_rollout_ref
    mode, entropy, _ = ARMS[name]
    assert cfg.lte.mode == mode
    assert arr.actor.entropy_coeff == entropy
    # (paper): G, temperature, response length, steps, binary reward threshold
    assert arr.rollout.n == 8
    assert arr.rollout.temperature == 1.0
    assert cfg.data.max_response_length == 8192 and arr.rollout.response_length == 8192
    assert cfg.trainer.total_training_steps == 500
    assert cfg.lte.pass_threshold == 1.0 and cfg.lte.num_extra_rollouts is None
    # (ctx): batch, mini-batch, lr, gamma, no KL, prompt length, clip
    assert cfg.data.train_batch_size == 128
    assert arr.actor.ppo_mini_batch_size == 64
    assert arr.actor.optim.lr == 1e-6
    assert cfg.lte.loss.gamma == 0.1
    assert arr.actor.use_kl_loss is False and cfg.algorithm.use_kl_in_reward is False
    assert cfg.data.max_prompt_length == 1024
    assert cfg.algorithm.adv_estimator == "grpo"
    if mode == "luffy":
        _assert_luffys_setup(cfg)
    else:
        assert cfg.lte.loss.off_policy_mode == "behavior_ratio"
        assert (arr.actor.clip_ratio_low, arr.actor.clip_ratio_high) == (0.2, 0.2)
        assert cfg.algorithm.norm_adv_by_std_in_grpo is True  # (ours) stated explicitly
        assert arr.actor.loss_agg_mode == "token-mean" and arr.rollout.calculate_log_probs is True
        assert cfg.data.train_files.endswith("/openr1.parquet")
    # layout: FSDP2 + vLLM hybrid engine on 8 GPUs per node, loggers as verl does
    assert arr.actor.strategy == "fsdp2" and arr.rollout.name == "vllm" and arr.rollout.mode == "async"
    assert cfg.trainer.n_gpus_per_node == 8 and cfg.trainer.nnodes == 1
    assert list(cfg.trainer.logger) == ["console", "wandb", "tensorboard"]
    assert cfg.trainer.experiment_name == name
    assert arr.model.path == "/local/weights"


def _assert_luffys_setup(cfg):
    """LUFFY's published setup (exp_scripts/train.sh of github.com/ElliottYan/LUFFY), key by key."""
    arr = cfg.actor_rollout_ref
    assert cfg.lte.luffy.num_on_policy is None and cfg.lte.luffy.reference_groups == "all"  # n=8, n_prefix=1
    assert cfg.lte.loss.off_policy_mode == "luffy_prob"  # off_policy_reshape=p_div_p_0.1
    assert cfg.algorithm.norm_adv_by_std_in_grpo is False  # algorithm.grpo_use_std=False
    # loss_remove_clip=True: bounds that never bind (log-ratio clamped to +-20 and exp(20) < 1e9)
    assert (arr.actor.clip_ratio_low, arr.actor.clip_ratio_high, arr.actor.clip_ratio_c) == (1.0, 1e9, 1e9)
    # loss_remove_token_mean=True: token sum / max response length
    assert arr.actor.loss_agg_mode == "seq-mean-token-sum-norm" and arr.actor.loss_scale_factor == 8192
    assert arr.rollout.calculate_log_probs is False  # the reference row has no behaviour log-probs
    assert cfg.data.train_files.endswith("/openr1_luffy.parquet")  # LUFFY's system prompt + references


@pytest.mark.parametrize("name", sorted(ARMS))
def test_preset_token_budgets_hold_one_longest_sequence(composed, name):
    arr = composed[name].actor_rollout_ref
    longest = arr.rollout.prompt_length + arr.rollout.response_length
    assert longest == 1536 + 8192
    assert arr.rollout.prompt_length - composed[name].data.max_prompt_length >= composed[name].lte.min_hint_room_tokens
    for budget in (
        arr.actor.ppo_max_token_len_per_gpu,
        arr.rollout.log_prob_max_token_len_per_gpu,
        arr.ref.log_prob_max_token_len_per_gpu,
    ):
        assert budget >= longest


def test_model_defaults_to_the_hub_base_model():
    for name, (_, _, model) in ARMS.items():
        if name in ("qwen3-4b-lte", "qwen3-8b-lte"):
            assert compose_and_check(name).actor_rollout_ref.model.path == model


def test_data_files_follow_lte_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("LTE_DATA_DIR", str(tmp_path))
    cfg = compose_and_check("qwen3-4b-grpo")
    assert data_files(cfg) == [str(tmp_path / "openr1.parquet"), str(tmp_path / "benchmarks_val.parquet")]


def test_layout_check_refuses_small_budgets_and_split_replicas():
    cfg = compose_and_check("qwen3-8b-lte")
    cfg.actor_rollout_ref.actor.ppo_max_token_len_per_gpu = 9727  # one token short of 1536 + 8192
    cfg.actor_rollout_ref.rollout.tensor_model_parallel_size = 3
    with pytest.raises(ValueError) as err:
        check_layout(cfg)
    assert "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=9727" in str(err.value)
    assert "at least 9728" in str(err.value)
    assert "tensor_model_parallel_size=3" in str(err.value)
    cfg.actor_rollout_ref.actor.ppo_max_token_len_per_gpu = 9728
    cfg.actor_rollout_ref.rollout.tensor_model_parallel_size = 4
    check_layout(cfg)


def test_preset_overrides_refuse_unknown_and_duplicate_presets():
    assert preset_overrides("qwen3-4b-lte", ["a=1"]) == ["+preset=qwen3-4b-lte", "a=1"]
    with pytest.raises(ValueError, match="unknown preset 'qwen3-4b-ppo'"):
        preset_overrides("qwen3-4b-ppo")
    with pytest.raises(ValueError, match="--preset NAME"):
        preset_overrides("qwen3-4b-lte", ["+preset=qwen3-8b-lte"])


def test_lte_refusals_still_apply_through_a_preset():
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.rollout\.prompt_length"):
        compose_and_check("qwen3-4b-lte", ["actor_rollout_ref.rollout.prompt_length=1100"])


# ---- run_lte.sh on CPU (subprocess) ----
