"""Is a verl RL parquet fit for LTE training? Every row the trainer or the reward cannot use, by reason and index.

Used by `python -m data_prep check FILE...` and, before Ray starts, by the trainer (recipe/lte/data_check.py).

Errors (the row cannot train, or costs rollouts for nothing):
- the file: unreadable, or without the columns verl reads (`prompt` or `data.prompt_key`, `reward_model`,
  `data_source`): no row is usable;
- `prompt is not a text chat`: the prompt is not a list of {role, content: str} messages;
- `no user turn`: nothing for the model to answer (and nowhere for an LTE hint);
- `empty problem`: the last user turn is blank, or only a prompt template around a blank problem, or
  `extra_info.problem` is blank;
- `missing ground truth` / `empty ground truth` / `unparseable ground truth`: the project's reward can never
  match it (verl_ext/reward/ground_truth.py says exactly when); such a group fails G of G and LTE would pay for G
  extra rollouts on it every epoch;
- `conflicting answers`: the same problem (last user turn) with ground truths the reward does not find
  equivalent: every such row is reported, the check cannot tell which answer is right;
- `prompt too long`: more than `max_prompt_length` tokens once the chat template is applied, counted exactly as
  verl's RLHFDataset counts them (it drops these rows without a word);
- `chat template failed`: the tokenizer's chat template raised on the prompt (verl drops these too);
- `extra_info is not a mapping`: verl's dataset reads `extra_info.index` and would raise.

Warnings (the row trains): `duplicate problem` (same problem, equivalent answer; the first is not warned) and,
with `parse_all`, `ground truth matched only verbatim` (math-verify reads no expression from it).

Row indices are 0-based positions in the file, as pandas / pyarrow read it.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_prep.templates import PROMPT_TEMPLATES
from verl_ext.reward.ground_truth import EMPTY, MISSING, UNPARSEABLE, VERBATIM_ONLY, classify_golds, gold_text

NOT_TEXT_CHAT = "prompt is not a text chat"
NO_USER_TURN = "no user turn"
EMPTY_PROBLEM = "empty problem"
GT_REASONS = {
    MISSING: "missing ground truth",
    EMPTY: "empty ground truth",
    UNPARSEABLE: "unparseable ground truth",
}
CONFLICT = "conflicting answers"
TOO_LONG = "prompt too long"
TEMPLATE_FAILED = "chat template failed"
BAD_EXTRA_INFO = "extra_info is not a mapping"
ERROR_REASONS = (
    NOT_TEXT_CHAT,
    NO_USER_TURN,
    EMPTY_PROBLEM,
    *GT_REASONS.values(),
    CONFLICT,
    TOO_LONG,
    TEMPLATE_FAILED,
    BAD_EXTRA_INFO,
)
DUPLICATE = "duplicate problem"
GT_VERBATIM = "ground truth matched only verbatim"
WARNING_REASONS = (DUPLICATE, GT_VERBATIM)

READABLE_SUFFIXES = (".parquet", ".jsonl", ".json")
# Each template with a blank problem: a user turn equal to one of these has no problem in it.
_BLANK_TEMPLATES = frozenset(t.replace("{problem}", "").strip() for t in PROMPT_TEMPLATES.values())
_WS = re.compile(r"\s+")


@dataclass(frozen=True)
class CheckSettings:
    """What the check compares against: verl's `data.*` keys and the reward."""

    prompt_key: str = "prompt"  # data.prompt_key
    tokenizer: Any = None  # a Hugging Face tokenizer with a chat template; None: prompt lengths are not checked
    max_prompt_length: int = 1024  # data.max_prompt_length (tokens)
    chat_template_kwargs: Mapping[str, Any] = field(default_factory=dict)  # data.apply_chat_template_kwargs
    # Ground-truth checks are the project's reward's (verl_ext/reward/math_reward.py); off for another reward function.
    check_ground_truth: bool = True
    parse_all: bool = False  # parse every ground truth (finds `ground truth matched only verbatim`); slower
    workers: int | None = None  # math-verify worker processes; None: one per CPU


