"""Build recipes: shipped recipes validate, the exported JSON schema is current, bad recipes name the field."""

from __future__ import annotations

import json

import pytest

from builder.bind import load_recipe, recipe_json_schema
from builder.cli import main
from builder.errors import RecipeError
from tests.helpers import ROOT

BUILD_RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml")  # train recipes and accelerate configs aside
                       if not {"train", "accelerate"} & set(p.relative_to(ROOT / "recipes").parts))

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
    assert on_disk == recipe_json_schema(), "run: python -m builder.bind"


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
    (GOOD.replace("  model: some/model", "  model: some/model\n  prices: {input: 1.0e+308, output: 1}"),
     r"teacher\.prices\.input: Input should be less than or equal to 100000"),
    (GOOD.replace("  model: some/model", "  model: some/model\n  max_cost_usd: 5") + "executor:\n  kind: ray\n",
     r"teacher\.max_cost_usd is counted by the teacher that sends the requests.*executor\.kind local"),
    (GOOD.replace("  model: some/model", "  model: some/model\n  backend: openai_batch\n  base_url: http://x/v1")
     + "executor:\n  kind: ray\n", r"openai_batch with executor\.kind local"),
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
    (GOOD.replace("name: multiarith", "name: no_such_task"), "tasks.items.0: unknown paper task"),
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


# ---------------------------------------------------------------- the strict YAML loader
@pytest.mark.parametrize("text, message", [
    (GOOD + "curation:\n  keep_correct_only: true\n  keep_correct_only: false\n",
     r"r\.yaml: line 9: duplicate key 'keep_correct_only' \(first on line 8\)"),
    (GOOD.replace("name: demo", "name: demo\nname: other"), r"line 2: duplicate key 'name' \(first on line 1\)"),
    (GOOD + "sampling:\n  seed: yes\n", r"line 8, column 9: 'yes' is refused: YAML 1.1 reads it as a boolean"),
    (GOOD + "curation:\n  dedup_exact: off\n", r"'off' is refused"),
    (GOOD + "sampling:\n  temperature: .inf\n", r"sampling\.temperature: Input should be a finite number"),
    (GOOD + "curation:\n  decontam_overlap: .nan\n", r"curation\.decontam_overlap: Input should be a finite number"),
    (GOOD + "teacher:\n  timeout_s: 1e999\n", r"duplicate key 'teacher'"),
    (GOOD.replace("  model: some/model", "  model: some/model\n  timeout_s: 1e999"),
     r"teacher\.timeout_s: Input should be a finite number"),
    (GOOD + "curation:\n  eval_sets: &a [*a]\n", r"line 8: an alias refers to the node that holds it"),
    (GOOD + "description: " + "[" * 3000 + "]" * 3000 + "\n", r"nested too deeply to be a recipe"),
])
def test_strict_yaml_refuses_what_would_load_as_something_else(tmp_path, text, message):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    with pytest.raises(RecipeError, match=message):
        load_recipe(p)


