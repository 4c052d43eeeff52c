"""Benchmarks measure the path users take: every script trains through ``lmrec.runs.train_run`` (directly
or by ``benchmarks/harness.py``), never by calling a model's ``fit``; and no script reaches into another
one. Scripts run as ``python benchmarks/NAME.py``, which puts ``benchmarks/`` on ``sys.path`` by itself,
so ``from harness import ...`` needs no ``sys.path`` surgery, and no other script is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
SHARED = "harness"  # the one module scripts may import from benchmarks/
# `.fit` of things that are not recommenders (a product quantizer's codebooks)
NOT_MODELS = {"ProductQuantizer"}
# Scripts of other engineers still to convert, each with its reason (strict: a clean one must leave the list).
PENDING: dict[str, str] = {
    "text_scoring.py": "added by another engineer (ed08c91): fits on an in-memory synthetic catalog",
}
# Functions that still fit in memory because no data recipe describes their data (strict, as above).
IN_MEMORY: dict[tuple[str, str], str] = {
    ("federated.py", "central"): "the membership attack's twin trains on the members' half (privacy.membership_split)",
    ("privacy.py", "fit"): "the membership attack's twin trains on the members' half (privacy.membership_split)",
    ("text.py", "fit"): "transfer: genre-disjoint catalogs and user subsamples of one training set",
    ("multimodal.py", "fit"): "its new-items split (cold items out of the catalog, warm items split at 3+ events)",
}


def scripts() -> list[Path]:
    return sorted(BENCH.glob("*.py"))


def enclosing(tree: ast.Module) -> dict[int, str]:
    """Line → the name of the innermost function holding it."""
    where: dict[int, str] = {}
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    for fn in sorted(functions, key=lambda n: n.lineno):  # inner functions start later: they win
        for line in range(fn.lineno, (fn.end_lineno or fn.lineno) + 1):
            where[line] = fn.name
    return where


def problems(path: Path, allowed: dict[tuple[str, str], str] | None = None) -> list[str]:
    """Each line that fits a model directly (outside the ``allowed`` (script, function) pairs), edits
    sys.path, or imports another script."""
    allowed = IN_MEMORY if allowed is None else allowed
    tree = ast.parse(path.read_text(), filename=str(path))
    others = {p.stem for p in scripts()} - {SHARED, path.stem}
    where = enclosing(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            func = node.func
            receiver = func.value.id if isinstance(func.value, ast.Name) else None
            in_memory = (path.name, where.get(node.lineno, "")) in allowed
            if func.attr == "fit" and receiver not in NOT_MODELS and not in_memory:
                found.append(f"{path.name}:{node.lineno}: calls .fit( (train through train_run or the harness)")
            target = ast.unparse(func.value)
            if target == "sys.path" and func.attr in {"insert", "append", "extend"}:
                found.append(f"{path.name}:{node.lineno}: sys.path.{func.attr} (scripts import harness as is)")
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules = [node.module.split(".")[0]]
        found += [f"{path.name}:{node.lineno}: imports the script {m}.py" for m in modules if m in others]
    return sorted(found)


def test_the_harness_is_there_and_clean() -> None:
    assert (BENCH / f"{SHARED}.py").is_file()
    assert problems(BENCH / f"{SHARED}.py") == []


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(p.name, marks=pytest.mark.xfail(strict=True, reason=PENDING[p.name]))
        if p.name in PENDING
        else p.name
        for p in scripts()
    ],
)
def test_no_direct_fit_no_path_edits_no_script_imports(name: str) -> None:
    assert problems(BENCH / name) == []


@pytest.mark.parametrize("where", sorted(IN_MEMORY), ids=lambda w: f"{w[0]}:{w[1]}")
def test_each_in_memory_fit_is_still_there(where: tuple[str, str]) -> None:
    """An allowance that is no longer needed goes (the function trains through train_run now)."""
    path = BENCH / where[0]
    assert len(problems(path, {})) > len(problems(path, {where: "allowed"})), f"{where} fits nothing any more"


def test_the_check_catches_each_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The grep itself: a direct fit, a sys.path edit and an import of another script are each found."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import sys\nsys.path.insert(0, '.')\nfrom classic import machine\nimport speed\n"
        "model = Model().fit(train)\npq = ProductQuantizer.fit(x)\nfrom harness import Arm\n"
    )
    (tmp_path / "classic.py").write_text("")
    (tmp_path / "speed.py").write_text("")
    (tmp_path / "harness.py").write_text("")
    monkeypatch.setattr(f"{__name__}.BENCH", tmp_path)
    assert [line.split(": ", 1)[0] for line in problems(bad)] == ["bad.py:2", "bad.py:3", "bad.py:4", "bad.py:5"]
