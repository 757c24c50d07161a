"""data_prep: every source's column layout (tests/fixtures/data_prep, hand-made rows in each hub layout),
validation reports, the prompt template, the CLI, and verl's real RLHFDataset reading the output."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import data_prep
from data_prep.__main__ import main
from data_prep.build import build_rows, read_local
from data_prep.sources import BENCHMARK_SOURCES, SOURCES
from verl_ext.reward.math_reward import compute_score

FIX = Path(__file__).parents[1] / "fixtures" / "data_prep"
LOCAL = {
    "openr1": FIX / "openr1.parquet",
    "dapo": FIX / "dapo.parquet",
    "math500": FIX / "math500.jsonl",
    "minerva": FIX / "minerva.json",
    "olympiadbench": FIX / "olympiadbench.parquet",
    "amc23": FIX / "amc23.jsonl",
    "aime24": FIX / "aime24.parquet",
    "aime25": FIX / "aime25",  # a folder: one file per hub config
}
INSTRUCTION = " Let's think step by step and output the final answer within \\boxed{}."

# name -> (kept (problem, ground_truth) in order, {drop reason: count}, data_source)
EXPECTED = {
    "openr1": (
        [
            ("What is $1+1$?", "2"),
            ("Compute $\\frac{1}{2}+\\frac{1}{4}$.", "\\frac{3}{4}"),
            ("Solve $x^2=4$ for $x>0$.", "2"),
            ("Find $z$ if $z+1=3$.", "2"),  # kept: a blank reference solution does not drop the row
        ],
        {"empty problem": 1, "missing answer": 1, "duplicate problem": 1},
        "openr1",
    ),
    "dapo": (
        [("Find $a+b$ if $a=3$ and $b=4$.", "7"), ("How many primes are below $10$?", "4")],
        {"duplicate problem": 4},
        "math_dapo",
    ),
    "math500": (
        [
            ("Convert $(0,3)$ to polar coordinates.", "\\left( 3, \\frac{\\pi}{2} \\right)"),
            ("Compute $\\dbinom{5}{2}$.", "10"),
        ],
        {"empty problem": 1},
        "math",
    ),
    "minerva": ([("Estimate the mass in grams.", "4.5e33"), ("Find the angle.", "np.arcsin(10/13)")], {}, "minerva"),
    "olympiadbench": (
        [("Find all triples.", "$(1,8,19), (2,7,13)$"), ("Find $n$ and $m$.", "$69$, $84$")],
        {"empty answer": 1},
        "olympiad_bench",
    ),
    "amc23": ([("AMC problem 0?", "27"), ("AMC problem 1?", "4.5"), ("AMC problem 2?", "36")], {}, "amc"),
    "aime24": ([("AIME problem A?", "25"), ("AIME problem B?", "204")], {}, "aime"),
    "aime25": (
        [("AIME25 I-1?", "70"), ("AIME25 I-2?", "588"), ("AIME25 II-1?", "240")],
        {"duplicate problem with a different answer": 1},
        "aime25",
    ),
}


def _build(name: str, **kw):
    return build_rows(read_local(LOCAL[name]), SOURCES[name], "test", **kw)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_source_layout(name):
    kept, drops, data_source = EXPECTED[name]
    rows, report = _build(name)
    assert [(r["extra_info"]["problem"], r["reward_model"]["ground_truth"]) for r in rows] == kept
    assert dict(report.dropped) == drops
    assert report.rows_read == len(kept) + sum(drops.values()) and report.rows_written == len(kept)
    for i, r in enumerate(rows):
        assert r["data_source"] == data_source and r["ability"] == "math"
        assert r["reward_model"]["style"] == "rule" and isinstance(r["reward_model"]["ground_truth"], str)
        assert r["prompt"] == [{"role": "user", "content": r["extra_info"]["problem"] + INSTRUCTION}]
        assert r["extra_info"]["index"] == i and r["extra_info"]["template"] == data_prep.DEFAULT_TEMPLATE
        assert r["extra_info"]["split"] == "test" and r["extra_info"]["source"] == SOURCES[name].hub_id


def test_report_counts_normalisations_and_conflicts():
    _, report = _build("aime24")
    assert report.normalised == {"answer given as int, written as text": 2}
    _, report = _build("olympiadbench")
    assert report.normalised == {"answer given as list, written as text": 2}
    _, report = _build("aime25")
    assert any("'71' != '70'" in w for w in report.warnings)
    assert "duplicate problem with a different answer" in report.text()


def test_every_ground_truth_is_scored_correct_by_the_reward():
    for name in EXPECTED:
        rows, _ = _build(name)
        for r in rows:
            gt = r["reward_model"]["ground_truth"]
            assert compute_score(r["data_source"], f"... \\boxed{{{gt}}}", gt)["score"] == 1.0, (name, gt)


def test_templates():
    assert data_prep.build_prompt("What is $2^3$?") == [{"role": "user", "content": "What is $2^3$?" + INSTRUCTION}]
    assert data_prep.build_prompt("P {x}", template="problem_only", system_prompt="Box it.") == [
        {"role": "system", "content": "Box it."},
        {"role": "user", "content": "P {x}"},  # braces in the problem are left alone
    ]
    with pytest.raises(ValueError, match="unknown prompt template 'nope'"):
        data_prep.build_prompt("x", template="nope")
    rows, _ = _build("minerva", template="qwen_boxed", system_prompt="S")
    assert rows[0]["prompt"][0] == {"role": "system", "content": "S"}
    assert rows[0]["prompt"][1]["content"].endswith("put your final answer within \\boxed{}.")
    assert rows[0]["extra_info"]["template"] == "qwen_boxed"


def test_wrong_layout_names_the_columns(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt_text": "x", "solution": "1"}) + "\n")
    with pytest.raises(ValueError, match=r"column\(s\) \['problem', 'answer'\] not found.*prompt_text"):
        build_rows(read_local(path), SOURCES["math500"], "test")
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_local(tmp_path / "missing.parquet")


def test_cli_builds_everything_offline(tmp_path, capsys):
    args = ["benchmarks", "openr1", "dapo", "--out", str(tmp_path)]
    for name, path in LOCAL.items():
        args += ["--local", f"{name}={path}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "[dapo]" in out and "dropped      4  duplicate problem" in out
    for name, (kept, drops, _) in EXPECTED.items():
        df = pd.read_parquet(tmp_path / f"{name}.parquet")
        assert len(df) == len(kept)
        report = json.loads((tmp_path / f"{name}.report.json").read_text())
        assert report["dropped"] == drops and report["rows_written"] == len(kept)
    val = pd.read_parquet(tmp_path / "benchmarks_val.parquet")
    assert len(val) == sum(len(EXPECTED[n][0]) for n in BENCHMARK_SOURCES)
    assert set(val.data_source) == {"math", "minerva", "olympiad_bench", "amc", "aime", "aime25"}


def test_cli_without_hub_names_the_local_option(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="--local math500=PATH"):
        main(["math500", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="NAME=PATH"):
        main(["math500", "--local", "nonsense"])
    with pytest.raises(SystemExit, match="not being built"):
        main(["math500", "--local", f"aime24={LOCAL['aime24']}"])


def test_cli_help_and_list(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "Elliott/Openr1-Math-46k-8192" in out and "opencompass/AIME2025" in out and "boxed_step_by_step" in out


def test_verl_rlhf_dataset_reads_the_output(tmp_path, tiny_model_dir):
    """verl's real RLHFDataset (tokenizer, overlong-prompt filter) reads the built parquet."""
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    args = ["openr1", "math500", "olympiadbench", "--out", str(tmp_path), "--system-prompt", "Be brief."]
    for name in ("openr1", "math500", "olympiadbench"):
        args += ["--local", f"{name}={LOCAL[name]}"]
    main(args)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = OmegaConf.create(
        {
            "max_prompt_length": 512,
            "filter_overlong_prompts": True,
            "filter_overlong_prompts_workers": 1,
            "cache_dir": str(tmp_path / "cache"),
        }
    )
    files = [str(tmp_path / f"{n}.parquet") for n in ("openr1", "math500", "olympiadbench")]
    ds = RLHFDataset(data_files=files, tokenizer=tok, config=config)
    assert len(ds) == 4 + 2 + 2
    assert ds[0]["extra_info"]["reference"] == "<think>...</think> \\boxed{2}"  # the agent loop reads it here
    item = ds[5]  # math500's second row
    assert item["raw_prompt"] == data_prep.build_prompt("Compute $\\dbinom{5}{2}$.", system_prompt="Be brief.")
    assert item["reward_model"]["ground_truth"] == "10" and item["data_source"] == "math"
    assert item["index"] == 1 and item["extra_info"]["template"] == data_prep.DEFAULT_TEMPLATE


