"""Read a source (hub or local files), validate and normalise its rows, write verl RL parquet with a report.

Output columns (verl's RL layout): `data_source`, `prompt` (chat list from `build_prompt`), `ability` ("math"),
`reward_model{style: "rule", ground_truth: str}`, `extra_info{split, index, problem, template, source,
source_index}` (+ `reference`, the row's reference solution or None, for sources that have one). Every dropped row
is counted under its reason in the report, every row without a reference too; nothing is dropped silently.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from data_prep.sources import Source
from data_prep.templates import DEFAULT_TEMPLATE, PROMPT_TEMPLATES, TEMPLATE_SYSTEM_PROMPTS, build_prompt
from recipe.lte.luffy import REFERENCE_KEY, reference_text
from verl_ext.reward.math_reward import answer_to_text

LOCAL_SUFFIXES = (".parquet", ".jsonl", ".json")

# DAPO-Math-17k wraps every problem in an "Answer:" instruction; we keep only the problem.
_DAPO_PREFIX = re.compile(r"^Solve the following math problem step by step\..*?\n\n", re.DOTALL)
_DAPO_SUFFIX = re.compile(r"\n\nRemember to put your answer on its own line after \"Answer:\"\.?\s*$")


@dataclass
class Report:
    source: str
    origin: str
    rows_read: int = 0
    rows_written: int = 0
    dropped: Counter = field(default_factory=Counter)
    normalised: Counter = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)
    examples: dict[str, list[int]] = field(default_factory=dict)  # reason -> first few source row indices
    without_reference: list[int] = field(default_factory=list)  # written rows (extra_info.index) with no reference

    def drop(self, reason: str, index: int) -> None:
        self.dropped[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 5:
            self.examples[reason].append(index)

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "origin": self.origin,
            "rows_read": self.rows_read,
            "rows_written": self.rows_written,
            "dropped": dict(self.dropped),
            "dropped_examples_source_index": self.examples,
            "normalised": dict(self.normalised),
            "warnings": self.warnings,
            "rows_without_reference": self.without_reference,
        }

    def text(self) -> str:
        lines = [f"[{self.source}] {self.origin}: read {self.rows_read}, wrote {self.rows_written}"]
        lines += [
            f"  dropped {n:>6}  {reason} (source rows e.g. {self.examples[reason]})"
            for reason, n in sorted(self.dropped.items())
        ]
        lines += [f"  normalised {n:>3}  {what}" for what, n in sorted(self.normalised.items())]
        if self.without_reference:
            lines.append(
                f"  no reference solution in {len(self.without_reference)} written rows (extra_info.index e.g. "
                f"{self.without_reference[:5]}): kept for RL; lte.mode=luffy refuses them"
            )
        lines += [f"  WARNING: {w}" for w in self.warnings]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- loading


def read_local(path: str | Path) -> pd.DataFrame:
    """A json / jsonl / parquet file, or a folder of them (concatenated in name order), in the hub's layout."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in LOCAL_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"--local {path}: folder holds no {'/'.join(LOCAL_SUFFIXES)} files")
        return pd.concat([read_local(f) for f in files], ignore_index=True)
    if not path.exists():
        raise FileNotFoundError(f"--local {path}: no such file or folder")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".jsonl":
        return pd.read_json(path, lines=True, dtype=False)
    if path.suffix == ".json":
        try:
            return pd.read_json(path, dtype=False)
        except ValueError:
            return pd.read_json(path, lines=True, dtype=False)
    raise ValueError(f"--local {path}: unsupported file type {path.suffix!r}; use one of {LOCAL_SUFFIXES}")


def read_hub(source: Source) -> pd.DataFrame:
    """The source from the Hugging Face hub (all its configs concatenated)."""
    try:
        import datasets
    except ImportError as e:
        raise RuntimeError(
            f"reading {source.hub_id} from the hub needs `pip install datasets`; or pass "
            f"--local {source.name}=PATH with the files"
        ) from e
    frames = []
    for config in source.configs:
        try:
            ds = datasets.load_dataset(source.hub_id, config, split=source.split)
        except Exception as e:
            raise RuntimeError(
                f"could not load {source.hub_id} (config={config}, split={source.split}) from the Hugging Face hub: "
                f"{type(e).__name__}: {e}\nOffline? Download the files elsewhere and pass "
                f"--local {source.name}=PATH (a json/jsonl/parquet file or folder in the hub's column layout)."
            ) from e
        frames.append(ds.to_pandas())
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------------- row fields


def _get(row: dict, dotted: str) -> Any:
    value: Any = row
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _turn(chat: Any, role: str) -> str | None:
    """The last turn of ``role`` in a verl chat list (numpy arrays from parquet included)."""
    if hasattr(chat, "tolist"):
        chat = chat.tolist()
    if not isinstance(chat, list):
        return None
    turns = [m.get("content") for m in chat if isinstance(m, dict) and m.get("role") == role]
    return turns[-1] if turns else None


def _user_turn(chat: Any) -> str | None:
    return _turn(chat, "user")


def extract_problem(row: dict, source: Source) -> Any:
    value = _get(row, source.problem_column)
    if isinstance(value, str) or value is None:
        return value
    text = _user_turn(value)
    if text is not None and source.name == "dapo":
        text = _DAPO_SUFFIX.sub("", _DAPO_PREFIX.sub("", text, count=1))
    return text


