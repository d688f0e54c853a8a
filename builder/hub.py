"""Hub: publish a dataset version as one commit plus a tag, and pull a tagged version back with hash checks.

publish: version folder -> one `HfApi.create_commit` holding every file (and deleting files of an older version
that this one lacks), then `HfApi.create_tag` named after the version (v1, v2, ...). A tag only ever lands on a
commit whose manifest.json names that very version (name, version and content hash): publish reads the manifest at
an existing tag of that name (same version: nothing to do; another one, even with the same content hash: refused)
and at the head it might tag (an interrupted publish of this version: tag it; anything else, including another
version with this content hash: commit this version's own files). So `main` holds the version whose first publish
came last; re-publishing a version already tagged changes nothing and warns when main holds another one (after a
revert, `pull ORG/NAME@vN` gives the reverted version). The token comes from huggingface_hub itself
(HF_TOKEN or `hf auth login`); this module never reads, prints or stores it.

pull: `snapshot_download(revision=tag)` into a temp folder beside the destination, `store.verify` every file
against manifest.json, then rename into place; a tampered file is rejected with its name. A verified copy already
at the destination is reused for a version tag (immutable); for a branch (main) or any other revision it is reused
only while the remote manifest names the same version and content hash, else downloaded again and replaced.
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
    """manifest.json at `revision`, or None when the Hub says the repo has none there.

    Only the Hub's own "no such file/revision" answers mean None: an unreachable Hub or offline mode (which
    huggingface_hub reports as a *local* entry not found) raises, so that neither publish nor pull mistakes "could
    not ask" for "holds no manifest" (`_hub_call` turns it into a HubError)."""
    from huggingface_hub.errors import RemoteEntryNotFoundError, RevisionNotFoundError

    with tempfile.TemporaryDirectory(prefix="rationale-manifest-") as tmp:
        try:
            path = api.hf_hub_download(repo, store.MANIFEST, repo_type=REPO_TYPE, revision=revision, cache_dir=tmp)
        except (RemoteEntryNotFoundError, RevisionNotFoundError):
            return None
        try:
            return json.loads(Path(path).read_text())
        except json.JSONDecodeError:
            return None


_IDENTITY = ("name", "version", "content_hash")


def _same_version(remote: dict[str, Any] | None, manifest: dict[str, Any]) -> bool:
    """Whether a remote manifest names the same version as `manifest`: dataset name, version and content hash."""
    return remote is not None and all(remote.get(k) == manifest[k] for k in _IDENTITY)