@dataclass
class FileReport:
    """The check of one file: row indices by reason."""

    path: str
    rows: int = 0
    file_error: str | None = None  # the whole file is unusable (unreadable, columns missing)
    errors: dict[str, list[int]] = field(default_factory=dict)
    warnings: dict[str, list[int]] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)  # reason -> what the first such row holds

    def add(self, table: dict[str, list[int]], reason: str, row: int, example: str | None = None) -> None:
        table.setdefault(reason, []).append(row)
        if example is not None and reason not in self.examples:
            self.examples[reason] = f"row {row}: {example}"

    @property
    def bad_rows(self) -> list[int]:
        """Rows with at least one error (a row may have several)."""
        return sorted({i for rows in self.errors.values() for i in rows})

    @property
    def ok(self) -> bool:
        return self.file_error is None and not self.errors

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "rows": self.rows,
            "file_error": self.file_error,
            "bad_rows": len(self.bad_rows),
            "errors": {k: sorted(v) for k, v in self.errors.items()},
            "warnings": {k: sorted(v) for k, v in self.warnings.items()},
            "examples": self.examples,
        }


@dataclass
class CheckReport:
    """The check of a set of files read together (duplicates and conflicts are looked for across all of them)."""

    files: list[FileReport]
    notes: list[str] = field(default_factory=list)  # what was not checked, and why
    seconds: dict[str, float] = field(default_factory=dict)  # time per phase

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.files)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "files": [f.to_dict() for f in self.files], "notes": self.notes, "seconds": self.seconds}

    def text(self, max_rows: int = 12, prefix: str = "[data check] ") -> str:
        """Readable report: per file, each reason with its count, its first row indices and an example."""
        lines = []
        for f in self.files:
            if f.file_error:
                lines.append(f"{prefix}{f.path}: UNUSABLE: {f.file_error}")
                continue
            bad = len(f.bad_rows)
            verdict = f"{bad} bad row{'s' * (bad != 1)}" if bad else "no bad rows"
            lines.append(f"{prefix}{f.path}: {f.rows} rows, {verdict}")
            for kind, table in (("error", f.errors), ("warning", f.warnings)):
                for reason in (*ERROR_REASONS, *WARNING_REASONS):
                    if reason not in table:
                        continue
                    rows = sorted(table[reason])
                    shown = ", ".join(map(str, rows[:max_rows])) + (
                        f", ... ({len(rows) - max_rows} more)" * (len(rows) > max_rows)
                    )
                    lines.append(f"{prefix}  {kind}: {reason}: {len(rows)} (rows {shown})")
                    if reason in f.examples:
                        lines.append(f"{prefix}      e.g. {f.examples[reason]}")
        lines += [f"{prefix}note: {n}" for n in self.notes]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Reading


def read_rows(path: str | Path, columns: Sequence[str]) -> tuple[list[dict], list[str]]:
    """The rows of a parquet / jsonl / json file as dicts of the `columns` it has; and the columns it lacks."""
    path = Path(path)
    if path.suffix not in READABLE_SUFFIXES:
        raise ValueError(f"unsupported file type {path.suffix!r}; verl reads {'/'.join(READABLE_SUFFIXES)}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        names = pq.read_schema(path).names
        present = [c for c in columns if c in names]
        return pq.read_table(path, columns=present).to_pylist(), [c for c in columns if c not in names]
    import pandas as pd

    df = pd.read_json(path, lines=path.suffix == ".jsonl", dtype=False)
    present = [c for c in columns if c in df.columns]
    return df[present].to_dict(orient="records"), [c for c in columns if c not in df.columns]


# ---------------------------------------------------------------------------------------------------------
# Row checks


def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def chat_messages(prompt: Any) -> list | None:
    """The prompt as a list of {role, content: str} messages, or None when it is not one."""
    if hasattr(prompt, "tolist"):
        prompt = prompt.tolist()
    if not isinstance(prompt, list) or not prompt:
        return None
    for m in prompt:
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            return None
    return [dict(m) for m in prompt]


def problem_key(user_turn: str) -> str:
    """What makes two rows the same problem: the last user turn, whitespace collapsed."""
    return _WS.sub(" ", user_turn).strip()


def _is_blank_problem(user_turn: str, extra_info: Any) -> bool:
    text = user_turn.strip()
    if not text or text in _BLANK_TEMPLATES:
        return True
    problem = extra_info.get("problem") if isinstance(extra_info, Mapping) else None
    return isinstance(problem, str) and not problem.strip()


def _ground_truth(reward_model: Any) -> Any:
    return reward_model.get("ground_truth") if isinstance(reward_model, Mapping) else None


def prompt_lengths(chats: Sequence[list], settings: CheckSettings) -> list[int | None]:
    """Tokens of each chat as verl's RLHFDataset counts them (chat template with the generation prompt, then the
    tokenizer without special tokens); None where the chat template raised."""
    tok, kwargs = settings.tokenizer, dict(settings.chat_template_kwargs)
    texts: list[str | None] = []
    for i in range(0, len(chats), 512):
        batch = list(chats[i : i + 512])
        try:
            texts += tok.apply_chat_template(batch, add_generation_prompt=True, tokenize=False, **kwargs)
        except Exception:  # find the rows that fail, one at a time
            for chat in batch:
                try:
                    texts.append(tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False, **kwargs))
                except Exception:
                    texts.append(None)
    ok = [t for t in texts if t is not None]
    counts = _token_counts(tok, ok)
    lengths = iter(counts)
    return [next(lengths) if t is not None else None for t in texts]


