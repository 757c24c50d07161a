"""The end-of-run summary and the per-step LTE line, from hand-made metric records."""

import json
import re

import pytest

from recipe.lte.tools.summary import format_summary, latest_checkpoint, load_metrics, main, summarize
from recipe.lte.trainer import format_step_line


def _rec(step, **kv):
    return {"step": step, **{f"lte/{k}": v for k, v in kv.items()}}


RECORDS = [
    _rec(1, **{"groups/none_pass_before": 3, "groups/none_pass_after": 2, "groups/all_pass_before": 1,
               "extra/ran": 3, "extra/kind_hint": 2, "extra/kind_concise": 1, "extra/rescued": 1,
               "extra/replaced": 2, "extra/tokens": 100, "on_policy_acc": 0.25}),
    _rec(2, **{"groups/none_pass_before": 2, "groups/none_pass_after": 0, "groups/some_pass_before": 2,
               "extra/ran": 2, "extra/kind_concise_hint": 2, "extra/rescued": 2, "extra/replaced": 5,
               "extra/error": 1, "extra/tokens": 50, "on_policy_acc": 0.5}),
]  # fmt: skip


def test_summarize_totals_by_hand():
    s = summarize(RECORDS)
    assert s["steps"] == 2
    assert (s["none_pass_before"], s["none_pass_after"], s["all_pass_before"], s["some_pass_before"]) == (5, 2, 1, 2)
    assert (s["kind_hint"], s["kind_concise"], s["kind_concise_hint"], s["kind_unhinted"]) == (2, 1, 2, 0)
    assert (s["ran"], s["rescued"], s["replaced"], s["error"], s["tokens"]) == (5, 3, 7, 1, 150)
    assert s["rescue_rate"] == pytest.approx(3 / 5)
    assert (s["on_policy_acc_first"], s["on_policy_acc_last"]) == (0.25, 0.5)


def test_resumed_run_keeps_the_last_record_per_step_and_finds_the_checkpoint(tmp_path, capsys):
    lines = [RECORDS[0], {**RECORDS[1], "lte/extra/replaced": 99}, RECORDS[1]]
    (tmp_path / "lte_metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    assert [r["lte/extra/replaced"] for r in load_metrics(str(tmp_path))] == [2, 5]
    assert latest_checkpoint(str(tmp_path)) is None
    (tmp_path / "global_step_2").mkdir()
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("2")
    assert latest_checkpoint(str(tmp_path)) == str(tmp_path / "global_step_2")
    main([str(tmp_path), "--plot", str(tmp_path / "dyn.png")])
    out = capsys.readouterr().out
    assert re.search(r"groups rescued / extra phases run +3 / 5 \(60.0%\)", out)
    assert str(tmp_path / "global_step_2") in out
    assert (tmp_path / "dyn.png").stat().st_size > 10_000


def test_missing_or_bad_metrics_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="lte_metrics.jsonl"):
        load_metrics(str(tmp_path))
    (tmp_path / "lte_metrics.jsonl").write_text('{"no_step": 1}\n')
    with pytest.raises(ValueError, match="lte_metrics.jsonl:1"):
        load_metrics(str(tmp_path))


def test_step_line_reads_like_the_run():
    line = format_step_line(1, RECORDS[0])
    assert line.startswith("[LTE step 1] groups all/some/none 1/0/3 -> 0/0/2")
    assert "extra phases 3 (concise 1 hint 2)" in line and "rescued 1, replaced 2" in line
    assert "on-policy acc 0.250" in line
    assert "no LTE info" in format_step_line(5, {})
    assert "none" in format_summary(summarize([]), None)


def test_luffy_runs_show_their_references_among_the_kinds():
    luffy = [{"step": 1, "lte/extra/ran": 8, "lte/extra/kind_reference": 8, "lte/extra/correct": 7}]
    assert "unhinted 0, reference 8" in format_summary(summarize(luffy), None)
    lte = [{"step": 1, "lte/extra/ran": 1, "lte/extra/kind_hint": 1}]
    assert "reference" not in format_summary(summarize(lte), None)  # an LTE run's table is unchanged
