"""Right verdicts of the project's math reward against plain math-verify 0.9.0 (and verl's scorer), same cases.

Two case sets:

1. `math-verify`: the test cases math-verify publishes for itself. The math-verify 0.9.0 source distribution is
   fetched from PyPI at run time (`pip download --no-deps --no-binary :all: math-verify==0.9.0`, kept in
   --cache) and the (gold, prediction, expected) parameters of its tests are read with `ast` (nothing of it is
   run, nothing is committed here). Cases whose verdict is defined by a non-default math-verify option are left
   out (EXCLUDED: the reward has fixed options); expected verdicts that are wrong are corrected (CORRECTIONS, each
   with its reason).
2. `fixture`: this project's case set, tests/fixtures/reward/grader_cases.yaml (own words and cases, covering the
   behaviours public graders test: math-verify, hendrycks MATH, Qwen2.5-Math, PRM800K).

Verdicts: ours = `verl_ext.reward.math_reward.compute_score("math", response, gold)["acc"]`; math-verify =
`verify(parse(gold), parse(response))` with math-verify's defaults (a fixture gold is stored as datasets store
answers, without math delimiters: it is given to math-verify as `$gold$`, as math-verify's README does); verl =
`verl.utils.reward_score.math_verify.compute_score(response, gold)` as verl calls it (for reference).
Prints, per class, how many verdicts each grader gets right, the totals, and every case where ours and
math-verify differ.

    .venv/bin/python benchmarks/grader_agreement.py [--source all|math-verify|fixture] [--show-misses]
        [--reward verl_ext.reward.math_reward]
"""

from __future__ import annotations

import argparse
import ast
import importlib
import logging
import subprocess
import sys
import tarfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests/fixtures/reward/grader_cases.yaml"
MATH_VERIFY_VERSION = "0.9.0"

# math-verify test cases (pytest-style id: file::test[index in its parametrize list]) left out: their verdict is
# set by a math-verify option the reward does not use (it runs with math-verify's defaults).
EXCLUDED = {
    "test_all.py::test_complex_math_expressions[7]": "precision=2 (a 2-digit rounding of 1/3 accepted)",
    "test_all.py::test_complex_math_expressions[13]": "precision=2 (2.6667 accepted for 8/3)",
    "test_all.py::test_set_rel_assymetry[0]": "allow_set_relation_comp=True",
    "test_all.py::test_set_rel_assymetry[2]": "allow_set_relation_comp=True",
    "test_strict.py::test_strict_variable_comparison[1]": "strict=False (f(x) accepted for f(y))",
}
# math-verify test cases whose expected verdict is wrong as a grading verdict: (excerpt of the prediction, right
# verdict, why). The excerpt guards against the id pointing at another case.
CORRECTIONS = {
    "test_all.py::test_latex_notation[5]": (
        "Answer $ \n 9 \n $",
        1,
        "the response states 9; the test pins that math-verify's inline-math pattern does not span lines",
    ),
    "test_all.py::test_latex_notation[6]": (
        "Answer \\( \n 9 \n \\)",
        1,
        "the response states 9; the test pins that math-verify's inline-math pattern does not span lines",
    ),
    "test_yujianll.py::test_string_extraction[9]": (
        "$1 + \\frac{1}{\\mathrm{e}}$",
        0,
        "1 + 1/e is not 1 - 1/e",
    ),
    "test_all.py::test_set_rel_assymetry[3]": (
        "$-2 \\\\le x \\\\le 7$",
        1,
        "-2 <= x <= 7 is the set x in [-2, 7]; the test pins the default allow_set_relation_comp=False",
    ),
}


@dataclass
class Case:
    source: str
    klass: str
    case_id: str
    gold: str
    response: str
    expected: bool
    gold_for_math_verify: str
    note: str = ""


# ---------------------------------------------------------------------------------------------- case sets


def fixture_cases(path: Path = FIXTURE) -> list[Case]:
    data = yaml.safe_load(path.read_text())
    out = []
    for i, c in enumerate(data["cases"]):
        response = c["response"] if "response" in c else data["boxed_response"].replace("ANSWER", c["boxed"])
        gold = str(c["gold"])
        delimited = any(d in gold for d in ("$", "\\(", "\\[", "\\boxed"))
        out.append(
            Case(
                "fixture",
                c["class"],
                f"grader_cases.yaml[{i}]",
                gold,
                response,
                bool(c["expected"]),
                gold if delimited else f"${gold}$",
                c.get("note", ""),
            )
        )
    return out


