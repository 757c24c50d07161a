"""Preflight: in seconds, before anything heavy, what would stop a GPU run late -- each failure with its fix.

    bash run_lte.sh --preflight --preset qwen3-8b-lte [hydra overrides...]
    python -m recipe.lte.tools.preflight --preset qwen3-8b-lte [hydra overrides...]

``bash run_lte.sh --preset NAME`` runs it first and stops on a failure (``--no-preflight`` skips it). Checks:
the config (verl's validation, LTE's refusals, the GPU layout), the node's GPUs and their memory against the
layout's estimated peaks, flash-attn, the model readable offline with a chat template, the data files, free disk
for the checkpoints the run keeps, the logger's credentials or offline mode and their way to Ray's workers, and,
when ``RAY_ADDRESS`` is set, the joined cluster (nodes, GPUs, and what a task sees on every node: ``preflight_ray``).

Each check is a small function of plain inputs returning a ``Check`` (the GPU and flash-attn checks in
``preflight_gpu``, the cluster's in ``preflight_ray``); ``run_checks`` gathers the inputs (the composed config, this
machine, the environment) and runs them. The GPU query (``recipe.lte.tools.gpus``) is the
one input tests replace. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from recipe.lte.tools import estimate
from recipe.lte.tools.checklist import FAIL, OK, WARN, Check
from recipe.lte.tools.gpus import Gpu, GpuQueryError, query_gpus
from recipe.lte.tools.preflight_gpu import FlashAttnProbe, check_flash_attn, check_gpus, probe_flash_attn
from recipe.lte.tools.preflight_ray import check_ray_cluster, probe_ray_cluster, ray_runtime_env

# Filesystems that are one disk of one node: FSDP ranks on other nodes cannot write their shards there.
NODE_LOCAL_FS = {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs", "f2fs"}
LOGGER_ENV = ("WANDB_MODE",)  # what the logger check needs on every node


# -------------------------------------------------------------------------------------------------- model


def _chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    return config.is_file() and bool(json.loads(config.read_text()).get("chat_template"))


def inspect_model_folder(folder: Path) -> list[str]:
    """What a Hugging Face model folder lacks for training (empty: nothing); reads only small files."""
    problems = []
    if not (folder / "config.json").is_file():
        problems.append("config.json")
    index = next(
        (
            folder / n
            for n in ("model.safetensors.index.json", "pytorch_model.bin.index.json")
            if (folder / n).is_file()
        ),
        None,
    )
    if index is not None:
        shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            problems.append(f"weight shards {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    elif not list(folder.glob("*.safetensors")) and not list(folder.glob("*.bin")):
        problems.append("weights (*.safetensors)")
    if not any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        problems.append("a tokenizer (tokenizer.json)")
    elif not _chat_template(folder):
        problems.append("a chat template (tokenizer_config.json chat_template or chat_template.jinja)")
    unreadable = [p.name for p in folder.iterdir() if p.is_file() and not os.access(p, os.R_OK)]
    if unreadable:
        problems.append(f"read permission on {', '.join(sorted(unreadable)[:3])}")
    return problems


def cached_snapshot(repo_id: str, cache_dir: str | None = None) -> Path | None:
    """The folder of hub model ``repo_id`` in the local Hugging Face cache, or None; never downloads."""
    if repo_id.startswith(("/", ".", "~")) or repo_id.count("/") != 1:
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True, cache_dir=cache_dir))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def check_model(path: str, env: Mapping[str, str]) -> Check:
    """The model readable without a network: a complete local folder (or the hub cache), with a chat template."""
    name = "model"
    local = Path(path).expanduser()
    download = (
        f"download it once where there is internet: `hf download {path} --local-dir /shared/models/"
        f"{path.rsplit('/', 1)[-1]}`, then pass actor_rollout_ref.model.path=/shared/models/{path.rsplit('/', 1)[-1]}"
        " (one copy every rank and vLLM server reads; on several nodes on a shared file system)"
    )
    if local.is_dir():
        problems = inspect_model_folder(local)
        if problems:
            return Check(name, FAIL, f"{local} lacks {'; '.join(problems)}", "complete the folder (re-download)")
        return Check(name, OK, f"{local}: config, weights, tokenizer and chat template present")
    cache_dir = estimate.hub_cache_dir(env)
    snapshot = cached_snapshot(path, cache_dir)
    if snapshot is None:
        return Check(
            name,
            FAIL,
            f"{path} is not a local folder and not in the Hugging Face cache "
            f"({cache_dir or '~/.cache/huggingface/hub'}): every rank and vLLM "
            "server would download it at start, and nodes without internet fail",
            download,
        )
    problems = inspect_model_folder(snapshot)
    if problems:
        return Check(name, FAIL, f"{path} in the cache ({snapshot}) lacks {'; '.join(problems)}", download)
    if env.get("HF_HUB_OFFLINE") == "1":
        return Check(name, OK, f"{path} from the Hugging Face cache ({snapshot}), HF_HUB_OFFLINE=1")
    return Check(
        name,
        WARN,
        f"{path} is in the Hugging Face cache ({snapshot}), but every rank and vLLM server looks the hub id up "
        "online first (slow or failing on nodes without internet)",
        f"pass actor_rollout_ref.model.path={snapshot} (or export HF_HUB_OFFLINE=1)",
    )


# --------------------------------------------------------------------------------------------------- data


def check_data(files: list[str], data_dir: str, buildable: set[str], env: Mapping[str, str]) -> Check:
    """The training and validation parquet files present and readable, or missing ones that run_lte.sh builds."""
    import pyarrow.parquet as pq

    name = "data"
    present, build, fail = [], [], []
    for f in files:
        p = Path(f)
        if p.is_file():
            try:
                present.append(f"{p.name} ({pq.read_metadata(p).num_rows} rows)")
            except Exception as e:  # pyarrow raises several types for a file that is not parquet
                fail.append(f"{f} is not readable parquet ({type(e).__name__}: {e})")
        elif str(p.parent) == str(Path(data_dir)) and p.stem in buildable:
            build.append(p.stem)
        else:
            fail.append(f"{f} is missing and is not a file data_prep builds in LTE_DATA_DIR={data_dir}")
    targets = sorted({"benchmarks" if b == "benchmarks_val" else b for b in build})
    build_cmd = f"python -m data_prep {' '.join(targets)} --out {data_dir}"
    if fail:
        return Check(name, FAIL, "; ".join(fail), "build the data (python -m data_prep --help) or fix data.*_files")
    if build and env.get("HF_HUB_OFFLINE") == "1":
        return Check(
            name,
            FAIL,
            f"missing: {', '.join(build)}; HF_HUB_OFFLINE=1, so they cannot be downloaded",
            f"on a machine with internet: {build_cmd} (or --local NAME=PATH from local copies)",
        )
    if build:
        return Check(
            name,
            WARN,
            f"missing: {', '.join(build)} (present: {', '.join(present) or 'none'}); "
            "run_lte.sh builds them before training (downloads from the Hugging Face hub)",
            f"on nodes without internet, build them first elsewhere: {build_cmd}",
        )
    return Check(name, OK, ", ".join(present))


# --------------------------------------------------------------------------------------------------- disk


def filesystem_type(path: str, mounts: str) -> str | None:
    """The filesystem type of ``path`` from ``/proc/mounts`` text (the longest mount point containing it)."""
    best, kind = "", None
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, kind = point, parts[2]
    return kind


def existing_ancestor(path: Path) -> Path:
    """``path`` or its nearest existing parent (the folder is created at the first save)."""
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


@dataclass(frozen=True)
class CheckpointPlan:
    """The checkpoints a run writes: one's size, how many it holds at once, how many it saves."""

    bytes_each: int
    on_disk: int
    saves: int
    max_to_keep: int | None
    first_save_step: int = 0
    contents: list[str] = field(default_factory=list)
    params: int = 0


