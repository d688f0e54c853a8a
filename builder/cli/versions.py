"""`rationale versions`, `show` and `diff`: list, inspect and compare local dataset versions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

StoreOpt = Annotated[
    Path | None,
    typer.Option("--store", help="Store folder holding <name>/v<N>/ (default: $RATIONALE_STORE or ./store)."),
]


def _console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def versions(
    name: Annotated[str, typer.Argument(help="Dataset name (the recipe's name or store.name).")],
    store: StoreOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the versions of a dataset: version, content hash, rows, tasks, creation time (each verified first)."""
    from rich.table import Table

    from builder import store as st
    from builder.errors import StoreError

    root = st.resolve_root(store)
    found = st.list_versions(root, name)
    if not found:
        raise StoreError(f"{root / name}: no versions of {name!r} in store {root}; pass --store DIR")
    for v in found:  # files, rows and content hash: a listed version is one that can be used
        st.verify(root / name / v["version"])
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    table = Table(title=f"{name} in {root} (every version verified)")
    for col in ("version", "content hash", "rows", "tasks", "created"):
        table.add_column(col)
    for v in found:
        tasks = ", ".join(f"{t}:{n}" for t, n in sorted(v["tasks"].items()))
        table.add_row(v["version"], v["content_hash"][:12], str(v["rows"]), tasks, v["created_at"])
    _console().print(table)


def show(
    ref: Annotated[str, typer.Argument(help="NAME@vN, NAME@latest, NAME@<hash prefix> or a version folder.")],
    store: StoreOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole manifest as JSON (with --head: the rows, "
                                          "one JSON object per line).")] = False,
    head: Annotated[int | None, typer.Option("--head", min=1, help="Preview the first N rows (prompt, completion, "
                                             "answer) instead of the summary.")] = None,
    config: Annotated[str, typer.Option("--config", help="Config whose rows --head previews (default, a task).")]
    = "default",
) -> None:
    """Print a version's manifest summary: identity, teacher, sampling, funnel, files (verified first)."""
    from rich.table import Table

    from builder import reasons as R
    from builder import store as st

    folder = st.resolve(ref, st.resolve_root(store))
    manifest = st.verify(folder)
    if head is not None:
        rows, _ = st.read_version(folder, config=config)
        rows = rows.head(head).select("qid", "sample_idx", "task", "prompt", "completion", "answer", "gold")
        if as_json:
            typer.echo(rows.write_ndjson().rstrip("\n"))
            return
        table = Table(title=f"{manifest['name']} {manifest['version']}: first {rows.height} of {manifest['rows']} "
                      f"rows ({config})", show_lines=True)
        for col in ("task", "prompt", "completion", "answer"):
            table.add_column(col, overflow="fold")
        for r in rows.iter_rows(named=True):
            table.add_row(r["task"], r["prompt"], r["completion"], r["answer"])
        _console().print(table)
        return
    if as_json:
        typer.echo(json.dumps(manifest, indent=2, ensure_ascii=False))
        return
    con = _console()
    teacher = manifest.get("teacher") or {}
    con.print(f"[bold]{manifest['name']} {manifest['version']}[/bold]  {folder}")
    con.print(f"content hash  {manifest['content_hash']}")
    con.print(f"created       {manifest.get('created_at')}  (rationale-builder {manifest.get('tool_version')})")
    con.print(f"rows          {manifest['rows']}  " + ", ".join(f"{t}: {n}" for t, n in manifest["tasks"].items()))
    con.print(f"configs       {', '.join(manifest['configs'])}")
    con.print(f"teacher       {teacher.get('model')}  revision={teacher.get('revision')}  "
              f"backend={teacher.get('backend')}")
    sampling = manifest.get("recipe", {}).get("sampling", {})
    if sampling:
        con.print("sampling      " + ", ".join(f"{k}={v}" for k, v in sampling.items() if not isinstance(v, dict)))
    funnel = manifest.get("funnel") or {}
    if funnel:
        stages = [s for s in R.FUNNEL if any(s in f for f in funnel.values())]
        table = Table(title="funnel")
        for col in ("task", *stages, "accuracy"):
            table.add_column(col, justify="left" if col == "task" else "right")
        for task, f in sorted(funnel.items()):
            acc = f"{f['correct'] / f['sampled']:.1%}" if f.get("sampled") and "correct" in f else "-"
            table.add_row(task, *(str(f.get(s, "-")) for s in stages), acc)
        con.print(table)
    decon = manifest.get("decontamination") or {}
    if not decon.get("eval_questions"):
        con.print("decontamination  not run")
    else:
        con.print(f"decontamination  {len(decon.get('hits') or [])} hit(s) in {decon.get('checked')} questions "
                  f"against {decon.get('eval_questions')} eval questions")
    con.print(f"files         {len(manifest['files'])} "
              f"({sum(f['bytes'] for f in manifest['files'].values()):,} bytes)")


def diff(
    a: Annotated[str, typer.Argument(help="First version (NAME@vN or folder).")],
    b: Annotated[str, typer.Argument(help="Second version (NAME@vN or folder).")],
    store: StoreOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
) -> None:
    """Compare two versions (both verified first): rows added/removed per task, funnel changes, settings changes."""
    from rich.table import Table

    from builder import store as st

    d = st.diff_versions(a, b, st.resolve_root(store))
    if as_json:
        typer.echo(json.dumps(d, indent=2, ensure_ascii=False, default=str))
        return
    con = _console()
    con.print(f"A {d['a']['version']} {d['a']['content_hash'][:12]} ({d['a']['rows']} rows)  ->  "
              f"B {d['b']['version']} {d['b']['content_hash'][:12]} ({d['b']['rows']} rows)")
    if d["same_content"]:
        con.print("same content hash: identical rows and recipe")
    table = Table(title="rows per task")
    for col in ("task", "A", "B", "added", "removed"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for r in d["tasks"]:
        table.add_row(r["task"], str(r["rows_a"]), str(r["rows_b"]), f"+{r['added']}", f"-{r['removed']}")
    con.print(table)
    for task, stages in d["funnel"].items():
        con.print(f"funnel {task}: " + ", ".join(f"{s} {x} -> {y}" for s, (x, y) in stages.items()))
    for key, (x, y) in d["settings"].items():
        con.print(f"setting {key}: {json.dumps(x, default=str)} -> {json.dumps(y, default=str)}")
    if not d["funnel"] and not d["settings"]:
        con.print("no funnel or settings changes")


def register(app: typer.Typer) -> None:
    app.command("versions")(versions)
    app.command("show")(show)
    app.command("diff")(diff)
