"""run_lte.sh as a user calls it, on CPU: dry run, list, help, errors, data hand-off, the CPU demo hand-off, and the
training entry point resolving presets (each a real subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from recipe.lte.tools.presets import list_presets

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        ["bash", str(REPO / "run_lte.sh"), *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=300
    )


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


def test_run_lte_refuses_an_invalid_override_with_the_key():
    res = _run("--dry-run", "--preset", "qwen3-4b-lte", "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=4096")
    assert res.returncode == 2
    assert "ppo_max_token_len_per_gpu=4096" in res.stderr and "at least 9728" in res.stderr


def test_run_lte_builds_missing_data_with_data_prep(tmp_path):
    # Offline (HF_HUB_OFFLINE=1) data_prep cannot download: run_lte.sh must have asked it for the right sources
    # and stop with a clear message before any training starts. (--no-preflight: the checklist would stop first
    # on a machine without GPUs.)
    res = _run("--no-preflight", "--preset", "qwen3-4b-lte", env={"LTE_DATA_DIR": str(tmp_path)})
    assert res.returncode == 1
    assert "building it with python -m data_prep" in res.stderr
    assert "data_prep failed for openr1 benchmarks" in res.stderr


def test_run_lte_preflight_prints_the_checklist_and_a_run_stops_on_it(tmp_path):
    # This machine: no GPU (PATH without nvidia-smi), no flash-attn, no cached model: those fail with their fix;
    # data (missing, buildable), disk and logger are evaluated for real; no RAY_ADDRESS.
    env = {
        "LTE_DATA_DIR": str(tmp_path / "d"),
        "LTE_CKPT_DIR": str(tmp_path / "c"),
        "PATH": "/usr/bin:/bin",
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "RAY_ADDRESS": "",
    }
    res = _run("--preflight", "--preset", "qwen3-8b-lte", env=env)
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
    lines = {
        line.split()[1]: line.split()[0]
        for line in res.stdout.splitlines()
        if line.startswith("  ") and len(line.split()) > 2 and line.split()[0] in ("ok", "warn", "FAIL", "skip")
    }
    assert list(lines) == ["config", "gpus", "flash-attn", "model", "data", "disk", "logger", "ray"]
    assert lines["config"] == "ok" and lines["gpus"] == "FAIL" and lines["model"] == "FAIL"
    assert lines["logger"] == "ok" and lines["ray"] == "skip"
    assert "fix: run on a node with 8 GPUs" in res.stdout and "hf download Qwen/Qwen3-8B-Base" in res.stdout
    assert "98.3 GB" in res.stdout  # the 8B checkpoint size, from the model's architecture
    assert not (tmp_path / "d").exists() and not (tmp_path / "c").exists()  # the checklist writes nothing
    # A training run checks first and stops before building data or starting anything.
    res = _run("--preset", "qwen3-8b-lte", env=env)
    assert res.returncode == 1 and "preflight failed" in res.stderr and "data_prep" not in res.stderr


def test_run_lte_list_help_and_errors():
    res = _run("--list")
    assert res.returncode == 0
    assert [line.split()[0] for line in res.stdout.splitlines()] == list_presets()
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
    assert "python -m recipe.lte.demo.run" in res.stderr and "--no-such-demo-option" in res.stderr


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


def test_run_lte_reproduce_hands_every_argument_to_the_reproduction(tmp_path):
    res = _run("--reproduce", "--dry-run", "--quick", "--arms", "grpo,lte", "--out", str(tmp_path / "r"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "[dry-run] 2 run(s) of 2 arm(s) x 1 seed(s)" in res.stdout
    assert "-m recipe.lte.demo.run" in res.stdout and not (tmp_path / "r").exists()
