"""The CPU demo (``python -m recipe.lte.demo.run``) on a training parquet with 20 planted bad rows among 40 good.

Nothing is stubbed: the demo's real model, verl's real trainer. With the default ``lte.data.on_bad_rows=error``
the run stops at start-up, before Ray, naming every bad row; with ``skip`` it trains one step on the 40 good
rows only (verl's dataset says so) and logs how many it dropped. Heavy: run under ``flock /tmp/lte-heavy.lock``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest
from fixtures.planted_rows import plant_bad_rows

from recipe.lte.tools.processes import run_pids

REPO_ROOT = Path(__file__).resolve().parents[2]


def _demo(out: Path, tag: str, *args: str) -> tuple[int, str, dict[str, str]]:
    run_id = f"pytest-{tag}-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "LTE_RUN_ID": run_id, "LTE_RAY_TEMP_DIR": f"/tmp/lte-ray-{run_id}"}
    proc = subprocess.run(
        [sys.executable, "-m", "recipe.lte.demo.run", "--out", str(out), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    return proc.returncode, proc.stdout + proc.stderr, env


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict:
    from recipe.lte.demo import build_demo

    root = tmp_path_factory.mktemp("bad_rows_demo")
    build = build_demo(root / "build")  # minutes: the demo's warmed-up model
    good = pd.read_parquet(build["train_parquet"]).head(40).to_dict(orient="records")
    rows, expected = plant_bad_rows(good, data_source=good[0]["data_source"])
    path = root / "planted_train.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return {"root": root, "path": path, "expected": expected, "good": good}


def test_error_stops_at_start_up_naming_the_rows(planted):
    out = planted["root"] / "refuse"
    rc, text, env = _demo(
        out, "refuse", "--build", str(planted["root"] / "build"), f"data.train_files={planted['path']}"
    )
    assert rc != 0, text
    assert "60 rows, 20 bad rows" in text
    for reason, rows in planted["expected"].items():
        assert f"error: {reason}: {len(rows)} (rows {', '.join(map(str, rows))})" in text, text
    assert "lte.data.on_bad_rows=skip" in text
    log = (out / "train.log").read_text()
    assert "[LTE step" not in log and "Started a local Ray instance" not in log  # stopped before Ray
    assert run_pids(env["LTE_RUN_ID"]) == []


def test_skip_trains_on_the_good_rows_and_says_how_many_it_dropped(planted):
    out = planted["root"] / "skip"
    rc, text, env = _demo(
        out,
        "skip",
        "--build",
        str(planted["root"] / "build"),
        "--steps",
        "1",
        f"data.train_files={planted['path']}",
        "lte.data.on_bad_rows=skip",
    )
    assert rc == 0, text[-6000:]
    assert "[data check] train: 60 rows in 1 file(s), 20 bad" in text and "training on 40 of 60 rows" in text
    assert "[LTE step 1]" in text
    # verl's dataset was built from the filtered copy: 40 rows, exactly the good ones, in order
    log = (out / "train.log").read_text()
    assert "dataset len: 40" in log
    (copy,) = (out / "lte" / "checked_data").glob("train_0_*.parquet")
    kept = pd.read_parquet(copy)
    assert [r["index"] for r in kept["extra_info"]] == [r["extra_info"]["index"] for r in planted["good"]]
    records = [json.loads(line) for line in (out / "lte" / "lte_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1]
    assert records[0]["lte/data/dropped_rows_train"] == 20 and records[0]["lte/data/dropped_rows_val"] == 0
    assert records[0].get("lte/extra/skipped_bad_ground_truth", 0) == 0  # none slipped through
    assert run_pids(env["LTE_RUN_ID"]) == []
