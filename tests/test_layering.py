"""The package's import graph: no circles (lazy and ``TYPE_CHECKING`` imports count), every import points down
the layers of docs/design.md, the build side never imports the site side, and planning never imports the
``kubernetes`` client (start-up time of the agent commands)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PKG = "hydra_bundle"

# Lower layers never import higher ones; packages of one layer (builder, lint, apply) never import each other.
LAYERS = [
    {"", "errors", "states", "text"},
    {"digest", "disk", "retry", "progress", "kit"},
    {"httpio"},
    {"oci"},
    {"bundle"},
    {"spec"},
    {"k8s"},
    {"builder", "lint", "apply"},
    {"agent"},
    {"cli"},
]
RANK = {part: i for i, layer in enumerate(LAYERS) for part in layer}


def _modules() -> dict[str, Path]:
    out = {}
    for p in (SRC / PKG).rglob("*.py"):
        parts = p.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for alias in node.names:
                full = f"{mod}.{alias.name}"
                found.add(full if full in modules else mod)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _part(module: str) -> str:
    rest = module.removeprefix(PKG).lstrip(".")
    return rest.split(".", 1)[0]


def test_no_import_circles() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for mod, deps in _graph().items():
        a = _part(mod)
        assert a in RANK, f"{mod}: add its package to LAYERS in this test and to docs/design.md"
        for dep in deps:
            b = _part(dep)
            if b != a and RANK[b] >= RANK[a]:
                wrong.append(f"{mod} -> {dep}")
    assert wrong == []


def test_planning_and_status_do_not_import_the_kubernetes_client() -> None:
    code = ("import sys, hydra_bundle.apply.plan, hydra_bundle.agent.status, hydra_bundle.agent.pipeline, "
            "hydra_bundle.cli.status_cmds, hydra_bundle.cli.apply_cmds, hydra_bundle.cli.preflight_view; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'kubernetes'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
