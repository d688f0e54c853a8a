"""Grade statuses that are not ok, counted per task: curate's stats (`grade_status`), the build/curate summary
lines, the manifest and the card's Grading table; versions written before the key still render."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from builder import curate, store
from builder.card import write_card
from builder.cli import main
from builder.errors import SchemaError
from builder.recipe import CurationConfig
from builder.schemas import write_table
from builder.stats import grade_status_lines
from tests.helpers import STORE_RECIPE, graded_frame, make_ledger, make_stats

NOT_OK = ["no_answer", "wrong_format", "ambiguous", "parse_error", "timeout"]
# task -> status of each sample (question q, sample s: one row each)
PLAN = {
    "multiarith": ["ok", "ok", "wrong_format", "ok", "ambiguous", "parse_error", "ok", "wrong_format", "no_answer"],
    "coin_flip": ["ok", "ok", "ok", "ok", "timeout", "ok"],
}


def _graded() -> pl.DataFrame:
    rows = []
    for task, statuses in PLAN.items():
        for i, status in enumerate(statuses):
            q, s = divmod(i, 3)
            rows.append({"task": task, "question": f"{task}: how many apples are in basket number {q}?",
                         "sample_idx": s, "gold": "7", "grade_status": status, "correct": status == "ok",
                         "pred": "7" if status == "ok" else None,
                         "rationale": f"Basket {q} of {task} holds 3 apples and 4 more arrive, so 3 + 4 = 7, "
                                      f"reasoned as sample {s} in its own words, number {i}."})
    return graded_frame(pl.DataFrame(rows)).sample(fraction=1.0, shuffle=True, seed=1)


EXPECTED = {
    "multiarith": {"no_answer": 1, "wrong_format": 2, "ambiguous": 1, "parse_error": 1, "timeout": 0},
    "coin_flip": {"no_answer": 0, "wrong_format": 0, "ambiguous": 0, "parse_error": 0, "timeout": 1},
}


def test_curate_counts_every_status_but_ok_per_task_over_all_graded_rows():
    ledger, stats = curate.run(_graded(), CurationConfig())
    assert stats.grade_status == EXPECTED
    assert all(list(c) == NOT_OK for c in stats.grade_status.values())  # STATUSES order, zeros included
    assert stats.to_json()["grade_status"] == EXPECTED
    json.dumps(stats.to_json())
    # every graded row is counted, also those the no_answer filter dropped; the rest were ok
    for task, counts in EXPECTED.items():
        assert stats.funnel[task].sampled == len(PLAN[task]) == sum(counts.values()) + PLAN[task].count("ok")
        assert stats.funnel[task].answered == PLAN[task].count("ok")
    lines = grade_status_lines(stats.grade_status, stats.funnel)
    assert lines == ["task coin_flip: 1 timeout of 6 graded",
                     "task multiarith: 1 no_answer, 2 wrong_format, 1 ambiguous, 1 parse_error of 9 graded "
                     "(parse_error: rows lost to a data problem, not to the teacher)"]


def test_counts_do_not_depend_on_how_the_table_is_scanned():
    """The Ray executor scans one part per task and plans from all the parts' keys: any cut gives the same."""
    graded, cfg = _graded(), CurationConfig()
    keys = [curate.scan(part, cfg)[1] for part in graded.iter_slices(4)]
    plan = curate.Plan.of(keys, cfg)
    results, stats = curate.execute(plan, lambda blocks: [curate.run_block(
        plan.in_order(graded.sort("task", "qid", "sample_idx")).slice(b.lo, b.hi - b.lo), b) for b in blocks],
        lambda first: [])
    assert len(keys) > 2 and stats.grade_status == EXPECTED == curate.run(graded, cfg)[1].grade_status


def test_an_unknown_grade_status_is_refused():
    graded = _graded().with_columns(grade_status=pl.when(pl.col("sample_idx") == 1).then(pl.lit("confused"))
                                    .otherwise("grade_status"))
    with pytest.raises(SchemaError, match="grade_status 'confused' is not one of ok, no_answer"):
        curate.run(graded, CurationConfig())


def test_empty_table_counts_nothing():
    from builder.schemas import table_schema

    assert curate.run(table_schema("graded").empty(), CurationConfig())[1].grade_status == {}


def test_curate_cli_prints_and_writes_the_counts(tmp_path, capsys):
    src, out, stats = tmp_path / "g.parquet", tmp_path / "l.parquet", tmp_path / "stats.json"
    write_table(_graded(), src, "graded")
    assert main(["curate", "-i", str(src), "-o", str(out), "--stats", str(stats)]) == 0
    printed = capsys.readouterr().out
    assert "grading: task multiarith: 1 no_answer, 2 wrong_format, 1 ambiguous, 1 parse_error of 9 graded" in printed
    assert "grading: task coin_flip: 1 timeout of 6 graded" in printed
    assert json.loads(stats.read_text())["grade_status"] == EXPECTED


