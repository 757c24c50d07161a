"""Each preflight check (recipe/lte/tools/preflight.py, preflight_ray.py) on real inputs: real folders, a real model folder, real
parquet files, the real free space of a real disk, real environment mappings, the real flash-attn import.

The one stand-in is the GPU list (nvidia-smi's answer, ``recipe.lte.tools.gpus``): this machine has no GPU, so
the GPU checks are fed lists of ``Gpu`` as nvidia-smi would report them, and the parser is fed nvidia-smi's text.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from recipe.lte.tools import checklist as C
from recipe.lte.tools import estimate as E
from recipe.lte.tools import preflight as P
from recipe.lte.tools import preflight_gpu as G
from recipe.lte.tools import preflight_ray as R
from recipe.lte.tools.gpus import Gpu, GpuQueryError, parse_nvidia_smi, visible

GIB = 1024**3
H100 = 81559 * 1024**2
SHAPE_8B = E.ModelShape.from_config(E.KNOWN_MODEL_CONFIGS["Qwen/Qwen3-8B-Base"], params=8_190_735_360)
LAYOUT_8B = E.Layout(
    world_size=8,
    tensor_parallel=2,
    vllm_fraction=0.6,
    update_tokens=19456,
    log_prob_tokens=38912,
    entropy_in_update=False,
)


def gpus(n: int, total: int = H100, used: int = 0) -> list[Gpu]:
    """Stand-in for nvidia-smi's answer on a GPU node (the only stand-in of these tests)."""
    return [Gpu(i, "NVIDIA H100 80GB HBM3", total, used) for i in range(n)]


# ---- GPUs


def test_nvidia_smi_output_is_parsed_and_filtered_by_cuda_visible_devices():
    text = "0, NVIDIA H100 80GB HBM3, 81559, 4\n1, NVIDIA H100 80GB HBM3, 81559, 20480\n"
    parsed = parse_nvidia_smi(text)
    assert parsed == [Gpu(0, "NVIDIA H100 80GB HBM3", H100, 4 * 2**20), Gpu(1, "NVIDIA H100 80GB HBM3", H100, 20 * GIB)]
    assert visible(parsed, {"CUDA_VISIBLE_DEVICES": "1"}) == parsed[1:]
    assert visible(parsed, {}) == parsed
    assert visible(parsed, {"CUDA_VISIBLE_DEVICES": "GPU-5f3c"}) == parsed  # UUIDs: not an index filter
    with pytest.raises(ValueError, match="unexpected nvidia-smi line"):
        parse_nvidia_smi("garbage")


def test_gpu_check_without_gpus_fails_with_the_layout_and_the_cpu_alternatives():
    c = G.check_gpus(None, 8, SHAPE_8B, LAYOUT_8B, query_error="nvidia-smi is not on PATH")
    assert c.status == C.FAIL and "nvidia-smi is not on PATH" in c.message
    assert "8 GPUs of >= 59.2 GiB" in c.fix and "--smoke" in c.fix


def test_gpu_check_counts_gpus_against_n_gpus_per_node():
    c = G.check_gpus(gpus(4), 8, SHAPE_8B, LAYOUT_8B)
    assert c.status == C.FAIL and "trainer.n_gpus_per_node=8" in c.message and "n_gpus_per_node=4" in c.fix


def test_gpu_check_passes_80gb_gpus_and_lists_the_phases():
    c = G.check_gpus(gpus(8), 8, SHAPE_8B, LAYOUT_8B)
    assert c.status == C.OK, c
    assert "rollout 59.2 GiB" in c.message and "update" in c.message and "KV cache" in c.message


def test_gpu_check_fails_small_gpus_naming_the_phases_and_their_knobs():
    c = G.check_gpus(gpus(8, total=40 * GIB), 8, SHAPE_8B, LAYOUT_8B)
    # 40 GB GPUs: old log-prob (~49 GiB) and update (~42 GiB) are over the limit; rollout scales with the GPU.
    assert c.status == C.FAIL and "old log-prob, update do(es) not fit" in c.message
    assert "log_prob_max_token_len_per_gpu" in c.fix and "ppo_max_token_len_per_gpu" in c.fix
    assert "gpu_memory_utilization" not in c.fix


