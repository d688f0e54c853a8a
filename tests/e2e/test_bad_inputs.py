"""The bad-input corpus (tests/bad_inputs/cases.yaml): every case runs through the real CLI, `main(argv)`.

Each case is a command line over small files in tests/bad_inputs/ (copied to a temp folder, so relative paths in
recipes resolve there), optionally prepared by named setup steps (a built store, a tampered version, a 5 MB row).
A case passes when the exit code matches, the error is `error: ...` lines (one line unless the case allows more),
no traceback is printed, the `error:` lines (not the rest of stderr) match the case's regex and contain the file
(`names`) and the row/line/field (`at`) it must name, and nothing half-written is left: no version folder, no temp
file, no output file; only the resumable working state under out/runs/ may change. Huge-row cases also assert the
row's fate (`fate`: which table holds it and which stage/reason decided).

Behaviours: every failing case records the raise statement (module and line) its error came from; the last test
prints the case count beside the number of distinct raise sites, so cases that repeat one code path show.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
import yaml

import builder.cli
from builder.cli import main
from tests.helpers import TESTS

CORPUS = TESTS / "bad_inputs"
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


def _resign(case: Path, change: Callable[[dict], None], *, digest: bool = True) -> None:
    """Edit the version's manifest; with `digest`, also recompute its manifest_sha256 (a careful forger)."""
    from builder.store import manifest_digest

    f = _writable(_version(case) / "manifest.json")
    manifest = json.loads(f.read_text())
    change(manifest)
    if digest:
        manifest["manifest_sha256"] = manifest_digest(manifest)
    f.write_text(json.dumps(manifest))


def _outside_file(m: dict) -> None:
    # data/questions.jsonl of the corpus, four folders up from out/store/good/v1, listed with its real hash
    from builder.store import sha256_file

    target = Path("../../../../data/questions.jsonl")
    real = Path.cwd() / "out/store/good/v1" / target
    m["files"][target.as_posix()] = {"sha256": sha256_file(real), "bytes": real.stat().st_size}


def _with_cwd(case: Path, fn: Callable[[], None]) -> None:
    import os

    old = os.getcwd()
    os.chdir(case)
    try:
        fn()
    finally:
        os.chdir(old)


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
    "manifest_edit_rows": lambda c: _resign(c, lambda m: m.update(rows=m["rows"] + 1), digest=False),
    "manifest_resign_rows": lambda c: _resign(c, lambda m: m.update(rows=m["rows"] + 1)),
    "manifest_resign_tasks": lambda c: _resign(c, lambda m: m.update(tasks={"arith": 1, "other": 2})),
    "manifest_resign_version": lambda c: _resign(c, lambda m: m.update(version="v7")),
    "manifest_resign_outside_file": lambda c: _with_cwd(c, lambda: _resign(c, _outside_file)),
    "manifest_null": lambda c: _writable(_version(c) / "manifest.json").write_text("null\n"),
    "manifest_files_string": lambda c: _resign(c, lambda m: m.update(files="x"), digest=False),
}


# ---------------------------------------------------------------- what each case shows
BEHAVIOURS: dict[str, str] = {}  # case id -> the raise site of its error ("builder/x.py:123"), or "handled: ..."
SHAPES: dict[str, str] = {}  # case id -> raise site + the message without paths, numbers and quoted values


def _shape(site: str, message: str) -> str:
    text = re.sub(r"\S*/\S*|'[^']*'|\"[^\"]*\"|\d+", "_", message.splitlines()[0])
    return f"{site} {' '.join(text.split()[:6])}"


def _recording_error(error: Callable[[str], None], raised: list[str]) -> Callable[[str], None]:
    """builder.cli._error, also noting where the exception being reported was raised (its innermost frame)."""
    def record(message: str) -> None:
        tb = sys.exc_info()[2]
        if tb is not None:
            frame = traceback.extract_tb(tb)[-1]
            raised.append(f"{Path(frame.filename).parent.name}/{Path(frame.filename).name}:{frame.lineno}")
        error(message)
    return record


