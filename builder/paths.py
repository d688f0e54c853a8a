"""Paths the user writes in a recipe: one rule for every stage, importable without the recipe models."""

from __future__ import annotations

import errno
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
# Dataset and run names and version tags, the one rule for all of them (a name becomes a folder and a Hub tag):
# ASCII letters, digits and NAME_CHARS' punctuation, starting with a letter or digit.
NAME_CHARS = "A-Za-z0-9_.-"
NAME = rf"[A-Za-z0-9][{NAME_CHARS}]*"
NAME_PATTERN = rf"^{NAME}$"
HUB_REF_PATTERN = rf"^{_PART}/{_PART}(@{NAME})?$"


def repo_id_problem(repo: str) -> str | None:
    """Why `repo` is not a valid ORG/NAME Hub repo id (None when it is)."""
    if not re.fullmatch(REPO_ID_PATTERN, repo, flags=re.ASCII):
        return "expected ORG/NAME of ASCII letters, digits, '_', '-' and '.'"
    if ".." in repo or "--" in repo or len(repo.split("/")[1]) > 96:
        return "'..' and '--' are not allowed, and NAME has at most 96 characters"
    return None


def tag_problem(tag: str) -> str | None:
    """Why `tag` is not a valid version tag or branch name to pull (None when it is)."""
    if not re.fullmatch(NAME, tag) or ".." in tag:
        return "a tag is ASCII letters, digits, '_', '-' and '.' (no '/', no '..'), e.g. v1"
    return None


def check_output_path(path: str | Path) -> Path:
    """Refuse, before any work, an output file that cannot be written: a folder where the file goes, a file where
    a folder is expected, a folder without write access (or on a read-only file system), a name too long.

    Raises the OSError the write would raise (naming the path), so the CLI reports it the same way.
    """
    path = Path(path)
    too_long = next((part for part in path.parts if len(part.encode()) > 255), None)
    if too_long is not None:
        raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), str(path))
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    for parent in path.parents:  # the nearest folder that exists is where the first write happens
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(parent))
            if not os.access(parent, os.W_OK | os.X_OK):
                code = errno.EROFS if _read_only(parent) else errno.EACCES
                raise OSError(code, os.strerror(code), str(parent))
            break
    return path


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False
