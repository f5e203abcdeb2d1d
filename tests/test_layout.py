"""The package's layout holds: old import paths still work for one release, and the pipeline steps depend on each
other in one direction only (no import circle between the modules of python/mpq, lazy imports included)."""
import ast
import importlib
import warnings
from pathlib import Path

import pytest

import mpq
from mpq._moved import MOVED

PACKAGE = Path(mpq.__file__).resolve().parent


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_import_paths_give_the_new_modules_with_a_warning(old):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(f"mpq.{old}")
    assert module is importlib.import_module(f"mpq.{MOVED[old]}")
    assert any(issubclass(w.category, DeprecationWarning) and f"mpq.{MOVED[old]}" in str(w.message) for w in caught)


def test_old_import_paths_serve_from_imports():
    from mpq.plan import Plan
    from mpq.mckp import solve_mckp
    assert Plan is mpq.Plan and solve_mckp is mpq.solve_mckp


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set:
    """Every mpq module that ``path`` imports, at any depth of the file (lazy imports in functions too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "mpq")
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "mpq":
                continue
            for a in node.names:  # `from . import x` names a module when x is one
                sub = f"{target}.{a.name}"
                out.add(sub if (PACKAGE.parent / sub.replace(".", "/")).with_suffix(".py").exists()
                        or (PACKAGE.parent / sub.replace(".", "/")).is_dir() else target)
    return out


def test_no_import_circle_between_modules():
    files = [p for p in PACKAGE.rglob("*.py") if p.name != "_moved.py"]
    graph = {module_name(p): imports_of(p) for p in files}
    # a module importing its own package (the package's __init__ re-exports it) is not a circle
    graph = {m: {d for d in deps if d in graph and d != m and not m.startswith(d + ".")}
             for m, deps in graph.items()}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
