"""The layout as contracts: the import floors (.importlinter, checked by lint-imports), no import cycle
even through function-level imports, no private name imported from another module, modules small."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "pipeline"
MAX_LINES = 300


def _modules() -> dict[str, ast.Module]:
    out = {}
    for f in PKG.rglob("*.py"):
        rel = f.relative_to(PKG.parent).with_suffix("")
        name = ".".join(p for p in rel.parts if p != "__init__")
        out[name] = ast.parse(f.read_text(), str(f))
    return out


def _imports(name: str, tree: ast.Module) -> list[tuple[str, str, int]]:
    """(imported module, imported name, line) for every pipeline import, wherever it sits."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("pipeline"):
            out += [(node.module, a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            pytest.fail(f"{name}:{node.lineno}: relative import; the house imports absolutely")
        elif isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names if a.name.startswith("pipeline")]
    return out


def test_the_import_contracts_hold() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports (import-linter) is not installed: ./setup.sh --test")
    res = subprocess.run([exe, "--no-cache"], cwd=PKG.parent, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "broken" in res.stdout and " 0 broken" in res.stdout


def test_no_import_cycle_counting_function_level_imports() -> None:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, tree in mods.items():
        for mod, imported, _ in _imports(name, tree):
            target = f"{mod}.{imported}" if f"{mod}.{imported}" in mods else mod
            if target in mods and target != name:
                graph[name].add(target)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_private_name_is_imported_from_another_module() -> None:
    bad = [f"{name}:{line}: {mod}.{imported}" for name, tree in _modules().items()
           for mod, imported, line in _imports(name, tree) if imported.startswith("_") and imported != "__version__"]
    assert not bad, bad


def test_modules_stay_small() -> None:
    big = {str(f.relative_to(PKG.parent)): n for f in PKG.rglob("*.py")
           if (n := len(f.read_text().splitlines())) > MAX_LINES}
    assert not big, f"split these (over {MAX_LINES} lines): {big}"


def test_every_exception_is_a_users_or_the_infrastructures_by_class() -> None:
    """Retry rules and exit codes read the family from the type (errors.py): no exception class of the house
    sits outside UserError and InfraError, but the signals that unwind an interrupted run (Stopped,
    Interrupted: BaseExceptions, like KeyboardInterrupt, so no `except Exception` swallows them)."""
    import importlib
    import inspect

    from pipeline.errors import InfraError, PipelineError, UserError

    outside = []
    for name in _modules():
        if name.endswith("__main__"):
            continue  # importing it runs the command line
        mod = importlib.import_module(name)
        for cls_name, cls in inspect.getmembers(mod, inspect.isclass):
            if cls.__module__ != name or not issubclass(cls, BaseException):
                continue
            if cls in (PipelineError, UserError, InfraError) or not issubclass(cls, Exception):
                continue
            if not issubclass(cls, (UserError, InfraError)):
                outside.append(f"{name}.{cls_name}")
    assert outside == []


def test_every_public_function_and_class_says_what_it_is() -> None:
    """A module's public names (functions and classes at its top level; the cli's one-line handlers
    aside) carry a docstring: what it is or does, in a sentence."""
    missing = []
    for name, tree in _modules().items():
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and not node.name.startswith(("_", "cmd_")) \
                    and not ast.get_docstring(node):
                missing.append(f"{name}.{node.name}:{node.lineno}")
    assert missing == []
