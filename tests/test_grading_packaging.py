"""The grader is an installable part of ``dlbook`` (``dlbook.grading.cli``, ``pyproject.toml``):
``pip install 'dlbook[grading]'`` brings its dependencies, and without them ``dlbook-grade``
fails with one line naming the extra, not with a traceback."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from grading_helpers import REPO

HINT = "error: the grader needs: pip install 'dlbook[grading]'"


def _without(modules: list[str], *argv: str) -> subprocess.CompletedProcess[str]:
    """``dlbook-grade ARGV`` in a fresh interpreter where ``modules`` cannot be imported."""
    script = (
        "import sys\n"
        f"for name in {modules!r}:\n"
        "    sys.modules[name] = None  # import raises ModuleNotFoundError, as when not installed\n"
        "from dlbook.grading.cli import main\n"
        f"sys.exit(main({list(argv)!r}))\n"
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)


@pytest.mark.slow  # a subprocess or a training run: not in `tools/test --fast`
@pytest.mark.parametrize(
    ("missing", "argv", "named"),
    [
        (["nbformat"], ["grade", "ann", "labs"], "nbformat"),
        (["nbgrader"], ["release", "ann"], "nbgrader"),
        (["nbformat", "nbgrader", "nbconvert"], ["feedback", "ann"], "nbformat"),
    ],
)
def test_missing_grader_dependencies_fail_with_one_line(missing: list[str], argv: list[str], named: str) -> None:
    proc = _without(missing, *argv)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [f"{HINT} (missing: {named})"], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_help_works_without_the_grader_dependencies() -> None:
    proc = _without(["nbformat", "nbgrader", "nbconvert"], "--help")
    assert proc.returncode == 0, proc.stderr
    assert "feedback" in proc.stdout


def _floor(requirement: str) -> tuple[str, tuple[int, ...]]:
    name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", requirement).groups()
    return name.lower(), tuple(int(x) for x in version.split("."))


def test_grading_extra_declares_what_the_grader_imports() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["scripts"]["dlbook-grade"] == "dlbook.grading.cli:main"
    extra = dict(_floor(r) for r in project["optional-dependencies"]["grading"])
    assert {"nbgrader", "nbformat", "nbconvert", "psutil"} <= extra.keys(), extra
    # the floors admit the versions requirements.txt pins (same major version)
    pins = dict(
        re.match(r"([A-Za-z0-9_.-]+)==([0-9.]+)", line).groups()
        for line in (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines()
        if re.match(r"[A-Za-z0-9_.-]+==", line)
    )
    for name, floor in extra.items():
        if name in pins:
            pinned = tuple(int(x) for x in pins[name].split("."))
            assert floor <= pinned and floor[0] == pinned[0], (name, floor, pinned)
    # a student's install stays light: none of them is a plain dependency
    plain = {re.split(r"[<>=!~ \[]", r)[0].lower() for r in project["dependencies"]}
    assert not plain & extra.keys()
