"""Lint as a test: ruff over the library and tests, nbqa + ruff over every notebook."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # a subprocess or a training run: not in `tools/test --fast`
def test_ruff_library_and_tests():
    proc = run(str(BIN / "ruff"), "check", "dlbook", "tests", "nbgrader_config.py")
    assert proc.returncode == 0, f"ruff found problems (fix with `ruff check --fix`):\n{proc.stdout}{proc.stderr}"


@pytest.mark.slow  # a subprocess or a training run: not in `tools/test --fast`
def test_ruff_notebooks():
    proc = run(str(BIN / "nbqa"), "ruff", "chapters", "solutions")
    assert proc.returncode == 0, f"nbqa ruff found problems in notebooks:\n{proc.stdout}{proc.stderr}"