def test_openr1_keeps_each_rows_reference_solution_and_counts_rows_without():
    rows, report = _build("openr1")
    refs = [r["extra_info"]["reference"] for r in rows]
    # The fixture's `target` column: [{"role": "assistant", "content": ...}], as in Openr1-Math-46k-8192; row 6 of
    # the source is blank.
    assert refs == [
        "<think>...</think> \\boxed{2}",
        "<think>...</think> \\boxed{\\frac{3}{4}}",
        "<think>...</think> \\boxed{2}",
        None,
    ]
    assert report.without_reference == [3]
    assert "no reference solution in 1 written rows (extra_info.index e.g. [3])" in report.text()
    assert report.to_dict()["rows_without_reference"] == [3]
    # Sources without a reference column carry no such key.
    rows, report = _build("math500")
    assert all("reference" not in r["extra_info"] for r in rows) and report.without_reference == []


def test_luffy_template_is_the_bare_problem_under_luffys_system_prompt():
    from data_prep.templates import LUFFY_SYSTEM_PROMPT

    # LUFFY's data script's instruction (luffy/scripts/data/prepare_openr1_data_spec_sys.py), as Python reads it.
    assert LUFFY_SYSTEM_PROMPT.startswith("Your task is to follow a systematic, thorough reasoning process")
    assert 'format: "<think>\n {thoughts} </think>\n". Each' in LUFFY_SYSTEM_PROMPT
    assert LUFFY_SYSTEM_PROMPT.endswith(
        "include the answer in \\boxed{} for closed-form results like multiple choices or mathematical solutions."
    )
    assert data_prep.build_prompt("P?", template="luffy") == [
        {"role": "system", "content": LUFFY_SYSTEM_PROMPT},
        {"role": "user", "content": "P?"},
    ]
    assert data_prep.build_prompt("P?", template="luffy", system_prompt="S")[0]["content"] == "S"
    # openr1_luffy: the openr1 rows, with the luffy template as the source's own; --template still wins.
    rows, report = build_rows(read_local(LOCAL["openr1"]), SOURCES["openr1_luffy"], "train")
    assert [r["prompt"] for r in rows][0] == data_prep.build_prompt("What is $1+1$?", template="luffy")
    assert rows[0]["extra_info"]["template"] == "luffy" and rows[0]["extra_info"]["reference"].endswith("{2}")
    # The fixture's system turn is only LUFFY's first sentence: each replaced turn is reported.
    assert report.normalised == {"the row's own system turn replaced by the template's": 4}
    rows, _ = build_rows(read_local(LOCAL["openr1"]), SOURCES["openr1_luffy"], "train", template="qwen_boxed")
    assert rows[0]["extra_info"]["template"] == "qwen_boxed" and len(rows[0]["prompt"]) == 1
