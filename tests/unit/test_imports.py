"""The package's import graph has no cycles, counting every import: inside functions, under `if TYPE_CHECKING:`
(an annotation that names a module is still a dependency on it) and `importlib.import_module("literal")` calls. An
import the graph cannot see (`import_module` of a computed name) is an error of its own, so no loader hides a cycle.
Only `if __name__ == "__main__":` blocks are left out: there the module runs as `__main__`, another module.

So `builder.recipe` (data) imports no stage or registry, the registries never import what checks names against them
(`builder.bind` does), and no stage reaches back into a later one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "builder"
DYNAMIC = ("import_module", "__import__")  # calls that import the module their first argument names


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the package folder `root`."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _main_guard(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators))


def _dynamic(node: ast.Call) -> bool:
    f = node.func
    return (isinstance(f, ast.Attribute) and f.attr in DYNAMIC) or (isinstance(f, ast.Name) and f.id in DYNAMIC)


def _imports(tree: ast.AST, where: str) -> tuple[list[str | tuple[str, int, list[str]]], list[str]]:
    """What `tree` imports: dotted names (`import x`, dynamic imports of a literal) and (module, level, names)
    of `from` imports; and the dynamic imports of names the graph cannot know, as `file:line` strings."""
    found: list[str | tuple[str, int, list[str]]] = []
    unseen: list[str] = []

    def walk(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _main_guard(child):
                for sub in child.orelse:
                    walk(sub)
                continue
            if isinstance(child, ast.Import):
                found.extend(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                found.append((child.module or "", child.level, [a.name for a in child.names]))
            elif isinstance(child, ast.Call) and _dynamic(child):
                arg = child.args[0] if child.args else None
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.append(arg.value)
                else:
                    unseen.append(f"{where}:{child.lineno}")
            walk(child)

    walk(tree)
    return found, unseen


def import_graph(root: Path) -> tuple[dict[str, set[str]], list[str]]:
    """module -> the package modules it imports (`from pkg import sub` is an edge to pkg.sub when that is a module),
    and the dynamic imports whose target is not a literal (`file:line`)."""
    modules = module_names(root)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    unseen: list[str] = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found, dynamic = _imports(ast.parse(path.read_text(), str(path)), str(path.relative_to(root.parent)))
        unseen += dynamic
        for item in found:
            if isinstance(item, str):
                targets = [item]
            else:
                base, level, names = item
                if level:
                    anchor = package.split(".")[: len(package.split(".")) - level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a}" if f"{base}.{a}" in modules else base for a in names]
            for target in targets:
                while target and target not in modules:  # `import builder.x.y` of a name inside a module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph, unseen


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def check(root: Path) -> list[str]:
    """Every problem of the package at `root`: its import cycles and the imports the graph cannot see."""
    graph, unseen = import_graph(root)
    return ([f"import cycle: {' <-> '.join(c)}" for c in cycles(graph)]
            + [f"{where}: dynamic import of a computed name (the graph cannot see it; import it statically)"
               for where in unseen])


def test_the_package_has_no_import_cycles_and_no_hidden_imports():
    problems = check(PACKAGE)
    assert not problems, "\n".join(problems)


def test_the_recipe_is_data_and_the_registries_are_bound_in_one_place():
    graph, _ = import_graph(PACKAGE)
    assert graph["builder.recipe"] <= {"builder.errors", "builder.paths", "builder.prompts", "builder.readers"}
    binds = {m for m, deps in graph.items() if {"builder.teachers", "builder.executors", "builder.filters"} <= deps}
    assert binds == {"builder.bind"}


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root / "pkg"


TYPE_CHECKING_B = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import x\n"


@pytest.mark.parametrize("files, expected", [
    # a lazy import inside a function still closes a cycle
    ({"pkg/__init__.py": "", "pkg/a.py": "from pkg import b\n", "pkg/b.py": "def f():\n    from pkg.a import x\n"},
     ["import cycle: pkg.a <-> pkg.b"]),
    # relative imports and a registry package whose members import it back
    ({"pkg/__init__.py": "", "pkg/reg/__init__.py": "from . import one\n",
      "pkg/reg/one.py": "from pkg.reg import R\n"},
     ["import cycle: pkg.reg <-> pkg.reg.one"]),
    # an import for annotations only is still an edge
    ({"pkg/__init__.py": "", "pkg/a.py": "from pkg import b\n", "pkg/b.py": TYPE_CHECKING_B},
     ["import cycle: pkg.a <-> pkg.b"]),
    ({"pkg/__init__.py": "", "pkg/a.py": "import typing\nif typing.TYPE_CHECKING:\n    import pkg.b\n",
      "pkg/b.py": "import pkg.a\n"},
     ["import cycle: pkg.a <-> pkg.b"]),
    # a loader that imports a literal name is an edge
    ({"pkg/__init__.py": "", "pkg/a.py": "from pkg import b\n",
      "pkg/b.py": "import importlib\ndef load():\n    return importlib.import_module('pkg.a').x\n"},
     ["import cycle: pkg.a <-> pkg.b"]),
    ({"pkg/__init__.py": "", "pkg/a.py": "from pkg import b\n",
      "pkg/b.py": "from importlib import import_module\nLOADERS = {'a': lambda: import_module('pkg.a')}\n"},
     ["import cycle: pkg.a <-> pkg.b"]),
    # a loader of a computed name is refused: no cycle can hide behind it
    ({"pkg/__init__.py": "", "pkg/a.py": "from pkg import b\n",
      "pkg/b.py": "import importlib\ndef load(n):\n    return importlib.import_module(f'pkg.{n}')\n"},
     ["pkg/b.py:3: dynamic import of a computed name (the graph cannot see it; import it statically)"]),
    # a module run as a script imports as `__main__`, another module: its main block is no edge
    ({"pkg/__init__.py": "", "pkg/a.py": "from pkg import b\n",
      "pkg/b.py": "if __name__ == '__main__':\n    from pkg.a import main\n    main()\n"}, []),
    ({"pkg/__init__.py": "", "pkg/a.py": "from pkg import b\n", "pkg/b.py": "import json\n"}, []),
])
def test_the_walker_finds_planted_cycles_and_hidden_imports(tmp_path, files, expected):
    assert check(_write(tmp_path, files)) == expected
