"""The files of an evaluation run: benchmark problems (verl parquet), generations and results (jsonl).

A generations file holds one JSON object per problem: ``id`` (``"<data_source>/<extra_info.index>"``),
``data_source``, ``ground_truth`` and ``responses`` (the n sampled texts), plus optional ``finish_reasons`` and
``response_tokens``. Externally produced generations may carry only ``id`` and ``responses``; the rest is then
looked up in the benchmark parquet.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REQUIRED_COLUMNS = ("data_source", "prompt", "reward_model", "extra_info")


@dataclass
class Problem:
    """One benchmark problem as read from a verl RL parquet row."""

    id: str
    data_source: str
    ground_truth: Any  # as stored: str, int, or a list (OlympiadBench); the reward normalises it
    prompt: list[dict[str, str]]
    extra_info: dict[str, Any] = field(default_factory=dict)


def problem_id(data_source: str, index: Any) -> str:
    """The stable id of a problem: its data_source and its ``extra_info.index``."""
    return f"{data_source}/{index}"


def _plain(value: Any) -> Any:
    """numpy arrays / nested containers from parquet -> plain Python lists and dicts."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def load_problems(
    paths: Sequence[str | os.PathLike], benchmarks: Sequence[str] | None = None, limit: int | None = None
) -> list[Problem]:
    """Read benchmark problems from verl RL parquet files, in file order.

    ``benchmarks`` keeps only those data_sources (each must be present); ``limit`` keeps the first ``limit``
    problems of each data_source (for smoke runs).
    """
    import pandas as pd

    if not paths:
        raise ValueError("load_problems: no parquet file given; pass --data <benchmarks.parquet> (data_prep output)")
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for path in paths:
        if not Path(path).exists():
            raise FileNotFoundError(f"benchmark parquet {path} does not exist; build it with data_prep first")
        df = pd.read_parquet(path)
        missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}; expected a verl RL parquet with {REQUIRED_COLUMNS}")
        for row_idx, row in enumerate(df.to_dict("records")):
            try:
                extra_info = _plain(row["extra_info"]) or {}
                reward_model = _plain(row["reward_model"])
                prompt = _plain(row["prompt"])
                pid = problem_id(row["data_source"], extra_info["index"])
                ground_truth = reward_model["ground_truth"]
                if not isinstance(prompt, list) or not all(isinstance(m, dict) and "content" in m for m in prompt):
                    raise ValueError(f"prompt must be a chat list of {{role, content}}, got {type(prompt).__name__}")
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(
                    f"{path}: row {row_idx} is malformed ({type(exc).__name__}: {exc}); every row needs "
                    "data_source, prompt (chat list), reward_model.ground_truth and extra_info.index"
                ) from exc
            if pid in seen:
                raise ValueError(
                    f"{path}: row {row_idx} repeats problem id {pid!r} (first seen in {seen[pid]}); "
                    "extra_info.index must be unique within a data_source"
                )
            seen[pid] = str(path)
            problems.append(Problem(pid, row["data_source"], ground_truth, prompt, extra_info))
    if benchmarks:
        present = {p.data_source for p in problems}
        absent = [b for b in benchmarks if b not in present]
        if absent:
            raise ValueError(f"benchmarks {absent} not found in {list(paths)}; present: {sorted(present)}")
        problems = [p for p in problems if p.data_source in set(benchmarks)]
    if limit is not None:
        kept: dict[str, int] = {}
        out = []
        for p in problems:
            if kept.get(p.data_source, 0) < limit:
                kept[p.data_source] = kept.get(p.data_source, 0) + 1
                out.append(p)
        problems = out
    return problems


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Append rows and force them to disk, so a crash right after loses none of them."""
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Write rows to ``path`` atomically (temporary file, then rename)."""
    tmp = Path(f"{path}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def read_jsonl(path: str | os.PathLike, *, repair_torn_tail: bool = False) -> list[dict]:
    """Read a jsonl file; a bad line raises with its line number.

    With ``repair_torn_tail`` a last line cut off by a crash (no newline, not valid JSON) is dropped and cut from
    the file, so appending can resume; a bad line anywhere else still raises.
    """
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    rows = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            is_torn_tail = lineno == len(lines) and not raw.endswith(b"\n")
            if repair_torn_tail and is_torn_tail:
                with open(path, "r+b") as f:
                    f.truncate(len(raw) - len(line))
                print(f"[evaluate] {path}: dropped a line cut off by an earlier crash (line {lineno})")
                break
            raise ValueError(f"{path}: line {lineno} is not valid JSON ({exc}); fix or remove that line") from exc
    return rows


def complete_generation_records(records: list[dict], problems: Sequence[Problem] | None, source: str) -> list[dict]:
    """Check generation records and fill ``data_source`` / ``ground_truth`` from the benchmark problems."""
    by_id = {p.id: p for p in problems} if problems else {}
    out, seen = [], set()
    for i, rec in enumerate(records):
        where = f"{source}: record {i}"
        if "id" not in rec or not isinstance(rec.get("responses"), list) or not rec["responses"]:
            raise ValueError(f"{where} needs an 'id' and a non-empty 'responses' list, got keys {sorted(rec)}")
        if not all(isinstance(r, str) for r in rec["responses"]):
            raise ValueError(f"{where} (id {rec['id']!r}): every response must be a string")
        if rec["id"] in seen:
            raise ValueError(f"{where}: problem id {rec['id']!r} appears twice; keep one record per problem")
        seen.add(rec["id"])
        rec = dict(rec)
        if "data_source" not in rec or "ground_truth" not in rec:
            if rec["id"] not in by_id:
                hint = "pass --data <benchmark parquet>" if not by_id else "the id is not in the --data parquet"
                raise ValueError(f"{where} (id {rec['id']!r}) has no data_source/ground_truth; {hint}")
            rec.setdefault("data_source", by_id[rec["id"]].data_source)
            rec.setdefault("ground_truth", by_id[rec["id"]].ground_truth)
        for key in ("finish_reasons", "response_tokens"):
            if key in rec and len(rec[key]) != len(rec["responses"]):
                raise ValueError(f"{where} (id {rec['id']!r}): '{key}' and 'responses' differ in length")
        out.append(rec)
    return out
