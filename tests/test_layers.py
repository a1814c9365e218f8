"""What the import-linter contracts (pyproject.toml) cannot see.

They see the package ``rq`` as one node, and imports written as statements;
these tests read the source for the rest of the rule that only
``flask_messaging._rq`` uses RQ (docs/architecture.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "flask_messaging"
RQ_PACKAGE = PACKAGE / "_rq"


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_outside_the_rq_package_only_rq_retry_is_imported() -> None:
    found = []
    for path in modules():
        if RQ_PACKAGE in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
                found += [
                    (path.name, name) for name in names if name.split(".")[0] == "rq"
                ]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                module = node.module or ""
                if module.split(".")[0] in ("rq", "rq_dashboard"):
                    found += [(path.name, f"{module}.{a.name}") for a in node.names]
    assert found == [("subscription.py", "rq.Retry")], (
        "Only flask_messaging._rq may use RQ; outside it, subscription.py imports"
        " rq.Retry (part of the subscribe API) and nothing else of RQ's."
    )


def test_no_module_is_imported_by_a_name_computed_at_run_time() -> None:
    # importlib.import_module and __import__ would hide an import from the
    # contracts (and from readers).
    found = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Name) and node.id == "__import__":
                found.append((path.name, node.lineno))
            if isinstance(node, ast.Attribute) and node.attr == "import_module":
                found.append((path.name, node.lineno))
    assert found == [], f"imports the contracts cannot see: {found}"