def _count(tok, texts: Sequence[str]) -> list[int]:
    if not texts:
        return []
    return [len(x) for x in tok(list(texts), add_special_tokens=False, return_attention_mask=False)["input_ids"]]


def _token_counts(tok, texts: Sequence[str], verify: int = 64) -> list[int]:
    """Token counts of `texts`. A fast tokenizer splits text at its added tokens (<|im_start|>, ...) and tokenizes
    the pieces independently, so a count is the sum over pieces, and a piece shared by many rows (a long system
    prompt) is tokenized once. Checked against whole-text counts on the first `verify` texts; on any difference,
    or a tokenizer without added tokens, every text is tokenized whole."""
    added = sorted(getattr(tok, "added_tokens_encoder", {}) or {}, key=len, reverse=True)
    if not texts or not added or not getattr(tok, "is_fast", False):
        return _count(tok, texts)
    splitter = re.compile("(" + "|".join(map(re.escape, added)) + ")")
    pieces = [splitter.split(t) for t in texts]
    distinct = sorted({p for ps in pieces for k, p in enumerate(ps) if k % 2 == 0 and p})
    piece_len = dict(zip(distinct, _count(tok, distinct), strict=True))
    counts = [sum(piece_len[p] if k % 2 == 0 else 1 for k, p in enumerate(ps) if p) for ps in pieces]
    if _count(tok, texts[:verify]) != counts[:verify]:
        return _count(tok, texts)
    return counts


@dataclass
class _Row:
    file: int
    index: int
    gold: str | None  # normalised ground truth (None: missing)
    key: str | None = None  # problem_key of a row with a problem, else None


