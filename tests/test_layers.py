"""The import-layer contract: ``alzaudit`` > ``suites``, ``reports`` > ``audit`` > ``model``, one way, down.

Every import statement of the installed packages is read from the source (function-level imports too,
which a runtime check would miss), so an upward import fails ``make test`` the day it is written.
``reports`` renders audit.json without TensorFlow: from ``audit`` it may import the schema module only.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RANK = {"model": 0, "audit": 1, "suites": 2, "reports": 2, "alzaudit": 3}
# Narrower allowances on top of the ranks: what a package may take from the layer below, when not all of it.
ONLY = {("reports", "audit"): {"audit.schema_io"}}
FORBIDDEN = {"reports": {"tensorflow", "keras"}}  # a report re-renders from audit.json alone


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in ``source``, at any depth, and of literal import_module calls."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return found


def violations(package: str, where: str, source: str) -> list[str]:
    """Each import in ``source`` (a module of ``package``) that breaks the contract, as 'file:line: why'."""
    out = []
    for line, name in imported_modules(source):
        top = name.split(".")[0]
        if top in FORBIDDEN.get(package, ()):
            out.append(f"{where}:{line}: {package} must not import {top}")
        if top not in RANK or top == package:
            continue
        if RANK[top] >= RANK[package]:
            out.append(f"{where}:{line}: {package} (layer {RANK[package]}) imports {name} (layer {RANK[top]})")
        allowed = ONLY.get((package, top))
        if allowed is not None and not any(name == a or name.startswith(a + ".") for a in allowed):
            out.append(f"{where}:{line}: {package} may import from {top} only {', '.join(sorted(allowed))}, "
                       f"not {name}")
    return out


def test_every_package_imports_one_way_down():
    problems = []
    for package in RANK:
        for path in sorted((ROOT / package).rglob("*.py")):
            problems += violations(package, str(path.relative_to(ROOT)), path.read_text(encoding="utf-8"))
    assert not problems, "import-layer contract broken:\n" + "\n".join(problems)


@pytest.mark.parametrize("package, source", [
    ("model", "def f():\n    from audit.leakage import pseudo_subjects\n"),       # function-level, upward
    ("audit", "import suites.gate\n"),
    ("audit", "from reports import render_report\n"),
    ("suites", "from reports.context import build_context\n"),                      # sideways
    ("reports", "from audit.runner import AuditRun\n"),                             # below, but not the schema
    ("reports", "import tensorflow as tf\n"),
    ("suites", "import importlib\nimportlib.import_module('alzaudit.cli')\n"),
])
def test_the_contract_catches_an_upward_import(package, source):
    assert violations(package, "planted.py", source)


@pytest.mark.parametrize("package, source", [
    ("reports", "from audit.schema_io import validate_audit\n"),
    ("suites", "from audit.runner import AuditRun\nfrom model.errors import AlzAuditError\n"),
    ("alzaudit", "from suites.inprocess import run_gate\nfrom reports import render_report\n"),
])
def test_the_contract_allows_downward_imports(package, source):
    assert violations(package, "planted.py", source) == []


def test_no_generic_top_level_package_is_installed():
    """The application is ``alzaudit``: no ``cli`` (or other generic name) lands in site-packages."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {name.rstrip("*") for name in include} == set(RANK)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"alzaudit": "alzaudit.cli:main"}