def test_gpu_check_warns_when_gpus_are_busy_or_the_peak_is_close():
    busy = gpus(8)
    busy[3] = Gpu(3, busy[3].name, H100, 20 * GIB)
    c = G.check_gpus(busy, 8, SHAPE_8B, LAYOUT_8B)
    assert c.status == C.WARN and "GPU 3 20.0 GiB" in c.message
    close = E.Layout(**{**LAYOUT_8B.__dict__, "vllm_fraction": 0.8})  # 0.8 x 79.6 + 11.4 GiB resident > 90%
    c = G.check_gpus(gpus(8), 8, SHAPE_8B, close)
    assert c.status == C.WARN and "rollout is within 10%" in c.message and "gpu_memory_utilization" in c.fix


def test_gpu_check_is_skipped_on_the_cpu_platform():
    assert G.check_gpus(None, 1, None, None, cpu_platform=True).status == C.SKIP


# ---- flash-attn


def test_flash_attn_check_imports_for_real_here_and_gives_the_sdpa_override():
    c = G.check_flash_attn("flash_attention_2", G.probe_flash_attn)
    if G.probe_flash_attn().imported:  # a GPU environment with a working flash-attn
        assert c.status == C.OK
    else:  # the CPU environment: no flash-attn, no CUDA in torch
        assert c.status == C.FAIL and "does not import" in c.message
        assert G.SDPA_OVERRIDE in c.fix
    assert G.check_flash_attn("sdpa", G.probe_flash_attn).status == C.SKIP


