"""The import layers of registry/: no import runs back up, and no import cycle.

A module may import modules of a lower layer, or of its own subpackage. Lazy
imports inside functions count (they are still dependencies); imports under
``if TYPE_CHECKING:`` do not (they never run). When this fails on a new edge,
move the shared piece down a layer rather than adding an exception here.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "registry"

# group -> layer; a group is a subpackage, or a top-level module of registry/
LAYERS: dict[str, int] = {
    "errors": 0, "_faults": 0, "_fs": 0, "_threads": 0, "_version": 0,
    "checkpoints": 1, "store": 1,
    "catalog": 2,
    "audit": 3, "evaluation": 3,
    "method": 4,
    "exchange": 5,
    "api": 6,
    "__init__": 7,  # the package's face: re-exports the façade and the records
    "toy": 8, "realworld": 8, "serve": 8,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _group(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, module: str | None = None) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every import that runs (``module``: the file's module name)."""
    module = module or _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub, top)
                continue
            inner = top and not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                found.extend((a.name, top) for a in child.names if a.name.startswith("registry"))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if not target.startswith("registry"):
                    continue
                if child.module is None or target == "registry" or target.count(".") == 1 and child.level:
                    # `from . import x` / `from .. import x`: x may be a module of that package
                    for a in child.names:
                        sub = f"{target}.{a.name}"
                        found.append((sub if _exists(sub) else target, top))
                else:
                    found.append((target, top))
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8")), True)
    return found


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


def _modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_group_has_a_layer() -> None:
    groups = {_group(_module_name(p)) for p in _modules()}
    assert groups <= set(LAYERS), f"give these a layer in tests/test_layers.py: {sorted(groups - set(LAYERS))}"


def test_no_import_runs_back_up() -> None:
    upward = []
    for path in _modules():
        src = _module_name(path)
        for target, _ in _imports(path):
            a, b = _group(src), _group(target)
            if not _exists(target):
                upward.append(f"{src} imports {target}, which does not exist")
            elif a != b and LAYERS[b] >= LAYERS[a]:
                upward.append(f"{src} (layer {LAYERS[a]}) imports {target} (layer {LAYERS[b]})")
    assert not upward, "imports that run up or sideways:\n" + "\n".join(sorted(set(upward)))


def test_no_import_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for path in _modules():
        graph[_module_name(path)] = {t for t, top in _imports(path) if top}
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt in graph and not state.get(nxt):
                cycle = dfs(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if not state.get(node):
            cycle = dfs(node)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The checker itself can fail: an upward lazy import inside a function is found."""
    f = tmp_path / "probe.py"
    f.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..exchange import bundle\n"
                 "def f():\n    from ..method import extract\n    return extract\n")
    found = _imports(f, "registry.store.probe")
    assert ("registry.method.extract", False) in found
    assert not [t for t, _ in found if t.startswith("registry.exchange")]  # type-only imports never run
