"""`python -m data_prep check` and `data_prep.check`: every kind of bad row found, by reason and index.

The planted file (tests/fixtures/planted_rows.py) mixes 20 bad rows of every kind into 40 good ones; the
expected indices are where the planting put them, not what the check returned. Prompt lengths are compared
with verl's own RLHFDataset filter on the same file and tokenizer.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from fixtures.planted_rows import LONG_PROBLEM, good_rows, plant_bad_rows

from data_prep.check import (
    CONFLICT,
    DUPLICATE,
    GT_VERBATIM,
    TEMPLATE_FAILED,
    TOO_LONG,
    CheckSettings,
    check_files,
    prompt_lengths,
    write_good_rows,
)
from data_prep.templates import build_prompt

REPO_ROOT = Path(__file__).resolve().parents[2]
MAX_PROMPT_LENGTH = 256


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, dict]:
    rows, expected = plant_bad_rows(good_rows())
    path = tmp_path_factory.mktemp("planted") / "train.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path, expected


def _settings(tokenizer, **kw) -> CheckSettings:
    return CheckSettings(tokenizer=tokenizer, max_prompt_length=MAX_PROMPT_LENGTH, workers=2, **kw)


def test_every_planted_row_is_found_under_its_reason(planted, tokenizer):
    path, expected = planted
    report = check_files([path], _settings(tokenizer))
    f = report.files[0]
    assert f.rows == 60 and not report.ok
    assert {k: sorted(v) for k, v in f.errors.items()} == expected
    assert len(f.bad_rows) == 20 and f.warnings == {}
    assert "row" in f.examples["unparseable ground truth"] and "\\\\frac{1}{" in f.examples["unparseable ground truth"]
    text = report.text()
    for reason, rows in expected.items():
        assert f"error: {reason}: {len(rows)} (rows {', '.join(map(str, rows))})" in text


def test_prompt_lengths_are_counted_as_verl_counts_them(planted, tokenizer):
    """verl's RLHFDataset (filter_overlong_prompts) keeps exactly the rows the check does not call too long."""
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    path, expected = planted
    config = OmegaConf.create(
        {"max_prompt_length": MAX_PROMPT_LENGTH, "filter_overlong_prompts": True, "filter_overlong_prompts_workers": 1}
    )
    kept = {row["extra_info"]["index"] for row in RLHFDataset(str(path), tokenizer, config).dataframe}
    rows = pd.read_parquet(path).to_dict(orient="records")
    report = check_files([path], _settings(tokenizer))
    too_long = set(report.files[0].errors[TOO_LONG])
    # Rows whose chat the check rejects outright (not a text chat, no user turn) are left out of the comparison:
    # verl renders some of them anyway.
    layout = set(expected["prompt is not a text chat"]) | set(expected["no user turn"])
    for i, row in enumerate(rows):
        if i not in layout:
            assert (row["extra_info"]["index"] in kept) == (i not in too_long), i
    # and the token counts themselves are verl's doc2len: apply_chat_template(tokenize=True), normalised
    from verl.utils.tokenizer import normalize_token_ids

    chats = [build_prompt("What is 1 + 1?"), build_prompt(LONG_PROBLEM)]
    verl_lengths = [
        len(normalize_token_ids(tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True)))
        for c in chats
    ]
    assert prompt_lengths(chats, _settings(tokenizer)) == verl_lengths
    assert verl_lengths[0] < MAX_PROMPT_LENGTH < verl_lengths[1]


def test_a_chat_template_that_raises_is_reported(tokenizer):
    tok = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('no tools') }}{% endif %}"
        "{{ m['content'] }}{% endfor %}"
    )
    chats = [[{"role": "user", "content": "hi"}], [{"role": "tool", "content": "x"}, {"role": "user", "content": "a"}]]
    lengths = prompt_lengths(chats, _settings(tok))
    assert lengths[0] > 0 and lengths[1] is None


def test_template_failure_reaches_the_report(tmp_path, tokenizer):
    tok = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('x') }}{% endif %}{% endfor %}"
    )
    rows = good_rows(3)
    rows[1]["prompt"] = [{"role": "tool", "content": "x"}, *rows[1]["prompt"]]
    pd.DataFrame(rows).to_parquet(tmp_path / "t.parquet")
    assert check_files([tmp_path / "t.parquet"], _settings(tok)).files[0].errors == {TEMPLATE_FAILED: [1]}


def test_duplicates_and_conflicts_use_the_reward_equivalence(tmp_path):
    rows = good_rows(4)
    same = build_prompt("Halve 1.")
    rows += [
        {**rows[0], "reward_model": {"style": "rule", "ground_truth": "0.5"}},  # row 4: = \frac{1}{2}: duplicate
        {**rows[1], "reward_model": {"style": "rule", "ground_truth": "10"}},  # row 5: 9 vs 10: conflict
    ]
    assert rows[0]["prompt"] == same and rows[0]["reward_model"]["ground_truth"] == "\\frac{1}{2}"
    pd.DataFrame(rows).to_parquet(tmp_path / "a.parquet")
    f = check_files([tmp_path / "a.parquet"], CheckSettings(workers=1)).files[0]
    assert f.errors == {CONFLICT: [1, 5]} and f.warnings == {DUPLICATE: [4]}


