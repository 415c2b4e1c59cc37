"""The Colab contract (issue 19): benchmarks/results/colab-contract.json, written by
``bash tools/check-colab``, records every lesson executed in a fresh environment with a torch that
is not the course's pin, installed first, and the course installed by its declared ranges. The
committed record must cover every lesson in chapters/ (a lesson added later needs a new check) and
every one must have passed."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "benchmarks" / "results" / "colab-contract.json"
sys.path.insert(0, str(ROOT / "tools"))
import check_colab  # noqa: E402  (tools/ is not a package)


def _pin(name: str) -> str:
    return re.search(rf"^{name}==(\S+)", (ROOT / "requirements.txt").read_text(), re.M).group(1)


def test_every_lesson_passed_beside_a_torch_the_course_does_not_pin():
    record = json.loads(RECORD.read_text(encoding="utf-8"))
    env = record["environment"]
    assert env["python"].startswith("3.12"), env
    assert env["torch"].split("+")[0] != _pin("torch"), "the check must run beside another torch than the pin"
    lessons = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "chapters").rglob("*.ipynb")
                     if ".ipynb_checkpoints" not in p.parts)
    missing = [lesson for lesson in lessons if lesson not in record["lessons"]]
    assert not missing, f"not checked on the Colab stack (run bash tools/check-colab {' '.join(missing)}): {missing}"
    failed = {k: r["error"] for k, r in record["lessons"].items() if r["status"] != "ok"}
    assert not failed, failed
    assert record["passed"] == record["total"] == len(record["lessons"])


def test_lessons_in_finds_folders_and_files_and_refuses_a_missing_one():
    found = check_colab.lessons_in(["chapters/ann"])
    assert "chapters/ann/backpropagation.ipynb" in found and all(p.startswith("chapters/ann/") for p in found)
    assert check_colab.lessons_in(["chapters/ann/backpropagation.ipynb"]) == ["chapters/ann/backpropagation.ipynb"]
    with pytest.raises(SystemExit, match="no such notebook: chapters/nope.ipynb"):
        check_colab.lessons_in(["chapters/nope.ipynb"])


def test_a_missing_python_is_a_clear_error():
    with pytest.raises(SystemExit, match=r"no python3\.99 here: install it"):
        check_colab.find_python("python3.99")
