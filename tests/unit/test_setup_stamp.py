"""scripts/setup_env.sh's stamp: what makes it re-run pip. Dependencies and package settings do; pytest and ruff
settings in pyproject.toml do not (a re-run briefly reinstalls torchvision, breaking any run using .venv)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FILES = ("scripts/setup_env.sh", "requirements/cpu.txt", "requirements/cpu-constraints.txt", "pyproject.toml")


def _stamp(root: Path) -> str:
    res = subprocess.run(["bash", str(root / "scripts/setup_env.sh"), "--stamp"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    (stamp,) = res.stdout.split()
    return stamp


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_tool_settings_leave_the_stamp_and_dependencies_change_it(tmp_path):
    for name in FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    pyproject = tmp_path / "pyproject.toml"
    base = _stamp(tmp_path)
    assert base == _stamp(tmp_path)  # deterministic

    _edit(pyproject, "[tool.pytest.ini_options]", '[tool.pytest.ini_options]\nconsole_output_style = "count"')
    _edit(pyproject, "[tool.ruff]", "[tool.ruff]\n# a comment")
    assert _stamp(tmp_path) == base

    _edit(pyproject, "dependencies = [", 'dependencies = [\n  "tabulate",')
    with_dep = _stamp(tmp_path)
    assert with_dep != base

    _edit(tmp_path / "requirements/cpu.txt", "", "# pinned differently\n")
    assert _stamp(tmp_path) not in (base, with_dep)
