"""Grading with nbgrader, end to end, in a temporary copy of the course.

One ``grade`` batch (module fixture) covers every kind of submission; the real ``grading/`` and
``labs/`` of the repository are never touched. nbgrader and alembic are found next to
``sys.executable`` (dlbook.grading.runner puts that ``bin`` directory first on PATH).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import nbformat
import pytest
from grading_helpers import make_course as _make_course  # also imported from here by other tests
from grading_helpers import points_of, repo_state, run_grade

from dlbook.grading import cli
from dlbook.grading.report import STATUSES, GradeRow, format_summary
from dlbook.grading.runner import run_command, summarize_error, tool_env
from dlbook.grading.submissions import find_submissions
from dlbook.grading.validation import validate_notebook

REPO = Path(__file__).resolve().parents[1]
SOLUTION = REPO / "solutions" / "ann" / "mlp-lab.ipynb"
LAB = REPO / "labs" / "ann" / "mlp-lab.ipynb"


POINTS = points_of(SOLUTION)  # points per exercise, from the source notebook's nbgrader metadata
MAX_SCORE = sum(POINTS.values())


def _with_cell_replaced(grade_id: str, source: str) -> nbformat.NotebookNode:
    """The solution notebook with the source of cell ``grade_id`` replaced (a student's edit)."""
    nb = nbformat.read(SOLUTION, as_version=4)
    cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id]
    assert len(cells) == 1, grade_id
    cells[0].source = source
    return nb


