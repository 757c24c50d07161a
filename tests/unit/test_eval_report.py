"""Scoring fixture generations with the project's real reward, then tables (markdown, CSV), plot and compare.

tests/fixtures/eval/generations.jsonl: 12 problems (2 per benchmark), n = 4 responses each, every response
either a clearly correct answer (sometimes in an equivalent written form: 0.5 for 1/2, sqrt(8) for 2 sqrt(2),
070 for 70) or a wrong / truncated one. Correct counts c per problem, by construction:
  math 4, 1 | minerva 2, 0 | olympiad_bench 3, 1 | amc 0, 0 | aime 1, 0 | aime25 4, 2
Hand-computed (n = 4; Pass@2 of one problem = 1 - C(4-c, 2) / 6: c=0 -> 0, c=1 -> 1/2, c=2 -> 5/6, c>=3 -> 1):
  Pass@1: math 5/8, minerva 1/4, olympiad 1/2, amc 0, aime 1/8, aime25 3/4  -> Avg 9/24 = 0.375
  Pass@2: math 3/4, minerva 5/12, olympiad 3/4, amc 0, aime 1/4, aime25 11/12 -> Avg 37/72
  Pass@4: math 1, minerva 1/2, olympiad 1, amc 0, aime 1/2, aime25 1          -> Avg 4/6
"""

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from recipe.lte.evaluate.cli import main
from recipe.lte.evaluate.paper import BENCHMARKS, PAPER_AVERAGES

FIXTURE = Path(__file__).parents[1] / "fixtures" / "eval" / "generations.jsonl"
EXPECTED = {  # data_source -> {k: Pass@k}
    "math": {1: 5 / 8, 2: 3 / 4, 4: 1.0},
    "minerva": {1: 1 / 4, 2: 5 / 12, 4: 1 / 2},
    "olympiad_bench": {1: 1 / 2, 2: 3 / 4, 4: 1.0},
    "amc": {1: 0.0, 2: 0.0, 4: 0.0},
    "aime": {1: 1 / 8, 2: 1 / 4, 4: 1 / 2},
    "aime25": {1: 3 / 4, 2: 11 / 12, 4: 1.0},
}
EXPECTED_AVG = {1: 0.375, 2: 37 / 72, 4: 4 / 6}
EXPECTED_C = {"math/0": 4, "math/1": 1, "minerva/0": 2, "minerva/1": 0, "olympiad_bench/0": 3, "olympiad_bench/1": 1}
EXPECTED_C |= {"amc/0": 0, "amc/1": 0, "aime/0": 1, "aime/1": 0, "aime25/0": 4, "aime25/1": 2}
SETTINGS = ["--temperature", "0.6", "--top-p", "0.95", "--max-new-tokens", "8192", "--template", "fixture"]


def _score(out: Path, *extra: str, name: str = "fixture") -> dict:
    main(["score", "--generations", str(FIXTURE), "--out", str(out), "--run-name", name, "--quiet", *SETTINGS, *extra])
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scored")
    _score(out)
    return out


