"""A ``torch.cuda``-shaped device module for CPU, returned by the "cpu" platform's ``device_module``.

verl 0.9.1 calls accelerator functions through ``get_torch_device().<fn>`` (memory statistics, cache flushes, RNG
state, device names). ``torch.cpu`` has the stream/device half of that API but not the memory half, so those
calls raise ``AttributeError`` on CPU. This module re-exports ``torch.cpu`` and adds the missing functions with
CPU meanings: there is no caching allocator (nothing to free, nothing reserved) and one "device" whose memory is
the machine's RAM. Upstream limitation: verl has no CPU platform; delete this with ``verl_ext.cpu.platform`` once it has.
"""

from __future__ import annotations

import torch
from torch.cpu import (  # noqa: F401  (re-exported: verl calls them through the device module)
    Event,
    Stream,
    StreamContext,
    current_stream,
    device_count,
    is_available,
    set_device,
    stream,
    synchronize,
)


def current_device() -> str:
    """The device verl moves tensors to (``tensor.to(current_device())``): an int would mean ``cuda:<int>``."""
    return "cpu"


def get_device_name(device: object = None) -> str:
    return "cpu"


def empty_cache() -> None:
    """No caching allocator on CPU: nothing to release."""


def ipc_collect() -> None:
    """No CUDA IPC handles on CPU."""


def set_per_process_memory_fraction(fraction: float, device: object = None) -> None:
    """CPU memory is not capped per process."""


def memory_allocated(device: object = None) -> int:
    return 0


def memory_reserved(device: object = None) -> int:
    return 0


def max_memory_allocated(device: object = None) -> int:
    return 0


def max_memory_reserved(device: object = None) -> int:
    return 0


def reset_peak_memory_stats(device: object = None) -> None:
    """Nothing is tracked, so nothing to reset."""


def mem_get_info(device: object = None) -> tuple[int, int]:
    """(free, total) bytes of the machine's RAM, like ``torch.cuda.mem_get_info``."""
    import psutil

    vm = psutil.virtual_memory()
    return int(vm.available), int(vm.total)


def manual_seed(seed: int) -> None:
    torch.manual_seed(seed)


def manual_seed_all(seed: int) -> None:
    torch.manual_seed(seed)


def get_rng_state(device: object = None) -> torch.Tensor:
    return torch.get_rng_state()


def set_rng_state(new_state: torch.Tensor, device: object = None) -> None:
    torch.set_rng_state(new_state)
