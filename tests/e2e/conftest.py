"""Fixtures of the e2e layer: one demo build (warmed-up tiny model + parquet, about 2 minutes) for the session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory) -> Path:
    """The CPU demo's build folder, built once and reused by every e2e run (``--build``)."""
    from recipe.lte.demo import build_demo

    root = tmp_path_factory.mktemp("demo_build")
    build_demo(root)
    return root