def _describe(m: dict[str, Any] | None) -> str:
    """'content hash 1a2b3c4d5e6f (demo v1)' for error messages; a missing manifest says so."""
    if m is None:
        return f"no readable {store.MANIFEST}"
    return f"content hash {str(m.get('content_hash'))[:12]} ({m.get('name')} {m.get('version')})"


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
        HubError: the tag exists on a commit whose manifest names another version or content (both named), or the
            Hub refused a call.
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
    if tag in tags:  # read at the commit the tag points to, the one `pull @tag` downloads
        remote = _hub_call(f"read {repo}@{tag}", _remote_manifest, api, repo, tags[tag])
        if _same_version(remote, manifest):
            logger.info("%s@%s already holds %s %s (content %s); nothing to do", repo, tag, manifest["name"], tag,
                        digest[:12])
            head = next((b.target_commit for b in refs.branches if b.name == "main"), None)
            served = _hub_call(f"read {repo}@main", _remote_manifest, api, repo, head) if head else None
            if served is not None and not _same_version(served, manifest):  # e.g. a revert to an older version
                logger.warning("%s: main holds %s, not this version: `pull %s` and load_dataset(%r) give that one; "
                               "pull %s@%s for this one (main only moves when a version is first published)", repo,
                               _describe(served), repo, repo, repo, tag)
            return PublishResult(repo, tag, digest, "unchanged", tags[tag], files)
        same_content = remote is not None and remote.get("content_hash") == digest
        why = f"; the tag names another version's content, so `pull {repo}@{tag}` refuses it" if same_content else ""
        raise HubError(f"{repo}: tag {tag} already exists with {_describe(remote)}; this version is "
                       f"{manifest['name']} {tag} with content hash {digest[:12]}{why}; tags are immutable: publish "
                       f"to another repo, or delete the tag on the Hub first (HfApi().delete_tag({repo!r}, "
                       f"tag={tag!r}, repo_type='dataset')) and publish again")
    main = next((b.target_commit for b in refs.branches if b.name == "main"), None)
    # read at the head commit itself (not "main", which may move meanwhile): it is the commit tagged below
    remote = _hub_call(f"read {repo}@main", _remote_manifest, api, repo, main) if main else None
    if _same_version(remote, manifest):
        commit = main  # an earlier publish of this very version committed but did not tag (interrupted): tag it
        result.status = "tagged"
    else:  # another version, even one with this content hash (a revert), gets this version's own commit
        if remote is not None and remote.get("content_hash") == digest:
            logger.info("%s@main holds %s %s with the same content hash %s; committing %s %s as its own commit so "
                        "that tag %s names it", repo, remote.get("name"), remote.get("version"), digest[:12],
                        manifest["name"], tag, tag)
        existing = _hub_call(f"list files of {repo}", api.list_repo_files, repo, repo_type=REPO_TYPE,
                             revision=main) if main else []
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
    rejected download leaves nothing behind. An existing `dest` that verifies is reused when TAG is a version tag
    (v1, v2, ...: immutable) it holds; for a branch (main, the default) or any other revision, only while the remote
    manifest there names the same version and content hash. When it does not, and `dest` is a copy pulled from this
    repo, the new download replaces it once verified; any other folder is left alone and refused.

    Raises:
        StoreError: a file is missing, altered or unexpected (names it), the manifest is for another version, or
            `dest` holds something else that this pull will not replace (names both).
        HubError: unknown repo or tag, no access, or offline mode.
    """
    from huggingface_hub import HfApi, snapshot_download

    repo, tag = parse_repo_ref(ref)
    dest = Path(dest) if dest is not None else Path(repo.split("/")[1]) / tag
    if dest.exists() and not dest.is_dir():
        raise StoreError(f"{dest}: exists and is not a folder; remove it or pick another --dest")
    stale: dict[str, Any] | None = None  # the verified copy at dest that this pull replaces (a branch moved on)
    if dest.exists() and any(dest.iterdir()):
        try:
            local = store.verify(dest)
        except StoreError as exc:
            raise StoreError(f"{dest}: exists and is not a valid copy ({exc}); remove it or pick another --dest"
                             ) from None
        if store.is_version_name(tag):  # a version tag never moves: a verified copy of it stays current
            if local["version"] == tag:
                logger.info("%s already holds %s@%s; verified, nothing downloaded", dest, repo, tag)
                return dest
            raise StoreError(f"{dest}: holds {local['version']}, not {tag}; remove it or pick another --dest")
        # a branch (main) or another revision that may move: the copy is current only while it names what the
        # remote holds there now
        remote = _hub_call(f"read {repo}@{tag}", _remote_manifest, HfApi(endpoint=endpoint), repo, tag)
        if _same_version(remote, local):
            logger.info("%s already holds %s@%s (%s %s, content hash %s); verified, nothing downloaded", dest, repo,
                        tag, local["name"], local["version"], local["content_hash"][:12])
            return dest
        if local.get("published_repo") != repo:  # a local store version, or another repo's copy: never replaced
            origin = (f"a copy of {local['published_repo']}" if local.get("published_repo") else
                      "not a copy pulled from the Hub")
            there = (f"{remote['name']} {remote['version']} (content hash {str(remote['content_hash'])[:12]})"
                     if remote else f"no readable {store.MANIFEST}")
            raise StoreError(f"{dest}: holds {local['name']} {local['version']} (content hash "
                             f"{local['content_hash'][:12]}, {origin}), while {repo}@{tag} holds {there}; not "
                             "replacing it: remove it or pick another --dest")
        stale = local
        logger.info("%s holds %s %s (content hash %s) but %s@%s has moved on; downloading it again", dest,
                    local["name"], local["version"], local["content_hash"][:12], repo, tag)
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
        if stale is None:
            tmp.rename(dest)
        else:  # swap the verified download in; the old copy goes only once the new one is in place
            old = dest.parent / f".pull-old-{dest.name}-{uuid.uuid4().hex[:8]}"
            dest.rename(old)
            try:
                tmp.rename(dest)
            except BaseException:
                old.rename(dest)
                raise
            shutil.rmtree(old, ignore_errors=True)
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
