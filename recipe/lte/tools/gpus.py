"""The GPUs of this node, as ``nvidia-smi`` reports them: the one query the preflight and smoke tests replace.

``parse_nvidia_smi`` is pure (tested on nvidia-smi's real output format); ``query_gpus`` runs nvidia-smi and keeps
the GPUs this process may use (``CUDA_VISIBLE_DEVICES``, as Ray and torch do).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

MIB = 1024**2
QUERY = ["--query-gpu=index,name,memory.total,memory.used", "--format=csv,noheader,nounits"]


class GpuQueryError(RuntimeError):
    """No GPU could be listed on this node (the message says why)."""


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    total_bytes: int
    used_bytes: int


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """GPUs from ``nvidia-smi --query-gpu=index,name,memory.total,memory.used --format=csv,noheader,nounits``."""
    gpus = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4:
            raise ValueError(f"unexpected nvidia-smi line {line!r} (expected index, name, memory.total, memory.used)")
        index, name, total, used = parts[0], ",".join(parts[1:-2]), parts[-2], parts[-1]
        gpus.append(Gpu(int(index), name, int(float(total)) * MIB, int(float(used)) * MIB))
    return gpus


def visible(gpus: list[Gpu], env: Mapping[str, str]) -> list[Gpu]:
    """The GPUs ``CUDA_VISIBLE_DEVICES`` (by index) leaves to this process; all when it is unset."""
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return gpus
    wanted = [v.strip() for v in value.split(",") if v.strip()]
    if not all(v.isdigit() for v in wanted):  # UUIDs or MIG names: nvidia-smi's index does not apply
        return gpus
    keep = {int(v) for v in wanted}
    return [g for g in gpus if g.index in keep]


def query_gpus(env: Mapping[str, str] | None = None) -> list[Gpu]:
    """This node's usable CUDA GPUs (nvidia-smi); raises GpuQueryError with the reason when there are none."""
    env = os.environ if env is None else env
    exe = shutil.which("nvidia-smi")
    if exe is None:
        raise GpuQueryError("nvidia-smi is not on PATH (no NVIDIA driver on this node)")
    try:
        out = subprocess.run([exe, *QUERY], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired as e:
        raise GpuQueryError("nvidia-smi did not answer in 30 s") from e
    if out.returncode != 0:
        raise GpuQueryError(f"nvidia-smi failed: {(out.stderr or out.stdout).strip()[:300]}")
    gpus = visible(parse_nvidia_smi(out.stdout), env)
    if not gpus:
        raise GpuQueryError(f"no GPU visible (CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES')!r})")
    return gpus
