"""What training and evaluation share about a student: its dataset version and its model reference.

Kept apart from builder.train and builder.eval so that each imports this and neither imports the other for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from builder.errors import StoreError
from builder.models import resolve_model
from builder.paths import resolve_recipe_path

if TYPE_CHECKING:
    from builder.train_recipe import DatasetSpec, TrainRecipe


@dataclass
class DatasetVersion:
    rows: pl.DataFrame
    manifest: dict[str, Any]
    ref: str  # how the card names it: NAME@VERSION, repo@tag or the folder

    @property
    def content_hash(self) -> str:
        return self.manifest["content_hash"]  # load_manifest refuses a manifest without it


def read_dataset(spec: DatasetSpec, recipe: TrainRecipe | None = None) -> DatasetVersion:
    """Load the training rows a recipe names (local ref, version folder or Hub repo@tag), filtered and limited.

    Raises:
        StoreError: the version is missing or has no rows left after the task filter.
    """
    from builder.store import read_version

    base_dir = recipe.base_dir if recipe is not None else None
    if spec.ref or spec.path:  # named as NAME@vN even when the recipe says NAME (latest) or a folder
        rows, manifest = (read_version(spec.ref, resolve_recipe_path(base_dir, spec.root)) if spec.ref
                          else read_version(resolve_recipe_path(base_dir, spec.path)))
        ref = f"{manifest['name']}@{manifest['version']}"
    else:
        from builder.hub import pull

        dest = pull(spec.hub, (recipe.out if recipe is not None else Path(".")) / "dataset")
        rows, manifest = read_version(dest)
        ref = spec.hub
    if spec.tasks:
        rows = rows.filter(pl.col("task").is_in(spec.tasks))
    if spec.limit:
        rows = rows.head(spec.limit)
    if rows.height == 0:
        raise StoreError(f"dataset {ref}: no rows to train on (tasks filter: {spec.tasks})")
    return DatasetVersion(rows, manifest, ref)


def resolve_student(name: str, recipe: TrainRecipe | None = None) -> str:
    """A loadable model reference: a local folder (relative to the recipe), an alias, or a Hub id."""
    if recipe is not None:
        local = recipe.resolve_path(name)
        if local is not None and local.exists():
            return str(local)
    return resolve_model(name)