def check_disk(
    ckpt_dir: str, plan: CheckpointPlan | None, free_bytes: int, nnodes: int = 1, fs_type: str | None = None
) -> Check:
    """Free space at the checkpoint folder against the checkpoints the run holds at once (x their size)."""
    name = "disk"
    gb = 1e9
    free = f"{free_bytes / gb:.0f} GB free at {ckpt_dir}"
    if plan is None:
        return Check(
            name,
            WARN,
            f"{free}; checkpoint size unknown (the model's config.json is not readable)",
            "see the model check",
        )
    if plan.saves == 0:
        return Check(name, OK, f"{free}; the run saves no checkpoint (trainer.save_freq <= 0)")
    need = plan.on_disk * plan.bytes_each
    what = (
        f"up to {plan.on_disk} checkpoint(s) at once ({plan.saves} saves, trainer.max_actor_ckpt_to_keep="
        f"{plan.max_to_keep}) of {estimate.si(plan.bytes_each, 'B')} ({'+'.join(plan.contents)}: "
        f"{plan.bytes_each / plan.params:.0f} bytes x {estimate.params_text(plan.params)} parameters) = "
        f"{estimate.si(need, 'B')}"
    )
    if free_bytes < need:
        return Check(
            name,
            FAIL,
            f"{free}, the run needs {what}: a save would fail (the first is at step {plan.first_save_step})",
            "free space, point LTE_CKPT_DIR (or trainer.default_local_dir) at a disk with room, or lower "
            "trainer.max_actor_ckpt_to_keep (2 keeps a whole checkpoint through an interrupted save)",
        )
    if nnodes > 1 and fs_type in NODE_LOCAL_FS:
        return Check(
            name,
            WARN,
            f"{free} ({fs_type}); {what}; with trainer.nnodes={nnodes} every node writes its shards into this folder",
            "put the checkpoint folder on a file system all nodes share",
        )
    return Check(name, OK, f"{free}; the run needs {what}")


