"""A checklist line: what the preflight's checks (``recipe.lte.tools.preflight``, ``preflight_ray``) return."""

from __future__ import annotations

from dataclasses import dataclass

OK, WARN, FAIL, SKIP = "ok", "warn", "FAIL", "skip"


@dataclass(frozen=True)
class Check:
    """One line of the checklist: ``status`` is ok, warn, FAIL or skip; ``fix`` says what to do when not ok."""

    name: str
    status: str
    message: str
    fix: str = ""