def test_conflicts_are_found_across_files_checked_together(tmp_path):
    a, b = good_rows(2), good_rows(2)
    b[1] = {**b[1], "reward_model": {"style": "rule", "ground_truth": "1000"}}
    pd.DataFrame(a).to_parquet(tmp_path / "a.parquet")
    pd.DataFrame(b).to_json(tmp_path / "b.jsonl", orient="records", lines=True)  # verl reads jsonl too
    report = check_files([tmp_path / "a.parquet", tmp_path / "b.jsonl"], CheckSettings(workers=1))
    assert report.files[0].errors == {CONFLICT: [1]} and report.files[1].errors == {CONFLICT: [1]}
    assert report.files[0].warnings == {} and report.files[1].warnings == {DUPLICATE: [0]}


def test_verbatim_only_ground_truth_is_a_warning_with_parse_all(tmp_path):
    rows = good_rows(2)
    rows[1] = {**rows[1], "reward_model": {"style": "rule", "ground_truth": "E_{1},E_{2}"}}
    pd.DataFrame(rows).to_parquet(tmp_path / "v.parquet")
    quick = check_files([tmp_path / "v.parquet"], CheckSettings(workers=1))
    full = check_files([tmp_path / "v.parquet"], CheckSettings(workers=1, parse_all=True))
    assert quick.ok and quick.files[0].warnings == {}
    assert full.ok and full.files[0].warnings == {GT_VERBATIM: [1]}


def test_another_reward_gets_only_the_missing_and_empty_checks(planted):
    path, expected = planted
    f = check_files([path], CheckSettings(check_ground_truth=False)).files[0]
    assert "unparseable ground truth" not in f.errors
    assert sorted(f.errors["missing ground truth"]) == expected["missing ground truth"]


@pytest.mark.parametrize(
    ("frame", "suffix", "message"),
    [
        (pd.DataFrame({"prompt": [build_prompt("x")], "data_source": ["s"]}), ".parquet", "['reward_model'] missing"),
        (pd.DataFrame({"question": ["x"], "answer": ["1"]}), ".parquet", "['prompt', 'reward_model', 'data_source']"),
        (pd.DataFrame(good_rows(1)).iloc[:0], ".parquet", "no rows"),
        (None, ".csv", "unsupported file type '.csv'"),
    ],
)
def test_unusable_files_are_named_with_the_reason(tmp_path, frame, suffix, message):
    path = tmp_path / f"f{suffix}"
    if frame is None:
        path.write_text("a,b\n")
    else:
        frame.to_parquet(path)
    f = check_files([path], CheckSettings(workers=1)).files[0]
    assert f.file_error and message in f.file_error and not f.ok


def test_custom_prompt_key(tmp_path):
    rows = [{"messages" if k == "prompt" else k: v for k, v in r.items()} for r in good_rows(2)]
    pd.DataFrame(rows).to_parquet(tmp_path / "k.parquet")
    assert check_files([tmp_path / "k.parquet"], CheckSettings(prompt_key="messages", workers=1)).ok
    assert not check_files([tmp_path / "k.parquet"], CheckSettings(workers=1)).ok


def test_write_good_rows_keeps_the_good_rows_and_their_schema(planted, tmp_path, tokenizer):
    import pyarrow.parquet as pq

    path, expected = planted
    bad = sorted(i for rows in expected.values() for i in rows)
    n = write_good_rows(path, bad, tmp_path / "good.parquet")
    kept = pd.read_parquet(tmp_path / "good.parquet")
    assert n == len(kept) == 40
    assert [r["index"] for r in kept["extra_info"]] == list(range(40))  # the good rows, in order
    assert pq.read_schema(tmp_path / "good.parquet").equals(pq.read_schema(path), check_metadata=False)
    assert check_files([tmp_path / "good.parquet"], _settings(tokenizer)).ok


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "data_prep", "check", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )


def test_cli_reports_and_exits_non_zero_then_zero_on_the_good_rows(planted, tiny_model_dir, tmp_path):
    path, expected = planted
    out = _cli(
        str(path),
        "--tokenizer",
        tiny_model_dir,
        "--max-prompt-length",
        str(MAX_PROMPT_LENGTH),
        "--workers",
        "2",
        "--json",
        str(tmp_path / "report.json"),
        "--write-good",
        str(tmp_path / "good"),
    )
    assert out.returncode == 1, out.stderr
    assert f"{path}: 60 rows, 20 bad rows" in out.stdout
    for reason, rows in expected.items():
        assert f"error: {reason}: {len(rows)} (rows {', '.join(map(str, rows))})" in out.stdout
    assert "checked in" in out.stdout and "40 good rows ->" in out.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ok"] is False and report["files"][0]["errors"] == expected

    again = _cli(str(tmp_path / "good" / "train.parquet"), "--tokenizer", tiny_model_dir, "--max-prompt-length", "256")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "40 rows, no bad rows" in again.stdout


def test_cli_without_a_tokenizer_says_lengths_were_not_checked(planted):
    out = _cli(str(planted[0]), "--quick", "--workers", "1")
    assert out.returncode == 1
    assert "prompt lengths not checked (no tokenizer given)" in out.stdout
    assert "prompt too long" not in out.stdout
    assert "--quick: ground truths matched only verbatim were not looked for" in out.stdout


def test_token_counts_by_pieces_equal_whole_text_counts(tokenizer):
    from data_prep.check import _count, _token_counts

    system = {"role": "system", "content": "You are a careful mathematician. " * 20}
    chats = [[system, {"role": "user", "content": f"What is {i} + {i}? <|im_end|> odd {i}"}] for i in range(100)]
    texts = tokenizer.apply_chat_template(chats, add_generation_prompt=True, tokenize=False)
    assert _token_counts(tokenizer, texts, verify=0) == _count(tokenizer, texts)
