"""The smoke run's bookkeeping (recipe/lte/tools/smoke.py) on real files; the run itself is tests/e2e/test_smoke_run.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

from recipe.lte.tools import smoke as S


def test_user_overrides_win_over_the_smoke_settings():
    merged = S.merge_overrides(list(S.SMOKE_OVERRIDES), ["data.train_batch_size=32", "+lte.seed=3"])
    assert "data.train_batch_size=16" not in merged and merged[-2:] == ["data.train_batch_size=32", "+lte.seed=3"]
    assert "trainer.save_freq=1" in merged and f"trainer.total_training_steps={S.SMOKE_STEPS}" in merged


def test_saved_checkpoints_and_metric_peaks_from_a_run_folder(tmp_path):
    for step, size in ((1, 100), (2, 300)):
        actor = tmp_path / f"global_step_{step}" / "actor"
        (actor / "huggingface").mkdir(parents=True)
        (actor / "model_world_size_1_rank_0.pt").write_bytes(b"x" * size)
        (actor / "huggingface" / "config.json").write_text("{}")
    (tmp_path / "global_step_3" / "actor").mkdir(parents=True)  # an interrupted save: no shards
    assert S.saved_checkpoints(tmp_path) == {1: 102, 2: 302}
    records = [{"step": 1, "perf/max_memory_allocated_gb": 30.5}, {"step": 2, "perf/max_memory_allocated_gb": 41.0}]
    (tmp_path / "lte_metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert S.metric_peak(tmp_path, "perf/max_memory_allocated_gb") == 41.0
    assert S.metric_peak(tmp_path, "perf/absent") is None  # never above 0 (the CPU platform reports 0)
    assert S._check_training(tmp_path) == "steps [1, 2], checkpoints [1, 2]"
    (tmp_path / "global_step_2" / "actor" / "model_world_size_1_rank_0.pt").unlink()
    assert S._check_training(tmp_path).startswith("FAILED")


def test_peak_sampler_keeps_the_peak_of_each_phase():
    values = iter([5, 9, 7] + [1] * 1000)
    sampler = S.PeakSampler(lambda: next(values), interval=0.01)
    sampler.phase = "train"
    sampler.start()
    time.sleep(0.2)
    sampler.phase = "merge"
    time.sleep(0.1)
    sampler.stop()
    assert sampler.peaks["train"] == 9 and sampler.peaks["merge"] == 1


def test_report_lines():
    summary = {"benchmarks": [{"data_source": "math", "problems": 1, "n": 2, "pass_at_k": {"1": 0.5, "2": 1.0}}]}
    assert S.format_eval(summary) == "math 1 problem(s) x 2: pass@1 0.50, pass@2 1.00"
    report = {
        "label": "qwen3-4b-lte",
        "passed": True,
        "seconds": 300.0,
        "memory_kind": "nvidia-smi",
        "phases": [{"name": "train", "rc": 0, "seconds": 200.0, "peak_bytes": 60 * 2**30}],
        "estimates": {"train": "per GPU: rollout 59.2 GiB"},
        "notes": ["a note"],
    }
    text = S.format_report(report)
    assert "qwen3-4b-lte: passed in 300 s" in text and "60.0 GiB  per GPU: rollout 59.2 GiB" in text
    assert text.endswith("  a note")


def test_run_memory_counts_the_runs_processes_and_the_launcher():
    # A child of the run (its LTE_RUN_ID) holding 300 MiB it has written: the run's PSS sum includes it.
    run_id = f"pytest-smoke-mem-{uuid.uuid4().hex[:8]}"
    hold = "import sys; b = b'x' * (300 * 2**20); print('ready', flush=True); sys.stdin.read()"
    child = subprocess.Popen(
        [sys.executable, "-c", hold],
        env={**os.environ, "LTE_RUN_ID": run_id},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        with_child = S.run_memory(run_id)
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    alone = S.run_memory(run_id)  # only this process now
    assert with_child - alone > 300 * 2**20, (with_child, alone)
    assert alone > 0


def test_a_presets_smoke_config_passes_verls_validation_and_keeps_its_layout(tmp_path):
    # The GPU path's config, composed and validated here as on the GPU node (nothing runs): the preset's model and
    # layout, 2 steps saving at each, the checkpoints under --out, a user override winning.
    from recipe.lte.tools.dry_run import compose_and_check
    from recipe.lte.tools.preflight import checkpoint_plan, model_shape

    plan = S.preset_plan("qwen3-8b-lte", tmp_path, ["trainer.experiment_name=mine"], "rid")
    assert plan.env["LTE_RUN_ID"] == "rid" and plan.on_gpu
    config = compose_and_check(plan.preset, plan.overrides)
    assert config.trainer.total_training_steps == S.SMOKE_STEPS and config.trainer.save_freq == 1
    assert config.trainer.default_local_dir == str(tmp_path / "ckpt")
    assert config.data.train_batch_size == 16 and config.actor_rollout_ref.actor.ppo_mini_batch_size == 8
    assert config.trainer.experiment_name == "mine"
    assert config.actor_rollout_ref.model.path == "Qwen/Qwen3-8B-Base" and config.trainer.n_gpus_per_node == 8

    # Both saves stay on disk (keep 2): the disk check of the smoke's own preflight counts them.
    shape, _ = model_shape(str(config.actor_rollout_ref.model.path))
    ckpt = checkpoint_plan(config, shape)
    assert (ckpt.saves, ckpt.on_disk) == (2, 2)

    # The evaluation uses the run's vLLM layout and lengths; the phases are the user-facing commands, in order.
    rollout = config.actor_rollout_ref.rollout
    args = S.gpu_eval_args(config)
    assert args[args.index("--tensor-parallel-size") + 1] == str(rollout.tensor_model_parallel_size) == "2"
    assert args[args.index("--max-model-len") + 1] == str(rollout.prompt_length + rollout.response_length)
    phases = S.phase_commands(plan, tmp_path / "ckpt", tmp_path / "hf", tmp_path / "eval", ["val.parquet"])
    assert [p[0] for p in phases] == list(S.PHASES)
    assert phases[1][1][1:4] == ["-m", "recipe.lte.main_lte", "+preset=qwen3-8b-lte"]
    assert phases[0][1][3:5] == ["--preset", "qwen3-8b-lte"] and "trainer.save_freq=1" in phases[0][1]


def test_demo_platform_overrides_size_the_kv_cache_from_the_runs_last_values(tmp_path):
    # The smoke run and the demo launcher share these overrides: vLLM's KV cache for max_num_seqs sequences of
    # max_model_len tokens, the user's value winning (hand computation: K and V x 2 layers x 2 KV heads x 16 dims
    # x 4 bytes = 512 bytes a token; sequences rounded up to 128-token blocks; x1.25 headroom).
    from recipe.lte.demo.run import platform_overrides

    (tmp_path / "config.json").write_text(
        json.dumps({"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "num_hidden_layers": 2})
    )
    user = ["actor_rollout_ref.rollout.max_model_len=300", "actor_rollout_ref.rollout.max_num_seqs=10"]
    kv = [o for o in platform_overrides(user, "/tmp/r", str(tmp_path)) if "kv_cache_memory_bytes=" in o]
    assert kv == [f"+actor_rollout_ref.rollout.engine_kwargs.vllm.kv_cache_memory_bytes={512 * 10 * 384 * 5 // 4}"]
    user += ["actor_rollout_ref.rollout.max_num_seqs=20"]  # hydra takes the last value
    kv = [o for o in platform_overrides(user, "/tmp/r", str(tmp_path)) if "kv_cache_memory_bytes=" in o]
    assert kv[0].endswith(f"={512 * 20 * 384 * 5 // 4}")
