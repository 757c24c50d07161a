"""Every paper preset composes against installed verl, passes verl's validation + LTE's start-up refusals + the GPU
layout checks, and carries the paper's values (lte-method.md); run_lte.sh's dry run, list and errors on CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from recipe.lte.dry_run import compose_and_check
from recipe.lte.presets import DEFAULT_GPU_PRESET, check_layout, data_files, list_presets, preset_overrides

REPO = Path(__file__).resolve().parents[1]

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
    assert cfg.lte.loss.gamma == 0.1 and cfg.lte.loss.off_policy_mode == "behavior_ratio"
    assert arr.actor.use_kl_loss is False and cfg.algorithm.use_kl_in_reward is False
    assert cfg.data.max_prompt_length == 1024
    assert (arr.actor.clip_ratio_low, arr.actor.clip_ratio_high) == (0.2, 0.2)
    # (ours) stated explicitly
    assert cfg.algorithm.norm_adv_by_std_in_grpo is True
    assert cfg.algorithm.adv_estimator == "grpo"
    # layout: FSDP2 + vLLM hybrid engine on 8 GPUs per node, loggers as verl does
    assert arr.actor.strategy == "fsdp2" and arr.rollout.name == "vllm" and arr.rollout.mode == "async"
    assert cfg.trainer.n_gpus_per_node == 8 and cfg.trainer.nnodes == 1
    assert list(cfg.trainer.logger) == ["console", "wandb", "tensorboard"]
    assert cfg.trainer.experiment_name == name
    assert arr.model.path == "/local/weights"


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


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        ["bash", str(REPO / "run_lte.sh"), *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_run_lte_dry_run_prints_the_validated_config(tmp_path):
    res = _run(
        "--dry-run",
        "--preset",
        "qwen3-8b-lte-dagger",
        "actor_rollout_ref.model.path=/local/Qwen3-8B-Base",
        env={"LTE_DATA_DIR": str(tmp_path / "d"), "LTE_CKPT_DIR": str(tmp_path / "c")},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    assert "composed and validated" in out
    assert "path: /local/Qwen3-8B-Base" in out
    assert f"train_files: {tmp_path}/d/openr1.parquet" in out
    assert f"default_local_dir: {tmp_path}/c/lte/qwen3-8b-lte-dagger" in out
    assert "entropy_coeff: 0.001" in out
    assert not (tmp_path / "d").exists() and not (tmp_path / "c").exists()  # a dry run writes nothing


@pytest.mark.slow
def test_run_lte_refuses_an_invalid_override_with_the_key():
    res = _run("--dry-run", "--preset", "qwen3-4b-lte", "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=4096")
    assert res.returncode == 2
    assert "ppo_max_token_len_per_gpu=4096" in res.stderr and "at least 9728" in res.stderr


@pytest.mark.slow
def test_run_lte_builds_missing_data_with_data_prep(tmp_path):
    # Offline (HF_HUB_OFFLINE=1) data_prep cannot download: run_lte.sh must have asked it for the right sources
    # and stop with a clear message before any training starts.
    res = _run("--preset", "qwen3-4b-lte", env={"LTE_DATA_DIR": str(tmp_path)})
    assert res.returncode == 1
    assert "building it with python -m data_prep" in res.stderr
    assert "data_prep failed for openr1 benchmarks" in res.stderr


def test_run_lte_list_help_and_errors():
    res = _run("--list")
    assert res.returncode == 0
    assert [line.split()[0] for line in res.stdout.splitlines()] == sorted(ARMS)
    assert "--dry-run" in _run("--help").stdout
    res = _run("--preset", "qwen3-4b-lte", "--bogus")
    assert res.returncode == 1 and "unknown option --bogus" in res.stderr
    res = _run("--dry-run", "--preset", "nope")
    assert res.returncode == 2 and "unknown preset 'nope'" in res.stderr


def test_run_lte_without_gpu_or_preset_goes_to_the_cpu_demo(tmp_path):
    # PATH without nvidia-smi: the machine has no CUDA GPU as far as run_lte.sh can tell. An option only the demo
    # could take reaches the demo's own argument parser, which refuses it before anything starts.
    res = _run("--no-such-demo-option", env={"PATH": "/usr/bin:/bin"})
    assert res.returncode == 2, res.stderr[-2000:]
    assert "python -m recipe.lte.cpu_demo" in res.stderr and "--no-such-demo-option" in res.stderr


@pytest.mark.slow
def test_the_training_entry_point_resolves_presets():
    # hydra's --cfg job prints the config main_lte would run with, without running it
    res = subprocess.run(
        [sys.executable, "-m", "recipe.lte.main_lte", "+preset=qwen3-8b-lte-dagger", "--cfg", "job"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "experiment_name: qwen3-8b-lte-dagger" in res.stdout and "entropy_coeff: 0.001" in res.stdout
