"""The direction of imports between the project's packages (docs/architecture.md):

    common <- capture <- responder <- lab

Every module's imports are read from its source (``ast``, nothing is imported), including
imports inside functions: a late import is still a dependency.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# package -> the project packages it may import (besides itself)
ALLOWED = {
    "common": set(),
    "capture": {"common"},
    "responder": {"common", "capture"},
    "lab": {"common", "capture", "responder"},
}


def project_imports(path: Path) -> set[tuple[str, int]]:
    """(top-level project package, line) for every import of a project package in one file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {(n.split(".")[0], node.lineno) for n in names if n.split(".")[0] in ALLOWED}
    return found


@pytest.mark.parametrize("package", sorted(p for p in ALLOWED if (REPO / p).is_dir()))
def test_imports_point_one_way(package):
    wrong = []
    for path in sorted((REPO / package).rglob("*.py")):
        for target, line in sorted(project_imports(path)):
            if target != package and target not in ALLOWED[package]:
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {target}")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_check_sees_a_wrong_import(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from responder.store import StoreBase\n")
    assert project_imports(bad) == {("responder", 2)}
