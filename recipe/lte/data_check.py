"""The start-up data check: ``data_prep check`` over the run's train and validation files, before Ray starts.

``check_run_data(config)`` (called by ``main_lte.main`` after ``prepare_config``) checks ``data.train_files`` and
``data.val_files`` with the run's tokenizer, ``data.max_prompt_length``, ``data.prompt_key`` and the project's
reward, then, by ``lte.data.on_bad_rows``:
- ``error`` (default): refuses to start, the report naming every bad row by reason and index;
- ``skip``: writes each file that has bad rows again without them, to
  ``<trainer.default_local_dir>/checked_data/``, and points ``data.train_files`` / ``data.val_files`` at the
  copies (so the dropped rows never reach verl's dataset), prints what it dropped.
Either way it writes ``<trainer.default_local_dir>/data_check.json``; ``LTETrainer`` logs its counts as the
metrics ``lte/data/dropped_rows_train`` and ``lte/data/dropped_rows_val``. In a multi-node run that folder
must be on a shared filesystem, as it must for checkpoints.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from data_prep.check import CheckReport, CheckSettings, check_files, write_good_rows
from recipe.lte import core
from recipe.lte.agent_loop import uses_project_reward

REPORT_FILE = "data_check.json"
CHECKED_DIR = "checked_data"
DROPPED_METRIC = "lte/data/dropped_rows_{role}"
ROLES = (("train", "data.train_files"), ("val", "data.val_files"))


def _files(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in (OmegaConf.to_container(value) if isinstance(value, ListConfig) else value)]


def load_tokenizer(config: DictConfig):
    """The run's tokenizer, loaded as verl loads it (``actor_rollout_ref.model``: tokenizer_path or path,
    trust_remote_code, custom_chat_template)."""
    from verl.utils import hf_tokenizer
    from verl.utils.fs import copy_to_local

    model = config.actor_rollout_ref.model
    local = copy_to_local(model.get("tokenizer_path") or model.path, use_shm=model.get("use_shm", False))
    tokenizer = hf_tokenizer(local, trust_remote_code=model.get("trust_remote_code", False))
    if model.get("custom_chat_template"):
        tokenizer.chat_template = model.custom_chat_template
    return tokenizer


def check_settings(config: DictConfig, tokenizer) -> CheckSettings:
    """What the run's verl dataset and reward need, as ``data_prep.check`` settings."""
    kwargs = config.data.get("apply_chat_template_kwargs") or {}
    return CheckSettings(
        prompt_key=config.data.get("prompt_key", "prompt"),
        tokenizer=tokenizer,
        max_prompt_length=int(config.data.max_prompt_length),
        chat_template_kwargs=OmegaConf.to_container(kwargs) if isinstance(kwargs, DictConfig) else dict(kwargs),
        check_ground_truth=uses_project_reward(config),
    )


def _local(path: str) -> str:
    from verl.utils.fs import copy_to_local

    return os.path.expanduser(copy_to_local(path))  # verl's dataset reads hdfs:// files the same way


def _refusal(role: str, key: str, report: CheckReport) -> str:
    return (
        f"[data check] the {role} data ({key}) cannot be used as it is (rows: 0-based positions in each file):\n"
        f"{report.text()}\n"
        "[data check] Fix the file(s) (`python -m data_prep check FILE... --tokenizer MODEL` prints every row), or "
        "set lte.data.on_bad_rows=skip to drop the bad rows and train on the rest (not possible when a whole file is "
        "unusable or no row is good)."
    )


def _drop_bad_rows(role: str, paths: list[str], report: CheckReport, out_dir: Path) -> list[str]:
    """The files to train on: each file with bad rows copied without them into ``out_dir/checked_data``."""
    kept = []
    for i, (path, f) in enumerate(zip(paths, report.files, strict=True)):
        if not f.bad_rows:
            kept.append(path)
            continue
        copy = out_dir / CHECKED_DIR / f"{role}_{i}_{Path(f.path).stem}.parquet"
        n = write_good_rows(f.path, f.bad_rows, copy)
        print(f"[data check] {role}: dropped {len(f.bad_rows)} of {f.rows} rows of {path}; the {n} others -> {copy}")
        kept.append(str(copy))
    return kept


def check_run_data(config: DictConfig) -> dict:
    """Check the run's data files; refuse or drop bad rows by ``lte.data.on_bad_rows`` (may rewrite
    ``data.train_files`` / ``data.val_files``). Returns what it writes to ``data_check.json``:
    ``{role: {rows, dropped, by_reason, files}}``."""
    data_block = OmegaConf.select(config, "lte.data", default=None)
    on_bad_rows = core.DataConfig(**(OmegaConf.to_container(data_block) if data_block else {})).on_bad_rows
    out_dir = Path(config.trainer.default_local_dir).expanduser().resolve()
    custom = config.data.get("custom_cls") or {}
    if custom.get("path"):
        print(f"[data check] skipped: data.custom_cls={custom.get('path')} reads its own layout", flush=True)
        (out_dir / REPORT_FILE).unlink(missing_ok=True)  # no stale counts from an earlier launch
        return {}
    settings = check_settings(config, load_tokenizer(config))
    summary: dict = {}
    refusals: list[str] = []
    for role, key in ROLES:
        paths = _files(OmegaConf.select(config, key))
        if not paths:
            continue
        start = time.monotonic()
        report = check_files([_local(p) for p in paths], settings)
        rows = sum(f.rows for f in report.files)
        dropped = sum(len(f.bad_rows) for f in report.files)
        by_reason: dict[str, int] = {}
        for f in report.files:
            for reason, idx in f.errors.items():
                by_reason[reason] = by_reason.get(reason, 0) + len(idx)
        print(
            f"[data check] {role}: {rows} rows in {len(paths)} file(s), {dropped} bad, checked in "
            f"{time.monotonic() - start:.1f} s",
            flush=True,
        )
        if any(f.file_error for f in report.files) or dropped == rows or (dropped and on_bad_rows == "error"):
            refusals.append(_refusal(role, key, report))
            continue
        if dropped or any(f.warnings for f in report.files):
            print(report.text(), flush=True)
        if dropped:
            paths = _drop_bad_rows(role, paths, report, out_dir)
            with open_dict(config):
                OmegaConf.update(config, key, paths)
            print(f"[data check] {role}: training on {rows - dropped} of {rows} rows ({by_reason})", flush=True)
        summary[role] = {"rows": rows, "dropped": dropped, "by_reason": by_reason, "files": paths}
    if refusals:
        raise ValueError("\n\n".join(refusals))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / REPORT_FILE).write_text(json.dumps({"on_bad_rows": on_bad_rows, **summary}, indent=1))
    return summary


def dropped_metrics(run_dir: str) -> dict[str, float]:
    """``lte/data/dropped_rows_{train,val}`` from the start-up check's ``data_check.json`` ({} when absent)."""
    path = Path(run_dir).expanduser() / REPORT_FILE
    if not path.exists():
        return {}
    summary = json.loads(path.read_text())
    return {DROPPED_METRIC.format(role=r): float(summary[r]["dropped"]) for r, _ in ROLES if r in summary}
