"""Checkpoint -> Hugging Face model: which folder is merged, verl's merger command line, and a real merge of a
real verl FSDP2 checkpoint (2 ranks, gloo, CPU) checked weight by weight against an independent computation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recipe.lte.tools.merge import check_merged, find_actor_dir, merge_command

REPO = Path(__file__).resolve().parents[2]


def _fake_actor(step_dir: Path) -> Path:
    actor = step_dir / "actor"
    (actor / "huggingface").mkdir(parents=True)
    (actor / "fsdp_config.json").write_text('{"FSDP_version": 2, "world_size": 1}')
    (actor / "model_world_size_1_rank_0.pt").write_bytes(b"")
    return actor


def test_find_actor_dir_accepts_run_step_and_actor_folders(tmp_path):
    run = tmp_path / "run"
    _fake_actor(run / "global_step_50")
    a100 = _fake_actor(run / "global_step_100")
    a250 = _fake_actor(run / "global_step_250")
    # no latest file: the highest step (numeric order, not text order)
    assert find_actor_dir(run) == a250
    (run / "latest_checkpointed_iteration.txt").write_text("100\n")
    assert find_actor_dir(run) == a100  # verl's record of the latest step wins
    assert find_actor_dir(run / "global_step_250") == a250
    assert find_actor_dir(a250) == a250


def test_find_actor_dir_errors_name_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        find_actor_dir(tmp_path / "nope")
    actor = _fake_actor(tmp_path / "global_step_1")
    (actor / "fsdp_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="missing fsdp_config.json"):
        find_actor_dir(tmp_path / "global_step_1")
    actor = _fake_actor(tmp_path / "r" / "global_step_2")
    (actor / "model_world_size_1_rank_0.pt").unlink()
    with pytest.raises(FileNotFoundError, match="no model shards"):
        find_actor_dir(actor)
    (tmp_path / "r" / "latest_checkpointed_iteration.txt").write_text("last")
    with pytest.raises(ValueError, match="not a step number"):
        find_actor_dir(tmp_path / "r")


def test_merge_command_is_accepted_by_verls_own_parser(monkeypatch):
    from verl.model_merger.base_model_merger import generate_config_from_args, parse_args

    cmd = merge_command("/ck/global_step_3/actor", "/out/hf", python="py")
    assert cmd[:3] == ["py", "-m", "verl.model_merger"]
    monkeypatch.setattr(sys, "argv", ["verl.model_merger", *cmd[3:]])
    config = generate_config_from_args(parse_args())
    assert (config.operation, config.backend) == ("merge", "fsdp")
    assert (config.local_dir, config.target_dir) == ("/ck/global_step_3/actor", "/out/hf")
    assert config.hf_model_config_path == "/ck/global_step_3/actor/huggingface"
    assert config.hf_upload_path is None  # nothing leaves the machine


def test_check_merged_names_what_is_missing(tmp_path):
    with pytest.raises(RuntimeError, match="config.json, weights .*, tokenizer"):
        check_merged(tmp_path)


def test_merge_script_dry_run_prints_the_command(tmp_path):
    actor = _fake_actor(tmp_path / "global_step_7")
    res = subprocess.run(
        ["bash", str(REPO / "scripts" / "merge_checkpoint.sh"), "global_step_7", "hf", "--dry-run"],
        cwd=tmp_path,  # relative paths are the caller's
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert f"--local_dir {actor} --target_dir {tmp_path / 'hf'}" in res.stdout
    assert not (tmp_path / "hf").exists()
    res = subprocess.run(
        ["bash", str(REPO / "scripts" / "merge_checkpoint.sh"), str(tmp_path / "none"), "hf"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and "is not a folder" in res.stderr


def test_real_fsdp2_checkpoint_merges_to_the_saved_weights(tiny_model_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    ckpt = tmp_path / "ckpt"
    # verl's FSDPCheckpointManager on 2 gloo ranks, weights scaled by 1.5 before saving (tests/fixtures script)
    subprocess.run(
        [sys.executable, str(REPO / "tests/fixtures/make_fsdp_checkpoint.py"), tiny_model_dir, str(ckpt),
         "--world-size", "2", "--step", "3", "--scale", "1.5"],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    assert sorted(p.name for p in (ckpt / "global_step_3" / "actor").glob("model_*.pt")) == [
        "model_world_size_2_rank_0.pt",
        "model_world_size_2_rank_1.pt",
    ]
    out = tmp_path / "hf"
    res = subprocess.run(
        ["bash", str(REPO / "scripts" / "merge_checkpoint.sh"), str(ckpt), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    original = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    merged = load_file(str(out / "model.safetensors"))
    assert sorted(merged) == sorted(original)
    for name, weight in original.items():
        # verl's merger writes bfloat16: the expected value is 1.5 x the original, rounded to bfloat16
        assert torch.equal(merged[name], (1.5 * weight.float()).to(merged[name].dtype)), name
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(str(out))
    assert AutoTokenizer.from_pretrained(str(out)).chat_template  # evaluation renders chats
