"""Builders of test inputs that several test files share: a small question file and import-backend recipes."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

ARITH_QUESTIONS = [
    ("Tom has 3 apples and buys 4 more. How many apples does he have?", 7),
    ("There are 9 birds and 5 fly away. How many birds are left?", 4),
    ("Mia has 6 pens and gets 2 more. How many pens does she have?", 8),
    ("A box has 10 cookies and Tom eats 3. How many are left?", 7),
    ("Anna reads 5 pages and then 4 pages. How many pages in total?", 9),
]


def arith_task(folder: Path, questions: Iterable[tuple[str, int | str]] = ARITH_QUESTIONS,
               file: str = "questions.jsonl") -> dict[str, Any]:
    """Write (question, gold) pairs as JSONL (columns q, a) and return the recipe's `file` task item reading it."""
    qfile = folder / file
    qfile.write_text("".join(json.dumps({"q": q, "a": a}) + "\n" for q, a in questions))
    return {"name": "arith", "source": "file", "path": str(qfile), "columns": {"question": "q", "gold": "a"},
            "answer_type": "number"}


def write_import_recipe(path: Path, benchmarks_dir: Path, completions: Path, *, name: str = "multiarith-davinci",
                        work_dir: str | Path = "runs", store: dict[str, Any] | None = None, limit: int | None = None,
                        teacher: dict[str, Any] | None = None) -> Path:
    """A build recipe over the MultiArith train split importing text-davinci-002 completions (first per question)."""
    item: dict[str, Any] = {"name": "multiarith", "split": "train"} | ({"limit": limit} if limit else {})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({
        "name": name,
        "work_dir": str(work_dir),
        "tasks": {"benchmarks_dir": str(benchmarks_dir), "items": [item]},
        "teacher": {"backend": "import", "model": "text-davinci-002", "import_path": str(completions),
                    **(teacher or {})},
        "curation": {"selection": {"mode": "first", "max_per_question": 1}},
        "store": store or {"root": "store"},
    }, sort_keys=False))
    return path
