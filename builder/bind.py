"""Binding: the one step that checks a recipe's names against the registries (`builder.recipe` is data only).

A recipe names things that exist only as registered code: a teacher backend (`TEACHERS`), an executor kind
(`EXECUTORS`), quality filters (`FILTERS`), paper tasks and graders (`builder.tasks.check_spec`). `bind` checks them
all when the recipe loads, so a misspelled name fails before any work starts, with the file, the field and the valid
names; `load_recipe` and `parse_recipe` read, validate and bind. The JSON schema lists the registered names too
(`python -m builder.bind` rewrites schemas/recipe.schema.json; a test fails when it is stale).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from builder.errors import RecipeError
from builder.executors import EXECUTORS
from builder.filters import FILTERS
from builder.recipe import Recipe, TaskSpec, parse_model, read_yaml
from builder.schemas import SCHEMA_DIR
from builder.tasks import check_spec
from builder.teachers import TEACHERS


def _task(spec: TaskSpec) -> str | None:
    """What is wrong with a task's names (paper task, answer type, mapped fields), or None."""
    try:
        check_spec(spec)
    except ValueError as exc:
        return str(exc)
    return None


def _problems(recipe: Recipe) -> Iterator[tuple[str, str | None]]:
    """(field, what is wrong or None) for every name the recipe holds."""
    yield "teacher.backend", TEACHERS.problem(recipe.teacher.backend)
    yield "executor.kind", EXECUTORS.problem(recipe.executor.kind)
    for name in recipe.curation.filters:
        yield "curation.filters", FILTERS.problem(name)
    for i, spec in enumerate(recipe.tasks.items):
        yield f"tasks.items.{i}", _task(spec)


# The schema fields whose values are registered names: (definition, property, registry, is a list).
_SCHEMA_ENUMS = [("TeacherConfig", "backend", TEACHERS, False), ("ExecutorConfig", "kind", EXECUTORS, False),
                 ("CurationConfig", "filters", FILTERS, True)]


def bind(recipe: Recipe, source: str = "<recipe>") -> Recipe:
    """Check every name `recipe` holds against its registry; return the recipe.

    Raises:
        RecipeError: one line per unknown name, `<source>: <field>: unknown ...; valid: ...`.
    """
    problems = [f"{source}: {field}: {problem}" for field, problem in _problems(recipe) if problem]
    if problems:
        raise RecipeError("\n".join(problems))
    return recipe


def parse_recipe(data: Any, source: str = "<recipe>", base_dir: str | Path | None = None) -> Recipe:
    """A recipe from parsed YAML (a dict; relative paths resolve against `base_dir`), validated and bound."""
    return bind(parse_model(Recipe, data, source, base_dir), source)


def load_recipe(path: str | Path) -> Recipe:
    """Read, validate and bind a YAML build recipe.

    Raises:
        FileNotFoundError: no such file.
        RecipeError: broken YAML (with line), invalid fields or unknown names (with their dotted path).
    """
    path = Path(path)
    return parse_recipe(read_yaml(path), str(path), path.resolve().parent)


def recipe_json_schema() -> dict[str, Any]:
    """`Recipe`'s JSON schema with the registered names as enums (editors complete and check them)."""
    schema = Recipe.model_json_schema()
    for model, prop, registry, many in _SCHEMA_ENUMS:
        target = schema["$defs"][model]["properties"][prop]
        (target["items"] if many else target)["enum"] = registry.names()
    return schema


def export_json_schema(path: str | Path | None = None) -> str:
    text = json.dumps(recipe_json_schema(), indent=2, sort_keys=True) + "\n"
    Path(path or SCHEMA_DIR / "recipe.schema.json").write_text(text)
    return text


if __name__ == "__main__":
    export_json_schema()
