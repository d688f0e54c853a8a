"""Comparing two versions: rows added and removed per task, funnel changes, changed recipe settings and teacher."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from builder.run import flatten
from builder.store.read import read_version, resolve
from builder.store.verify import verify


def diff_versions(a: str | Path, b: str | Path, root: str | Path | None = None) -> dict[str, Any]:
    """Compare two versions: rows added/removed per task (a row is (qid, sample_idx, completion)),
    funnel changes per task and stage, and changed recipe settings and teacher (flattened dotted keys).

    Both versions are verified first (`verify`): a diff of corrupt data would be a wrong answer, not an error."""
    for ref in (a, b):
        verify(resolve(ref, root))
    rows_a, man_a = read_version(a, root)
    rows_b, man_b = read_version(b, root)
    key = ["qid", "sample_idx", "completion"]
    added = rows_b.join(rows_a.select(key), on=key, how="anti").group_by("task").len(name="added")
    removed = rows_a.join(rows_b.select(key), on=key, how="anti").group_by("task").len(name="removed")
    tasks = pl.concat([rows_a.select("task"), rows_b.select("task")]).unique()
    per_task = (
        tasks.join(added, on="task", how="left").join(removed, on="task", how="left")
        .join(rows_a.group_by("task").len(name="rows_a"), on="task", how="left")
        .join(rows_b.group_by("task").len(name="rows_b"), on="task", how="left")
        .fill_null(0).sort("task")
    )
    funnel: dict[str, dict[str, list[int | None]]] = {}
    fa, fb = man_a.get("funnel") or {}, man_b.get("funnel") or {}
    for task in sorted(set(fa) | set(fb)):
        stages = sorted(set(fa.get(task, {})) | set(fb.get(task, {})))
        changed = {s: [fa.get(task, {}).get(s), fb.get(task, {}).get(s)] for s in stages
                   if fa.get(task, {}).get(s) != fb.get(task, {}).get(s)}
        if changed:
            funnel[task] = changed
    settings: dict[str, list[Any]] = {}
    for section in ("recipe", "teacher"):
        flat_a, flat_b = flatten(man_a.get(section) or {}, section), flatten(man_b.get(section) or {}, section)
        for k in sorted(set(flat_a) | set(flat_b)):
            if flat_a.get(k) != flat_b.get(k):
                settings[k] = [flat_a.get(k), flat_b.get(k)]
    return {
        "a": {"version": man_a["version"], "content_hash": man_a["content_hash"], "rows": rows_a.height},
        "b": {"version": man_b["version"], "content_hash": man_b["content_hash"], "rows": rows_b.height},
        "same_content": man_a["content_hash"] == man_b["content_hash"],
        "tasks": per_task.to_dicts(),
        "funnel": funnel,
        "settings": settings,
    }
