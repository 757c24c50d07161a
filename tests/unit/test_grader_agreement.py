"""benchmarks/grader_agreement.py: the reading of math-verify's test cases and of the project's case set."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "grader_agreement.py"


@pytest.fixture(scope="module")
def ga():
    spec = importlib.util.spec_from_file_location("grader_agreement", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


TEST_FILE = """
import pytest

@pytest.mark.parametrize("gold,pred,expected", [("$1$", "1", 1), ("$2$", "3", 0), (f"{1}", "1", 1)])
def test_pairs(gold, pred, expected):
    assert compare_strings(gold, pred) == expected

@pytest.mark.parametrize("gold, pred, result", [("$x$", "$x$", 1)])
def test_result_named(gold, pred, result):
    pass

@pytest.mark.parametrize("pred,expected", [("A", "a")])
def test_not_a_grading_case(pred, expected):
    pass

def test_plain():
    raise AssertionError("never run: the file is only read")
"""


def test_reads_parametrized_gold_pred_cases_without_running_them(ga, tmp_path):
    (tmp_path / "test_some.py").write_text(TEST_FILE)
    cases, unreadable = ga.math_verify_cases(tmp_path)
    assert [(c.case_id, c.gold, c.response, c.expected, c.klass) for c in cases] == [
        ("test_some.py::test_pairs[0]", "$1$", "1", True, "pairs"),
        ("test_some.py::test_pairs[1]", "$2$", "3", False, "pairs"),
        ("test_some.py::test_result_named[0]", "$x$", "$x$", True, "result_named"),
    ]
    assert unreadable == ["test_some.py::test_pairs[2]"]  # an f-string is not a literal


def test_corrections_must_name_existing_cases(ga, tmp_path):
    (tmp_path / "test_some.py").write_text(TEST_FILE)
    cases, _ = ga.math_verify_cases(tmp_path)
    with pytest.raises(SystemExit, match="not found"):
        ga.apply_corrections(cases)  # the real ids are not in this file


def test_fixture_responses(ga):
    cases = ga.fixture_cases()
    assert len(cases) >= 300
    boxed = next(c for c in cases if c.gold == "28\\%" and "pct" in c.response)
    assert boxed.response.endswith("$\\boxed{28 pct}$.") and boxed.gold_for_math_verify == "$28\\%$"
    with_delimiters = next(c for c in cases if c.gold == "$69$,$84$")
    assert with_delimiters.gold_for_math_verify == "$69$,$84$"
