"""The package's layout holds: no import circle at any level, and data flows one way
(cli -> study -> attacks -> defenses -> core; data, models and runtime below them; the report
reads results and nothing below it reads the report)."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "defpert"

# Which folders a folder's modules may not import (module or function level).
FORBIDDEN = {
    "core": {"attacks", "defenses", "study", "report", "cli", "train", "data", "models"},
    "runtime": {"core", "attacks", "defenses", "study", "report", "cli", "train", "data", "models"},
    "data": {"core", "attacks", "defenses", "study", "report", "cli", "train", "models"},
    "models": {"attacks", "defenses", "study", "report", "cli", "train", "data"},
    # attacks sit above defenses: the adaptive and undo attacks go through them
    "attacks": {"study", "report", "cli", "train", "data", "models"},
    "defenses": {"attacks", "study", "report", "cli", "train", "data", "models"},
    "train": {"attacks", "defenses", "study", "report", "cli"},
    "report": {"study", "cli", "attacks", "defenses", "train"},
    "study": {"cli"},
}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every defpert module ``name`` imports, at any level (inside functions too)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([node.module] if node.module else []))  # fmt: skip
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in known and t != name}
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_import_circle_at_any_level():
    assert cycles(graph()) == []


def test_the_checker_sees_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_data_flows_one_way():
    wrong = [f"{m} imports {t}" for m, targets in graph().items() for t in targets
             if folder(t) in FORBIDDEN.get(folder(m), set())]  # fmt: skip
    assert wrong == []


@pytest.mark.parametrize(("old", "new"), [("defpert.threat", "defpert.core.threat"),
                                          ("defpert.rq1", "defpert.study.dp"),
                                          ("defpert.reference", "defpert.testing")])  # fmt: skip
def test_a_moved_module_still_imports_by_its_old_name_with_a_warning(old, new):
    import importlib
    import sys

    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught)


def test_the_public_names_keep_working():
    from defpert import load_checkpoint, load_split, train  # noqa: F401
    from defpert.attacks import pgd, strong_attack  # noqa: F401
    from defpert.core.threat import L2Ball, LinfBall  # noqa: F401
    from defpert.defenses import Defense, defend  # noqa: F401

    assert callable(train) and callable(defend)
