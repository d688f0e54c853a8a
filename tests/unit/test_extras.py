"""A feature whose package is not installed is refused before its work starts: vLLM missing is found before
training (not after it, when the evaluation starts) and before a hosted teacher's first paid request."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from builder.errors import BuilderError
from builder.recipe import Recipe
from tests.helpers import arith_task, write_import_recipe


@pytest.fixture
def no_vllm(monkeypatch):
    """vLLM as an install without it sees it (a None entry makes importlib.util.find_spec answer None)."""
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "vllm", None)


def _train_recipe(tmp_path: Path, **over):
    from builder.train_recipe import parse_train_recipe

    return parse_train_recipe({"name": "s", "dataset": {"ref": "nowhere@v1", "root": str(tmp_path / "store")},
                               "model": {"model_name_or_path": "gpt2"}, "output_dir": str(tmp_path / "out"),
                               **over}, "t.yaml")


def test_training_whose_evaluation_needs_vllm_is_refused_before_it_starts(tmp_path, no_vllm):
    from builder import train

    with pytest.raises(BuilderError, match=r"the evaluation after training \(eval.backend: vllm\) needs the vllm "
                                           r"package, which is not installed: .*set eval.backend: hf, or train "
                                           r"with --no-eval"):
        train.main(_train_recipe(tmp_path))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("over", [{"eval": {"backend": "hf"}}, {"eval": {"enabled": False}}])
def test_training_without_a_vllm_evaluation_does_not_ask_for_vllm(tmp_path, no_vllm, over):
    from builder import train
    from builder.errors import StoreError

    with pytest.raises(StoreError, match="nowhere"):  # it went on to the dataset, which does not exist
        train.main(_train_recipe(tmp_path, **over))


def test_a_served_teacher_with_a_reasoning_parser_needs_vllm_before_its_first_request(tmp_path, no_vllm):
    from builder.teachers import TeacherSetup, make_teacher

    recipe = Recipe.model_validate({
        "name": "t", "work_dir": str(tmp_path / "runs"), "tasks": {"items": [arith_task(tmp_path)]},
        "teacher": {"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1",
                    "reasoning_parser": "deepseek_r1"},
        "prompt": {"format": "raw"}})
    with pytest.raises(BuilderError, match="teacher.reasoning_parser 'deepseek_r1' .*needs the vllm package"):
        make_teacher(TeacherSetup.of(recipe))


def test_imported_traces_to_split_need_vllm_and_say_so(tmp_path, no_vllm, benchmarks_dir, teacher_completions_dir):
    from builder import build
    from builder.bind import load_recipe

    path = write_import_recipe(tmp_path / "r.yaml", benchmarks_dir, teacher_completions_dir / "multiarith.jsonl",
                               work_dir=tmp_path / "runs", limit=4, teacher={"reasoning_parser": "deepseek_r1"})
    with pytest.raises(BuilderError, match="teacher.reasoning_parser 'deepseek_r1' .*needs the vllm package"):
        build.run(load_recipe(path))
