"""Fixtures of the e2e layer: one demo build (warmed-up tiny model + parquet, 2-10 minutes) for the session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# A build folder kept between sessions (a CI cache, a developer's earlier build): reused when its cache key matches
# this code's warm-up, rebuilt in place otherwise (``recipe.lte.demo.build_demo``).
BUILD_DIR_ENV = "LTE_E2E_DEMO_BUILD"


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory) -> Path:
    """The CPU demo's build folder, built once and reused by every e2e run (``--build``)."""
    from recipe.lte.demo import build_demo

    given = os.environ.get(BUILD_DIR_ENV)
    root = Path(given).resolve() if given else tmp_path_factory.mktemp("demo_build")
    build = build_demo(root)
    print(f"\n[e2e] demo build {root} ({'reused' if build.get('reused') else 'built'})")
    return root
