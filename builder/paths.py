"""Paths the user writes in a recipe: one rule for every stage, importable without the recipe models."""

from __future__ import annotations

import os
import re
from pathlib import Path


def resolve_recipe_path(base_dir: str | Path | None, path: str | None) -> Path | None:
    """Expand ~ and $VARS; relative paths are relative to the recipe's folder (`base_dir`)."""
    if path is None:
        return None
    p = Path(os.path.expandvars(os.path.expanduser(path)))
    return p if p.is_absolute() or base_dir is None else (Path(base_dir) / p).resolve()


# Hub repo ids and tags as the Hub accepts them (ASCII letters, digits, '_', '-', '.'; no '..' or '--'), checked
# before either becomes a URL or, for pulls, a folder name (a tag like '../../x' must never become a path).
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?"
REPO_ID_PATTERN = rf"^{_PART}/{_PART}$"
TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
HUB_REF_PATTERN = rf"^{_PART}/{_PART}(@[A-Za-z0-9][A-Za-z0-9_.-]*)?$"


def repo_id_problem(repo: str) -> str | None:
    """Why `repo` is not a valid ORG/NAME Hub repo id (None when it is)."""
    if not re.match(REPO_ID_PATTERN, repo, flags=re.ASCII):
        return "expected ORG/NAME of ASCII letters, digits, '_', '-' and '.'"
    if ".." in repo or "--" in repo or len(repo.split("/")[1]) > 96:
        return "'..' and '--' are not allowed, and NAME has at most 96 characters"
    return None


def tag_problem(tag: str) -> str | None:
    """Why `tag` is not a valid version tag or branch name to pull (None when it is)."""
    if not re.match(TAG_PATTERN, tag, flags=re.ASCII) or ".." in tag:
        return "a tag is ASCII letters, digits, '_', '-' and '.' (no '/', no '..'), e.g. v1"
    return None
