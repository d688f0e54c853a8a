"""Real public reasoning traces (tests/data/reasoning/, sources and licenses in its README) through `rationale build`
with `teacher.backend: import`: vLLM's deepseek_r1 parser splits each `<think>...</think>answer` completion, grading
reads the answer after the trace (never the trace), curation drops the trace cut by max_tokens, and the version
`datasets.load_dataset` reads holds the trace in `reasoning` and in the R1-distill completion. No engine starts:
the parser needs only a tokenizer with the think tokens (the tiny reasoning model's)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml

from builder.cli import main
from builder.grade import grade_frame
from builder.prompts import reasoning_completion
from builder.schemas import read_table
from tests.helpers import DATA as TEST_DATA

DATA = TEST_DATA / "reasoning" / "traces.jsonl"
TASK_TYPES = {"math": "number", "choice": "choice"}


@pytest.fixture(scope="module")
def traces() -> pl.DataFrame:
    return pl.read_ndjson(DATA)


def write_recipe(tmp_path: Path, model: Path, traces: pl.DataFrame) -> Path:
    items = []
    for task, answer_type in TASK_TYPES.items():
        qfile = tmp_path / f"{task}.jsonl"
        traces.filter(pl.col("task") == task).select("question", "gold").write_ndjson(qfile)
        items.append({"name": task, "source": "file", "path": str(qfile), "answer_type": answer_type})
    path = tmp_path / "build.yaml"
    path.write_text(yaml.safe_dump({
        "name": "r1-traces", "work_dir": str(tmp_path / "runs"),
        "tasks": {"items": items},
        "teacher": {"backend": "import", "model": str(model), "reasoning_parser": "deepseek_r1",
                    "import_path": str(DATA), "import_columns": {"rationale": "completion"}},
        "curation": {"filters": ["empty", "truncated", "no_answer", "degenerate", "length", "unfinished_thinking",
                                 "no_final_answer"]},
        "store": {"root": str(tmp_path / "store")},
    }, sort_keys=False))
    return path


def test_real_traces_imported_graded_from_the_answer_curated_and_loadable(tmp_path, reasoning_model, traces,
                                                                          capsys):
    import datasets

    assert main(["build", str(write_recipe(tmp_path, reasoning_model, traces)), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    run = tmp_path / "runs" / "r1-traces"
    by_question = traces.select("id", "question", "completion")
    graded = read_table(run / "graded.parquet", "graded").join(
        read_table(run / "questions.parquet", "questions").select("qid", "question"), on="qid").join(
        by_question, on="question")
    assert graded.height == traces.height

    # the parser split every completion: the trace without its tags, the answer after it, nothing lost
    for row in graded.iter_rows(named=True):
        assert "<think>" not in row["reasoning"] and "</think>" not in row["reasoning"], row["id"]
        if row["reasoning_finished"]:
            assert row["completion"] == f"<think>{row['reasoning']}</think>{row['rationale']}", row["id"]
        assert row["reasoning_tokens"] > 0
    ship = graded.filter(pl.col("id") == "openr1-math-0").row(0, named=True)
    assert ship["reasoning"].lstrip().startswith("Okay, so I need to find the speed of the ship")
    assert ship["rationale"].lstrip().startswith("Let \\( v \\) be the speed of the ship")
    cut = graded.filter(pl.col("id") == "deepseek-r1-3plus3").row(0, named=True)
    assert cut["reasoning_finished"] is False and cut["rationale"] == ""
    assert cut["reasoning"].rstrip().endswith("So if I take away 3 from")
    assert graded.filter(pl.col("id") != "deepseek-r1-3plus3")["reasoning_finished"].all()

    # graded from the answer: the planted trace says "the answer is 4", the answer after it says 8
    verdicts = dict(graded.select("id", "correct").iter_rows())
    # the ship's question asks for two speeds and its gold holds one: the answer boxes both (10 and 4), two different
    # final values, so it is ambiguous, never credited by its last box
    assert verdicts == {"openr1-math-0": False, "openr1-math-1": True, "bespoke-stratos-0": True,
                        "deepseek-r1-3plus3": False, "planted-trace-number": True}
    assert (ship["pred"], ship["grade_status"]) == ("4", "ambiguous")
    planted = graded.filter(pl.col("id") == "planted-trace-number")
    assert planted["pred"].to_list() == ["8"]
    whole_text = grade_frame(planted.select("answer_type", "gold", rationale=pl.col("completion")), mode="rationale")
    assert whole_text["pred"].to_list() == ["4"] and whole_text["correct"].to_list() == [False]  # the plant bites

    # curated: the cut trace and the two-valued ship are dropped, the three finished correct ones kept
    ledger = read_table(run / "ledger.parquet", "ledger")
    assert summary["kept"] == ledger.filter(pl.col("state") == "kept").height == 3
    cut_state = ledger.filter(pl.col("qid") == cut["qid"]).row(0, named=True)
    assert cut_state["state"] != "kept"

    # the version: `datasets.load_dataset` reads the trace in `reasoning` and the R1-distill completion
    ds = datasets.load_dataset(summary["version_path"], split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert ds.num_rows == 3 and "reasoning" in ds.column_names
    kept = {r["question"]: r for r in ds}
    for row in graded.filter(pl.col("correct")).iter_rows(named=True):
        got = kept[row["question"]]
        assert got["reasoning"] == row["reasoning"].strip() and got["rationale"] == row["rationale"].strip()
        assert got["completion"] == reasoning_completion(got["reasoning"], got["rationale"])
        assert got["completion"].startswith("<think>\n") and f"\n</think>\n\n{got['rationale']}" in got["completion"]
    assert ship["question"] not in kept and kept[planted["question"][0]]["answer"] == "8"
