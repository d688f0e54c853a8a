"""Hub: publish a dataset version as one commit plus a tag, and pull a tagged version back with hash checks.

publish: version folder -> one `HfApi.create_commit` holding every file (and deleting files of an older version
that this one lacks), then `HfApi.create_tag` named after the version (v1, v2, ...). Publishing a version whose tag
already points at the same content hash does nothing. The token comes from huggingface_hub itself (HF_TOKEN or
`hf auth login`); this module never reads, prints or stores it.

pull: `snapshot_download(revision=tag)` into a temp folder beside the destination, `store.verify` every file
against manifest.json, then rename into place; a tampered file is rejected with its name.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder import store
from builder.errors import BuilderError, StoreError
from builder.paths import repo_id_problem, tag_problem

logger = logging.getLogger(__name__)

REPO_TYPE = "dataset"
_KEEP_REMOTE = frozenset({".gitattributes"})  # Hub bookkeeping, never deleted by a publish


class HubError(BuilderError):
    """The Hub refused or failed a publish or pull (auth, missing repo or tag, conflicting tag)."""


@dataclass
class PublishResult:
    """What a publish did: status is 'published', 'tagged' (commit existed), 'unchanged' or 'dry-run'."""

    repo: str
    tag: str
    content_hash: str
    status: str
    commit: str | None = None
    files: list[dict[str, Any]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


def _hub_call(what: str, fn, *args, **kwargs):
    """Run one HfApi call; turn HTTP/offline failures into a one-line HubError saying what to do."""
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        return fn(*args, **kwargs)
    except RuntimeError as exc:  # huggingface_hub wraps a failed LFS blob upload: "Error while uploading 'X' ..."
        cause = exc.__cause__
        if not isinstance(cause, (httpx2.TransportError, HfHubHTTPError)):
            raise
        first = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        raise HubError(f"{what}: {exc} ({first}); nothing was committed or tagged: rerun, the blobs already "
                       "uploaded are skipped") from None
    except httpx2.TransportError as exc:  # connection refused/reset, timeout: nothing was tagged, a rerun resumes
        raise HubError(f"{what}: network error ({type(exc).__name__}: {exc}); check the network and HF_ENDPOINT, "
                       "then rerun: a publish that did not reach its tag is completed by the rerun") from None
    except OfflineModeIsEnabled:
        raise HubError(f"{what}: HF_HUB_OFFLINE is set; unset it to reach the Hub") from None
    except LocalEntryNotFoundError as exc:  # snapshot_download: Hub unreachable (or offline) and nothing cached
        cause = exc.__cause__
        reason = f"{type(cause).__name__}: {cause}" if cause else "offline mode and no cached copy"
        raise HubError(f"{what}: cannot reach the Hub ({reason}); check the network and HF_ENDPOINT, "
                       "and unset HF_HUB_OFFLINE") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        hint = {401: "log in with `hf auth login` or set HF_TOKEN", 403: "your token cannot write to this repo",
                404: "check the repo id and tag"}.get(status, "see the Hub's message above")
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise HubError(f"{what}: {first} ({hint})") from None


def _remote_manifest(api: Any, repo: str, revision: str) -> dict[str, Any] | None:
    """manifest.json at `revision`, or None when the repo has none there."""
    from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

    with tempfile.TemporaryDirectory(prefix="rationale-manifest-") as tmp:
        try:
            path = api.hf_hub_download(repo, store.MANIFEST, repo_type=REPO_TYPE, revision=revision, cache_dir=tmp)
        except (EntryNotFoundError, RevisionNotFoundError):
            return None
        try:
            return json.loads(Path(path).read_text())
        except json.JSONDecodeError:
            return None


def publish(
    ref: str | Path,
    repo: str,
    *,
    root: str | Path | None = None,
    private: bool = False,
    dry_run: bool = False,
    api: Any = None,
    endpoint: str | None = None,
) -> PublishResult:
    """Publish a local version to Hub dataset repo `repo` as one commit, then tag it with the version name.

    Args:
        ref: NAME@vN (resolved in the store `root`) or a version folder.
        repo: ORG/NAME on the Hub (created as a dataset repo if missing).
        private: create the repo private (only when it does not exist yet).
        dry_run: verify locally and return the plan; no network.
        api: an `HfApi` to use (default: `HfApi(endpoint=endpoint)`).

    Raises:
        StoreError: the local version fails verification (names the file).
        HubError: the tag exists with different content, or the Hub refused a call.
    """
    problem = repo_id_problem(repo)
    if problem:
        raise HubError(f"--repo {repo!r}: {problem}, e.g. my-org/multiarith-cot")
    folder = store.resolve(ref, root)
    manifest = store.verify(folder)
    tag, digest = manifest["version"], manifest["content_hash"]
    if not ((manifest.get("recipe") or {}).get("store") or {}).get("license"):
        raise HubError(f"{folder}: the version has no license; set store.license in the recipe (a Hub license id "
                       "such as cc-by-4.0 or apache-2.0; check the teacher's and the tasks' terms) and rebuild, then "
                       "publish the new version")
    staged = store.published_copy(folder, manifest, repo)  # README.md names the repo; manifest.json lists it
    paths = sorted([*manifest["files"], store.MANIFEST])
    files = [{"path": p, "bytes": len(staged[p]) if p in staged else (folder / p).stat().st_size,
              "sha256": store.sha256_bytes(staged[p]) if p in staged else manifest["files"][p]["sha256"]}
             for p in paths]
    result = PublishResult(repo=repo, tag=tag, content_hash=digest, status="dry-run", files=files)
    if dry_run:
        return result

    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    api = api or HfApi(endpoint=endpoint)
    _hub_call(f"create {repo}", api.create_repo, repo, repo_type=REPO_TYPE, private=private, exist_ok=True)
    refs = _hub_call(f"list refs of {repo}", api.list_repo_refs, repo, repo_type=REPO_TYPE)
    tags = {t.name: t.target_commit for t in refs.tags}
    if tag in tags:
        remote = _hub_call(f"read {repo}@{tag}", _remote_manifest, api, repo, tag) or {}
        if remote.get("content_hash") == digest:
            logger.info("%s@%s already holds content %s; nothing to do", repo, tag, digest[:12])
            return PublishResult(repo, tag, digest, "unchanged", tags[tag], files)
        raise HubError(f"{repo}: tag {tag} already exists with content hash {str(remote.get('content_hash'))[:12]}, "
                       f"this version has {digest[:12]}; tags are immutable: publish to another repo or delete "
                       "the tag on the Hub first")
    main = next((b.target_commit for b in refs.branches if b.name == "main"), None)
    remote = _hub_call(f"read {repo}@main", _remote_manifest, api, repo, "main") if main else None
    if remote and remote.get("content_hash") == digest:
        commit = main  # an earlier publish committed but did not tag (interrupted): tag that commit
        result.status = "tagged"
    else:
        existing = _hub_call(f"list files of {repo}", api.list_repo_files, repo, repo_type=REPO_TYPE) if main else []
        deleted = sorted(set(existing) - set(paths) - _KEEP_REMOTE)
        operations = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=staged.get(p) or str(folder / p))
                      for p in paths]
        operations += [CommitOperationDelete(path_in_repo=p) for p in deleted]
        info = _hub_call(
            f"commit to {repo}", api.create_commit, repo, operations, repo_type=REPO_TYPE,
            commit_message=f"{manifest['name']} {tag}: {manifest['rows']} rows, content {digest[:12]}",
            commit_description=f"rationale-builder {manifest.get('tool_version')}; content_hash {digest}",
            parent_commit=main,
        )
        commit, result.status, result.deleted = info.oid, "published", deleted
    _hub_call(f"tag {repo}@{tag}", api.create_tag, repo, tag=tag, revision=commit, repo_type=REPO_TYPE,
              tag_message=f"{manifest['name']} {tag} content_hash {digest}")
    result.commit = commit
    logger.info("published %s as %s@%s (commit %s)", folder, repo, tag, str(commit)[:12])
    return result


def parse_repo_ref(ref: str) -> tuple[str, str]:
    """'ORG/NAME@TAG' -> (repo, tag); no tag means 'main'. Both are checked before either becomes a path."""
    repo, at, tag = ref.partition("@")
    problem = repo_id_problem(repo) or (at and not tag and "nothing after '@'") or (tag and tag_problem(tag))
    if problem:
        raise HubError(f"{ref!r}: expected ORG/NAME@TAG, e.g. my-org/multiarith-cot@v1 ({problem})")
    return repo, tag or "main"


def pull(ref: str, dest: str | Path | None = None, *, endpoint: str | None = None) -> Path:
    """Download ORG/NAME@TAG into `dest` (default ./NAME/TAG) and verify every file against its manifest.

    The download lands in a temp folder beside `dest` and is renamed into place only after verification, so a
    rejected download leaves nothing behind. An existing `dest` that verifies as the same tag is reused.

    Raises:
        StoreError: a file is missing, altered or unexpected (names it), or the manifest is for another version.
        HubError: unknown repo or tag, no access, or offline mode.
    """
    from huggingface_hub import snapshot_download

    repo, tag = parse_repo_ref(ref)
    dest = Path(dest) if dest is not None else Path(repo.split("/")[1]) / tag
    if dest.exists() and not dest.is_dir():
        raise StoreError(f"{dest}: exists and is not a folder; remove it or pick another --dest")
    if dest.exists() and any(dest.iterdir()):
        try:
            manifest = store.verify(dest)
        except StoreError as exc:
            raise StoreError(f"{dest}: exists and is not a valid copy ({exc}); remove it or pick another --dest"
                             ) from None
        if tag in ("main", manifest["version"]):
            logger.info("%s already holds %s@%s; verified, nothing downloaded", dest, repo, tag)
            return dest
        raise StoreError(f"{dest}: holds {manifest['version']}, not {tag}; remove it or pick another --dest")
    made = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]  # removed again on failure
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".pull-{dest.name}-{uuid.uuid4().hex[:8]}"
    try:
        _hub_call(f"download {repo}@{tag}", snapshot_download, repo, repo_type=REPO_TYPE, revision=tag,
                  local_dir=tmp, endpoint=endpoint)
        shutil.rmtree(tmp / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping, not the version's
        (tmp / ".gitattributes").unlink(missing_ok=True)  # every Hub repo has one; not part of the version
        try:
            manifest = store.verify(tmp)
        except StoreError as exc:
            raise StoreError(f"{repo}@{tag} rejected: {str(exc).replace(str(tmp) + '/', '')}") from None
        if tag != "main" and store.is_version_name(tag) and manifest["version"] != tag:
            raise StoreError(f"{repo}@{tag} rejected: {store.MANIFEST} says version {manifest['version']}")
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in made:  # innermost first; only folders this pull created, and only while empty
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("pulled %s@%s into %s (content hash %s, all files verified)", repo, tag, dest,
                manifest["content_hash"][:12])
    return dest
