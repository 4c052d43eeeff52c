"""Layers that only look down: the import graph of ``src/lmrec``, read with ``ast``.

Every import counts: top-level ones, lazy ones inside functions, ``importlib.import_module`` with a
string literal, and the package ``__init__`` that importing ``lmrec.a.b`` runs first (``lmrec.a``).
Imports under ``if TYPE_CHECKING:`` never run, so they cannot close a cycle, but they must still
look down. The registry's ``"module:Class"`` strings are table entries, not imports.

The layers, lowest first; a module may import its own layer and those below, never above:

    data → text → features → train & evaluate → models → rerank/compress/privacy → runs → serve → cli

``docs/DESIGN.md`` (Layout) states the same order; a test keeps the two equal.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "lmrec"

# Lowest first. A module's layer is that of the longest prefix listed here ("lmrec" is the package
# __init__ alone, which every import runs first).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("data", ("lmrec", "lmrec.errors", "lmrec.cache", "lmrec.data")),
    ("text", ("lmrec.text", "lmrec.llm")),  # item text → vectors; language models (chat, log-probs, trie)
    ("features", ("lmrec.features",)),  # item and user feature tables: text, images, attributes
    ("train & evaluate", ("lmrec.train", "lmrec.evaluate")),  # loop, losses, validation; metrics, evaluator
    ("models", ("lmrec.models",)),
    # after a model's ranking: re-rank it, compress the model, private training, explain a list; attacks
    # on the training data and the detector of fake users (robust: reads data only)
    (
        "rerank/compress/privacy",
        ("lmrec.rerank", "lmrec.compress", "lmrec.privacy", "lmrec.robust", "lmrec.llm.explain"),
    ),
    # a trained run on disk (data, split, model), its HTML report, new catalog items added to it, every
    # user's top-k into a file, a hyperparameter search over runs
    ("runs", ("lmrec.runs", "lmrec.report", "lmrec.newitems", "lmrec.batch_recommend", "lmrec.tune")),
    ("serve", ("lmrec.serve",)),
    ("cli", ("lmrec.cli", "lmrec.__main__", "lmrec.flower_app")),  # `lmrec`, `python -m lmrec` (torchrun), `flwr run`
)
ORDER = " → ".join(name for name, _ in LAYERS)


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    type_only: bool

    def __str__(self) -> str:
        kind = " (type-only)" if self.type_only else ""
        return f"{self.source} → {self.target}{kind}  [{module_path(self.source)}:{self.line}]"


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = modules()


def module_path(name: str) -> str:
    return str(MODULES[name].relative_to(SRC.parent))


def layer_of(name: str) -> int:
    best, best_len = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            below = name.startswith(prefix + ".") and prefix != "lmrec"
            if (name == prefix or below) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best >= 0, f"{name} is in no layer: add it to LAYERS in {__file__}"
    return best


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_names(tree: ast.Module, name: str, is_package: bool) -> Iterator[tuple[str, int, bool]]:
    """(imported module, line, type-only) for every import in a module, nested ones included."""

    def visit(node: ast.AST, type_only: bool) -> Iterator[tuple[str, int, bool]]:
        if isinstance(node, ast.If) and is_type_checking(node.test):
            for child in node.body:
                yield from visit(child, True)
            for child in node.orelse:
                yield from visit(child, type_only)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, type_only
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                package = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            yield module, node.lineno, type_only
            for alias in node.names:  # `from lmrec.x import submodule`
                yield f"{module}.{alias.name}", node.lineno, type_only
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if called in ("import_module", "__import__") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    yield arg.value, node.lineno, type_only
        for child in ast.iter_child_nodes(node):
            yield from visit(child, type_only)

    yield from visit(tree, False)


def import_graph() -> list[Edge]:
    edges: dict[tuple[str, str], Edge] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}  # itself and its packages
        for target, line, type_only in imported_names(tree, name, path.name == "__init__.py"):
            if not target.startswith("lmrec"):
                continue
            parts = target.split(".")
            # the module itself and every package __init__ on the way there
            for i in range(1, len(parts) + 1):
                t = ".".join(parts[:i])
                if t in MODULES and t not in own:
                    old = edges.get((name, t))
                    if old is None or (old.type_only and not type_only):
                        edges[(name, t)] = Edge(name, t, line, type_only)
    return sorted(edges.values(), key=lambda e: (e.source, e.target))


EDGES = import_graph()


def test_every_module_has_a_layer() -> None:
    for name in MODULES:
        layer_of(name)


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = [
        f"{e}: {LAYERS[layer_of(e.source)][0]} imports {LAYERS[layer_of(e.target)][0]}"
        for e in EDGES
        if layer_of(e.target) > layer_of(e.source)
    ]
    assert not upward, f"layers are {ORDER}; upward imports:\n" + "\n".join(upward)


def cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    graph: dict[str, list[str]] = {m: [] for m in MODULES}
    for e in edges:
        graph[e.source].append(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(graph[w])))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_no_import_cycle() -> None:
    runtime = [e for e in EDGES if not e.type_only]
    found = cycles(runtime)
    lines = []
    for component in found:
        members = set(component)
        lines.append("cycle: " + " ↔ ".join(component))
        lines += [f"  {e}" for e in runtime if e.source in members and e.target in members]
    assert not found, "\n".join(lines)


@pytest.mark.parametrize(
    ("edges", "expected"),
    [
        ([("a", "b"), ("b", "c")], []),
        ([("a", "b"), ("b", "a")], [["a", "b"]]),
        ([("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")], [["a", "b", "c"]]),
    ],
)
def test_cycle_finder(monkeypatch: pytest.MonkeyPatch, edges: list[tuple[str, str]], expected: list[list[str]]) -> None:
    monkeypatch.setattr(f"{__name__}.MODULES", dict.fromkeys("abcd", Path()))
    assert cycles([Edge(s, t, 1, False) for s, t in edges]) == expected


def test_the_reader_sees_lazy_relative_and_string_imports() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "import importlib\n"
        "from . import sibling\n"
        "if TYPE_CHECKING:\n"
        "    from lmrec.serve.app import app\n"
        "def f():\n"
        "    from lmrec.cli import main\n"
        "    return importlib.import_module('lmrec.runs')\n"
    )
    found = set(imported_names(ast.parse(source), "lmrec.data.batch", is_package=False))
    assert ("lmrec.data.sibling", 3, False) in found
    assert ("lmrec.serve.app", 5, True) in found
    assert ("lmrec.cli", 7, False) in found
    assert ("lmrec.runs", 8, False) in found
    assert layer_of("lmrec.llm.lm") < layer_of("lmrec.models.llmgen") < layer_of("lmrec.llm.explain")
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("lmrec.somewhere_new")


def test_importing_the_registry_imports_no_model() -> None:
    """The registry's table is strings: only ``model_class`` imports a model's module (it reads a
    saved model's name through ``models.saved``, which holds no model)."""
    registry = MODULES["lmrec.models.registry"]
    targets = {t for t, _, type_only in imported_names(ast.parse(registry.read_text()), "", False) if not type_only}
    models = {t for t in targets if t.startswith("lmrec.models.") and not t.startswith("lmrec.models.saved")}
    assert not models, targets
    from lmrec.models.base import Recommender
    from lmrec.models.registry import MODELS, model_class

    assert "lm-ranker" in MODELS and "pop" in MODELS
    for name, target in MODELS.items():  # each entry names a class defined in a module of lmrec
        module, _, attr = target.partition(":")
        assert module in MODULES, f"{name}: {target}: no module {module}"
        defined = {n.name for n in ast.parse(MODULES[module].read_text()).body if isinstance(n, ast.ClassDef)}
        assert attr in defined, f"{name}: {target}: {module} defines no class {attr}"
        if name in ("pop", "ease", "itemknn"):  # cheap ones: resolving really imports the class
            klass = model_class(name)
            assert issubclass(klass, Recommender) and klass.__name__ == attr


ENV_WRITES = {"setdefault", "update", "pop", "popitem", "clear", "__setitem__", "__delitem__"}


def environ_writes(tree: ast.Module) -> list[int]:
    def is_environ(node: ast.expr) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
            isinstance(node, ast.Name) and node.id == "environ"
        )

    lines = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign | ast.Delete):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        if any(isinstance(t, ast.Subscript) and is_environ(t.value) for t in targets):
            lines.append(node.lineno)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ENV_WRITES and is_environ(node.func.value):
                lines.append(node.lineno)
            if node.func.attr in ("putenv", "unsetenv"):
                lines.append(node.lineno)
    return lines


def test_no_library_module_writes_environment_variables() -> None:
    """Only the command line may set the process environment; the library passes options instead."""
    found = [
        f"{module_path(name)}:{line}"
        for name, path in MODULES.items()
        if name != "lmrec.cli" and not name.startswith("lmrec.cli.")
        for line in environ_writes(ast.parse(path.read_text()))
    ]
    assert not found, "environment written by library code:\n" + "\n".join(found)
    sample = "import os\nos.environ['A'] = '1'\nos.environ.setdefault('B', '1')\nx = os.environ.get('C')\n"
    assert environ_writes(ast.parse(sample)) == [2, 3]


def test_no_private_name_imported_from_another_module() -> None:
    found = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("lmrec"):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private and node.module != name:
                    found.append(f"{module_path(name)}:{node.lineno} imports {', '.join(private)} from {node.module}")
    assert not found, "\n".join(found)


def test_the_design_page_states_the_same_layer_order() -> None:
    design = (SRC.parent / "docs" / "DESIGN.md").read_text()
    assert ORDER in design and ORDER in (__doc__ or ""), f"docs/DESIGN.md and this module's docstring: {ORDER}"
