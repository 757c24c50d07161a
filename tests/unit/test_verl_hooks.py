"""Every verl name the recipe relies on (recipe/lte/VERL_HOOKS.md) exists in the installed verl, with the
parameters we pass: a verl upgrade that moves or changes one fails here, by name, before any run."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

HOOKS_FILE = Path(__file__).resolve().parents[2] / "recipe" / "lte" / "VERL_HOOKS.md"


def hook_entries() -> list[str]:
    """The first cell of each table row: `module.name(params)`, `module.name: self.attr` or `module: "text"`."""
    rows = [line for line in HOOKS_FILE.read_text().splitlines() if line.startswith("| `")]
    return [re.match(r"\| `([^`]+)`", row).group(1) for row in rows]


def resolve(dotted: str):
    """The object named by a dotted path: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def test_the_checklist_has_entries():
    assert len(hook_entries()) >= 20


@pytest.mark.parametrize("entry", hook_entries())
def test_verl_hook_exists(entry: str):
    name, sep, needle = entry.partition(": ")
    params = None
    m = re.fullmatch(r"([\w.]+)\((.*)\)", name)
    if m:
        name, params = m.group(1), [p.strip() for p in m.group(2).split(",") if p.strip()]
    obj = resolve(name)
    if params is not None:
        have = inspect.signature(obj).parameters
        missing = [p for p in params if p not in have]
        assert not missing, f"{name} no longer takes {missing} (it takes {list(have)})"
    if sep:
        text = needle.strip('"')
        assert text in inspect.getsource(obj), f"{name} no longer mentions {text}"