# ------------------------------------------------------------------------------------------------- logger


def netrc_has_host(netrc_path: Path, host: str) -> bool:
    """Whether the netrc file names ``host`` (where ``wandb login`` stores the API key)."""
    try:
        return host in netrc_path.read_text()
    except OSError:
        return False


def check_logger(
    loggers: list[str], env: Mapping[str, str], forwarded: Mapping[str, str], has_netrc_key: bool, joined_cluster: bool
) -> Check:
    """wandb with credentials or in an offline mode, and that mode in the runtime_env every Ray worker gets."""
    name = "logger"
    if "wandb" not in loggers:
        return Check(name, OK, f"trainer.logger={list(loggers)}: no credentials needed")
    mode = env.get("WANDB_MODE", "")
    sent = forwarded.get("WANDB_MODE")
    forward_fix = f"+ray_kwargs.ray_init.runtime_env.env_vars.WANDB_MODE={mode} (recipe.lte.main_lte adds it)"
    if mode and sent != mode:
        return Check(
            name,
            FAIL,
            f"WANDB_MODE={mode} here, but the Ray workers get WANDB_MODE={sent!r} (ray_kwargs.ray_init.runtime_env."
            "env_vars): the trainer actor, on whichever node Ray places it, would not log as intended",
            forward_fix,
        )
    if mode in ("offline", "disabled", "dryrun"):
        return Check(name, OK, f"wandb WANDB_MODE={mode}, forwarded to every Ray worker (sync later: wandb sync)")
    if not env.get("WANDB_API_KEY") and not has_netrc_key:
        return Check(
            name,
            FAIL,
            "wandb is a logger and there are no wandb credentials (WANDB_API_KEY or wandb login): wandb.init "
            "fails in the trainer",
            "wandb login, or export WANDB_MODE=offline (run_lte.sh does when it finds no login), or "
            "trainer.logger=[console,tensorboard]",
        )
    if joined_cluster and not has_netrc_key:
        return Check(
            name,
            WARN,
            "wandb online with WANDB_API_KEY from this shell only: the trainer actor may run on another node, "
            "whose Ray processes do not have it (keys are not put in the logged config)",
            "wandb login with a $HOME all nodes share, or export WANDB_API_KEY before `ray start` on every node "
            "(scripts/slurm_lte.sbatch: export it before sbatch)",
        )
    return Check(name, OK, f"wandb online (credentials from {'~/.netrc' if has_netrc_key else 'WANDB_API_KEY'})")


# -------------------------------------------------------------------------------------------------- runner


@dataclass
class Report:
    title: str
    checks: list[Check]
    seconds: float

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    def format(self) -> str:
        lines = [f"[preflight] {self.title}"]
        for c in self.checks:
            lines.append(f"  {c.status:5s} {c.name:11s} {c.message}")
            if c.fix and c.status in (FAIL, WARN):
                lines.append(f"  {'':5s} {'':11s} fix: {c.fix}")
        warned = sum(c.status == WARN for c in self.checks)
        verdict = (
            f"{len(self.failed)} of {len(self.checks)} checks failed: fix them (or skip with --no-preflight)"
            if self.failed
            else f"all {len(self.checks)} checks passed" + (f" ({warned} warning(s))" if warned else "")
        )
        lines.append(f"[preflight] {verdict} ({self.seconds:.1f} s)")
        return "\n".join(lines)


def _buildable() -> set[str]:
    from data_prep.__main__ import COMBINED_VAL
    from data_prep.sources import SOURCES

    return set(SOURCES) | {COMBINED_VAL}


def checkpoint_plan(config, shape: estimate.ModelShape | None) -> CheckpointPlan | None:
    """The checkpoints the composed run writes (size from the parameter count; None if it is unknown)."""
    if shape is None:
        return None
    t = config.trainer
    contents = list(config.actor_rollout_ref.actor.checkpoint.save_contents)
    dtype = str(config.actor_rollout_ref.actor.fsdp_config.get("model_dtype", "fp32"))
    keep = t.get("max_actor_ckpt_to_keep")
    saves = estimate.number_of_saves(int(t.total_training_steps or 0), int(t.save_freq))
    return CheckpointPlan(
        bytes_each=estimate.checkpoint_bytes(shape.params, contents, dtype),
        on_disk=estimate.checkpoints_on_disk(saves, keep),
        saves=saves,
        max_to_keep=keep,
        first_save_step=min(int(t.save_freq), int(t.total_training_steps or 0)),
        contents=contents,
        params=shape.params,
    )


