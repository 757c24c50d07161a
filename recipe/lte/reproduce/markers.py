"""Resumability: a stage (training one arm and seed, merging it, evaluating a model) is done when its marker file
holds the fingerprint of the stage's inputs. A rerun skips done stages and redoes any whose inputs changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def fingerprint(inputs: Any) -> str:
    """A short stable hash of JSON-able ``inputs`` (dict key order does not matter)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_marker(path: str | os.PathLike) -> dict | None:
    """The marker's record, or None when there is none. A marker that is not JSON raises, naming the file."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not a valid marker ({e}); delete it to redo that stage") from e


def write_marker(path: str | os.PathLike, inputs: Any, **info: Any) -> dict:
    """Record a finished stage: its inputs, their fingerprint and ``info`` (written atomically)."""
    path = Path(path)
    record = {"fingerprint": fingerprint(inputs), "inputs": inputs, **info}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
    return record


def is_done(path: str | os.PathLike, inputs: Any) -> bool:
    """True when the marker at ``path`` records exactly these inputs."""
    record = read_marker(path)
    return record is not None and record.get("fingerprint") == fingerprint(inputs)


def differences(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ between two input records: ``{key: (old, new)}``."""
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