def test_per_sample_results_match_construction(scored):
    samples = [json.loads(line) for line in (scored / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 12 * 4
    correct: dict[str, int] = {}
    for s in samples:
        correct[s["id"]] = correct.get(s["id"], 0) + s["acc"]
        assert s["score"] == float(s["acc"]) and "pred" in s and s["finish_reason"] in ("stop", "length")
    assert correct == EXPECTED_C
    truncated = [s for s in samples if s["finish_reason"] == "length"]
    assert truncated and not any(s["acc"] for s in truncated)


def test_summary_matches_hand_computation(scored):
    summary = json.loads((scored / "summary.json").read_text())
    assert [b["data_source"] for b in summary["benchmarks"]] == [b.data_source for b in BENCHMARKS]
    for b in summary["benchmarks"]:
        assert b["n"] == 4 and b["problems"] == 2
        assert {int(k): v for k, v in b["pass_at_k"].items()} == pytest.approx(EXPECTED[b["data_source"]])
    assert {int(k): v for k, v in summary["average"]["pass_at_k"].items()} == pytest.approx(EXPECTED_AVG)
    cfg = summary["config"]
    assert (cfg["temperature"], cfg["top_p"], cfg["max_new_tokens"], cfg["template"]) == (0.6, 0.95, 8192, "fixture")
    assert cfg["grader"].startswith("verl_ext.reward.math_reward.compute_score (math-verify ")


def test_markdown_and_csv_tables_in_paper_layout(scored):
    md = (scored / "table.md").read_text()
    header = md.splitlines()[0]
    assert header == "| Run | Metric | MATH-500 | Minerva | Olympiad | AMC23 | AIME24 | AIME25 | Avg |"
    assert "| fixture | Pass@1 | 62.50 | 25.00 | 50.00 | 0.00 | 12.50 | 75.00 | 37.50 |" in md
    assert "| fixture | Pass@2 | 75.00 | 41.67 | 75.00 | 0.00 | 25.00 | 91.67 | 51.39 |" in md
    assert "| fixture | Pass@4 | 100.00 | 50.00 | 100.00 | 0.00 | 50.00 | 100.00 | 66.67 |" in md
    assert "n=4, temperature=0.6, top_p=0.95, max new tokens=8192, template=fixture" in md
    assert "AMC23 2 (paper 40)" in md  # sizes that differ from the paper's sets are flagged
    rows = list(csv.DictReader(io.StringIO((scored / "table.csv").read_text())))
    assert [r["metric"] for r in rows] == ["Pass@1", "Pass@2", "Pass@4"]
    assert float(rows[1]["Avg"]) == pytest.approx(100 * 37 / 72, abs=1e-4)
    assert rows[0]["n"] == "4" and rows[0]["temperature"] == "0.6" and rows[0]["grader"].startswith("verl_ext")


def test_plot_is_a_png(scored):
    from matplotlib.image import imread

    img = imread(scored / "pass_at_k.png")
    assert img.shape[0] > 300 and img.shape[1] > 600
    assert img.std() > 0.01  # not a blank canvas


def test_workers_give_identical_results(tmp_path):
    one = _score(tmp_path / "w1", "--workers", "1")
    four = _score(tmp_path / "w4", "--workers", "4")
    assert one["benchmarks"] == four["benchmarks"]
    assert (tmp_path / "w1" / "samples.jsonl").read_text() == (tmp_path / "w4" / "samples.jsonl").read_text()


def test_compare_with_paper_rows(scored, tmp_path, capsys):
    # a second run: the same generations graded against shuffled ground truths is a different, known result
    other = tmp_path / "other"
    other.mkdir()
    recs = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    for r in recs:
        r["ground_truth"] = "123456789"  # matches no response: every Pass@k is 0
    (other / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    main(["score", "--generations", str(other / "generations.jsonl"), "--run-name", "zero", "--quiet", *SETTINGS])
    out = tmp_path / "cmp"
    main(["compare", str(scored), str(other), "--out", str(out)])
    md = (out / "table.md").read_text()
    assert "| fixture | Pass@1 | 62.50 |" in md and "| fixture | Pass@4 | 100.00 |" in md
    assert "| zero | Pass@4 | 0.00 | 0.00 | 0.00 | 0.00 | 0.00 | 0.00 | 0.00 |" in md
    assert "Pass@2" not in md  # compare shows Pass@1 and the chosen k (default: the largest common one)
    lte8 = next(p for p in PAPER_AVERAGES if p.model == "Qwen3-8B-Base" and p.method == "LTE")
    assert f"| {lte8.label} | Pass@1 | — | — | — | — | — | — | 49.01 |" in md
    assert (out / "pass_at_k.png").exists() and (out / "table.csv").exists()
    with pytest.raises(ValueError, match="--k 8"):
        main(["compare", str(scored), "--k", "8"])
    capsys.readouterr()
    main(["compare", str(scored), "--k", "2", "--no-paper"])
    assert "paper:" not in capsys.readouterr().out


def test_generations_without_ground_truth_use_the_benchmark_parquet(six_benchmarks_path, tmp_path):
    import pandas as pd

    df = pd.read_parquet(six_benchmarks_path)
    aime25 = df[df.data_source == "aime25"].iloc[0]
    gt = aime25.reward_model["ground_truth"]
    gen = tmp_path / "generations.jsonl"
    pid = f"aime25/{aime25.extra_info['index']}"
    gen.write_text(json.dumps({"id": pid, "responses": [f"\\boxed{{{gt}}}", "\\boxed{-1}"]}) + "\n")
    with pytest.raises(ValueError, match="pass --data"):
        main(["score", "--generations", str(gen), "--quiet"])
    summary = _score_external(gen, six_benchmarks_path)
    assert summary["benchmarks"][0]["pass_at_k"] == {"1": 0.5, "2": 1.0}
    assert summary["config"]["temperature"] is None  # not recorded: tables say "unknown", never a guess
    assert "temperature=unknown" in (tmp_path / "table.md").read_text()


def _score_external(gen: Path, data: Path) -> dict:
    main(["score", "--generations", str(gen), "--data", str(data), "--quiet"])
    return json.loads((gen.parent / "summary.json").read_text())


def test_malformed_generations_are_named(tmp_path):
    gen = tmp_path / "g.jsonl"
    gen.write_text('{"id": "math/0", "responses": ["a"], "data_source": "math", "ground_truth": "1"}\n{"id": 3}\n')
    with pytest.raises(ValueError, match=r"record 1 needs an 'id' and a non-empty 'responses'"):
        main(["score", "--generations", str(gen), "--quiet"])
    gen.write_text('{"id": "math/0", "responses": ["a"]\n{"id": "x"}\n')
    with pytest.raises(ValueError, match="line 1 is not valid JSON"):
        main(["score", "--generations", str(gen), "--quiet"])


def test_help_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "recipe.lte.evaluate", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "generate" in out.stdout and "compare" in out.stdout
