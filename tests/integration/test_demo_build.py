"""Building the CPU demo model (recipe/lte/demo/warmup.py: build_demo): the cache and the quality guard. Real
warm-up training runs, kept short."""

from __future__ import annotations

import dataclasses

import pytest
from transformers import AutoTokenizer

from recipe.lte.demo import warmup as W


def test_build_demo_reuses_a_matching_build(tmp_path, fast_warmup):
    first = W.build_demo(tmp_path, cfg=fast_warmup)
    assert first["reused"] is False
    for key in ("model_dir", "train_parquet", "val_parquet"):
        assert (tmp_path / first[key]).exists()
    weights = tmp_path / "model" / "model.safetensors"
    mtime = weights.stat().st_mtime_ns

    second = W.build_demo(tmp_path, cfg=fast_warmup)
    assert second["reused"] is True and second["cache_key"] == first["cache_key"]
    assert weights.stat().st_mtime_ns == mtime  # not retrained
    assert AutoTokenizer.from_pretrained(second["model_dir"]).chat_template

    third = W.build_demo(tmp_path, cfg=dataclasses.replace(fast_warmup, steps=4))
    assert third["reused"] is False and third["cache_key"] != first["cache_key"]
    assert third["stats"]["warmup_steps"] == 4


def test_build_demo_raises_when_no_seed_passes_the_quality_check(tmp_path, fast_warmup):
    impossible = dataclasses.replace(fast_warmup, steps=1, min_success=1.1, extra_steps=1, max_extra_rounds=1)
    with pytest.raises(RuntimeError, match="failed its quality check"):
        W.build_demo(tmp_path, cfg=impossible)
    assert not (tmp_path / W.BUILD_FILE).exists()  # a failed build is never reused