def check_files(paths: Sequence[str | Path], settings: CheckSettings | None = None) -> CheckReport:
    """Check `paths` as one data set (verl concatenates a list of files): every bad row, by reason."""
    settings = settings or CheckSettings()
    report = CheckReport([FileReport(str(p)) for p in paths])
    clock = time.perf_counter()
    rows: list[_Row] = []
    chats: list[tuple[_Row, list]] = []
    columns = [settings.prompt_key, "reward_model", "data_source", "extra_info"]
    for fi, (path, fr) in enumerate(zip(paths, report.files, strict=True)):
        try:
            records, missing = read_rows(path, columns)
        except Exception as e:
            fr.file_error = f"cannot read it ({type(e).__name__}: {e})"
            continue
        missing = [c for c in missing if c != "extra_info"]
        if missing:
            fr.file_error = (
                f"column(s) {missing} missing: verl's RL layout needs {settings.prompt_key!r} (a chat list), "
                "'reward_model' ({'ground_truth': ...}) and 'data_source'"
            )
            continue
        fr.rows = len(records)
        if not records:
            fr.file_error = "it has no rows"
            continue
        for i, rec in enumerate(records):
            extra = rec.get("extra_info")
            if extra is not None and not isinstance(extra, Mapping):
                fr.add(fr.errors, BAD_EXTRA_INFO, i, _short(extra))
            raw_gold = _ground_truth(rec.get("reward_model"))
            row = _Row(fi, i, gold_text(raw_gold))
            rows.append(row)
            messages = chat_messages(rec.get(settings.prompt_key))
            if messages is None:
                fr.add(fr.errors, NOT_TEXT_CHAT, i, _short(rec.get(settings.prompt_key)))
                continue
            users = [m["content"] for m in messages if m["role"] == "user"]
            if not users:
                fr.add(fr.errors, NO_USER_TURN, i, f"roles {[m['role'] for m in messages]}")
                continue
            if _is_blank_problem(users[-1], extra):
                fr.add(fr.errors, EMPTY_PROBLEM, i, f"user turn {_short(users[-1])}")
            else:
                row.key = problem_key(users[-1])
            chats.append((row, messages))
    report.seconds["read"] = time.perf_counter() - clock

    clock = time.perf_counter()
    if settings.check_ground_truth:
        verdicts = classify_golds([r.gold for r in rows], parse_all=settings.parse_all, workers=settings.workers)
    else:
        verdicts = {g: (MISSING if g is None else EMPTY if not g else "ok") for g in {r.gold for r in rows}}
        report.notes.append("ground truths checked only for missing/empty values (not the project's reward)")
    for r in rows:
        fr, verdict = report.files[r.file], verdicts[r.gold]
        if verdict in GT_REASONS:
            fr.add(fr.errors, GT_REASONS[verdict], r.index, f"ground truth {_short(r.gold)}")
        elif verdict == VERBATIM_ONLY:
            fr.add(fr.warnings, GT_VERBATIM, r.index, f"ground truth {_short(r.gold)}")
    report.seconds["ground_truths"] = time.perf_counter() - clock

    clock = time.perf_counter()
    _check_same_problem(rows, verdicts, report, settings.check_ground_truth)
    report.seconds["duplicates"] = time.perf_counter() - clock

    clock = time.perf_counter()
    if settings.tokenizer is None:
        report.notes.append("prompt lengths not checked (no tokenizer given)")
    else:
        for (row, _), n in zip(chats, prompt_lengths([c for _, c in chats], settings), strict=True):
            fr = report.files[row.file]
            if n is None:
                fr.add(fr.errors, TEMPLATE_FAILED, row.index)
            elif n > settings.max_prompt_length:
                fr.add(fr.errors, TOO_LONG, row.index, f"{n} tokens > max_prompt_length={settings.max_prompt_length}")
    report.seconds["prompt_lengths"] = time.perf_counter() - clock
    return report


def _check_same_problem(rows: Sequence[_Row], verdicts: Mapping, report: CheckReport, reward_equivalence: bool) -> None:
    """Rows of the same problem: all `conflicting answers` when two usable ground truths differ (under the
    reward's equivalence, or as strings for another reward), else every row after the first is a
    `duplicate problem`."""
    from verl_ext.reward.math_reward import answers_equivalent

    same = answers_equivalent if reward_equivalence else str.__eq__
    groups: dict[str, list[_Row]] = defaultdict(list)
    for r in rows:
        if r.key:
            groups[r.key].append(r)
    for group in groups.values():
        if len(group) < 2:
            continue
        golds = list(dict.fromkeys(r.gold for r in group if r.gold and verdicts[r.gold] not in GT_REASONS))
        conflict = any(not same(golds[0], g) for g in golds[1:])
        for k, r in enumerate(group):
            fr = report.files[r.file]
            others = [f"{Path(report.files[o.file].path).name}:{o.index}" for o in group if o is not r]
            where = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
            if conflict:
                fr.add(
                    fr.errors,
                    CONFLICT,
                    r.index,
                    f"ground truths {' vs '.join(_short(g, 30) for g in golds)} (also {where})",
                )
            elif k > 0:
                fr.add(fr.warnings, DUPLICATE, r.index, f"same problem as {where}")


# ---------------------------------------------------------------------------------------------------------
# Writing the good rows


def write_good_rows(path: str | Path, bad_rows: Sequence[int], out: str | Path) -> int:
    """Copy `path` without `bad_rows` to the parquet file `out` (columns and types as they were); rows written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path, out = Path(path), Path(out)
    if path.suffix == ".parquet":
        table = pq.read_table(path)
    else:
        import pandas as pd

        table = pa.Table.from_pandas(
            pd.read_json(path, lines=path.suffix == ".jsonl", dtype=False), preserve_index=False
        )
    drop = set(bad_rows)
    keep = [i for i in range(table.num_rows) if i not in drop]
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.take(pa.array(keep, type=pa.int64())), out)
    return len(keep)


def write_report_json(report: CheckReport, out: str | Path) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report.to_dict(), indent=1))
