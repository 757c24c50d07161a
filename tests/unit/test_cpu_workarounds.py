"""The CPU platform's workarounds (verl_ext/cpu/workarounds/) and its env and overrides, in-process: each workaround
is pinned to the installed upstream version, the patches do what they say, the overrides name real verl keys."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from verl_ext.cpu.env import ACTIVATE_MODULE, cpu_env, cpu_overrides, kv_cache_bytes
from verl_ext.cpu.workarounds import all_workarounds
from verl_ext.cpu.workarounds.stdlib import vllm_version_with_cpu_fallback
from verl_ext.cpu.workarounds.verl_0_9_1 import cpu_process_group_backend
from verl_ext.cpu.workarounds.vllm_cpu_0_31 import dispatch_plain_cpu_gemm

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_every_workaround_is_pinned_to_the_installed_version():
    """An upgrade of verl, vllm-cpu, Ray or TransferQueue fails here: re-check that upstream's workarounds, then
    update their pinned version (or delete those no longer needed)."""
    stale = [
        f"{w.upstream} {w.version} (installed {importlib.metadata.version(w.upstream)}): {w.target}"
        for w in all_workarounds()
        if importlib.metadata.version(w.upstream) != w.version
    ]
    assert not stale, "re-check these workarounds against the new version:\n" + "\n".join(stale)


def test_every_workaround_says_what_why_and_when_to_delete():
    for w in all_workarounds():
        assert all(len(x) > 10 for x in (w.target, w.symptom, w.fix, w.delete_when)), w


def test_importing_the_workarounds_changes_nothing():
    code = (
        "import importlib.metadata as m, verl_ext.cpu.env, verl_ext.cpu.workarounds as w; w.all_workarounds();"
        "import verl.utils.distributed as d;"
        "print(hasattr(m.version, '_lte_vllm_cpu_fallback'), hasattr(d.initialize_global_process_group_ray,"
        " '_lte_cpu_patched'))"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert res.stdout.split() == ["False", "False"]


def test_process_group_backend_is_not_duplicated() -> None:
    assert cpu_process_group_backend(None) == "cpu:gloo"
    assert cpu_process_group_backend("cpu:gloo,cuda:nccl") == "cpu:gloo,cuda:nccl"


def test_vllm_version_falls_back_to_the_cpu_distribution() -> None:
    installed = {"vllm-cpu": "0.31.0", "verl": "0.9.1"}

    def version(name: str) -> str:  # stand-in for importlib.metadata.version over a fixed set of dists
        if name not in installed:
            raise importlib.metadata.PackageNotFoundError(name)
        return installed[name]

    patched = vllm_version_with_cpu_fallback(version)
    # Same string as vllm-cpu's own probe (vllm.platforms.vllm_version_matches_substr), so it still says "cpu".
    assert patched("vllm") == "0.31.0+cpu"
    assert patched("verl") == "0.9.1"
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        patched("sglang")
    assert vllm_version_with_cpu_fallback(patched) is patched
    installed["vllm"] = "0.24.0"  # a real vllm wins
    assert patched("vllm") == "0.24.0"
    del installed["vllm"], installed["vllm-cpu"]
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        patched("vllm")


def test_cpu_env_appends_the_plugin_module_once() -> None:
    env = cpu_env({"VERL_USE_EXTERNAL_MODULES": "my.plugin"})
    assert env["VERL_USE_EXTERNAL_MODULES"] == f"my.plugin,{ACTIVATE_MODULE}"
    assert cpu_env(env)["VERL_USE_EXTERNAL_MODULES"] == env["VERL_USE_EXTERNAL_MODULES"]
    assert (env["VERL_PLATFORM"], env["VERL_ENGINE_DEVICE"], env["VLLM_TARGET_DEVICE"]) == ("cpu", "cuda", "cpu")


def test_cpu_overrides_compose_with_verls_trainer_config() -> None:
    """Every override names a real key (or adds one with '+'): hydra rejects a misspelled key."""
    import verl
    from hydra import compose, initialize_config_dir

    config_dir = str(Path(verl.__file__).parent / "trainer" / "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=cpu_overrides(num_cpus=12, ray_temp_dir="/tmp/lte-ray-x"))
    assert cfg.ray_kwargs.ray_init.num_cpus == 12
    assert cfg.ray_kwargs.ray_init.num_gpus == 1
    assert cfg.ray_kwargs.ray_init.address == "local"
    assert cfg.ray_kwargs.ray_init._temp_dir == "/tmp/lte-ray-x"
    assert cfg.transfer_queue.backend.SimpleStorage.num_data_storage_units == 1
    assert cfg.actor_rollout_ref.actor.strategy == cfg.actor_rollout_ref.ref.strategy == "fsdp2"
    assert not cfg.actor_rollout_ref.actor.fsdp_config.use_torch_compile
    assert not cfg.actor_rollout_ref.ref.fsdp_config.use_torch_compile
    assert (
        "kv_cache_memory_bytes" not in cfg.actor_rollout_ref.rollout.engine_kwargs.vllm
    )  # vLLM's default unless given
    assert cfg.actor_rollout_ref.model.override_config.attn_implementation == "sdpa"
    rollout = cfg.actor_rollout_ref.rollout
    assert (rollout.free_cache_engine, rollout.enable_sleep_mode, rollout.enforce_eager) == (False, False, True)
    assert rollout.load_format == "auto"
    assert cfg.trainer.use_v1 and cfg.trainer.v1.trainer_mode == "sync"


class _Layer(torch.nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(weight, requires_grad=False)


def test_plain_cpu_gemm_reads_the_live_weight() -> None:
    layer = _Layer(torch.randn(3, 4))
    dispatch_plain_cpu_gemm(lambda *a: pytest.fail("2-D weights must not reach vLLM's dispatch"))(layer, True)
    x = torch.randn(2, 4)
    bias = torch.randn(3)
    assert torch.allclose(layer.cpu_linear(x, layer.weight, bias), x @ layer.weight.T + bias)
    layer.weight.data.copy_(torch.eye(3, 4))  # what a weight sync does: in-place
    assert torch.allclose(layer.cpu_linear(x, layer.weight, None), x[:, :3])
    assert layer.weight.shape == (3, 4)


def test_non_2d_weights_keep_vllms_dispatch() -> None:
    calls = []
    layer = _Layer(torch.randn(4, 1, 3))
    dispatch_plain_cpu_gemm(lambda lyr, remove: calls.append((lyr, remove)))(layer, False)
    assert calls == [(layer, False)]


def test_cpu_overrides_size_vllms_kv_cache_when_given() -> None:
    import verl
    from hydra import compose, initialize_config_dir

    config_dir = str(Path(verl.__file__).parent / "trainer" / "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=cpu_overrides(kv_cache_bytes=123456789))
    # verl passes rollout.engine_kwargs.vllm to vLLM's engine arguments (vllm_async_server.py).
    assert cfg.actor_rollout_ref.rollout.engine_kwargs.vllm.kv_cache_memory_bytes == 123456789
    with pytest.raises(ValueError, match="kv_cache_bytes must be > 0"):
        cpu_overrides(kv_cache_bytes=0)


def test_kv_cache_bytes_from_the_model_config(tmp_path: Path) -> None:
    # 2 layers, 4 KV heads (GQA under 8 heads), head_dim 256/8 = 32: K and V, 4 bytes each = 2*2*4*32*4 = 2048 B/token.
    cfg = {"num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 4, "hidden_size": 256}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    # 3 sequences of 200 tokens -> 2 blocks of 128 each -> 768 tokens, no headroom.
    assert kv_cache_bytes(str(tmp_path), max_model_len=200, max_num_seqs=3, headroom=1.0) == 2048 * 768
    assert kv_cache_bytes(str(tmp_path), max_model_len=256, max_num_seqs=3, headroom=1.5) == 2048 * 768 * 3 // 2
    # An explicit head_dim wins over hidden/heads; a missing num_key_value_heads means MHA.
    (tmp_path / "config.json").write_text(
        json.dumps({"num_hidden_layers": 1, "num_attention_heads": 2, "hidden_size": 128, "head_dim": 16})
    )
    assert kv_cache_bytes(str(tmp_path), max_model_len=128, max_num_seqs=1, headroom=1.0) == 2 * 1 * 2 * 16 * 4 * 128


def test_cpu_overrides_give_ray_one_logical_gpu_per_data_parallel_rank() -> None:
    import verl
    from hydra import compose, initialize_config_dir

    config_dir = str(Path(verl.__file__).parent / "trainer" / "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=cpu_overrides(n_gpus_per_node=2))
    assert cfg.trainer.n_gpus_per_node == 2 and cfg.ray_kwargs.ray_init.num_gpus == 2
    assert sum(o.startswith("+ray_kwargs.ray_init.num_gpus=") for o in cpu_overrides(n_gpus_per_node=2)) == 1
    with pytest.raises(ValueError, match="n_gpus_per_node must be >= 1"):
        cpu_overrides(n_gpus_per_node=0)


def test_the_demo_passes_the_users_rank_count_to_the_cpu_platform(tiny_model_dir: str) -> None:
    from recipe.lte.demo.run import train_command

    cmd = train_command(["trainer.n_gpus_per_node=2"], "/tmp/lte-ray-x", tiny_model_dir)
    assert "+ray_kwargs.ray_init.num_gpus=2" in cmd and "trainer.n_gpus_per_node=2" in cmd
    assert "+ray_kwargs.ray_init.num_gpus=1" in train_command([], "/tmp/lte-ray-x", tiny_model_dir)


def test_cpu_overrides_joining_a_cluster_leave_ray_init_to_the_cluster() -> None:
    import verl
    from hydra import compose, initialize_config_dir

    joined = cpu_overrides(n_gpus_per_node=1, nnodes=2, join_cluster=True, ray_temp_dir="/tmp/x", kv_cache_bytes=7)
    # Ray refuses num_cpus / num_gpus from a driver that joins, and address=local would start a cluster of its own.
    assert not [o for o in joined if "ray_init" in o], joined
    config_dir = str(Path(verl.__file__).parent / "trainer" / "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=joined)
    assert cfg.trainer.nnodes == 2 and cfg.trainer.n_gpus_per_node == 1
    assert cfg.ray_kwargs.ray_init.num_cpus is None and "address" not in cfg.ray_kwargs.ray_init
    assert cfg.actor_rollout_ref.rollout.engine_kwargs.vllm.kv_cache_memory_bytes == 7
    # The rest of the CPU platform is the same as for a local run.
    local = cpu_overrides(n_gpus_per_node=1, ray_temp_dir="/tmp/x", kv_cache_bytes=7)
    assert [o for o in local if "ray_init" not in o and "nnodes" not in o] == [o for o in joined if "nnodes" not in o]


def test_cpu_overrides_refuse_several_nodes_without_a_cluster_to_join() -> None:
    with pytest.raises(ValueError, match=r"trainer.nnodes=2 on CPU needs a Ray cluster .*slurm_lte.sbatch"):
        cpu_overrides(nnodes=2)
    with pytest.raises(ValueError, match="nnodes must be >= 1"):
        cpu_overrides(nnodes=0, join_cluster=True)


def test_the_cpu_platforms_variables_reach_the_workers_of_a_joined_cluster() -> None:
    # Workers on other nodes start from their node's environment: only the job's runtime_env brings these.
    from recipe.lte.main_lte import FORWARDED_ENV

    assert set(cpu_env({})) <= set(FORWARDED_ENV)


def test_a_cpu_run_joins_ray_address_only_when_asked() -> None:
    from recipe.lte.demo.run import joins_ray_cluster

    assert not joins_ray_cluster({"RAY_ADDRESS": "10.0.0.1:6379"})  # a stray RAY_ADDRESS is not joined
    assert not joins_ray_cluster({"LTE_JOIN_RAY_CLUSTER": "0", "RAY_ADDRESS": "10.0.0.1:6379"})
    assert joins_ray_cluster({"LTE_JOIN_RAY_CLUSTER": "1", "RAY_ADDRESS": "10.0.0.1:6379"})
    with pytest.raises(ValueError, match="RAY_ADDRESS is not set"):
        joins_ray_cluster({"LTE_JOIN_RAY_CLUSTER": "1"})
    with pytest.raises(ValueError, match="LTE_JOIN_RAY_CLUSTER='yes': set it to 1"):
        joins_ray_cluster({"LTE_JOIN_RAY_CLUSTER": "yes", "RAY_ADDRESS": "h:1"})


def test_the_demo_joins_with_the_users_node_count(tiny_model_dir: str, monkeypatch) -> None:
    from recipe.lte.demo.run import train_command

    monkeypatch.setenv("LTE_JOIN_RAY_CLUSTER", "1")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6390")
    cmd = train_command(["trainer.nnodes=2", "trainer.n_gpus_per_node=1"], "/tmp/lte-ray-x", tiny_model_dir)
    assert "trainer.nnodes=2" in cmd and not [o for o in cmd if "ray_init" in o]
    monkeypatch.delenv("LTE_JOIN_RAY_CLUSTER")
    with pytest.raises(ValueError, match="trainer.nnodes=2 on CPU needs a Ray cluster"):
        train_command(["trainer.nnodes=2"], "/tmp/lte-ray-x", tiny_model_dir)


def test_the_demo_refuses_a_bad_layout_at_start_up_before_building(monkeypatch, capsys) -> None:
    from recipe.lte.demo import run

    monkeypatch.setattr(run, "run", lambda *a: pytest.fail("the demo started although its layout is refused"))
    monkeypatch.delenv("LTE_JOIN_RAY_CLUSTER", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run.main(["trainer.nnodes=2"])
    assert exit_info.value.code == 2
    assert "trainer.nnodes=2 on CPU needs a Ray cluster of 2 nodes to join" in capsys.readouterr().err
    monkeypatch.setenv("LTE_JOIN_RAY_CLUSTER", "yes")
    with pytest.raises(SystemExit):
        run.main([])
    assert "LTE_JOIN_RAY_CLUSTER='yes': set it to 1" in capsys.readouterr().err
