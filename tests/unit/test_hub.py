"""Hub publish and pull.

publish runs huggingface_hub's real HfApi (create_repo, list_repo_refs, create_commit with preupload and the ndjson
commit payload, LFS batch + blob uploads for Parquet/PNG, create_tag) with the network replaced by `FakeHub`, an
in-memory fake behind an httpx MockTransport installed through huggingface_hub's client factory. pull runs the real
`snapshot_download` over HTTP against `FakeGitMirror`, a hand-written fake of the Hub's read side on 127.0.0.1 that
serves tagged git repositories through the endpoints snapshot_download uses (/api/.../revision, /api/.../tree,
/resolve/); olah, a real Hub mirror (PyPI), serves the same repos in the last test, the real read side.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from builder import hub, store
from builder.cli import main
from builder.errors import StoreError
from tests.helpers import TOKEN, FakeHub, build_version, make_ledger


def _api(fake: FakeHub):
    from huggingface_hub import HfApi

    return HfApi(endpoint=fake.endpoint)


def test_fake_hub_publish_is_one_commit_with_every_file_then_a_tag(fake_hub, tmp_path):
    info = build_version(tmp_path / "store")
    result = hub.publish("demo@v1", "org/demo-cot", root=tmp_path / "store", api=_api(fake_hub), private=True)
    assert result.status == "published" and result.tag == "v1"
    commits = [r for r in fake_hub.requests if r["path"].startswith("/api/datasets/org/demo-cot/commit/")]
    tags = [r for r in fake_hub.requests if r["path"].startswith("/api/datasets/org/demo-cot/tag/")]
    assert len(commits) == 1 and len(tags) == 1
    assert fake_hub.requests.index(commits[0]) < fake_hub.requests.index(tags[0])
    assert tags[0]["path"].endswith(f"/tag/{result.commit}") and json.loads(tags[0]["body"])["tag"] == "v1"
    repo = fake_hub.repos["org/demo-cot"]
    assert repo["visibility"] == "private" and repo["type"] == "dataset"
    assert repo["tags"]["v1"] == repo["branches"]["main"] == result.commit
    # the tagged commit holds the version folder byte for byte, but for the card naming the repo and the manifest
    # recording it (with the card's new sha256)
    files = fake_hub.files_at("org/demo-cot", "v1")
    local = {p.relative_to(info.path).as_posix(): p.read_bytes() for p in info.path.rglob("*") if p.is_file()}
    staged = ("README.md", "manifest.json")
    assert {k: v for k, v in files.items() if k not in (".gitattributes", *staged)} == {
        k: v for k, v in local.items() if k not in staged}
    assert b'load_dataset("org/demo-cot"' in files["README.md"] and b"<org>" not in files["README.md"]
    assert json.loads(files["manifest.json"])["published_repo"] == "org/demo-cot"
    # the token came from HF_TOKEN, was sent as a bearer header, and reached no file or output
    calls = [r for r in fake_hub.requests if "/org/demo-cot" in r["path"] or r["path"] == "/api/repos/create"]
    assert len(calls) >= 6 and all(r["auth"] == f"Bearer {TOKEN}" for r in calls)
    assert not any(TOKEN.encode() in b for b in local.values())
    assert TOKEN not in json.dumps(result.__dict__, default=str)


def test_fake_hub_republishing_the_same_version_is_a_no_op(fake_hub, tmp_path):
    build_version(tmp_path / "store")
    first = hub.publish("demo@v1", "org/demo-cot", root=tmp_path / "store", api=_api(fake_hub))
    n = len(fake_hub.requests)
    again = hub.publish("demo@v1", "org/demo-cot", root=tmp_path / "store", api=_api(fake_hub))
    assert again.status == "unchanged" and again.commit == first.commit
    writes = [r for r in fake_hub.requests[n:] if re.search(r"/(commit|tag|preupload)/", r["path"])]
    assert writes == []
    assert len(fake_hub.repos["org/demo-cot"]["commits"]) == 2  # initial + v1


def test_fake_hub_next_version_replaces_files_and_keeps_the_old_tag(fake_hub, tmp_path):
    root = tmp_path / "store"
    build_version(root)  # two tasks: data/<task>/...
    v2 = build_version(root, make_ledger(tasks=("multiarith",), salt="!"))  # one task: data/train-...
    hub.publish("demo@v1", "org/demo-cot", root=root, api=_api(fake_hub))
    result = hub.publish("demo@v2", "org/demo-cot", root=root, api=_api(fake_hub))
    assert result.status == "published" and "data/coin_flip/train-00000-of-00001.parquet" in result.deleted
    files_v2 = set(fake_hub.files_at("org/demo-cot", "v2")) - {".gitattributes"}
    assert files_v2 == {p.relative_to(v2.path).as_posix() for p in v2.path.rglob("*") if p.is_file()}
    v1_manifest = json.loads(fake_hub.files_at("org/demo-cot", "v1")["manifest.json"])
    assert v1_manifest["version"] == "v1"  # the old tag still points at v1's content


def test_fake_hub_tag_with_other_content_is_refused(fake_hub, tmp_path):
    build_version(tmp_path / "a")
    build_version(tmp_path / "b", make_ledger(salt="?"))  # also called v1, other content
    hub.publish("demo@v1", "org/demo-cot", root=tmp_path / "a", api=_api(fake_hub))
    with pytest.raises(hub.HubError, match=r"tag v1 already exists with content hash .* tags are immutable"):
        hub.publish("demo@v1", "org/demo-cot", root=tmp_path / "b", api=_api(fake_hub))


def _legacy_revert(source: Path, version: str) -> Path:
    """The version folder the store wrote before issue 25 when a build reverted to older content (v1 X, v2 Y, then a
    v3 whose content hash is X again): v1's rows and recipe as `version`, with its own card and manifest. Made by
    hand, since the store no longer writes one; remote repos and old stores may still hold such versions."""
    import shutil

    from builder.card import write_card

    rows, manifest = store.read_version(source)
    dest = source.parent / version
    shutil.copytree(source, dest)
    for f in dest.rglob("*"):
        if f.is_file():
            f.chmod(0o644)
    manifest = {k: v for k, v in manifest.items() if k not in ("files", "manifest_sha256")} | {"version": version}
    write_card(dest, rows, manifest)
    manifest["files"] = {f.relative_to(dest).as_posix(): {"sha256": store.sha256_file(f), "bytes": f.stat().st_size}
                         for f in sorted(dest.rglob("*")) if f.is_file() and f.name != store.MANIFEST}
    manifest["manifest_sha256"] = store.manifest_digest(manifest)
    (dest / store.MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False, default=str) + "\n")
    checked = store.verify(dest)
    assert (checked["version"], checked["content_hash"]) == (version, store.verify(source)["content_hash"])
    return dest


def _reverted_store(root: Path) -> dict[str, str]:
    """v1 (content X), v2 (Y), v3 (X again) in one local store; returns version -> content hash."""
    v1 = build_version(root)
    v2 = build_version(root, make_ledger(salt="!"))
    _legacy_revert(v1.path, "v3")
    return {"v1": v1.content_hash, "v2": v2.content_hash, "v3": v1.content_hash}


@pytest.mark.parametrize("order", [("v1", "v3"), ("v3", "v1")], ids=["v1-then-v3", "v3-then-v1"])
def test_fake_hub_a_version_with_anothers_content_gets_its_own_commit_and_pulls_back(fake_hub, tmp_path, order):
    """Publishing v3 (content X) while main holds v1 (X), or the other way round, must not tag the commit whose
    manifest names the other version: `pull @v3` would refuse that tag forever."""
    root = tmp_path / "store"
    hashes = _reverted_store(root)
    results = {v: hub.publish(f"demo@{v}", "org/demo-cot", root=root, api=_api(fake_hub)) for v in order}
    repo = fake_hub.repos["org/demo-cot"]
    assert repo["tags"][order[0]] != repo["tags"][order[1]]
    for version in order:
        remote = json.loads(fake_hub.files_at("org/demo-cot", version)["manifest.json"])
        assert (remote["version"], remote["content_hash"]) == (version, hashes[version])
        assert results[version].status == "published" and results[version].commit == repo["tags"][version]
        dest = hub.pull(f"org/demo-cot@{version}", tmp_path / "pulled" / version, endpoint=fake_hub.endpoint)
        assert (store.verify(dest)["version"], store.verify(dest)["content_hash"]) == (version, hashes[version])
    # publishing either again is still a no-op
    n = len(fake_hub.requests)
    assert all(hub.publish(f"demo@{v}", "org/demo-cot", root=root, api=_api(fake_hub)).status == "unchanged"
               for v in order)
    assert not [r for r in fake_hub.requests[n:] if re.search(r"/(commit|tag|preupload)/", r["path"])]


def test_fake_hub_an_existing_tag_naming_another_version_is_refused(fake_hub, tmp_path):
    """A repo where an older publish tagged v3 on v1's commit (same content hash): publishing v3 again must say so,
    naming the repo, the tag, both versions and both content hashes, and write nothing."""
    root = tmp_path / "store"
    hashes = _reverted_store(root)
    api = _api(fake_hub)
    first = hub.publish("demo@v1", "org/demo-cot", root=root, api=api)
    api.create_tag("org/demo-cot", tag="v3", revision=first.commit, repo_type="dataset")  # what the old code did
    n = len(fake_hub.requests)
    with pytest.raises(hub.HubError) as caught:
        hub.publish("demo@v3", "org/demo-cot", root=root, api=api)
    message = str(caught.value)
    x = hashes["v1"][:12]
    assert re.search(rf"^org/demo-cot: tag v3 already exists with content hash {x} \(demo v1\); this version is "
                     rf"demo v3 with content hash {x}", message), message
    assert "tags are immutable" in message and "delete" in message
    assert not [r for r in fake_hub.requests[n:] if re.search(r"/(commit|tag|preupload)/", r["path"])]
    assert fake_hub.repos["org/demo-cot"]["tags"]["v3"] == first.commit
    # a tag on a commit with no manifest at all (here the repo's first commit) is refused as well, and says so
    initial = next(oid for oid, c in fake_hub.repos["org/demo-cot"]["commits"].items() if c["parent"] is None)
    api.create_tag("org/demo-cot", tag="v2", revision=initial, repo_type="dataset")
    with pytest.raises(hub.HubError, match=rf"^org/demo-cot: tag v2 already exists with no readable manifest.json; "
                       rf"this version is demo v2 with content hash {hashes['v2'][:12]}; tags are immutable"):
        hub.publish("demo@v2", "org/demo-cot", root=root, api=api)


def _downloads(fake: FakeHub, since: int) -> list[str]:
    """Paths of the files fetched through /resolve/ after request `since` (GET only; manifest reads included)."""
    return [r["path"].split("/resolve/", 1)[1].split("/", 1)[1] for r in fake.requests[since:]
            if r["method"] == "GET" and "/resolve/" in r["path"]]


def test_fake_hub_pull_of_main_downloads_again_when_main_moved(fake_hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    root = tmp_path / "store"
    v1 = build_version(root)
    v2 = build_version(root, make_ledger(salt="!"))
    api = _api(fake_hub)
    hub.publish("demo@v1", "org/demo-cot", root=root, api=api)
    dest = tmp_path / "pulled" / "main"
    assert hub.pull("org/demo-cot", dest, endpoint=fake_hub.endpoint) == dest  # no revision: main
    assert store.verify(dest)["content_hash"] == v1.content_hash
    hub.publish("demo@v2", "org/demo-cot", root=root, api=api)
    n = len(fake_hub.requests)
    assert hub.pull("org/demo-cot@main", dest, endpoint=fake_hub.endpoint) == dest
    m = store.verify(dest)
    assert (m["version"], m["content_hash"]) == ("v2", v2.content_hash)
    assert set(_folder_files(dest)) <= set(_downloads(fake_hub, n))  # every file of v2 came from the Hub
    assert _folder_files(dest) == {k: v for k, v in fake_hub.files_at("org/demo-cot", "v2").items()
                                   if k != ".gitattributes"}
    assert sorted(p.name for p in dest.parent.iterdir()) == ["main"]  # no temp or old copy left beside it
    # main unchanged: only its manifest is read, the verified copy is kept
    n = len(fake_hub.requests)
    assert hub.pull("org/demo-cot@main", dest, endpoint=fake_hub.endpoint) == dest
    assert _downloads(fake_hub, n) == ["manifest.json"]
    with monkeypatch.context() as offline:  # main cannot be checked offline: said, and the copy is left as it is
        offline.setattr(constants, "HF_HUB_OFFLINE", True)
        with pytest.raises(hub.HubError, match=r"read org/demo-cot@main: cannot reach the Hub \(OfflineModeIsEnabled"):
            hub.pull("org/demo-cot@main", dest, endpoint=fake_hub.endpoint)
    assert store.verify(dest)["version"] == "v2"
    # a version tag is immutable: a verified copy of it is reused without asking the Hub
    tagged = hub.pull("org/demo-cot@v1", tmp_path / "pulled" / "v1", endpoint=fake_hub.endpoint)
    n = len(fake_hub.requests)
    assert hub.pull("org/demo-cot@v1", tagged, endpoint=fake_hub.endpoint) == tagged
    assert fake_hub.requests[n:] == []


def test_fake_hub_pull_of_main_never_replaces_a_folder_that_is_not_a_copy_of_that_repo(fake_hub, tmp_path):
    """--dest pointing at a local store version (or another repo's copy) that differs from main: refused, untouched."""
    root = tmp_path / "store"
    v1 = build_version(root)
    hub.publish("demo@v1", "org/demo-cot", root=root, api=_api(fake_hub))
    v2 = build_version(root, make_ledger(salt="!"))
    before = _folder_files(v2.path)
    with pytest.raises(StoreError, match=rf"{re.escape(str(v2.path))}: holds demo v2 \(content hash "
                       rf"{v2.content_hash[:12]}.*org/demo-cot@main holds demo v1 \(content hash "
                       rf"{v1.content_hash[:12]}.*pick another --dest"):
        hub.pull("org/demo-cot@main", v2.path, endpoint=fake_hub.endpoint)
    assert _folder_files(v2.path) == before


def test_fake_hub_interrupted_publish_only_adds_the_missing_tag(fake_hub, tmp_path):
    build_version(tmp_path / "store")
    api = _api(fake_hub)
    real_create_tag = api.create_tag
    api.create_tag = lambda *a, **k: (_ for _ in ()).throw(ConnectionError("network down"))
    with pytest.raises(ConnectionError):
        hub.publish("demo@v1", "org/demo-cot", root=tmp_path / "store", api=api)
    api.create_tag = real_create_tag
    result = hub.publish("demo@v1", "org/demo-cot", root=tmp_path / "store", api=api)
    assert result.status == "tagged"
    assert len(fake_hub.repos["org/demo-cot"]["commits"]) == 2  # no second commit of the same content


def test_fake_hub_cli_dry_run_sends_nothing_and_publish_prints_the_tag(fake_hub, tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    info = build_version(tmp_path / "store")
    monkeypatch.setattr(constants, "ENDPOINT", fake_hub.endpoint)
    assert main(["publish", "demo@v1", "--repo", "org/demo-cot", "--store", str(tmp_path / "store"),
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert fake_hub.requests == []
    assert "would commit 7 files" in out and "then tag v1" in out and "data/multiarith/train-00000" in out
    assert main(["publish", "demo@v1", "--repo", "org/demo-cot", "--store", str(tmp_path / "store")]) == 0
    out = capsys.readouterr()
    assert "published org/demo-cot@v1: 7 files" in out.out and info.content_hash[:12] in out.out
    assert TOKEN not in out.out + out.err
    assert main(["publish", "demo@v1", "--repo", "org/demo-cot", "--store", str(tmp_path / "store")]) == 0
    assert "nothing to publish" in capsys.readouterr().out


def test_fake_hub_publish_refuses_a_corrupt_local_version(fake_hub, tmp_path):
    info = build_version(tmp_path / "store")
    readme = info.path / "README.md"
    readme.chmod(0o644)
    readme.write_text(readme.read_text() + "edited by hand\n")
    with pytest.raises(StoreError, match="README.md: sha256"):
        hub.publish(info.path, "org/demo-cot", api=_api(fake_hub))
    assert fake_hub.requests == []


def _list_outside_file(version: Path, outside: Path) -> str:
    """Add `outside` (with its real sha256) to the version's manifest and recompute the manifest's digest."""
    path = version / "manifest.json"
    m = json.loads(path.read_text())
    rel = os.path.relpath(outside, version)
    m["files"][rel] = {"sha256": store.sha256_file(outside), "bytes": outside.stat().st_size}
    m["manifest_sha256"] = store.manifest_digest(m)
    path.chmod(0o644)
    path.write_text(json.dumps(m))
    return rel


def test_fake_hub_publish_refuses_a_manifest_listing_a_file_outside_the_version(fake_hub, tmp_path):
    info = build_version(tmp_path / "store")
    secret = tmp_path / "secret.txt"
    secret.write_text("a file elsewhere on the machine")
    rel = _list_outside_file(info.path, secret)
    for dry_run in (True, False):
        with pytest.raises(StoreError, match=rf"files lists {re.escape(repr(rel))}, a path outside the version"):
            hub.publish(info.path, "org/demo-cot", api=_api(fake_hub), dry_run=dry_run)
    assert fake_hub.requests == []


@pytest.mark.parametrize("repo", ["good", "org/my good", "org/../x", "org/caf\u00e9", "a..b/c", "org/x/y", "org/",
                                  "org/-x"])
def test_publish_refuses_repo_ids_the_hub_would_refuse(fake_hub, tmp_path, repo):
    info = build_version(tmp_path / "store")
    with pytest.raises(hub.HubError, match=rf"--repo {re.escape(repr(repo))}: "):
        hub.publish(info.path, repo, api=_api(fake_hub), dry_run=True)
    assert fake_hub.requests == []


@pytest.mark.parametrize("ref", ["org/demo@../../x", "org/demo@v1/../../x", "org/demo@", "org/../demo@v1",
                                 "org/de mo@v1", "org/demo@.."])
def test_pull_refuses_refs_and_tags_before_they_become_paths(tmp_path, monkeypatch, ref):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(hub.HubError, match="expected ORG/NAME@TAG"):
        hub.pull(ref)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- read-only local mirror (git repos over HTTP)
def _git(repo: Path, *args: str, data: bytes | None = None) -> bytes:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "HOME": str(repo), "PATH": "/usr/bin:/bin"}
    return subprocess.run(["git", "-C", str(repo), *args], input=data, capture_output=True, check=True, env=env).stdout


class FakeGitMirror(ThreadingHTTPServer):
    """A fake of the Hub's read side: serves <root>/datasets/<org>/<name> git repositories read-only, the way
    olah's local mirror does (olah itself runs in test_pull_through_olah_serving_local_git_mirrors)."""

    def __init__(self, root: Path):
        self.root = root
        super().__init__(("127.0.0.1", 0), _MirrorHandler)
        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}"


class _MirrorHandler(BaseHTTPRequestHandler):
    server: FakeGitMirror

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, data, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _resolve(self, repo_id: str, rev: str) -> tuple[Path, str] | None:
        repo = self.server.root / "datasets" / repo_id
        if not repo.is_dir():
            self._json({"error": "Repository not found"}, 404, {"X-Error-Code": "RepoNotFound"})
            return None
        try:
            oid = _git(repo, "rev-parse", "--verify", f"{unquote(rev)}^{{commit}}").decode().strip()
        except subprocess.CalledProcessError:
            self._json({"error": f"Invalid rev id: {rev}"}, 404, {"X-Error-Code": "RevisionNotFound"})
            return None
        return repo, oid

    def _tree(self, repo: Path, oid: str) -> list[dict]:
        out = []
        for line in _git(repo, "ls-tree", "-r", "-l", oid).decode().splitlines():
            meta, path = line.split("\t", 1)
            _, _, blob, size = meta.split()
            out.append({"type": "file", "path": path, "size": int(size), "oid": blob})
        return out

    def do_HEAD(self) -> None:
        self.do_GET(head=True)

    def do_GET(self, head: bool = False) -> None:
        path = urlparse(self.path).path
        m = re.match(r"^/api/datasets/([^/]+/[^/]+)/(revision|tree)/([^/]+)(/.*)?$", path)
        if m:
            found = self._resolve(m.group(1), m.group(3))
            if found:
                repo, oid = found
                tree = self._tree(repo, oid)
                if m.group(2) == "tree":
                    return self._json(tree)
                return self._json({"id": m.group(1), "sha": oid, "private": False,
                                   "siblings": [{"rfilename": f["path"]} for f in tree]})
            return None
        m = re.match(r"^/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if m:
            found = self._resolve(m.group(1), m.group(2))
            if found:
                repo, oid = found
                entry = next((f for f in self._tree(repo, oid) if f["path"] == unquote(m.group(3))), None)
                if entry is None:
                    return self._json({"error": "Entry not found"}, 404, {"X-Error-Code": "EntryNotFound"})
                body = _git(repo, "cat-file", "blob", entry["oid"])
                return self._send(200, body, {"X-Repo-Commit": oid, "ETag": f'"{entry["oid"]}"'}, head=head)
            return None
        return self._json({"error": f"no route {path}"}, 404)

    def do_POST(self) -> None:
        self._json({"error": "read-only mirror"}, 405)


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A running read-only mirror; `publish_to(repo_id, version_dir, tag)` commits a folder and tags it."""
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    _http.set_client_factory(_http.default_client_factory)
    server = FakeGitMirror(tmp_path / "mirror")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def publish_to(repo_id: str, files: dict[str, bytes], tag: str, *, force: bool = False) -> None:
        repo = server.root / "datasets" / repo_id
        if not repo.is_dir():
            repo.mkdir(parents=True)
            _git(repo, "init", "-q", "-b", "main")
        for rel in _git(repo, "ls-files").decode().splitlines():
            (repo / rel).unlink()
        for rel, content in files.items():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            (repo / rel).write_bytes(content)
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", f"publish {tag}")
        _git(repo, "tag", *(["-f"] if force else []), tag)

    server.publish_to = publish_to
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def _folder_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_pull_from_local_mirror_downloads_and_verifies_every_file(mirror, tmp_path):
    info = build_version(tmp_path / "store")
    mirror.publish_to("org/demo-cot", _folder_files(info.path), "v1")
    dest = hub.pull("org/demo-cot@v1", tmp_path / "pulled" / "v1", endpoint=mirror.endpoint)
    assert _folder_files(dest) == _folder_files(info.path)  # no .cache or temp leftovers either
    assert store.verify(dest)["content_hash"] == info.content_hash
    rows, _ = store.read_version(dest)
    assert rows.height == 16
    import datasets

    ds = datasets.load_dataset(str(dest), "coin_flip", split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert ds.num_rows == 8
    # pulling again into the verified copy downloads nothing and returns it
    assert hub.pull("org/demo-cot@v1", dest, endpoint=mirror.endpoint) == dest


def test_pull_rejects_a_tampered_file_and_names_it(mirror, tmp_path):
    info = build_version(tmp_path / "store")
    files = _folder_files(info.path)
    target = "data/multiarith/train-00000-of-00001.parquet"
    files[target] = files[target].replace(b"Sample 1 reasons", b"Sample 1 REASONS")
    mirror.publish_to("org/demo-cot", files, "v1")
    dest = tmp_path / "pulled"
    with pytest.raises(StoreError, match=rf"org/demo-cot@v1 rejected: {re.escape(target)}: sha256 .* does not match"):
        hub.pull("org/demo-cot@v1", dest, endpoint=mirror.endpoint)
    assert not dest.exists() and not list(tmp_path.glob(".pull-*"))


def test_pull_of_the_round_trip_from_a_fake_hub_publish(fake_hub, mirror, tmp_path):
    """What publish sent (recorded by the fake Hub) is what a mirror serves back, and it verifies."""
    import httpx2
    from huggingface_hub.utils import _http

    info = build_version(tmp_path / "store")
    _http.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(fake_hub.handler)))
    hub.publish("demo@v1", "org/demo-cot", root=tmp_path / "store", api=_api(fake_hub))
    _http.set_client_factory(_http.default_client_factory)
    mirror.publish_to("org/demo-cot", fake_hub.files_at("org/demo-cot", "v1"), "v1")
    dest = hub.pull("org/demo-cot@v1", tmp_path / "copy", endpoint=mirror.endpoint)
    assert store.verify(dest)["content_hash"] == info.content_hash


def test_pull_errors_name_the_repo_and_tag(mirror, tmp_path):
    info = build_version(tmp_path / "store")
    mirror.publish_to("org/demo-cot", _folder_files(info.path), "v1")
    with pytest.raises(hub.HubError, match=r"download org/demo-cot@v9: .*check the repo id and tag"):
        hub.pull("org/demo-cot@v9", tmp_path / "x", endpoint=mirror.endpoint)
    with pytest.raises(hub.HubError, match="expected ORG/NAME@TAG"):
        hub.pull("demo-cot", tmp_path / "x")
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(hub.HubError, match=r"download org/demo-cot@v1: cannot reach the Hub \(ConnectError"):
        hub.pull("org/demo-cot@v1", tmp_path / "y", endpoint=closed)
    assert not (tmp_path / "y").exists()
    with pytest.raises(hub.HubError, match=r"download org/demo-cot@v9"):  # folders it made for --dest go again
        hub.pull("org/demo-cot@v9", tmp_path / "new" / "nested" / "v9", endpoint=mirror.endpoint)
    assert not (tmp_path / "new").exists()


def test_pull_refuses_a_manifest_listing_a_file_outside_the_download(mirror, tmp_path):
    """A published manifest naming ../../<a file on this machine> with that file's real hash must not verify."""
    info = build_version(tmp_path / "store")
    secret = tmp_path / "secret.txt"
    secret.write_text("a file elsewhere on the machine")
    dest = tmp_path / "a" / "b" / "pulled"
    _list_outside_file(info.path, secret)
    files = _folder_files(info.path)
    mirror.publish_to("org/demo-cot", files, "v1")
    with pytest.raises(StoreError, match=r"org/demo-cot@v1 rejected: .*a path outside the version folder"):
        hub.pull("org/demo-cot@v1", dest, endpoint=mirror.endpoint)
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob("**/.pull-*"))


def test_cli_pull_in_a_fresh_process_against_the_mirror(mirror, tmp_path):
    """`rationale pull` as a user runs it: HF_ENDPOINT points at the mirror, default destination ./NAME/TAG."""
    import os
    import sys

    info = build_version(tmp_path / "store")
    mirror.publish_to("org/demo-cot", _folder_files(info.path), "v1")
    env = {**os.environ, "HF_ENDPOINT": mirror.endpoint, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf")}
    run = subprocess.run([sys.executable, "-m", "builder", "pull", "org/demo-cot@v1"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "16 rows, 6 files verified" in run.stdout
    assert store.verify(tmp_path / "demo-cot" / "v1")["content_hash"] == info.content_hash
    files = _folder_files(info.path)
    files["README.md"] += b"\n<!-- edited on the mirror -->\n"
    mirror.publish_to("org/demo-cot", files, "v1", force=True)
    run = subprocess.run([sys.executable, "-m", "builder", "pull", "org/demo-cot@v1", "--dest", "again"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].startswith("error: org/demo-cot@v1 rejected: README.md: sha256")


def _olah_cli() -> str | None:
    import os
    import shutil

    return os.environ.get("RATIONALE_OLAH_CLI") or shutil.which("olah-cli")


@pytest.mark.skipif(_olah_cli() is None, reason="olah not installed: pip install olah in a separate venv (it pins "
                    "psutil<6 and a newer fastapi than vLLM's) and set RATIONALE_OLAH_CLI=<venv>/bin/olah-cli; "
                    "the same pull path is covered by FakeGitMirror above")
def test_pull_through_olah_serving_local_git_mirrors(mirror, tmp_path):
    """Interop with olah, the PyPI Hub mirror, serving the same git repos offline."""
    import socket
    import time
    import urllib.request

    info = build_version(tmp_path / "store")
    mirror.publish_to("org/demo-cot", _folder_files(info.path), "v1")
    files = _folder_files(info.path)
    target = "data/coin_flip/train-00000-of-00001.parquet"
    files[target] = files[target].replace(b"Sample 2 reasons", b"Sample 2 REASONS")
    mirror.publish_to("org/demo-cot", files, "tampered")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = tmp_path / "olah.toml"
    config.write_text(f'[basic]\nhost = "127.0.0.1"\nport = {port}\nrepos-path = "{tmp_path / "olah-repos"}"\n'
                      f'mirrors-path = ["{mirror.root}"]\n[accessibility]\noffline = true\n')
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([_olah_cli(), "-c", str(config)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{endpoint}/api/datasets/org/demo-cot/revision/v1", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        dest = hub.pull("org/demo-cot@v1", tmp_path / "pulled", endpoint=endpoint)
        assert store.verify(dest)["content_hash"] == info.content_hash
        with pytest.raises(StoreError, match=rf"org/demo-cot@tampered rejected: {re.escape(target)}: sha256"):
            hub.pull("org/demo-cot@tampered", tmp_path / "bad", endpoint=endpoint)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_fake_hub_republishing_a_reverted_version_warns_that_main_serves_another(fake_hub, tmp_path, caplog):
    """v1 (X), v2 (Y) published; the recipe goes back to X and the build reports v1: publishing v1 again changes
    nothing on the Hub, and says that main (what `pull ORG/NAME` and load_dataset give) still holds v2."""
    import logging

    root = tmp_path / "store"
    build_version(root)
    build_version(root, make_ledger(salt="!"))
    for version in ("v1", "v2"):
        hub.publish(f"demo@{version}", "org/demo-cot", root=root, api=_api(fake_hub))
    assert build_version(root).version == "v1"
    with caplog.at_level(logging.WARNING, logger="builder.hub"):
        again = hub.publish("demo@v1", "org/demo-cot", root=root, api=_api(fake_hub))
    assert again.status == "unchanged"
    assert re.search(r"org/demo-cot: main holds content hash [0-9a-f]{12} \(demo v2\), not this version: .*"
                     r"pull org/demo-cot@v1 for this one", caplog.text), caplog.text
