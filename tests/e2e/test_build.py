"""End to end: recipe -> questions -> samples -> graded -> ledger -> a version `datasets.load_dataset` reads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from builder import build
from builder.bind import load_recipe
from builder.cli import main
from builder.errors import StoreError
from builder.schemas import read_table
from tests.helpers import ROOT, write_import_recipe


def test_build_from_imported_teacher_completions_end_to_end(tmp_path, benchmarks_dir, teacher_completions_dir,
                                                            capsys):
    import datasets

    recipe_path = write_import_recipe(tmp_path / "import.yaml", benchmarks_dir,
                                      teacher_completions_dir / "multiarith.jsonl", work_dir=tmp_path / "runs",
                                      store={"root": str(tmp_path / "store")})
    assert main(["build", str(recipe_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    run_dir = tmp_path / "runs" / "multiarith-davinci"
    questions = read_table(run_dir / "questions.parquet", "questions")
    graded = read_table(run_dir / "graded.parquet", "graded")
    ledger = read_table(run_dir / "ledger.parquet", "ledger")
    assert summary["questions"] == questions.height == 405  # the paper's MultiArith train split, deduplicated
    assert summary["samples"] == graded.height == ledger.height
    assert 0 < summary["kept"] <= summary["correct"] < summary["samples"]
    assert ledger.filter(pl.col("state") == "kept").height == summary["kept"]
    assert ledger.filter(pl.col("state") == "kept")["correct"].all()
    ds = datasets.load_dataset(summary["version_path"])
    assert ds["train"].num_rows == summary["kept"]
    row = ds["train"][0]
    assert row["prompt"].endswith(" ###") and " --> " in row["completion"]
    assert row["teacher"] == "text-davinci-002"
    manifest = json.loads((Path(summary["version_path"]) / "manifest.json").read_text())
    assert manifest["content_hash"].startswith(summary["content_hash"])

    # A rerun of the same recipe resumes and writes no new version.
    assert main(["build", str(recipe_path), "--json"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["version"] == summary["version"] and again["created"] is False


@pytest.mark.slow
def test_build_on_the_real_engine_that_keeps_nothing_says_so(tmp_path, tiny_model_dir, vllm_engine):
    """A random tiny model answers nothing right: the build stops with a clear message, no empty version."""
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps({"question": f"What is {i} plus {i}?", "answer": 2 * i}) + "\n"
                             for i in range(4)))
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(f"""\
name: tiny
tasks:
  items: [{{name: arith, source: file, path: q.jsonl, answer_type: number, columns: {{gold: answer}}}}]
teacher: {{model: {tiny_model_dir}}}
sampling: {{n: 3, max_tokens: 8, answer_max_tokens: 4}}
""")
    recipe = load_recipe(recipe_path)
    with pytest.raises(StoreError, match="no rows"):
        build.run(recipe, engine=vllm_engine)
    assert read_table(tmp_path / "runs" / "tiny" / "graded.parquet", "graded").height == 12
    assert not (tmp_path / "store" / "tiny").exists() or not list((tmp_path / "store" / "tiny").glob("v*"))


@pytest.mark.slow
def test_quickstart_recipe_with_the_real_model(tmp_path):
    """The README's quickstart: SmolLM2-135M-Instruct through vLLM keeps at least one rationale, loadable."""
    import datasets

    for name in ("build.yaml", "questions.jsonl"):
        shutil.copy(ROOT / "recipes" / "quickstart" / name, tmp_path / name)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "builder", "build", str(tmp_path / "build.yaml"),
                           "--work-dir", str(tmp_path / "runs"), "--store", str(tmp_path / "store")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(proc.stdout.strip().splitlines()) == 1, proc.stdout  # stdout holds the version path alone
    version = Path(proc.stdout.strip())
    assert version.parent.parent == tmp_path / "store"
    for word in ("questions", "samples", "correct", "kept", "version path"):
        assert word in proc.stderr
    ds = datasets.load_dataset(str(version))
    assert ds["train"].num_rows >= 1
    assert all(r["answer"] == r["gold"] for r in ds["train"])
