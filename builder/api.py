"""The Python API: what the CLI does, as functions (build, open, publish, pull), for notebooks and scripts.

`build_dataset`, not `build`: `builder.build` is the build stage's module.

    import builder
    summary = builder.build_dataset("recipes/quickstart/build.yaml")          # or a recipe dict
    ds = builder.open_version("quickstart-arith@v1", store="store")   # datasets.DatasetDict {"train": ...}
    builder.publish("quickstart-arith@v1", "my-org/quickstart-arith", store="store")
    folder = builder.pull("my-org/quickstart-arith@v1")

Errors are the CLI's: `builder.errors.BuilderError` subclasses naming the file, row and field.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import DatasetDict

    from builder.build import BuildSummary
    from builder.hub import PublishResult
    from builder.recipe import Recipe


def load(recipe: str | Path | dict[str, Any] | Recipe, *, base_dir: str | Path | None = None) -> Recipe:
    """A validated, bound `Recipe` (`builder.bind`) from a YAML path, a dict (relative paths resolve against
    `base_dir`, default the current folder) or a `Recipe`."""
    from builder.bind import bind, load_recipe, parse_recipe
    from builder.recipe import Recipe

    if isinstance(recipe, Recipe):
        return bind(recipe)
    if isinstance(recipe, dict):
        return parse_recipe(recipe, "<recipe>", Path(base_dir or ".").resolve())
    return load_recipe(Path(recipe))


def build_dataset(recipe: str | Path | dict[str, Any] | Recipe, *, base_dir: str | Path | None = None,
          progress: Any = None) -> BuildSummary:
    """Run every stage of a recipe (resumable) and write a dataset version, like `rationale build`.

    Returns:
        The build summary (version, version_path, content_hash, counts, tokens/s).
    """
    from builder import build as build_stage

    return build_stage.run(load(recipe, base_dir=base_dir), progress=progress)


def open_version(ref: str | Path, config: str = "default", *, store: str | Path | None = None,
                 cache_dir: str | Path | None = None, verify: bool = True) -> DatasetDict:
    """A version as a `datasets.DatasetDict` ({"train": ...}): `config` is `default` (prompt/completion strings),
    `conversational` (the same pairs as messages) or a task's config. The folder is verified first."""
    import datasets

    from builder import store as st

    folder = st.resolve(ref, st.resolve_root(store))
    manifest = st.verify(folder) if verify else st.load_manifest(folder)
    if config not in manifest["configs"]:
        from builder.errors import StoreError

        raise StoreError(f"{folder}: no config {config!r}; configs: {', '.join(manifest['configs'])}")
    return datasets.load_dataset(str(folder), config, cache_dir=str(cache_dir) if cache_dir else None)


def publish(ref: str | Path, repo: str, *, store: str | Path | None = None, private: bool = False,
            dry_run: bool = False) -> PublishResult:
    """Publish a version to Hub dataset repo `repo` as one commit plus a tag, like `rationale publish`."""
    from builder import hub

    return hub.publish(ref, repo, root=store, private=private, dry_run=dry_run)


def pull(ref: str, dest: str | Path | None = None) -> Path:
    """Download ORG/NAME@TAG and verify every file, like `rationale pull`; returns the folder."""
    from builder import hub

    return hub.pull(ref, dest)


def read_rows(ref: str | Path, *, store: str | Path | None = None, config: str = "default"):
    """A version's rows table (polars) and its manifest: `builder.store.read_version`."""
    from builder import store as st

    return st.read_version(ref, st.resolve_root(store), config=config)


__all__ = ["build_dataset", "load", "open_version", "publish", "pull", "read_rows"]
