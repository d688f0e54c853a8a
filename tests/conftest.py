"""Shared fixtures: the ../shared material, a tiny local model, and one vLLM engine for the whole test run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("RATIONALE_SHARED_DIR", ROOT.parent / "shared"))
CACHE = Path(os.environ.get("RATIONALE_TEST_CACHE", ROOT / ".cache" / "tests"))

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


TIERS = ("unit", "integration", "e2e")
# Fixtures a unit test may not use: each starts a model, an engine or a cluster (the unit tier runs in minutes).
HEAVY = {"tiny_model_dir", "reasoning_model", "vllm_engine", "ray_cluster", "ray_local"}


def pytest_collection_modifyitems(config, items):
    """Mark every test with its tier (the folder it lives in); refuse a unit test that starts something heavy."""
    for item in items:
        tier = next((t for t in TIERS if (ROOT / "tests" / t) in item.path.parents), None)
        if tier is None:
            raise pytest.UsageError(f"{item.nodeid}: tests live in tests/unit, tests/integration or tests/e2e")
        item.add_marker(tier)
        heavy = HEAVY & set(item.fixturenames)
        if tier == "unit" and heavy:
            raise pytest.UsageError(f"{item.nodeid} is a unit test but uses {sorted(heavy)}: move it to "
                                    "tests/integration")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared (the paper's files and real teacher outputs): skipped with the reason where it is absent, a failure
    where $RATIONALE_REQUIRE_SHARED is set (CI), so a missing folder never passes quietly there."""
    if not SHARED.is_dir():
        reason = f"{SHARED} not found: this test reads the paper files from ../shared (or $RATIONALE_SHARED_DIR)"
        if os.environ.get("RATIONALE_REQUIRE_SHARED"):
            pytest.fail(reason)
        pytest.skip(reason)
    return SHARED


@pytest.fixture(scope="session")
def benchmarks_dir(shared_dir: Path) -> Path:
    return shared_dir / "benchmarks"


@pytest.fixture(scope="session")
def teacher_completions_dir(shared_dir: Path) -> Path:
    return shared_dir / "teacher-completions"


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """A random 2-layer Llama with a BPE tokenizer trained here (seconds); real files, no download."""
    from tests.tiny_model import build_tiny_model

    return build_tiny_model(CACHE / "tiny-llama")


@pytest.fixture(scope="session")
def reasoning_model(tiny_model_dir: Path) -> Path:
    """The tiny model with a <think> chat template and reasoning tokens (what vLLM's reasoning parsers split)."""
    from tests.tiny_model import build_tiny_model

    return build_tiny_model(tiny_model_dir.parent / "tiny-reasoning", reasoning=True)


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster per test module (2 CPUs: this machine), shut down at its end; yields its address."""
    import ray  # the ray extra is part of the test install (scripts/setup.sh)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def vllm_engine(tiny_model_dir: Path):
    """One real vLLM engine (vllm-cpu here, vllm on GPU) over the tiny model, shared by every test (~30 s start)."""
    from builder.recipe import TeacherConfig
    from builder.teachers.vllm import load_engine, shutdown_engine

    engine = load_engine(TeacherConfig(model=str(tiny_model_dir), engine_args={"max_model_len": 1024}))
    yield engine
    shutdown_engine(engine)  # while pytest's streams are still open (the exit hook would log into closed files)


@pytest.fixture
def fake_hub(monkeypatch):
    """Route every huggingface_hub request to a FakeHub (HfApi, hf_hub_download: the real client code). Xet is
    switched off (the fake speaks LFS), so uploads take huggingface_hub's LFS path even with hf_xet installed."""
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    from tests.helpers import TOKEN, FakeHub

    fake = FakeHub()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    _http.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(fake.handler),
                                                   event_hooks={"request": [_http.hf_request_event_hook]},
                                                   follow_redirects=True))
    yield fake
    _http.set_client_factory(_http.default_client_factory)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory, teacher_completions_dir: Path) -> Path:
    """A real dataset version (store.write_version) of 16 MultiArith rows: tiny@v1."""
    from builder.store import write_version
    from tests.helpers import davinci_version_rows

    root = tmp_path_factory.mktemp("store")
    rows = davinci_version_rows(teacher_completions_dir, 16)
    info = write_version(rows, root=root, name="tiny", recipe={"name": "tiny"})
    assert info.version == "v1"
    return root