def _check_fate(root: Path, case_id: str, fate: dict) -> None:
    """The huge row's fate: exactly `rows` rows of `table` have a `long` column over HUGE/2 characters, and they
    hold the `expect` values (e.g. state dropped, stage filter, reason degenerate: which filter decided)."""
    table = pl.read_parquet(root / fate["table"])
    huge = table.filter(pl.col(fate["long"]).str.len_chars() > HUGE // 2)
    assert huge.height == fate.get("rows", 1), f"{case_id}: {huge.height} huge rows in {fate['table']}"
    for column, value in (fate.get("expect") or {}).items():
        assert huge[column].to_list() == [value] * huge.height, (case_id, fate["table"], column, huge[column])


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
                             "xfail", "names", "at", "fate"}, case["id"]
        assert case["error"] and case["argv"] and case["why"], case["id"]
        # every case names what the message must name: the file (or, with no file, the argument) it is about
        assert case.get("names"), (case["id"], "give `names`: the file or argument the message must name")
        if any(step.startswith("huge_") for step in case.get("setup", [])):  # handled, so say what became of it
            assert case.get("fate"), (case["id"], "a huge-row case asserts the row's fate")
        re.compile(case["error"])
        for step in case.get("setup", []):
            assert step == "store" or step in SETUPS, (case["id"], step)
        argv = case["argv"]
        outputs = {b for a, b in zip(argv, argv[1:], strict=False) if a in ("-o", "--output", "--stats", "--dest")}
        for arg in argv:  # every input file a case names exists in the corpus (or is made by setup)
            if (arg not in outputs and re.search(r"\.(ya?ml|jsonl?|csv|txt|parquet)$", arg) and not case.get("setup")
                    and "no_such" not in arg):
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

    raised: list[str] = []
    monkeypatch.setattr(builder.cli, "_error", _recording_error(builder.cli._error, raised))
    code = main([str(a) for a in case["argv"]])

    out, err = capsys.readouterr()
    assert code == case["exit"], f"{case['id']}: exit {code}, expected {case['exit']}\nstderr: {err}\nstdout: {out}"
    assert "Traceback" not in out + err
    if case["exit"] != 0:
        # stderr also carries the progress bar of the stages that ran; the error itself is the `error:` lines
        lines = [line for line in err.splitlines() if line.startswith("error: ")]
        assert 1 <= len(lines) <= case.get("lines", 1), f"{case['id']}: {len(lines)} error lines:\n{err}"
        assert not [line for line in err.splitlines() if re.match(r"\s*(File \"|raise |\w+Error:)", line)], err
        message = "\n".join(line.removeprefix("error: ") for line in lines)
        assert re.search(case["error"], message), f"{case['id']}: {message!r} does not match {case['error']!r}"
        for part in (case["names"], *([case["at"]] if case.get("at") else [])):
            assert str(part) in message, f"{case['id']}: the error does not name {part!r}: {message!r}"
        BEHAVIOURS[case["id"]] = raised[0] if raised else "?"
        SHAPES[case["id"]] = _shape(BEHAVIOURS[case["id"]], message)
    else:
        assert re.search(case["error"], out + err), f"{case['id']}: output does not match {case['error']!r}"
        assert case["names"] in out + err, f"{case['id']}: the output does not name {case['names']!r}"
        BEHAVIOURS[case["id"]] = SHAPES[case["id"]] = f"handled: {case['entry']}"
    for fate in case.get("fate", []):
        _check_fate(root, case["id"], fate)
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


def test_corpus_reports_cases_and_distinct_behaviours():
    """The case count beside the number of distinct behaviours the cases reached in this session: raise sites
    (one statement may raise for several causes, e.g. every pydantic field error), and raise sites with the
    message's shape (paths, numbers and quoted values taken out)."""
    if len(BEHAVIOURS) < len(CASES):
        pytest.skip("run the whole corpus to count behaviours")
    assert "?" not in BEHAVIOURS.values(), [c for c, b in BEHAVIOURS.items() if b == "?"]
    sites = set(BEHAVIOURS.values())
    shapes = set(SHAPES.values())
    print(f"\nbad-input corpus: {len(CASES)} cases, {len(sites)} distinct raise sites, {len(shapes)} distinct "
          "(raise site, message shape) behaviours")
    if os.environ.get("RATIONALE_BEHAVIOURS_OUT"):
        Path(os.environ["RATIONALE_BEHAVIOURS_OUT"]).write_text(json.dumps(
            {c: [BEHAVIOURS[c], SHAPES[c]] for c in BEHAVIOURS}, indent=1))
    assert len(sites) >= 70 and len(shapes) >= 110, (len(sites), len(shapes))  # floors: merged code paths show