def model_shape(model_path: str, env: Mapping[str, str] | None = None) -> tuple[estimate.ModelShape | None, str]:
    """The model's shape for the estimates, and where its config.json came from ('' if not found)."""
    try:
        model_config, source = estimate.find_model_config(model_path, estimate.hub_cache_dir(env or os.environ))
    except FileNotFoundError:
        return None, ""
    return estimate.ModelShape.from_config(model_config), source


def run_checks(
    preset: str | None,
    overrides: list[str],
    *,
    gpu_query: Callable[[], list[Gpu]] = query_gpus,
    flash_probe: Callable[[], FlashAttnProbe] = probe_flash_attn,
) -> Report:
    """Compose the run's config as the trainer would, then run every check on this machine and this process's
    environment (the one the run is launched with: the config reads it too)."""
    from omegaconf import OmegaConf

    from recipe.lte.tools.dry_run import compose_and_check
    from recipe.lte.tools.presets import data_files

    env = os.environ
    start = time.monotonic()
    title = preset or "recipe config"
    try:
        with contextlib.redirect_stdout(sys.stderr):  # verl's validation prints
            config = compose_and_check(preset, overrides)
    except Exception as e:  # hydra, verl's validation and LTE's refusals each raise their own types
        check = Check("config", FAIL, f"{type(e).__name__}: {e}", "fix the override or preset it names")
        return Report(title, [check], time.monotonic() - start)
    checks = [Check("config", OK, "composed and validated (verl + LTE start-up checks + GPU layout)")]

    model_path = str(config.actor_rollout_ref.model.path)
    shape, source = model_shape(model_path, env)
    layout = estimate.layout_from_config(config)
    t = config.trainer
    if shape:
        title += f" ({estimate.params_text(shape.params)} parameters, {t.nnodes} node(s) x {t.n_gpus_per_node} GPUs)"

    cpu = env.get("VERL_PLATFORM", "").lower() == "cpu"
    gpus, query_error = None, ""
    if not cpu:
        try:
            gpus = gpu_query()
        except GpuQueryError as e:
            query_error = str(e)
    checks.append(check_gpus(gpus, int(t.n_gpus_per_node), shape, layout, query_error=query_error, cpu_platform=cpu))

    attn = str(
        config.actor_rollout_ref.model.get("override_config", {}).get("attn_implementation", "flash_attention_2")
    )
    checks.append(check_flash_attn(attn, flash_probe))
    checks.append(check_model(model_path, env))
    checks.append(check_data(data_files(config), env.get("LTE_DATA_DIR", "data"), _buildable(), env))

    ckpt_dir = str(Path(str(t.default_local_dir)).expanduser().absolute())
    anchor = existing_ancestor(Path(ckpt_dir))
    mounts = Path("/proc/mounts").read_text() if Path("/proc/mounts").is_file() else ""
    checks.append(
        check_disk(
            ckpt_dir,
            checkpoint_plan(config, shape),
            shutil.disk_usage(anchor).free,
            int(t.nnodes),
            filesystem_type(str(anchor.resolve()), mounts),
        )
    )

    runtime_env = OmegaConf.to_container(config.ray_kwargs.ray_init.get("runtime_env") or {}, resolve=True)
    forwarded = {k: str(v) for k, v in (runtime_env.get("env_vars") or {}).items()}
    host = (env.get("WANDB_BASE_URL") or "api.wandb.ai").split("://")[-1].split("/")[0]
    netrc = Path(env.get("NETRC") or Path(env.get("HOME", "~")).expanduser() / ".netrc")
    address = env.get("RAY_ADDRESS") or None
    loggers = list(t.logger) if not isinstance(t.logger, str) else [t.logger]
    checks.append(check_logger(loggers, env, forwarded, netrc_has_host(netrc, host), bool(address)))

    expected = {k: forwarded[k] for k in LOGGER_ENV if k in forwarded}
    nodes, probe_error = None, ""
    if address:
        try:
            nodes = probe_ray_cluster(address, ray_runtime_env(config), list(expected) + ["HF_HUB_OFFLINE"])
        except Exception as e:  # ray.init raises ConnectionError, TimeoutError, RuntimeError, ...
            probe_error = f"{type(e).__name__}: {str(e)[:300]}"
    verl_version = importlib.metadata.version("verl")
    checks.append(
        check_ray_cluster(address, nodes, int(t.nnodes), int(t.n_gpus_per_node), expected, verl_version, probe_error)
    )
    if source:
        title += f"; model config from {source}"
    return Report(title, checks, time.monotonic() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipe.lte.tools.preflight", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", help="a preset name (see run_lte.sh --list); default: the recipe config alone")
    parser.add_argument("overrides", nargs="*", help="hydra overrides, as for the run")
    args = parser.parse_args(argv)
    report = run_checks(args.preset, args.overrides)
    print(report.format(), flush=True)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
