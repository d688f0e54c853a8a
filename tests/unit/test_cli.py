"""The `rationale` command's promises: usage errors are one line and exit 2 (hint kept), help and --version exit 0,
Ctrl-C says what was kept and exits 130, and every command's stdout is only its result (progress and logs go to
stderr). One test per message kind, as huggingface_hub's tests/test_cli_errors.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder import __version__
from builder.cli import main
from tests.helpers import write_import_recipe


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------- usage errors: one line, exit 2, hint kept
@pytest.mark.parametrize(("argv", "message"), [
    (["buidl"], "error: No such command 'buidl'. Did you mean 'build'? (see 'rationale --help')"),
    (["tasks", "lod"], "error: No such command 'lod'. Did you mean 'load'? (see 'rationale tasks --help')"),
    (["versions"], "error: Missing argument 'name'. (see 'rationale versions --help')"),
    (["grade", "-o", "x.parquet"], "error: Missing option '--input' / '-i'. (see 'rationale grade --help')"),
    (["build", "recipe.yaml", "--bogus"], "error: No such option: --bogus (see 'rationale build --help')"),
    (["eval", "--k", "abc"], "error: Invalid value for '--k': "),
    (["build", "recipe.yaml", "--work-dir"], "error: Option '--work-dir' requires an argument."),
    (["show", "demo@v1", "--head", "0"], "error: Invalid value for '--head': Input should be greater than or equal"),
], ids=["no-such-command", "no-such-subcommand", "missing-argument", "missing-option", "no-such-option",
        "bad-value", "option-needs-value", "out-of-range"])
def test_usage_error_is_one_line_on_stderr_and_exits_2(capsys, argv, message):
    code, out, err = _run(capsys, argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(message), err


def test_user_error_from_a_command_is_one_line_and_exits_2(capsys, tmp_path):
    code, out, err = _run(capsys, ["versions", "nothing-here", "--store", str(tmp_path)])
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("error: ") and "no versions" in err


# ---------------------------------------------------------------- help and version: stdout, exit 0
@pytest.mark.parametrize("argv", [[], ["-h"], ["--help"]], ids=["bare", "-h", "--help"])
def test_help_is_printed_to_stdout_and_exits_0(capsys, argv):
    code, out, err = _run(capsys, argv)
    assert code == 0 and err == ""
    assert "Usage: rationale" in out and all(opt in out for opt in ("--version", "-h", "--debug", "build"))


def test_bare_command_group_prints_its_help_and_exits_0(capsys):
    code, out, err = _run(capsys, ["tasks"])
    assert code == 0 and err == "" and "load" in out and "list" in out


def test_subcommand_help_with_short_flag(capsys):
    code, out, err = _run(capsys, ["build", "-h"])
    assert code == 0 and err == "" and "--json" in out


def test_version_prints_the_package_version(capsys):
    assert _run(capsys, ["--version"]) == (0, f"rationale-builder {__version__}\n", "")


# ---------------------------------------------------------------- Ctrl-C: what was kept, how to resume, exit 130
def test_ctrl_c_during_build_says_what_was_kept_and_how_to_resume(capsys, tmp_path, monkeypatch, benchmarks_dir,
                                                                  teacher_completions_dir):
    from builder import build

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "run", interrupted)
    recipe = write_import_recipe(tmp_path / "r.yaml", benchmarks_dir, teacher_completions_dir / "multiarith.jsonl",
                                 work_dir=tmp_path / "runs", store={"root": str(tmp_path / "store")})
    code, out, err = _run(capsys, ["build", str(recipe)])
    assert code == 130 and out == "" and err.count("\n") == 1
    assert "error: interrupted: 0 sample shard(s) kept" in err and f"rerun `rationale build {recipe}` to resume" in err


def test_ctrl_c_elsewhere_exits_130(capsys, monkeypatch):
    from builder import store

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "resolve_root", interrupted)
    assert _run(capsys, ["versions", "demo"]) == (130, "", "error: interrupted\n")


# ---------------------------------------------------------------- stdout is only the result
def test_stdout_of_each_command_is_only_its_result(capsys, tmp_path, benchmarks_dir, teacher_completions_dir):
    store_dir = tmp_path / "store"
    recipe = write_import_recipe(tmp_path / "r.yaml", benchmarks_dir, teacher_completions_dir / "multiarith.jsonl",
                                 work_dir=tmp_path / "runs", limit=24,
                                 store={"root": str(store_dir), "license": "cc-by-4.0"})
    run_dir = tmp_path / "runs" / "multiarith-davinci"

    def result_json(argv: list[str]) -> dict | list:
        code, out, err = _run(capsys, argv)
        assert code == 0, err
        return json.loads(out)  # the whole of stdout is one JSON document: no progress, no log line

    summary = result_json(["build", str(recipe), "--json"])
    assert summary["version"] == "v1" and summary["kept"] > 0
    assert result_json(["sample", str(recipe), "--json"])["new_samples"] == 0  # resumed: nothing left to sample
    loaded = result_json(["tasks", "load", str(recipe), "-o", str(tmp_path / "q.parquet"), "--json"])
    assert loaded["questions"] == 24 and Path(loaded["output"]).is_file()
    graded_in = tmp_path / "to_grade.jsonl"
    graded_in.write_text(json.dumps({"task": "multiarith", "question": "1+1?", "rationale": "1+1=2. The answer is 2.",
                                     "gold": "2"}) + "\n")
    graded = result_json(["grade", "-i", str(graded_in), "-o", str(tmp_path / "g.parquet"), "--json"])
    assert graded["rows"] == 1 and graded["tasks"][0]["n_correct"] == 1
    curated = result_json(["curate", "-i", str(run_dir / "graded.parquet"), "-o", str(tmp_path / "l.parquet"),
                           "--json"])
    assert curated["output"] == str(tmp_path / "l.parquet")
    listed = result_json(["versions", "multiarith-davinci", "--store", str(store_dir), "--json"])
    assert [v["version"] for v in listed] == ["v1"]
    shown = result_json(["show", "multiarith-davinci@v1", "--store", str(store_dir), "--json"])
    assert shown["content_hash"] == listed[0]["content_hash"]
    diffed = result_json(["diff", "multiarith-davinci@v1", "multiarith-davinci@v1", "--store", str(store_dir),
                          "--json"])
    assert diffed["same_content"] is True
    dry = result_json(["publish", "multiarith-davinci@v1", "--repo", "org/arith", "--store", str(store_dir),
                       "--dry-run", "--json"])
    assert dry["status"] == "dry-run" and dry["tag"] == "v1"

    # --head previews rows: N JSON lines with --json, a table without
    code, out, err = _run(capsys, ["show", "multiarith-davinci@v1", "--store", str(store_dir), "--head", "5",
                                   "--json"])
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(rows) == 5 and all(r["prompt"].endswith(" ###") and " --> " in r["completion"]
                                                for r in rows)
    code, out, err = _run(capsys, ["show", "multiarith-davinci@v1", "--store", str(store_dir), "--head", "2"])
    assert code == 0 and "first 2 of" in out and rows[0]["answer"] in out

    # without --json: the version folder alone; the summary table and progress on stderr
    code, out, err = _run(capsys, ["build", str(recipe)])
    assert code == 0 and out == summary["version_path"] + "\n" and "content hash" in err
