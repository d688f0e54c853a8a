"""`rationale publish` and `rationale pull`: a dataset version to and from the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def publish(
    ref: Annotated[str, typer.Argument(help="NAME@vN (or NAME@latest, NAME@<hash prefix>, a version folder).")],
    repo: Annotated[str, typer.Option("--repo", help="Hub dataset repo ORG/NAME (created if missing).")],
    store: Annotated[
        Path | None, typer.Option("--store", help="Store folder (default: $RATIONALE_STORE or ./store).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Verify and list what would be sent; no network.")
    ] = False,
    private: Annotated[bool, typer.Option("--private", help="Create the repo private (new repos only).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result (status, tag, commit, files) as JSON.")]
    = False,
) -> None:
    """Publish a version as one Hub commit, then tag it (v1, v2, ...). Re-publishing the same version is a no-op.

    The commit makes the repo's main branch hold exactly this version (files of an older version that this one
    lacks are deleted in the same commit; older tags keep their content). The token comes from `hf auth login`
    or HF_TOKEN and is never written or printed.
    """
    from builder import hub

    result = hub.publish(ref, repo, root=store, private=private, dry_run=dry_run)
    if json_out:
        from dataclasses import asdict

        from builder.cli._common import echo_json

        echo_json(asdict(result))
        return
    if result.status == "dry-run":
        total = sum(f["bytes"] for f in result.files)
        typer.echo(f"dry run: would commit {len(result.files)} files ({total:,} bytes) to dataset {repo}, "
                   f"then tag {result.tag} (content {result.content_hash[:12]}):")
        for f in result.files:
            typer.echo(f"  {f['path']}  {f['bytes']:,} bytes  {(f['sha256'] or '(this manifest)')[:16]}")
        return
    if result.status == "unchanged":
        typer.echo(f"{repo}@{result.tag} already holds content {result.content_hash[:12]}; nothing to publish")
        return
    for path in result.deleted:
        typer.echo(f"  removed {path} (not part of {result.tag})")
    typer.echo(f"{result.status} {repo}@{result.tag}: {len(result.files)} files, commit {str(result.commit)[:12]}, "
               f"content {result.content_hash[:12]}")


def pull(
    ref: Annotated[str, typer.Argument(help="ORG/NAME@TAG, e.g. my-org/multiarith-cot@v1.")],
    dest: Annotated[Path | None, typer.Option("--dest", help="Destination folder (default: ./NAME/TAG).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result (path, rows, content hash) as JSON.")]
    = False,
) -> None:
    """Download a tagged version and verify every file against its manifest; a tampered file is rejected."""
    from builder import hub, store

    path = hub.pull(ref, dest)
    manifest = store.load_manifest(path)
    if json_out:
        from builder.cli._common import echo_json

        echo_json({"path": str(path), "ref": ref, "version": manifest["version"], "rows": manifest["rows"],
                   "files": len(manifest["files"]), "content_hash": manifest["content_hash"]})
        return
    typer.echo(f"pulled {ref} into {path}: {manifest['rows']} rows, {len(manifest['files'])} files verified, "
               f"content {manifest['content_hash'][:12]}")


def register(app: typer.Typer) -> None:
    app.command("publish")(publish)
    app.command("pull")(pull)