def fetch_math_verify_tests(cache: Path) -> Path:
    """The tests/ folder of the math-verify sdist, downloaded from PyPI once into `cache`."""
    tests = cache / f"math_verify-{MATH_VERIFY_VERSION}" / "tests"
    if tests.is_dir():
        return tests
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(cache)]
    done = subprocess.run([*cmd, f"math-verify=={MATH_VERIFY_VERSION}"], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(
            f"could not download the math-verify {MATH_VERIFY_VERSION} sdist from PyPI into {cache} "
            f"(needs network access; or run with --source fixture):\n{done.stderr[-2000:]}"
        )
    with tarfile.open(cache / f"math_verify-{MATH_VERIFY_VERSION}.tar.gz") as tar:
        members = [m for m in tar.getmembers() if "/tests/" in m.name and m.name.endswith(".py")]
        tar.extractall(cache, members=members, filter="data")
    return tests


def _parametrized(fn: ast.FunctionDef) -> tuple[list[str], list[ast.expr]] | None:
    for dec in fn.decorator_list:
        if isinstance(dec, ast.Call) and getattr(dec.func, "attr", "") == "parametrize":
            names = [n.strip() for n in ast.literal_eval(dec.args[0]).split(",")]
            return names, list(dec.args[1].elts)
    return None


def math_verify_cases(tests: Path) -> tuple[list[Case], list[str]]:
    """Every (gold, pred, expected) case of a parametrized math-verify test, read without running anything.
    Returns (cases, ids of parameter rows that are not literals and were skipped)."""
    cases, unreadable = [], []
    for path in sorted(tests.glob("test_*.py")):
        for fn in ast.parse(path.read_text()).body:
            if not isinstance(fn, ast.FunctionDef) or (found := _parametrized(fn)) is None:
                continue
            names, rows = found
            if "gold" not in names or "pred" not in names:
                continue
            for k, row in enumerate(rows):
                case_id = f"{path.name}::{fn.name}[{k}]"
                try:
                    values = dict(zip(names, ast.literal_eval(row), strict=True))
                except ValueError:
                    unreadable.append(case_id)
                    continue
                expected = values.get("expected", values.get("result"))
                klass = fn.name.removeprefix("test_")
                g, p = values["gold"], values["pred"]
                cases.append(Case("math-verify", klass, case_id, g, p, bool(expected), g))
    return cases, unreadable


def apply_corrections(cases: list[Case]) -> list[Case]:
    by_id = {c.case_id: c for c in cases}
    missing = [i for i in [*EXCLUDED, *CORRECTIONS] if i not in by_id]
    if missing:
        raise SystemExit(f"math-verify cases not found (another version?): {missing}")
    for case_id, (excerpt, verdict, why) in CORRECTIONS.items():
        case = by_id[case_id]
        if excerpt not in case.response:
            raise SystemExit(f"{case_id} is not the case the correction is about: {case.response[:80]!r}")
        case.expected, case.note = bool(verdict), f"corrected: {why}"
    return [c for c in cases if c.case_id not in EXCLUDED]


# ---------------------------------------------------------------------------------------------- graders


REWARD_MODULE = "verl_ext.reward.math_reward"  # --reward: another version of the reward to measure (e.g. an older one)


def grade_ours(case: Case) -> bool:
    compute_score = importlib.import_module(REWARD_MODULE).compute_score
    return bool(compute_score("math", case.response, case.gold)["acc"])


def grade_math_verify(case: Case) -> bool:
    from math_verify import parse, verify

    try:
        return bool(verify(parse(case.gold_for_math_verify), parse(case.response)))
    except Exception:  # noqa: BLE001 (a grader that raises gives no verdict: counted as "not equivalent")
        return False


def grade_verl(case: Case) -> bool:
    from verl.utils.reward_score import math_verify as verl_mv

    try:
        return float(verl_mv.compute_score(case.response, case.gold)) >= 1.0
    except Exception:  # noqa: BLE001
        return False


GRADERS = {"ours": grade_ours, "math-verify": grade_math_verify, "verl": grade_verl}


def report(title: str, cases: list[Case], show_misses: bool) -> dict[str, int]:
    verdicts = {name: [fn(c) for c in cases] for name, fn in GRADERS.items()}
    right = {name: [v == c.expected for v, c in zip(vs, cases, strict=True)] for name, vs in verdicts.items()}
    per_class: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for i, c in enumerate(cases):
        per_class[c.klass]["n"] += 1
        for name in GRADERS:
            per_class[c.klass][name] += right[name][i]
    print(f"\n{title}")
    header = f"  {'class':<34}{'cases':>6}" + "".join(f"{name:>13}" for name in GRADERS)
    print(header)
    for klass, counts in per_class.items():
        print(f"  {klass:<34}{counts['n']:>6}" + "".join(f"{counts[name]:>13}" for name in GRADERS))
    totals = {name: sum(r) for name, r in right.items()}
    print(f"  {'total right':<34}{len(cases):>6}" + "".join(f"{totals[name]:>13}" for name in GRADERS))
    print("  where ours and math-verify differ:")
    for i, c in enumerate(cases):
        show = verdicts["ours"][i] != verdicts["math-verify"][i] or (show_misses and not right["ours"][i])
        if show:
            mark = "ours right" if right["ours"][i] else "ours WRONG"
            print(f"    {c.case_id} [{c.klass}] expected {int(c.expected)}: {mark}")
            print(f"      gold {c.gold[:100]!r}\n      response ...{c.response[-110:]!r}")
            if c.note:
                print(f"      note: {c.note}")
    return totals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", choices=["all", "math-verify", "fixture"], default="all")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "lte-verl" / "grader-agreement")
    ap.add_argument("--show-misses", action="store_true", help="also list every case ours gets wrong")
    ap.add_argument("--reward", default=REWARD_MODULE, help="module whose compute_score is 'ours'")
    args = ap.parse_args()
    globals()["REWARD_MODULE"] = args.reward
    logging.disable(logging.WARNING)  # math-verify's parse warnings and our timeout lines would drown the table

    if args.source in ("all", "math-verify"):
        raw, unreadable = math_verify_cases(fetch_math_verify_tests(args.cache))
        cases = apply_corrections(raw)
        title = (
            f"math-verify {MATH_VERIFY_VERSION}'s own test cases (PyPI sdist): {len(raw)} read, "
            f"{len(unreadable)} rows not literal and skipped, {len(EXCLUDED)} left out (non-default options), "
            f"{len(CORRECTIONS)} verdicts corrected"
        )
        report(title, cases, args.show_misses)
    if args.source in ("all", "fixture"):
        report(f"this project's case set ({FIXTURE.relative_to(ROOT)})", fixture_cases(), args.show_misses)


if __name__ == "__main__":
    main()