def _make_submissions(root: Path) -> Path:
    subs = root / "submissions"
    # full marks, in the nested layout <student>/<assignment>/<notebook>
    (subs / "full" / "ann").mkdir(parents=True)
    shutil.copy2(SOLUTION, subs / "full" / "ann" / "mlp-lab.ipynb")
    # the lab as released: every test fails
    (subs / "untouched").mkdir()
    shutil.copy2(LAB, subs / "untouched" / "mlp-lab.ipynb")
    # exercise 3 wrong (the ReLU mask is forgotten), the rest right
    broken = """def linear_relu_backward(x, W, b, grad_out):
    dz = grad_out  # forgot the ReLU mask
    return dz @ W.T, x.T @ dz, dz.sum(dim=0)
"""
    (subs / "partial").mkdir()
    nbformat.write(_with_cell_replaced("ex3-solution", broken), subs / "partial" / "mlp-lab.ipynb")
    # the first exercise's cell raises at import time: its function never exists
    ex1 = next(
        c
        for c in nbformat.read(SOLUTION, as_version=4).cells
        if c.metadata.get("nbgrader", {}).get("grade_id") == "ex1-solution"
    )
    crash = "import tensorflow_is_not_installed_here as tf\n\n" + ex1.source
    (subs / "crash").mkdir()
    nbformat.write(_with_cell_replaced("ex1-solution", crash), subs / "crash" / "mlp-lab.ipynb")
    # a cell kills the kernel: nbgrader itself fails on this notebook
    nb = nbformat.read(SOLUTION, as_version=4)
    killer = nbformat.v4.new_code_cell("import os\nos._exit(1)")
    killer.id = "student-added"
    nb.cells.insert(2, killer)
    (subs / "kernel-dies").mkdir()
    nbformat.write(nb, subs / "kernel-dies" / "mlp-lab.ipynb")
    # truncated JSON
    (subs / "garbled").mkdir()
    (subs / "garbled" / "mlp-lab.ipynb").write_text(
        SOLUTION.read_text(encoding="utf-8")[:500], encoding="utf-8"
    )
    # no notebook at all
    (subs / "nobody").mkdir()
    (subs / "nobody" / "notes.txt").write_text("I will send it tomorrow\n", encoding="utf-8")
    return subs


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run one ``grade`` over all the submissions; return exit code, rows by student, stdout."""
    root = tmp_path_factory.mktemp("grading")
    course = _make_course(root / "course")
    subs = _make_submissions(root)
    before = repo_state()
    result = run_grade(course, "ann", subs, root / "grades.csv", "--timeout", "300", "--jobs", "2")
    return {**result, "course": course, "repo_state": before}


@pytest.mark.slow
def test_batch_completes_with_one_row_per_student(batch: dict) -> None:
    assert batch["code"] == 0
    students = ["crash", "full", "garbled", "kernel-dies", "nobody", "partial", "untouched"]
    assert sorted(r["student_id"] for r in batch["rows"]) == students
    for row in batch["rows"]:
        assert row["assignment"] == "ann" and row["notebook"] == "mlp-lab.ipynb"
        assert row["status"] in STATUSES
        assert float(row["max_score"]) == MAX_SCORE
        assert row["message"], row
    for student in students:
        assert student in batch["stdout"]
    assert (batch["course"] / "grading" / "gradebook.db").is_file()


@pytest.mark.slow
def test_committed_lab_matches_its_release(batch: dict) -> None:
    """``grade`` released labs/ann afresh from solutions/ann and found it identical, to the byte."""
    from lab_checks import Lab, check_release_in_sync

    check_release_in_sync(Lab("ann", "mlp-lab.ipynb"), batch)


@pytest.mark.slow
def test_solution_gets_full_marks(batch: dict) -> None:
    row = batch["by_student"]["full"]
    assert row["status"] == "graded", row
    assert float(row["score"]) == MAX_SCORE, row
    assert {ex: float(row[ex]) for ex in POINTS} == POINTS
    assert row["message"] == "all tests passed"


@pytest.mark.slow
def test_unmodified_lab_gets_zero(batch: dict) -> None:
    row = batch["by_student"]["untouched"]
    assert row["status"] == "graded", row
    assert float(row["score"]) == 0
    assert all(float(row[ex]) == 0 for ex in POINTS)


@pytest.mark.slow
def test_partly_wrong_submission_gets_partial_credit(batch: dict) -> None:
    row = batch["by_student"]["partial"]
    assert row["status"] == "graded", row
    assert 0 < float(row["score"]) < MAX_SCORE
    assert float(row["ex3"]) == 0, "exercise 3 is wrong"
    assert float(row["score"]) == MAX_SCORE - POINTS["ex3"]
    assert "ex3-visible" in row["message"] and "ex1" not in row["message"]


@pytest.mark.slow
def test_cell_raising_at_import_costs_its_exercise_only(batch: dict) -> None:
    row = batch["by_student"]["crash"]
    assert row["status"] == "graded", row
    assert float(row["ex1"]) == 0
    assert float(row["score"]) == MAX_SCORE - POINTS["ex1"]
    assert "ex1-visible" in row["message"]


@pytest.mark.slow
def test_dead_kernel_is_an_autograde_error(batch: dict) -> None:
    row = batch["by_student"]["kernel-dies"]
    assert row["status"] == "autograde-error", row
    assert row["score"] == ""
    assert "kernel died" in row["message"].lower()
    assert "autograde-error on two attempts" in row["notes"], row  # retried once, then reported


@pytest.mark.slow
def test_malformed_json_is_reported_not_graded(batch: dict) -> None:
    row = batch["by_student"]["garbled"]
    assert row["status"] == "invalid-notebook", row
    assert row["message"].startswith("invalid JSON:") and "line" in row["message"]
    assert row["score"] == ""


@pytest.mark.slow
def test_folder_without_notebook_is_missing(batch: dict) -> None:
    row = batch["by_student"]["nobody"]
    assert row["status"] == "missing-notebook", row
    assert row["score"] == ""


@pytest.mark.slow
def test_grading_never_touches_the_repository(batch: dict) -> None:
    assert repo_state() == batch["repo_state"]
    assert batch["seconds"] < 240, f"grading the batch took {batch['seconds']:.0f} s"


# ----------------------------------------------------------------------------- fast unit tests


def test_validation_reports_the_first_problem(tmp_path: Path) -> None:
    good = tmp_path / "good.ipynb"
    shutil.copy2(SOLUTION, good)
    assert validate_notebook(good) is None

    cases = {
        "truncated.ipynb": (SOLUTION.read_text(encoding="utf-8")[:200], "invalid JSON"),
        "empty.ipynb": ("", "empty file"),
        "list.ipynb": ("[1, 2]", "not a Jupyter notebook"),
        "v3.ipynb": (
            json.dumps({"cells": [], "nbformat": 3, "nbformat_minor": 0, "metadata": {}}),
            "nbformat 3",
        ),
        "schema.ipynb": (
            json.dumps(
                {
                    "cells": [{"cell_type": "code", "source": "1"}],
                    "metadata": {},
                    "nbformat": 4,
                    "nbformat_minor": 5,
                }
            ),
            "invalid notebook",
        ),
    }
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        message = validate_notebook(tmp_path / name)
        assert message is not None and expected in message, (name, message)
    (tmp_path / "binary.ipynb").write_bytes(b"\xff\xfe\x00garbage")
    assert "UTF-8" in validate_notebook(tmp_path / "binary.ipynb")


def test_both_submission_layouts_are_found(tmp_path: Path) -> None:
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "mlp-lab.ipynb").write_text("{}")
    (tmp_path / "nested" / "ann").mkdir(parents=True)
    (tmp_path / "nested" / "ann" / "mlp-lab.ipynb").write_text("{}")
    (tmp_path / "renamed").mkdir()
    (tmp_path / "renamed" / "Copy of mlp-lab.ipynb").write_text("{}")
    (flat,) = find_submissions(tmp_path / "flat", "ann", ["mlp-lab.ipynb"])
    (nested,) = find_submissions(tmp_path / "nested", "ann", ["mlp-lab.ipynb"])
    (renamed,) = find_submissions(tmp_path / "renamed", "ann", ["mlp-lab.ipynb"])
    assert flat.path == tmp_path / "flat" / "mlp-lab.ipynb"
    assert nested.path == tmp_path / "nested" / "ann" / "mlp-lab.ipynb"
    assert renamed.path is None and renamed.others == ("Copy of mlp-lab.ipynb",)


def test_timeout_kills_the_command_and_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True)\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(60)\n"
    )
    start = time.monotonic()
    result = run_command([sys.executable, "-c", script], cwd=tmp_path, timeout=3)
    assert result.timed_out and not result.ok and result.returncode is None
    assert time.monotonic() - start < 30
    psutil = pytest.importorskip("psutil")
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the grandchild process survived the timeout"
        time.sleep(0.1)


def test_tools_come_from_the_running_interpreter() -> None:
    env = tool_env({"PATH": "/usr/bin"})
    first = env["PATH"].split(":")[0]
    assert Path(first) == Path(sys.executable).parent
    assert (Path(first) / "alembic").exists() or sys.platform == "win32", "alembic must be next to python"


def test_error_summary_prefers_the_specific_reason() -> None:
    log = (
        "[AutogradeApp | ERROR] Kernel died while waiting for execute reply.\n"
        "[AutogradeApp | ERROR] There was an error processing assignment: x\n"
        "Traceback (most recent call last):\n  File 'x'\n    nbclient.exceptions.DeadKernelError: Kernel died\n"
    )
    assert summarize_error(log) == "Kernel died while waiting for execute reply."
    assert summarize_error("Traceback:\n  File 'x'\nValueError: bad\n") == "ValueError: bad"
    assert summarize_error("") == "no output"


def test_summary_table_lists_every_row() -> None:
    rows = [
        GradeRow("a", "ann", "mlp-lab.ipynb", "graded", "all tests passed", 15, 15),
        GradeRow("b", "ann", "mlp-lab.ipynb", "missing-notebook", "no mlp-lab.ipynb in b/", None, 15),
    ]
    text = format_summary(rows)
    assert "15/15" in text and "-/15" in text and "1 graded, 1 missing-notebook" in text


def test_usage_errors_exit_non_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    course = tmp_path / "course"
    course.mkdir()
    shutil.copy2(REPO / "nbgrader_config.py", course)
    shutil.copytree(REPO / "solutions", course / "solutions")
    subs = tmp_path / "subs"
    subs.mkdir()
    assert (
        cli.main(["grade", "nope", str(subs), "--course-root", str(course), "--out", str(tmp_path / "g.csv")])
        == 2
    )
    assert "unknown assignment" in capsys.readouterr().err
    assert (
        cli.main(
            [
                "grade",
                "ann",
                str(tmp_path / "absent"),
                "--course-root",
                str(course),
                "--out",
                str(tmp_path / "g.csv"),
            ]
        )
        == 2
    )
    assert "not found" in capsys.readouterr().err
    assert cli.main(["release", "ann", "--course-root", str(tmp_path)]) == 2
    assert not (tmp_path / "g.csv").exists()
    with pytest.raises(SystemExit) as exc:
        cli.main(["grade"])
    assert exc.value.code == 2
