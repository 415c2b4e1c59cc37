"""Every package that ``dlbook`` and the lessons import is declared in ``pyproject.toml``.

A student on Colab installs the course's package by its declared ranges, over the torch the
runtime ships; a lesson that imports something undeclared stops there with ModuleNotFoundError
(issue 19 found ``ipywidgets`` so). The imports are read from the code (``ast``), mapped to their
distributions by the installed metadata, and compared with the ``dependencies`` (the grader's own
with the ``grading`` extra).
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata as metadata
import json
import re
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# Used only where installed, so not required (none at present: dlbook.display.glue writes myst-nb's
# glue data itself when myst-nb is installed, without importing it).
OPTIONAL: set[str] = set()


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _imports(source: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "dlbook"}


def _lesson_sources() -> dict[str, str]:
    sources = {}
    for path in sorted((ROOT / "chapters").rglob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
        # IPython magics and shell lines are not Python
        sources[str(path.relative_to(ROOT))] = "\n".join(
            line for cell in code for line in cell.splitlines() if not line.lstrip().startswith(("%", "!")))
    return sources


@functools.cache
def _packages() -> dict[str, list[str]]:
    return metadata.packages_distributions()  # reads every installed distribution: once


def _distributions(module: str) -> set[str]:
    found = _packages().get(module)
    assert found, f"{module} is imported but no installed distribution provides it"
    return {d.lower().replace("_", "-") for d in found}


def _undeclared(sources: dict[str, str], declared: set[str]) -> dict[str, list[str]]:
    missing: dict[str, list[str]] = {}
    for where, source in sources.items():
        for module in _imports(source):
            dists = _distributions(module)
            if not dists & (declared | OPTIONAL):
                missing.setdefault(f"{module} ({', '.join(sorted(dists))})", []).append(where)
    return missing


DECLARED = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
GRADING = {_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["grading"]}
DEPLOY = {_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["deploy"]}
LIBRARY = {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in sorted((ROOT / "dlbook").rglob("*.py"))}
# The deploy extra may be imported only where its pairing with torch was checked first: by the
# lessons that call ensure_deploy_stack(), and by dlbook.deploy (inside the functions they use).
LESSONS = _lesson_sources()
CHECKED = {k for k, v in LESSONS.items() if "ensure_deploy_stack()" in v}


@pytest.mark.parametrize(("what", "sources", "declared"), [
    ("the lessons", {k: v for k, v in LESSONS.items() if k not in CHECKED}, DECLARED),
    ("the lessons that check the deploy stack", {k: LESSONS[k] for k in CHECKED}, DECLARED | DEPLOY),
    ("dlbook (without the grader)", {k: v for k, v in LIBRARY.items() if "/grading/" not in k and k != "dlbook/deploy.py"},
     DECLARED),
    ("dlbook.deploy", {k: v for k, v in LIBRARY.items() if k == "dlbook/deploy.py"}, DECLARED | DEPLOY),
    ("the grader", {k: v for k, v in LIBRARY.items() if "/grading/" in k}, DECLARED | GRADING),
], ids=["lessons", "deploy-lessons", "dlbook", "dlbook-deploy", "grading"])
def test_every_import_is_declared(what, sources, declared):
    missing = _undeclared(sources, declared)
    assert not missing, f"{what} import packages pyproject.toml does not declare: " + "; ".join(
        f"{m} in {', '.join(w[:3])}{' ...' if len(w) > 3 else ''}" for m, w in sorted(missing.items()))


def test_the_check_finds_an_undeclared_import():
    """The planted case: ipywidgets, imported by two lessons, taken out of the declarations."""
    missing = _undeclared(LESSONS, DECLARED - {"ipywidgets"})
    assert any(m.startswith("ipywidgets") for m in missing), missing


def test_the_deploy_stack_is_imported_only_after_its_check():
    """torchao imported by a lesson that does not call ensure_deploy_stack() is reported."""
    assert CHECKED == {"chapters/optimization/deployment.ipynb"}, CHECKED
    planted = {"chapters/x.ipynb": LESSONS["chapters/optimization/deployment.ipynb"].replace("ensure_deploy_stack()", "")}
    missing = _undeclared(planted, DECLARED)
    assert any(m.startswith("torchao") for m in missing) and any(m.startswith("onnx ") for m in missing), missing


def test_requires_python_matches_the_pinned_stack():
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"
    assert "(3, 11)" in (ROOT / "tools" / "env.sh").read_text(encoding="utf-8")