def _body(path) -> str:
    return (path / "README.md").read_text().split("---", 2)[2]


def test_card_and_manifest_show_the_counts_and_call_out_parse_errors(tmp_path):
    ledger = make_ledger()  # multiarith and coin_flip, 12 samples each
    stats = make_stats(ledger)
    stats.curation.grade_status = {
        "multiarith": {"no_answer": 2, "wrong_format": 3, "ambiguous": 1, "parse_error": 4, "timeout": 0},
        "coin_flip": {"no_answer": 0, "wrong_format": 1, "ambiguous": 0, "parse_error": 0, "timeout": 0},
    }
    info = store.write_version(store.rows_from_ledger(ledger), root=tmp_path / "store", name="demo",
                               recipe=STORE_RECIPE, stats=stats, tool_version="test")
    assert store.load_manifest(info.path)["grade_status"] == stats.curation.grade_status
    body = _body(info.path)
    assert "### Grading" in body
    assert "| task | graded | no_answer | wrong_format | ambiguous | parse_error | timeout |" in body
    assert "| coin_flip | 12 | 0 | 1 | 0 | 0 | 0 |" in body
    assert "| multiarith | 12 | 2 | 3 | 1 | 4 | 0 |" in body
    assert "- `parse_error`: the gold answer (or the expression parser) could not be read" in body
    assert "- `wrong_format`: an answer region with no valid candidate" in body
    assert "**Warning: 4 row(s) lost to `parse_error`** (multiarith: 4)" in body
    store.verify(info.path)
    # no parse_error anywhere: no warning
    stats.curation.grade_status["multiarith"]["parse_error"] = 0
    again = store.write_version(store.rows_from_ledger(make_ledger(salt="!")), root=tmp_path / "store2",
                                name="demo", recipe=STORE_RECIPE, stats=stats, tool_version="test")
    assert "| multiarith | 12 | 2 | 3 | 1 | 0 | 0 |" in _body(again.path) and "Warning" not in _body(again.path)


def test_a_version_without_grade_statuses_still_renders(tmp_path):
    """Stats written before the key (make_stats has none), and a manifest without the key at all."""
    ledger = make_ledger()
    info = store.write_version(store.rows_from_ledger(ledger), root=tmp_path / "store", name="demo",
                               recipe=STORE_RECIPE, stats=make_stats(ledger), tool_version="test")
    body = _body(info.path)
    assert "No grade statuses were recorded for this version." in body and "| task | graded |" not in body
    assert "| multiarith | 12 | 12 | 8 | 8 | 8 | 8 | 66.7% (8/12) |" in body  # the rest of the card is unchanged
    old = {k: v for k, v in store.load_manifest(info.path).items() if k != "grade_status"}
    folder = tmp_path / "old"  # the version as an older tool wrote it: its data, a card rendered anew
    shutil.copytree(info.path, folder)
    for path in [folder / "README.md", *(folder / "assets").iterdir()]:
        path.chmod(0o644)
        path.unlink()
    write_card(folder, store.rows_from_ledger(ledger), old)
    assert "No grade statuses were recorded for this version." in _body(folder)
    assert grade_status_lines(old.get("grade_status") or {}, old["funnel"]) == []
    assert grade_status_lines({"t": dict.fromkeys(NOT_OK, 0)}, {"t": {"sampled": 5}}) == ["task t: all 5 graded ok"]


def test_build_summary_and_manifest_carry_the_counts(capsys, tmp_path, benchmarks_dir, teacher_completions_dir):
    from tests.helpers import write_import_recipe

    recipe = write_import_recipe(tmp_path / "r.yaml", benchmarks_dir, teacher_completions_dir / "multiarith.jsonl",
                                 work_dir=tmp_path / "runs", limit=24, store={"root": str(tmp_path / "store")})
    assert main(["build", str(recipe), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    # one real answer, " 3:46." (gold 4), names two values: ambiguous
    assert summary["grade_status"] == {"multiarith": {**dict.fromkeys(NOT_OK, 0), "ambiguous": 1}}
    assert summary["graded_per_task"] == {"multiarith": summary["samples"]}
    manifest = store.load_manifest(Path(summary["version_path"]))
    assert manifest["grade_status"] == summary["grade_status"]
    assert "| multiarith | 24 | 0 | 0 | 1 | 0 | 0 |" in _body(Path(summary["version_path"]))