@pytest.fixture
def fake_flash_attn(tmp_path, monkeypatch):
    """A flash_attn package on sys.path whose ``flash_attn_interface`` module is written by the test; the modules
    it imports are removed again afterwards."""
    pkg = tmp_path / "flash_attn"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("__version__ = '2.8.3'\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def forget() -> None:
        for name in [m for m in sys.modules if m == "flash_attn" or m.startswith("flash_attn.")]:
            del sys.modules[name]

    forget()
    yield pkg / "flash_attn_interface.py", forget
    forget()


def test_flash_attn_probe_catches_a_wheel_built_for_another_torch(fake_flash_attn):
    interface, forget = fake_flash_attn
    # The compiled extension does not load, as a wheel built for another torch fails.
    interface.write_text("raise ImportError('flash_attn_2_cuda.so: undefined symbol: _ZN3c104cuda9SetDeviceEi')\n")
    probe = G.probe_flash_attn()
    assert not probe.imported and "undefined symbol" in probe.error
    c = G.check_flash_attn("flash_attention_2", lambda: probe)
    assert c.status == C.FAIL and "undefined symbol" in c.message and G.SDPA_OVERRIDE in c.fix
    # The same package with a loadable extension imports: the check passes and names the versions.
    interface.write_text("")
    forget()
    c = G.check_flash_attn("flash_attention_2", G.probe_flash_attn)
    assert c.status == C.OK and "flash-attn 2.8.3" in c.message


# ---- model


@pytest.fixture
def model_copy(tmp_path, tiny_model_dir) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(tiny_model_dir, dst)
    return dst


def test_model_check_accepts_a_complete_local_folder(model_copy):
    c = P.check_model(str(model_copy), {})
    assert c.status == C.OK and "chat template" in c.message


def test_model_check_names_a_missing_chat_template(model_copy):
    config = json.loads((model_copy / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model_copy / "tokenizer_config.json").write_text(json.dumps(config))
    for name in ("chat_template.jinja", "chat_template.json"):
        (model_copy / name).unlink(missing_ok=True)
    c = P.check_model(str(model_copy), {})
    assert c.status == C.FAIL and "chat template" in c.message


def test_model_check_names_a_missing_weight_shard(model_copy):
    weights = next(model_copy.glob("*.safetensors"))
    index = {"weight_map": {"a": weights.name, "b": "model-00002-of-00002.safetensors"}}
    (model_copy / "model.safetensors.index.json").write_text(json.dumps(index))
    c = P.check_model(str(model_copy), {})
    assert c.status == C.FAIL and "model-00002-of-00002.safetensors" in c.message


def _cache_with(cache: Path, repo_id: str, folder: Path) -> Path:
    """A Hugging Face hub cache holding ``repo_id`` (the layout huggingface_hub writes)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / "0123abcd"
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    return snapshot


def test_model_check_for_a_hub_id_offline(tmp_path, model_copy):
    cache = tmp_path / "hub"
    cache.mkdir()
    c = P.check_model("Qwen/Qwen3-8B-Base", {"HF_HUB_CACHE": str(cache)})
    assert c.status == C.FAIL and "not in the Hugging Face cache" in c.message
    assert "hf download Qwen/Qwen3-8B-Base" in c.fix and "actor_rollout_ref.model.path=" in c.fix
    snapshot = _cache_with(cache, "Qwen/Qwen3-8B-Base", model_copy)
    c = P.check_model("Qwen/Qwen3-8B-Base", {"HF_HUB_CACHE": str(cache)})
    assert c.status == C.WARN and f"actor_rollout_ref.model.path={snapshot}" in c.fix
    c = P.check_model("Qwen/Qwen3-8B-Base", {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"})
    assert c.status == C.OK


# ---- data


def test_data_check_reads_real_parquet_and_plans_builds(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    pd.DataFrame({"prompt": ["a", "b", "c"]}).to_parquet(data / "openr1.parquet")
    files = [str(data / "openr1.parquet"), str(data / "benchmarks_val.parquet")]
    buildable = P._buildable()
    assert {"openr1", "benchmarks_val", "math500"} <= buildable
    c = P.check_data(files[:1], str(data), buildable, {})
    assert c.status == C.OK and "openr1.parquet (3 rows)" in c.message
    c = P.check_data(files, str(data), buildable, {})
    assert c.status == C.WARN and "benchmarks_val" in c.message and "python -m data_prep benchmarks" in c.fix
    c = P.check_data(files, str(data), buildable, {"HF_HUB_OFFLINE": "1"})
    assert c.status == C.FAIL and "cannot be downloaded" in c.message
    (data / "broken.parquet").write_text("not parquet")
    c = P.check_data([str(data / "broken.parquet")], str(data), buildable, {})
    assert c.status == C.FAIL and "not readable parquet" in c.message
    c = P.check_data([str(tmp_path / "elsewhere" / "x.parquet")], str(data), buildable, {})
    assert c.status == C.FAIL and "is missing" in c.message


# ---- disk


def test_disk_check_against_the_real_free_space(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    ckpt = tmp_path / "checkpoints" / "lte" / "run"  # not created yet: its nearest existing parent is measured
    assert P.existing_ancestor(ckpt) == tmp_path
    fits = P.CheckpointPlan(
        bytes_each=free // 4,
        on_disk=2,
        saves=10,
        max_to_keep=2,
        first_save_step=50,
        contents=["model", "optimizer", "extra"],
        params=free // 48,
    )
    c = P.check_disk(str(ckpt), fits, free)
    assert c.status == C.OK and "up to 2 checkpoint(s) at once" in c.message
    too_big = P.CheckpointPlan(**{**fits.__dict__, "bytes_each": free // 2 + 1})
    c = P.check_disk(str(ckpt), too_big, free)
    assert c.status == C.FAIL and "first is at step 50" in c.message and "max_actor_ckpt_to_keep" in c.fix
    c = P.check_disk(str(ckpt), fits, free, nnodes=2, fs_type="ext4")
    assert c.status == C.WARN and "all nodes share" in c.fix
    assert P.check_disk(str(ckpt), fits, free, nnodes=2, fs_type="nfs4").status == C.OK
    no_saves = P.CheckpointPlan(**{**fits.__dict__, "saves": 0, "on_disk": 0})
    assert P.check_disk(str(ckpt), no_saves, free).status == C.OK


def test_filesystem_type_from_proc_mounts():
    mounts = "/dev/sda1 / ext4 rw 0 0\nserver:/export /shared nfs4 rw 0 0\n/dev/sdb /shared/local xfs rw 0 0\n"
    assert P.filesystem_type("/shared/ckpt", mounts) == "nfs4"
    assert P.filesystem_type("/shared/local/x", mounts) == "xfs"
    assert P.filesystem_type("/home/u", mounts) == "ext4"
    assert P.filesystem_type("/sharedx", mounts) == "ext4"  # a prefix of the name is not a mount point


# ---- logger


def test_logger_check_modes_credentials_and_forwarding(tmp_path):
    wandb = ["console", "wandb"]
    off = {"WANDB_MODE": "offline"}
    assert P.check_logger(["console"], {}, {}, False, False).status == C.OK
    assert P.check_logger(wandb, off, off, False, True).status == C.OK
    c = P.check_logger(wandb, off, {}, False, True)  # set here, not sent to the workers
    assert c.status == C.FAIL and "runtime_env.env_vars.WANDB_MODE=offline" in c.fix
    c = P.check_logger(wandb, {}, {}, False, False)
    assert c.status == C.FAIL and "no wandb credentials" in c.message and "WANDB_MODE=offline" in c.fix
    key = {"WANDB_API_KEY": "k"}
    assert P.check_logger(wandb, key, {}, False, False).status == C.OK
    c = P.check_logger(wandb, key, {}, False, True)  # a key from this shell only, on a joined cluster
    assert c.status == C.WARN and "another node" in c.message
    assert P.check_logger(wandb, {}, {}, True, True).status == C.OK  # wandb login (netrc)
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    assert P.netrc_has_host(netrc, "api.wandb.ai") and not P.netrc_has_host(tmp_path / "none", "api.wandb.ai")


def test_the_entry_point_forwards_the_logger_mode_to_ray_workers():
    from recipe.lte.main_lte import compose_config, forward_env

    config = compose_config(["+preset=qwen3-8b-lte", "+ray_kwargs.ray_init.runtime_env.env_vars.HF_HUB_OFFLINE=0"])
    added = forward_env(config, {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "WANDB_API_KEY": "secret"})
    env_vars = config.ray_kwargs.ray_init.runtime_env.env_vars
    assert added == ["WANDB_MODE"] and env_vars.WANDB_MODE == "offline"
    assert str(env_vars.HF_HUB_OFFLINE) == "0"  # a value the config sets wins
    assert "WANDB_API_KEY" not in env_vars  # credentials never go into the (logged) config


# ---- Ray (pure part; the real cluster is in tests/integration/test_preflight_ray.py)


def test_ray_check_on_node_reports():
    good = R.NodeReport("10.0.0.1", 8, {"WANDB_MODE": "offline"}, "0.9.1", True)
    expected = {"WANDB_MODE": "offline"}
    assert R.check_ray_cluster(None, None, 1, 8, expected, "0.9.1").status == C.SKIP
    c = R.check_ray_cluster("h:6379", None, 1, 8, expected, "0.9.1", "ConnectionError: refused")
    assert c.status == C.FAIL and "refused" in c.message
    assert R.check_ray_cluster("h:6379", [good, good], 2, 8, expected, "0.9.1").status == C.OK
    c = R.check_ray_cluster("h:6379", [good], 2, 8, expected, "0.9.1")
    assert c.status == C.FAIL and "trainer.nnodes=2" in c.message
    bad = R.NodeReport("10.0.0.2", 8, {"WANDB_MODE": None}, "0.9.0", False)
    c = R.check_ray_cluster("h:6379", [good, bad], 2, 8, expected, "0.9.1")
    assert c.status == C.FAIL
    assert (
        "recipe.lte is not importable" in c.message and "verl 0.9.0" in c.message and "'WANDB_MODE': None" in c.message
    )


# ---- the runner


def test_run_checks_on_a_preset_here(tmp_path, monkeypatch):
    env = {"WANDB_MODE": "offline", "LTE_DATA_DIR": str(tmp_path / "data"), "HF_HUB_CACHE": str(tmp_path / "hub")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("RAY_ADDRESS", "VERL_PLATFORM", "HF_HOME", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    overrides = [f"trainer.default_local_dir={tmp_path}/ckpt"]

    def no_gpu() -> list[Gpu]:  # stand-in for nvidia-smi on a machine without GPUs
        raise GpuQueryError("nvidia-smi is not on PATH")

    report = P.run_checks("qwen3-8b-lte", overrides, gpu_query=no_gpu)
    status = {c.name: c.status for c in report.checks}
    flash = C.OK if G.probe_flash_attn().imported else C.FAIL  # really imported (fails in the CPU environment)
    assert status == {
        "config": C.OK,
        "gpus": C.FAIL,
        "flash-attn": flash,
        "model": C.FAIL,
        "data": C.WARN,
        "disk": status["disk"],
        "logger": C.OK,
        "ray": C.SKIP,
    }
    assert "8.19B parameters" in report.title
    text = report.format()
    assert "fix: run on a node with 8 GPUs" in text and "checks failed" in text
    # The disk check used the real free space of tmp_path's disk and the 8B checkpoint size.
    disk = next(c for c in report.checks if c.name == "disk")
    assert "98.3 GB" in disk.message


def test_run_checks_refuses_a_bad_config_first():
    report = P.run_checks("qwen3-4b-lte", ["actor_rollout_ref.actor.ppo_max_token_len_per_gpu=4096"])
    assert [c.name for c in report.checks] == ["config"] and report.failed
    assert "ppo_max_token_len_per_gpu=4096" in report.checks[0].message
