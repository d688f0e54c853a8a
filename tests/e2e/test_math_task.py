r"""End to end: a MATH-style task with LaTeX golds (expressions, intervals, sets, tuples, matrices, `\text{(B)}`,
percentages, dollars, decimals) built through `rationale build` with imported chat-teacher completions that box
their answers, graded by the `math` grader (math-verify in worker processes), curated and written as a version.

tests/data/math_style.jsonl holds the problems, golds and completions (written for this test in the style of the
MATH dataset and of a chat teacher's solutions, some of them wrong) and, per row, whether the answer is right.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import yaml

from builder.cli import main
from builder.grade import grade_frame
from builder.schemas import read_table
from tests.helpers import DATA

MATH_STYLE = DATA / "math_style.jsonl"


def write_recipe(tmp_path: Path, questions: Path) -> Path:
    path = tmp_path / "math.yaml"
    path.write_text(yaml.safe_dump({
        "name": "math-style",
        "work_dir": str(tmp_path / "runs"),
        "tasks": {"items": [{"name": "math_style", "source": "file", "path": str(questions), "answer_type": "math"}]},
        "teacher": {"backend": "import", "model": "a-chat-teacher", "import_path": str(MATH_STYLE)},
        "store": {"root": str(tmp_path / "store")},
    }, sort_keys=False))
    return path


def test_math_task_builds_end_to_end(tmp_path, capsys):
    import datasets

    rows = pl.read_ndjson(MATH_STYLE)
    questions = tmp_path / "questions.jsonl"
    rows.select("question", "gold").write_ndjson(questions)
    assert main(["build", str(write_recipe(tmp_path, questions)), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    run = tmp_path / "runs" / "math-style"
    graded = read_table(run / "graded.parquet", "graded").join(
        read_table(run / "questions.parquet", "questions").select("qid", "question"), on="qid").join(
        rows.select("id", "question", "expected"), on="question")
    assert graded.height == rows.height == summary["samples"]
    assert (graded["grader"] == "math").all()
    assert graded.filter(pl.col("grade_status").is_in(["parse_error", "timeout"])).height == 0
    verdicts = dict(graded.select("id", "correct").iter_rows())
    assert verdicts == dict(rows.select("id", "expected").iter_rows())
    assert summary["correct"] == rows["expected"].sum()

    # the version: every kept rationale is a correct one, and `datasets` reads it
    assert 0 < summary["kept"] <= summary["correct"]
    ledger = read_table(run / "ledger.parquet", "ledger")
    assert ledger.filter(pl.col("state") == "kept")["correct"].all()
    ds = datasets.load_dataset(summary["version_path"], split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert ds.num_rows == summary["kept"]
    # each row's answer is the grader's LaTeX spelling of the boxed value, which grades right against its gold again
    kept = pl.DataFrame({"question": ds["question"], "answer_completion": ds["answer"]}).join(
        rows.select("question", "gold"), on="question")
    again = grade_frame(kept.with_columns(answer_type=pl.lit("math"), rationale=pl.lit("")), mode="answer_completion")
    assert again.height == ds.num_rows and again["correct"].all()
