"""The import graph of hoh's own modules: imports only go downward, and nothing imports in a ring.

Layers, lowest first: core (`hoh/*.py`) <- data (`hoh/data`) <- transforms, trainer, serving <-
components <- pipeline <- CLI (`cli` / `*_cli` modules, wherever they live). A serving host needs
neither the pipeline nor the trainer, a component never reaches into the DAG that uses it, and
two components share code only through a lower layer. The graph is read from the source with
`ast` (function-level imports count too: they are dependencies all the same), so this runs in
milliseconds and fails on the commit that adds the wrong arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup_folders() -> dict[str, str]:
    """Install names -> folders, read from setup.py's `_FOLDERS` (the one mapping)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["_FOLDERS"]:
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no _FOLDERS mapping")


FOLDERS = _setup_folders()
RANK = {
    "core": 0,
    "data": 1,
    "transforms": 2,
    "trainer": 2,
    "serving": 2,
    "components": 3,
    "pipeline": 4,
    "cli": 5,
}


def _modules() -> dict[str, Path]:
    modules = {}
    for package, folder in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def layer(module: str) -> str:
    parts = module.split(".")
    if parts[-1] == "cli" or parts[-1].endswith("_cli"):
        return "cli"
    if len(parts) > 1 and parts[1] in ("data",):
        return "data"
    if len(parts) > 1 and parts[1] in RANK:
        return parts[1]
    return "core"  # hoh/*.py, hoh.schemas, hoh.configs


def unit(module: str) -> str:
    """The granularity rings are checked at: one component, one other package, or core."""
    parts = module.split(".")
    depth = 3 if len(parts) > 2 and parts[1] == "components" else 2
    return ".".join(parts[:depth]) if len(parts) > 1 else module


def import_graph() -> dict[str, set[tuple[str, int]]]:
    """module -> {(imported hoh module, line)} for every `hoh.*` import anywhere in the module."""
    modules = _modules()
    graph: dict[str, set[tuple[str, int]]] = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                while name and name not in modules:  # `from hoh.x import y`: y may be a name
                    name = name.rpartition(".")[0]
                if name and name != module and name.startswith("hoh"):
                    graph[module].add((name, node.lineno))
    return graph


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            ring = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                ring.append(w)
                if w == v:
                    break
            if len(ring) > 1:
                out.append(sorted(ring))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_the_tree():
    graph = import_graph()
    assert {"hoh.config", "hoh.trainer.task", "hoh.pipeline.pipeline", "hoh.serving.client"} <= set(
        graph
    )
    assert any(target == "hoh.trainer.model" for target, _ in graph["hoh.trainer.task"])


def test_no_import_goes_up_a_layer():
    upward = [
        f"{module} ({layer(module)}) imports {target} ({layer(target)}) at line {line}"
        for module, targets in import_graph().items()
        for target, line in sorted(targets)
        if RANK[layer(target)] > RANK[layer(module)]
    ]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_serving_needs_neither_pipeline_nor_trainer():
    graph = import_graph()
    bad = [
        f"{m} -> {t}"
        for m, targets in graph.items()
        if layer(m) == "serving"
        for t, _ in targets
        if layer(t) in ("pipeline", "trainer", "components")
    ]
    assert not bad, bad


def test_no_import_cycles_between_packages_or_modules():
    graph = import_graph()
    modules = {m: {t for t, _ in targets} for m, targets in graph.items()}
    packages: dict[str, set[str]] = {}
    for m, targets in modules.items():
        packages.setdefault(unit(m), set()).update(unit(t) for t in targets if unit(t) != unit(m))
    assert not _cycles(packages), f"package rings: {_cycles(packages)}"
    assert not _cycles(modules), f"module rings: {_cycles(modules)}"


def test_cycle_finder_and_layers_catch_what_they_guard():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    assert layer("hoh.pipeline.kfp.cli") == "cli" and layer("hoh.data.importer") == "data"
    assert (
        layer("hoh.features") == "core"
        and unit("hoh.components.drift.check") == "hoh.components.drift"
    )
