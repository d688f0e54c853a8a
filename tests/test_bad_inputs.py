"""The bad-input corpus (tests/bad_inputs/cases.yaml): every case runs through the real CLI, `main(argv)`.

Each case is a command line over small files in tests/bad_inputs/ (copied to a temp folder, so relative paths in
recipes resolve there), optionally prepared by named setup steps (a built store, a tampered version, a 5 MB row).
A case passes when the exit code matches, stderr is `error: ...` lines only (one line unless the case allows more),
no traceback is printed, the message matches the case's regex (naming the file, row or field), and nothing
half-written is left: no version folder, no temp file, no output file; only the resumable working state under
out/runs/ may change.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
import yaml

from builder.cli import main

CORPUS = Path(__file__).resolve().parent / "bad_inputs"
CASES: list[dict] = yaml.safe_load((CORPUS / "cases.yaml").read_text())["cases"]
HUGE = 5 * 1024 * 1024  # characters in the "huge row" cases
GOOD_QUESTIONS = [json.loads(line) for line in (CORPUS / "data" / "questions.jsonl").read_text().splitlines()]
GOOD_COMPLETIONS = (CORPUS / "data" / "completions.jsonl").read_text()


# ---------------------------------------------------------------- setup steps named in cases.yaml
def _writable(path: Path) -> Path:
    path.chmod(0o644)
    return path


def _version(case: Path) -> Path:
    return case / "out" / "store" / "good" / "v1"


def _data_file(case: Path) -> Path:
    return next((_version(case) / "data").glob("*.parquet"))


def _huge_question(case: Path) -> None:
    rows = [*GOOD_QUESTIONS, {"id": "huge", "question": "How many apples? " + "apple " * (HUGE // 6), "answer": "1"}]
    (case / "tasks" / "huge_question.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _huge_rationale(case: Path) -> None:
    q = GOOD_QUESTIONS[0]["question"]
    words = " ".join(f"step{i} adds {i % 97} apples." for i in range(HUGE // 24))
    row = {"question": q, "rationale": words + " So 3 + 4 = 7.", "answer_completion": " 7."}
    (case / "completions" / "huge_rationale.jsonl").write_text(GOOD_COMPLETIONS + json.dumps(row) + "\n")


def _huge_graded(case: Path) -> None:
    row = {"task": "multiarith", "question": "How many apples? " + "apple " * (HUGE // 6),
           "rationale": "3 + 4 = 7. " * (HUGE // 11) + "The answer is 7.", "gold": "7"}
    (case / "graded" / "huge.jsonl").write_text(json.dumps(row) + "\n")


def _graded(case: Path) -> pl.DataFrame:
    return pl.read_parquet(case / "out" / "runs" / "good" / "graded.parquet")


def _graded_parquet(case: Path) -> None:
    shutil.copy(case / "out" / "runs" / "good" / "graded.parquet", case / "graded" / "graded.parquet")


def _graded_missing_column(case: Path) -> None:
    _graded(case).drop("correct").write_parquet(case / "graded" / "no_correct.parquet")


def _graded_duplicate_keys(case: Path) -> None:
    g = _graded(case)
    pl.concat([g, g.head(1)]).write_parquet(case / "graded" / "duplicate_keys.parquet")


def _graded_truncated(case: Path) -> None:
    data = (case / "out" / "runs" / "good" / "graded.parquet").read_bytes()
    (case / "graded" / "truncated.parquet").write_bytes(data[: len(data) // 2])


def _tamper_data(case: Path) -> None:
    f = _writable(_data_file(case))
    pl.read_parquet(f).with_columns(pl.col("answer") + "0").write_parquet(f)


def _delete_data(case: Path) -> None:
    _data_file(case).unlink()


def _truncate_data(case: Path) -> None:
    f = _writable(_data_file(case))
    f.write_bytes(f.read_bytes()[:100])


def _corrupt_manifest(case: Path) -> None:
    f = _writable(_version(case) / "manifest.json")
    f.write_text(f.read_text()[:200])


def _manifest_missing_field(case: Path) -> None:
    f = _writable(_version(case) / "manifest.json")
    manifest = json.loads(f.read_text())
    del manifest["files"]
    f.write_text(json.dumps(manifest))


def _extra_file(case: Path) -> None:
    _version(case).chmod(0o755)
    (_version(case) / "data" / "notes.parquet").write_bytes(b"not part of the version")


def _pull_dest_corrupt(case: Path) -> None:
    dest = case / "versions" / "pulled"
    dest.mkdir(parents=True)
    (dest / "manifest.json").write_text("{ not json")


SETUPS: dict[str, Callable[[Path], None]] = {
    "huge_question": _huge_question,
    "huge_rationale": _huge_rationale,
    "huge_graded": _huge_graded,
    "graded_parquet": _graded_parquet,
    "graded_missing_column": _graded_missing_column,
    "graded_duplicate_keys": _graded_duplicate_keys,
    "graded_truncated": _graded_truncated,
    "tamper_data": _tamper_data,
    "delete_data": _delete_data,
    "truncate_data": _truncate_data,
    "corrupt_manifest": _corrupt_manifest,
    "manifest_missing_field": _manifest_missing_field,
    "extra_file": _extra_file,
    "pull_dest_corrupt": _pull_dest_corrupt,
}


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def good_build(tmp_path_factory) -> Path:
    """The corpus with out/ holding a real build of data/good.yaml (store v1 + working state), made once."""
    root = tmp_path_factory.mktemp("good") / "corpus"
    shutil.copytree(CORPUS, root)
    assert main(["build", str(root / "data" / "good.yaml")]) == 0
    assert (_version(root) / "manifest.json").is_file()
    return root


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file() and ".hf-cache" not in p.parts}


def _ids(cases: list[dict]) -> list[str]:
    return [c["id"] for c in cases]


# ---------------------------------------------------------------- the manifest itself
def test_corpus_manifest_is_complete():
    ids = _ids(CASES)
    assert len(ids) == len(set(ids)) and len(ids) >= 40
    entries = {c["entry"] for c in CASES}
    assert entries >= {"build recipe", "task file", "hub mapping", "imported completions", "graded table",
                       "dataset version", "training recipe"}
    for case in CASES:
        assert set(case) <= {"id", "entry", "argv", "exit", "error", "setup", "absent", "present", "lines", "why",
                             "xfail"}, case["id"]
        assert case["error"] and case["argv"] and case["why"], case["id"]
        re.compile(case["error"])
        for step in case.get("setup", []):
            assert step == "store" or step in SETUPS, (case["id"], step)
        for arg in case["argv"]:  # every input file a case names exists in the corpus (or is made by setup)
            if re.search(r"\.(ya?ml|jsonl?|csv|txt|parquet)$", arg) and not case.get("setup") and "no_such" not in arg:
                assert (CORPUS / arg).exists() or arg.startswith("out/"), (case["id"], arg)


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_bad_input(case, good_build, tmp_path, monkeypatch, capsys, benchmarks_dir, request):
    if case.get("xfail"):
        request.applymarker(pytest.mark.xfail(reason=case["xfail"], strict=False))
    root = tmp_path / "corpus"
    steps = case.get("setup", [])
    shutil.copytree(good_build if "store" in steps else CORPUS, root)
    for step in steps:
        if step != "store":
            SETUPS[step](root)
    monkeypatch.chdir(root)
    monkeypatch.setenv("RATIONALE_BENCHMARKS_DIR", str(benchmarks_dir))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(root / ".hf-cache"))
    monkeypatch.delenv("RATIONALE_STORE", raising=False)
    before = _tree(root)
    capsys.readouterr()

    code = main([str(a) for a in case["argv"]])

    out, err = capsys.readouterr()
    assert code == case["exit"], f"{case['id']}: exit {code}, expected {case['exit']}\nstderr: {err}\nstdout: {out}"
    assert "Traceback" not in out + err
    if case["exit"] != 0:
        # stderr also carries the progress bar of the stages that ran; the error itself is the `error:` lines
        lines = [line for line in err.splitlines() if line.startswith("error: ")]
        assert 1 <= len(lines) <= case.get("lines", 1), f"{case['id']}: {len(lines)} error lines:\n{err}"
        assert not [line for line in err.splitlines() if re.match(r"\s*(File \"|raise |\w+Error:)", line)], err
        assert re.search(case["error"], err), f"{case['id']}: {err!r} does not match {case['error']!r}"
    else:
        assert re.search(case["error"], out + err), f"{case['id']}: output does not match {case['error']!r}"
    after = _tree(root)
    new_or_changed = sorted(p for p in after if before.get(p) != after[p])
    assert not [p for p in after if re.search(r"(^|/)\.tmp-|\.tmp$|(^|/)\.pull-", p)], after
    if case["exit"] != 0:
        stray = [p for p in new_or_changed if not p.startswith("out/runs/")]
        assert not stray, f"{case['id']}: a failed command wrote {stray}"
        assert not [p for p in after if re.match(r"out/store/[^/]+/v\d+/", p) and p not in before]
    for rel in case.get("absent", []):
        assert not (root / rel).exists(), f"{case['id']}: {rel} was written"
    for rel in case.get("present", []):
        assert (root / rel).exists(), f"{case['id']}: {rel} is missing"
