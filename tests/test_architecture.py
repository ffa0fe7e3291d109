"""The layering of docs/ARCHITECTURE.md, checked from the source: no import cycle, no upward import, small files.

The import graph is read with :mod:`ast`, never by importing: every ``import``/``from ... import`` in a module is an
edge, at module level, inside a function (a lazy import still runs, later) or under ``if TYPE_CHECKING:`` (a type
checker still follows it, and it still ties the two modules together for a reader). An edge goes to the most specific
module the statement names: ``from . import video`` in ``pipelines/__init__.py`` is an edge to the ``video`` package,
``from .video import decode`` is one to ``video/__init__.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Where each importable package lives in the source tree (pyproject's package-dir).
ROOTS = {"flashvid_cli": REPO / "flashvid_cli", "flashvid_cli.pipelines": REPO / "pipelines",
         "flashvid_cli.kernels": REPO / "kernels"}
MAX_LINES = 400

# Lower layers never import higher ones; the first prefix that matches a module gives its layer.
LAYERS = [
    ("flashvid_cli.cli", 5), ("flashvid_cli.__main__", 5),
    ("flashvid_cli.commands", 4),
    ("flashvid_cli.pipelines", 2),
    ("flashvid_cli.kernels", 1),
    ("flashvid_cli.errors", 0),
    ("flashvid_cli", 3),  # the library: api, config, results, cache, annotate, bench, evaluate, chat, report, ...
]
LAYER_NAMES = {0: "errors", 1: "kernels", 2: "pipelines", 3: "library", 4: "commands", 5: "cli"}
# Decoding knows nothing of models: the video package imports only itself and the error types.
VIDEO = "flashvid_cli.pipelines.video"
VIDEO_MAY_IMPORT = (VIDEO, "flashvid_cli.pipelines.errors", "flashvid_cli.errors")


def modules(roots: dict[str, Path]) -> dict[str, Path]:
    """Every module under ``roots`` as ``{dotted name: file}``; a package is its ``__init__.py``."""
    found = {}
    for package, root in roots.items():
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([package, *parts])
            found.setdefault(name, path)  # flashvid_cli's own rglob does not reach pipelines/ or kernels/
    return found


def imported_names(roots: dict[str, Path]) -> dict[str, set[str]]:
    """``{module: every dotted name it imports}``, relative imports made absolute; ``from m import n`` gives ``m.n``."""
    mods = modules(roots)
    names: dict[str, set[str]] = {name: set() for name in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names[name].update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    stem = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                names[name].update(f"{stem}.{alias.name}" for alias in node.names)
    return names


def import_graph(roots: dict[str, Path]) -> dict[str, set[str]]:
    """``{module: modules it imports}`` over the modules under ``roots``; imports of anything else are dropped.
    A name inside a module (``from .api import ask``, ``import a.b.c`` of a package's attribute) is its module."""
    mods = modules(roots)
    graph: dict[str, set[str]] = {}
    for name, targets in imported_names(roots).items():
        graph[name] = set()
        for target in targets:
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != name:
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted; a self-import is dropped."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer(module: str) -> int:
    """The layer of ``module``: the first prefix of :data:`LAYERS` that it is or lies under."""
    for prefix, number in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return number
    raise ValueError(f"{module} is in no layer")


def upward(graph: dict[str, set[str]]) -> list[str]:
    """Each import of a higher layer, and each import by the video package of anything beyond decoding."""
    bad = []
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            if layer(target) > layer(source):
                bad.append(f"{source} ({LAYER_NAMES[layer(source)]}) imports {target} ({LAYER_NAMES[layer(target)]})")
            in_video = source == VIDEO or source.startswith(VIDEO + ".")
            if in_video and not any(target == p or target.startswith(p + ".") for p in VIDEO_MAY_IMPORT):
                bad.append(f"{source} (video decoding) imports {target}")
    return bad


# Third-party packages kept to some layers (DESIGN.md): {package: prefixes of the only modules that may import it}.
ONLY_IN = {
    "typer": ("flashvid_cli.cli", "flashvid_cli.commands"),
    "rich": ("flashvid_cli.cli", "flashvid_cli.commands", "flashvid_cli.report"),
    "triton": ("flashvid_cli.kernels.dispatch",),  # and every *_triton module, beside its pure-torch reference
    # the web stack is the server's alone (docs/ARCHITECTURE.md)
    "fastapi": ("flashvid_cli.serve",),
    "uvicorn": ("flashvid_cli.serve",),
    "prometheus_client": ("flashvid_cli.serve",),
}
NEVER_IN = {"transformers": ("flashvid_cli.kernels",)}  # plain tensors in, plain tensors out


def third_party_misuse(names: dict[str, set[str]]) -> list[str]:
    """Each import of a package of :data:`ONLY_IN` outside its modules, or of :data:`NEVER_IN` inside them."""
    def under(module: str, prefixes: tuple[str, ...]) -> bool:
        return any(module == p or module.startswith(p + ".") for p in prefixes)

    bad = []
    for source, targets in sorted(names.items()):
        for package in sorted({t.split(".")[0] for t in targets}):
            if package == "triton" and source.endswith("_triton"):
                continue
            if (package in ONLY_IN and not under(source, ONLY_IN[package])) or under(source, NEVER_IN.get(package, ())):
                bad.append(f"{source} imports {package}")
    return bad


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(ROOTS)


def test_the_graph_is_read(graph):
    """Not vacuous: the real modules are there, with the edges everyone knows of."""
    assert len(graph) > 60
    assert "flashvid_cli.api" in graph["flashvid_cli.commands.ask"]
    assert "flashvid_cli.pipelines.video" in graph
    assert sum(len(targets) for targets in graph.values()) > 150


def test_no_import_cycle(graph):
    assert cycles(graph) == []


def test_no_upward_import(graph):
    assert upward(graph) == []


def test_third_party_packages_stay_in_their_layer():
    assert third_party_misuse(imported_names(ROOTS)) == []


def test_no_production_file_over_the_limit():
    long = {str(path.relative_to(REPO)): n for path in modules(ROOTS).values()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"split by concern: over {MAX_LINES} lines: {long}"


def test_the_checks_catch_what_they_exist_for(tmp_path):
    """A synthetic tree with a lazy cycle, a TYPE_CHECKING cycle and an upward import: all three are found."""
    root = tmp_path / "flashvid_cli"
    (root / "commands").mkdir(parents=True)
    (root / "kernels").mkdir()
    for init in (root, root / "commands", root / "kernels"):
        (init / "__init__.py").write_text("")
    (root / "a.py").write_text("def f():\n    from .b import g\n")
    (root / "b.py").write_text("from . import a\n")
    (root / "kernels" / "k.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..commands.c import x\n")
    (root / "commands" / "c.py").write_text("from flashvid_cli.kernels.k import y\nimport flashvid_cli.a\n")
    roots = {"flashvid_cli": root, "flashvid_cli.kernels": root / "kernels"}
    g = import_graph(roots)
    assert g["flashvid_cli.a"] == {"flashvid_cli.b"}
    assert g["flashvid_cli.commands.c"] == {"flashvid_cli.kernels.k", "flashvid_cli.a"}
    assert cycles(g) == [["flashvid_cli.a", "flashvid_cli.b"], ["flashvid_cli.commands.c", "flashvid_cli.kernels.k"]]
    assert upward(g) == ["flashvid_cli.kernels.k (kernels) imports flashvid_cli.commands.c (commands)"]
    assert third_party_misuse({"flashvid_cli.kernels.k": {"transformers.AutoModel"},
                               "flashvid_cli.kernels.a_triton": {"triton.language"}}) == [
        "flashvid_cli.kernels.k imports transformers"]
    assert upward({"flashvid_cli.pipelines.video.exact": {"flashvid_cli.pipelines.base"}}) == [
        "flashvid_cli.pipelines.video.exact (video decoding) imports flashvid_cli.pipelines.base"]