def _answer_kind(value: Any) -> str | None:
    """Which non-string form an answer came in (for the report)."""
    if isinstance(value, str):
        return None
    if hasattr(value, "tolist"):
        value = value.tolist()
    return type(value).__name__


def _records(df: pd.DataFrame) -> list[dict]:
    return df.to_dict(orient="records")


# ---------------------------------------------------------------------------------------------- building


def build_rows(
    df: pd.DataFrame,
    source: Source,
    split: str,
    template: str | None = None,
    system_prompt: str | None = None,
    origin: str = "",
) -> tuple[list[dict], Report]:
    """Validated, normalised verl rows for one source; the report counts every drop and normalisation.

    ``template`` None: the source's own (``Source.template``), else the default."""
    template = template or source.template or DEFAULT_TEMPLATE
    if template not in PROMPT_TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}; choose one of {sorted(PROMPT_TEMPLATES)}")
    report = Report(source.name, origin or source.hub_id, rows_read=len(df))
    missing = [c for c in (source.problem_column, source.answer_column) if c.split(".")[0] not in df.columns]
    if missing:
        raise ValueError(
            f"{source.name} ({report.origin}): column(s) {missing} not found; columns are {list(df.columns)}. "
            f"Local files must keep the hub's layout of {source.hub_id}."
        )
    if source.reference_column and source.reference_column.split(".")[0] not in df.columns:
        raise ValueError(
            f"{source.name} ({report.origin}): reference column {source.reference_column!r} not found; columns are "
            f"{list(df.columns)}. Local files must keep the hub's layout of {source.hub_id}."
        )
    rows: list[dict] = []
    seen: dict[str, str] = {}
    for i, raw in enumerate(_records(df)):
        problem = extract_problem(raw, source)
        if problem is None or (isinstance(problem, float) and pd.isna(problem)):
            report.drop("missing problem", i)
            continue
        if not isinstance(problem, str):
            report.drop(f"problem is not text ({type(problem).__name__})", i)
            continue
        problem = problem.strip()
        if not problem:
            report.drop("empty problem", i)
            continue
        raw_answer = _get(raw, source.answer_column)
        if raw_answer is None or (isinstance(raw_answer, float) and pd.isna(raw_answer)):
            report.drop("missing answer", i)
            continue
        kind = _answer_kind(raw_answer)
        answer = answer_to_text(raw_answer)
        if not answer:
            report.drop("empty answer", i)
            continue
        if kind is not None:
            report.normalised[f"answer given as {kind}, written as text"] += 1
        if problem in seen:
            reason = "duplicate problem" if seen[problem] == answer else "duplicate problem with a different answer"
            report.drop(reason, i)
            if reason.endswith("answer"):
                report.warnings.append(
                    f"row {i}: same problem as an earlier row, answer {answer!r} != {seen[problem]!r} (kept the first)"
                )
            continue
        if source.dedupe:
            seen[problem] = answer
        extra_info = {
            "split": split,
            "index": len(rows),
            "problem": problem,
            "template": template,
            "source": source.hub_id,
            "source_index": i,
        }
        row_system = _turn(_get(raw, source.problem_column), "system")
        template_system = system_prompt or TEMPLATE_SYSTEM_PROMPTS.get(template)
        if template_system and row_system and row_system != template_system:
            report.normalised["the row's own system turn replaced by the template's"] += 1
        if source.reference_column:
            extra_info[REFERENCE_KEY] = reference_text(_get(raw, source.reference_column))
            if extra_info[REFERENCE_KEY] is None:
                report.without_reference.append(len(rows))
        rows.append(
            {
                "data_source": source.data_source,
                "prompt": build_prompt(problem, template, system_prompt),
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": answer},
                "extra_info": extra_info,
            }
        )
    report.rows_written = len(rows)
    if source.expected_rows is not None and len(rows) != source.expected_rows:
        report.warnings.append(f"wrote {len(rows)} rows; {source.hub_id} is known to have {source.expected_rows}")
    if len(report.warnings) > 20:
        report.warnings = report.warnings[:20] + [f"... and {len(report.warnings) - 20} more"]
    return rows, report


def write_parquet(rows: list[dict], path: Path) -> None:
    if not rows:
        raise ValueError(f"no rows left to write to {path}: see the report above for why they were dropped")
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path, index=False)


def build_source(
    source: Source,
    out_dir: Path,
    local: str | Path | None = None,
    split: str = "train",
    template: str | None = None,
    system_prompt: str | None = None,
    limit: int | None = None,
) -> tuple[Path, list[dict], Report]:
    """Read (local or hub), build, write `<out_dir>/<name>.parquet` and `<name>.report.json`."""
    df = read_local(local) if local is not None else read_hub(source)
    if limit is not None:
        df = df.iloc[:limit]
    rows, report = build_rows(df, source, split, template, system_prompt, origin=str(local) if local else "")
    path = out_dir / f"{source.name}.parquet"
    write_parquet(rows, path)
    (out_dir / f"{source.name}.report.json").write_text(json.dumps(report.to_dict(), indent=2))
    return path, rows, report