def test_strict_yaml_keeps_quoted_words_merge_keys_and_small_aliases(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(GOOD + "description: 'yes'\nprompt:\n  trigger: \"on\"\n"
                 "curation:\n  minhash: &mh {ngram: 3}\n  selection: {mode: first}\n"
                 "store: {name: a, <<: {shard_rows: 5}}\n")
    r = load_recipe(p)
    assert r.description == "yes" and r.prompt.trigger == "on" and r.curation.minhash.ngram == 3
    assert r.store.shard_rows == 5


def test_a_yaml_alias_bomb_is_refused_within_a_second_and_bounded_memory(tmp_path):
    import time
    import tracemalloc

    levels = "".join(f"    {a}: &{a} [{', '.join(['*' + p] * 9) if p else ', '.join(['lol'] * 9)}]\n"
                     for a, p in zip("abcdefghi", ["", *"abcdefgh"], strict=True))  # 9**9 strings expanded
    p = tmp_path / "bomb.yaml"
    p.write_text(GOOD.replace("  model: some/model", "  model: some/model\n  engine_args:\n" + levels))
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(RecipeError, match=r"bomb\.yaml: line \d+: aliases expand to more than 100,000 values"):
            load_recipe(p)
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0 and peak < 20 * 2**20, (elapsed, peak)


def test_recipe_only_checks_run_when_the_recipe_loads(tmp_path):
    for extra, message in [
        ("curation:\n  min_chars: 100\n  max_chars: 10\n", r"min_chars \(100\) is greater than max_chars \(10\)"),
        ("", r"tasks\.items\.0: .*split 'dev' is not train, test or all"),
    ]:
        p = tmp_path / "r.yaml"
        p.write_text((GOOD + extra).replace("name: multiarith", "name: multiarith\n      split: dev")
                     if not extra else GOOD + extra)
        with pytest.raises(RecipeError, match=message):
            load_recipe(p)
    p.write_text(GOOD.replace("    - name: multiarith", "    - name: \"\\u200b\"\n      source: file\n"
                              "      path: q.jsonl\n      answer_type: number"))
    with pytest.raises(RecipeError, match=r"tasks\.items\.0: .*name is empty"):
        load_recipe(p)
    p.write_text(GOOD.replace("    - name: multiarith", "    - name: \"a\\0b\"\n      source: file\n"
                              "      path: q.jsonl\n      answer_type: number"))
    with pytest.raises(RecipeError, match=r"tasks\.items\.0: .*holds a control character"):
        load_recipe(p)


def test_what_the_recipe_alone_decides_fails_at_load_not_after_sampling(tmp_path):
    """Decontamination with nothing to compare against, and the import backend on Ray, were found only after the
    questions loaded (Ray) or after sampling (decontamination); both are decided by the recipe alone."""
    from builder.cli._common import apply_executor
    from builder.errors import BuilderError

    file_task = ("    - name: mine\n      source: file\n      path: q.jsonl\n      answer_type: number\n")
    p = tmp_path / "r.yaml"
    p.write_text(GOOD.replace("    - name: multiarith\n", file_task) + "curation:\n  decontaminate: true\n")
    with pytest.raises(RecipeError, match=r"curation\.decontaminate: nothing to compare against"):
        load_recipe(p)
    p.write_text(GOOD.replace("    - name: multiarith\n", file_task)
                 + "curation:\n  decontaminate: true\n  eval_sets: [evals.jsonl]\n")
    assert load_recipe(p).curation.decontaminate  # an eval set is something to compare against

    imported = GOOD.replace("  model: some/model", "  backend: import\n  model: m\n  import_path: c.jsonl")
    p.write_text(imported + "executor:\n  kind: ray\n")
    with pytest.raises(RecipeError, match=r"executor\.kind ray generates on engine replicas"):
        load_recipe(p)
    p.write_text(imported)
    cfg = load_recipe(p)
    with pytest.raises(BuilderError, match=r"--executor/--address: .*teacher\.backend import"):
        apply_executor(cfg, "ray", None)


# ---------------------------------------------------------------- data, then one binding step
def test_validating_a_recipe_loads_no_stage_registry_or_backend():
    import subprocess
    import sys

    code = ("import sys; from builder.recipe import Recipe; "
            "r = Recipe.model_validate({'name': 'd', 'tasks': {'items': [{'name': 'nope'}]}, "
            "'teacher': {'backend': 'ollama', 'model': 'm'}, 'executor': {'kind': 'dask'}, "
            "'curation': {'filters': ['truncatd']}}); "
            "assert r.teacher.backend == 'ollama'; "
            "loaded = sorted(m for m in sys.modules if m.startswith(('builder.teachers', 'builder.executors', "
            "'builder.filters', 'builder.tasks', 'builder.graders', 'builder.kernels', 'numba', 'vllm', 'torch'))); "
            "assert not loaded, loaded")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_binding_names_every_unknown_name_with_its_file_field_and_the_valid_names(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(GOOD.replace("name: multiarith", "name: multiarithh").replace("  model: some/model",
                                                                               "  backend: ollama\n  model: m")
                 + "executor:\n  kind: dask\ncuration:\n  filters: [empty, truncatd, loopy]\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(p)
    assert str(info.value).splitlines() == [
        f"{p}: teacher.backend: unknown teacher backend 'ollama'; valid: hf, import, openai, openai_batch, vllm",
        f"{p}: executor.kind: unknown executor 'dask'; valid: local, ray",
        f"{p}: curation.filters: unknown quality filter 'truncatd'; valid: answer_first, degenerate, empty, length, "
        "no_answer, no_final_answer, reasoning_length, repeated_loop, truncated, unfinished_thinking",
        f"{p}: curation.filters: unknown quality filter 'loopy'; valid: answer_first, degenerate, empty, length, "
        "no_answer, no_final_answer, reasoning_length, repeated_loop, truncated, unfinished_thinking",
        f"{p}: tasks.items.0: unknown paper task 'multiarithh'; valid: addsub, aqua, coin_flip, commonsense_qa, "
        "date_understanding, gsm8k, last_letter_concatenation, multiarith, single_eq, strategy_qa, svamp, "
        "tracking_shuffled_objects"]


def test_a_build_from_an_unbound_recipe_is_refused_before_any_stage(tmp_path, benchmarks_dir, teacher_completions_dir):
    """`Recipe.model_validate` checks data only; `build.run` binds before the first stage, so a misspelled filter
    fails at once, not after sampling and grading, and writes nothing."""
    import yaml

    from builder import build
    from builder.recipe import Recipe
    from tests.helpers import write_import_recipe

    path = write_import_recipe(tmp_path / "r.yaml", benchmarks_dir, teacher_completions_dir / "multiarith.jsonl",
                               work_dir=tmp_path / "runs", limit=4)
    data = yaml.safe_load(path.read_text())
    data["curation"]["filters"] = ["empty", "truncatd"]
    with pytest.raises(RecipeError, match="curation.filters: unknown quality filter 'truncatd'"):
        build.run(Recipe.model_validate(data))
    assert not (tmp_path / "runs").exists()
