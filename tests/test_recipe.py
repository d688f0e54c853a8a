"""Build recipes: shipped recipes validate, the exported JSON schema is current, bad recipes name the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.cli import main
from builder.errors import RecipeError
from builder.recipe import Recipe, load_recipe

ROOT = Path(__file__).resolve().parent.parent
BUILD_RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "train" not in p.relative_to(ROOT).parts)

GOOD = """\
name: demo
tasks:
  items:
    - name: multiarith
teacher:
  model: some/model
"""


def test_recipe_json_schema_is_not_stale():
    on_disk = json.loads((ROOT / "schemas" / "recipe.schema.json").read_text())
    assert on_disk == Recipe.model_json_schema(), "run: python -m builder.recipe"


@pytest.mark.parametrize("path", BUILD_RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_build_recipes_validate(path):
    recipe = load_recipe(path)
    assert recipe.name and recipe.tasks.items


def test_defaults_follow_the_paper(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(GOOD)
    r = load_recipe(p)
    assert r.sampling.temperature == 0.7 and r.prompt.trigger == "Let's think step by step."
    assert r.prompt.style == "zero_shot_cot" and r.prompt.two_stage
    assert r.run_dir == tmp_path / "runs" / "demo"


@pytest.mark.parametrize("text, message", [
    (GOOD.replace("name: demo", "name: demo\nsampling:\n  n: many"),
     r"sampling\.n: Input should be a valid integer"),
    (GOOD.replace("  model: some/model", "  modle: some/model"), r"teacher\.modle: unknown field"),
    (GOOD.replace("  model: some/model", "  backend: vllm"), r"teacher\.model: Field required"),
    (GOOD.replace("name: multiarith", "name: multiarith\n      source: file"), r"answer_type is required"),
    (GOOD.replace("name: demo\n", ""), r": name: Field required"),
    (GOOD + "sampling:\n  temperature: -1\n", r"sampling\.temperature: Input should be greater than or equal to 0"),
    (GOOD + "prompt:\n  style: few_shot_cot\n", r"prompt\.exemplars is required for few_shot_cot"),
    ("tasks: [unclosed\n", r"line 2, column 1 invalid YAML"),
    ("- just\n- a list\n", r"a recipe must be a YAML mapping"),
])
def test_bad_recipes_name_the_field(tmp_path, text, message):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    with pytest.raises(RecipeError, match=message):
        load_recipe(p)


def test_non_utf8_recipe(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(RecipeError, match="not UTF-8"):
        load_recipe(p)


@pytest.mark.parametrize("text, field", [
    (GOOD.replace("  model: some/model", "  modle: some/model"), "teacher.modle"),
    (GOOD.replace("name: multiarith", "name: no_such_task"), "tasks.items.0: Value error, unknown paper task"),
    (GOOD.replace("name: demo", "name: demo\nsampling:\n  n: many"), "sampling.n"),
])
def test_build_with_a_wrong_recipe_exits_non_zero_naming_the_field(tmp_path, capsys, monkeypatch, text, field):
    monkeypatch.setenv("RATIONALE_BENCHMARKS_DIR", str(tmp_path))
    p = tmp_path / "r.yaml"
    p.write_text(text)
    code = main(["build", str(p)])
    err = capsys.readouterr().err
    assert code == 2
    assert field in err and err.startswith("error: ")
    assert "Traceback" not in err


def test_missing_recipe_file(capsys):
    assert main(["build", "/nonexistent/recipe.yaml"]) == 2
    assert "recipe not found" in capsys.readouterr().err
