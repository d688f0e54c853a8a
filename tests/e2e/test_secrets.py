"""Secrets never reach disk or output: a build and a publish with an HF token and API keys in the environment, then a
byte scan of every file written (run dir, store, card, manifest, logs) and of everything the CLI printed or logged.

The OpenAI-compatible teacher's key is also checked against a real vLLM server in
tests/integration/test_sample_openai.py (slow).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from builder.cli import main
from tests.helpers import ROOT, TOKEN, write_import_recipe

OPENAI_KEY = "sk-fake-openai-4c3b2a1f0e9d8c7b"
TEACHER_KEY = "sk-fake-teacher-key-0a1b2c3d4e5f"


def files_containing(root: Path, needles: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits = [n for n in needles if n.encode() in data]
            if hits:
                found[str(path)] = hits
    return found


def test_tokens_and_api_keys_never_reach_files_logs_cards_or_manifests(fake_hub, tmp_path, benchmarks_dir,
                                                                       teacher_completions_dir, monkeypatch,
                                                                       capsys, caplog):
    from huggingface_hub import constants

    secrets = [TOKEN, OPENAI_KEY, TEACHER_KEY]
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("RATIONALE_TEACHER_KEY", TEACHER_KEY)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(constants, "ENDPOINT", fake_hub.endpoint)
    completions = teacher_completions_dir / "multiarith.jsonl"
    recipe = write_import_recipe(tmp_path / "recipe.yaml", benchmarks_dir, completions, name="secrets-demo",
                                 limit=40, teacher={"api_key_env": "RATIONALE_TEACHER_KEY"},
                                 store={"root": "store", "license": "cc-by-4.0"})
    # The build in its own process with --debug (every logger at DEBUG), its output kept as a log file.
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    log = tmp_path / "build.log"
    with open(log, "w") as fh:
        done = subprocess.run([sys.executable, "-m", "builder", "build", str(recipe), "--debug"], cwd=ROOT, env=env,
                              stdout=fh, stderr=subprocess.STDOUT, timeout=300)
    assert done.returncode == 0, log.read_text()[-3000:]
    assert "wrote secrets-demo v1" in log.read_text()

    # Publish through the real HfApi to the fake Hub, and show the version, in-process with logs at DEBUG.
    caplog.set_level(logging.DEBUG)
    store = tmp_path / "store"
    assert main(["publish", "secrets-demo@v1", "--repo", "org/secrets-demo", "--store", str(store)]) == 0
    assert main(["show", "secrets-demo@v1", "--store", str(store), "--json"]) == 0
    assert main(["versions", "secrets-demo", "--store", str(store)]) == 0
    out = capsys.readouterr()
    (tmp_path / "cli.log").write_text(out.out + out.err + caplog.text)

    # The token was really used (sent as a bearer header), so the scan below is not vacuous ...
    auth = {r["auth"] for r in fake_hub.requests if r["path"].startswith(("/api/datasets/org", "/api/repos"))}
    assert auth == {f"Bearer {TOKEN}"}
    manifest = json.loads((store / "secrets-demo" / "v1" / "manifest.json").read_text())
    assert manifest["recipe"]["teacher"]["api_key_env"] == "RATIONALE_TEACHER_KEY"  # the name, never the value
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert {"runs/secrets-demo/stats.json", "store/secrets-demo/v1/README.md", "store/secrets-demo/v1/manifest.json",
            "store/secrets-demo/versions.json", "build.log", "cli.log"} <= written

    # ... and no secret is in any file written here, in what the Hub received, or in what the CLI printed.
    assert files_containing(tmp_path, secrets) == {}
    pushed = fake_hub.repos["org/secrets-demo"]["commits"]
    assert not [p for c in pushed.values() for p, data in c["files"].items()
                if any(s.encode() in data for s in secrets)]
    bodies = b"".join(r["body"] or b"" for r in fake_hub.requests)
    assert not [s for s in secrets if s.encode() in bodies]
