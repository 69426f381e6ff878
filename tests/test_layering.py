"""The package's import graph keeps one layer order (docs/ARCHITECTURE.md).

Lowest first: errors and tables -> graph, layers -> decompose, cost, allocation -> methods -> export
-> bench -> api, planner, rounds -> cli. A module imports only from its own layer or below, never a
``_private`` name of another module, and the package has no import cycle. Function-local imports
are allowed only for the lazy heavy dependencies named in ``LAZY``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kerascomp"

# Each top-level module or subpackage of kerascomp, by layer (lower numbers are imported by higher ones).
LAYERS = {
    "errors": 0, "tables": 0, "data": 0, "startup": 0,
    "graph": 1, "layers": 1, "zoo": 1,
    "decompose": 2, "cost": 2, "allocation": 2, "loading": 2, "distill": 2,
    "methods": 3,
    "export": 4,
    "bench": 5,
    "api": 6, "planner": 6, "rounds": 6,
    "cli": 7, "__main__": 7,
    "testing": 8,  # the fuzz harness: may use every layer
}
# The dependencies a function may import lazily, each with the reason it loads late.
LAZY = {
    "tensorflow": "modules use it in a few functions only; the package root loads it anyway (via Keras)",
    "keras": "a module must use the flavour the process chose (Keras 3 or tf_keras), known only at call time",
    "tf_keras": "optional flavour, present only with the [qat] or [dev] extras",
    "tensorflow_model_optimization": "importing it sets TF_USE_LEGACY_KERAS=1 process-wide: only inside QAT",
    "tensorly": "only Tucker-2 needs it, and it imports its own backends",
    "matplotlib": "only the benchmark plots need it; not a runtime dependency",
    "ai_edge_litert": "the LiteRT runtime, loaded only to run or time a .tflite",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None  # the package root re-exports the public API from every layer
    return LAYERS.get(parts[1])


def resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports(path: Path):
    """(imported module, imported names, line, at module level?) for each import in ``path``."""
    module = module_name(path)
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno, id(node) in top_level
        elif isinstance(node, ast.ImportFrom):
            target = resolve(module, node, path.name == "__init__.py")
            yield target, [alias.name for alias in node.names], node.lineno, id(node) in top_level


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def package_edges() -> dict[str, set[str]]:
    modules = all_modules()
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for target, names, _, _ in imports(path):
            if not target.startswith("kerascomp"):
                continue
            for imported in names or [""]:
                full = f"{target}.{imported}" if imported else target
                edges[name].add(full if full in modules else target)
    return edges


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), plus self-loops."""
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in edges.get(node, ()):
            if other not in edges:
                continue
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return cycles


def violations() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {"cycle": [], "private": [], "upward": [], "unknown": [], "local": []}
    modules = all_modules()
    for name, path in modules.items():
        mine = layer_of(name)
        if name != "kerascomp" and mine is None:
            found["unknown"].append(f"{name}: not in LAYERS; give it a layer")
        for target, names, line, top in imports(path):
            where = f"{name}:{line}"
            root = target.split(".")[0]
            if not top and root != "kerascomp" and root not in LAZY and root != "__future__":
                found["local"].append(f"{where}: function-local import of {target} (not a lazy heavy dependency)")
            if root != "kerascomp":
                continue
            if not top:
                found["local"].append(f"{where}: function-local import of {target}: import it at the top")
            for imported in names:
                if imported.startswith("_") and not imported.startswith("__"):
                    found["private"].append(f"{where}: imports private {target}.{imported}")
            theirs = layer_of(target)
            if mine is not None and theirs is not None and theirs > mine:
                found["upward"].append(f"{where}: layer {mine} imports {target} (layer {theirs})")
    found["cycle"] = [" -> ".join(cycle) for cycle in find_cycles(package_edges())]
    return found


@pytest.mark.parametrize("kind", ["cycle", "private", "upward", "unknown", "local"])
def test_layer_order(kind):
    problems = violations()[kind]
    assert not problems, f"{len(problems)} {kind} import(s):\n" + "\n".join(problems)


def test_checks_can_fail(tmp_path, monkeypatch):
    """The scanner sees a cycle, an upward import and a private import in a planted package."""
    package = tmp_path / "kerascomp"
    (package / "methods").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "methods" / "__init__.py").write_text("")
    (package / "errors.py").write_text("from kerascomp.methods.thing import _helper\n")
    (package / "methods" / "thing.py").write_text("from kerascomp.errors import Error\ndef _helper():\n"
                                                  "    import numpy\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", package)
    found = violations()
    assert found["cycle"] == ["kerascomp.errors -> kerascomp.methods.thing"]
    assert any("private kerascomp.methods.thing._helper" in p for p in found["private"])
    assert any("layer 0 imports kerascomp.methods.thing" in p for p in found["upward"])
    assert any("numpy" in p for p in found["local"])
