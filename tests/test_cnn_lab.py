"""The CNN lab (``solutions/cnn`` -> ``labs/cnn``): clean, in sync with its release, graded as intended.

The grading checks that ``tests/test_grading.py`` runs for the ANN lab, for the ``cnn``
assignment (the notebook checks of ``tests/test_lab_sync.py`` cover every lab folder). One
``grade cnn`` batch, in a temporary copy of the course (``labs/`` and ``grading/`` of the repository
are never touched), grades three submissions: the solution, the lab as released, and one with
exercise 4 half right. The same batch checks that ``labs/cnn`` is in sync: ``grade`` generates the
assignment afresh from ``solutions/cnn`` and warns when the committed lab differs from it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
import time
from pathlib import Path

import nbformat
import pytest
import test_lab_sync as sync  # tests/ is on sys.path: pytest imports these rootless modules by name
from grading_helpers import make_course as _make_course
from grading_helpers import tree_digest as _tree_digest

from dlbook.grading import cli

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENT = "cnn"
NOTEBOOK = "cnn-lab.ipynb"
SOLUTION = REPO / "solutions" / ASSIGNMENT / NOTEBOOK
LAB = REPO / "labs" / ASSIGNMENT / NOTEBOOK


def _points(path: Path) -> dict[str, float]:
    """Points per exercise (``ex1`` ...), from the nbgrader metadata of a source notebook."""
    points: dict[str, float] = {}
    for cell in nbformat.read(path, as_version=4).cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("grade"):
            exercise = meta["grade_id"].split("-")[0]
            points[exercise] = points.get(exercise, 0.0) + float(meta["points"])
    return points


POINTS = _points(SOLUTION)
MAX_SCORE = sum(POINTS.values())

# Exercise 4 with the classic bug: `=` instead of `+=`, so an input that wins several overlapping
# windows keeps only the last gradient. Right for non-overlapping windows (the visible tests),
# wrong for overlapping ones (the hidden tests): the exercise earns part of its points.
EX4_OVERWRITES = """def maxpool2d_backward(x, dy, kernel_size, stride):
    dx = torch.zeros_like(x)
    n, c, h_out, w_out = dy.shape
    for i in range(h_out):
        for j in range(w_out):
            window = x[:, :, i * stride : i * stride + kernel_size, j * stride : j * stride + kernel_size]
            winner = window.reshape(n, c, -1).argmax(dim=-1)
            for b in range(n):
                for ch in range(c):
                    u, v = divmod(winner[b, ch].item(), kernel_size)
                    dx[b, ch, i * stride + u, j * stride + v] = dy[b, ch, i, j]  # should be +=
    return dx
"""


def _with_cell_replaced(grade_id: str, source: str) -> nbformat.NotebookNode:
    """The solution notebook with the source of cell ``grade_id`` replaced (a student's edit)."""
    nb = nbformat.read(SOLUTION, as_version=4)
    cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id]
    assert len(cells) == 1, grade_id
    cells[0].source = source
    return nb


def test_the_lab_has_five_exercises_of_three_points() -> None:
    assert POINTS == {f"ex{i}": 3.0 for i in range(1, 6)}, POINTS


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One ``grade cnn`` run over three submissions in a temporary course; rows by student."""
    root = tmp_path_factory.mktemp("cnn-grading")
    course = _make_course(root / "course")
    subs = root / "submissions"
    (subs / "full" / ASSIGNMENT).mkdir(parents=True)  # nested layout <student>/<assignment>/<notebook>
    shutil.copy2(SOLUTION, subs / "full" / ASSIGNMENT / NOTEBOOK)
    (subs / "untouched").mkdir()
    shutil.copy2(LAB, subs / "untouched" / NOTEBOOK)
    (subs / "partial").mkdir()
    nbformat.write(_with_cell_replaced("ex4-solution", EX4_OVERWRITES), subs / "partial" / NOTEBOOK)
    out = root / "grades.csv"
    repo_state = (_tree_digest(REPO / "labs"), (REPO / "grading").exists())
    stdout, stderr = io.StringIO(), io.StringIO()
    start = time.monotonic()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main(
            ["grade", ASSIGNMENT, str(subs), "--out", str(out), "--course-root", str(course)]
            + ["--timeout", "300", "--jobs", "2"]
        )
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return {
        "code": code,
        "rows": rows,
        "by_student": {r["student_id"]: r for r in rows},
        "stdout": stdout.getvalue(),
        "log": stderr.getvalue(),  # progress lines, and the warning if labs/cnn is stale
        "seconds": time.monotonic() - start,
        "repo_state": repo_state,
    }


@pytest.mark.slow
def test_batch_grades_every_student(batch: dict) -> None:
    assert batch["code"] == 0, batch["stdout"]
    assert sorted(batch["by_student"]) == ["full", "partial", "untouched"]
    for row in batch["rows"]:
        assert (row["assignment"], row["notebook"]) == (ASSIGNMENT, NOTEBOOK)
        assert row["status"] == "graded", f"{row['student_id']}: {row['status']}: {row['message']} ({row.get('notes')})"
        assert float(row["max_score"]) == MAX_SCORE == 15


@pytest.mark.slow
def test_committed_lab_matches_its_release(batch: dict) -> None:
    """``grade`` generates the assignment afresh from solutions/cnn (in the temporary course) and
    warns when the lab students have, labs/cnn, differs from it (``notebook_differences``)."""
    assert "registering assignment 'cnn'" in batch["log"], batch["log"]
    stale = [line for line in batch["log"].splitlines() if "out of date" in line]
    assert not stale, sync.RELEASE_HINT.format(a=ASSIGNMENT) + ":\n" + "\n".join(stale)


@pytest.mark.slow
def test_solution_gets_full_marks(batch: dict) -> None:
    row = batch["by_student"]["full"]
    assert float(row["score"]) == MAX_SCORE, row
    assert {ex: float(row[ex]) for ex in POINTS} == POINTS
    assert row["message"] == "all tests passed"


@pytest.mark.slow
def test_unmodified_lab_gets_zero(batch: dict) -> None:
    row = batch["by_student"]["untouched"]
    assert float(row["score"]) == 0, row
    assert all(float(row[ex]) == 0 for ex in POINTS), row


@pytest.mark.slow
def test_half_right_exercise_gets_partial_credit(batch: dict) -> None:
    row = batch["by_student"]["partial"]
    assert 0 < float(row["score"]) < MAX_SCORE, row
    assert 0 < float(row["ex4"]) < POINTS["ex4"], "exercise 4 passes its visible test only"
    assert float(row["score"]) == MAX_SCORE - POINTS["ex4"] + float(row["ex4"])
    assert "ex4-hidden" in row["message"] and "ex4-visible" not in row["message"], row["message"]


@pytest.mark.slow
def test_grading_never_touches_the_repository(batch: dict) -> None:
    assert (_tree_digest(REPO / "labs"), (REPO / "grading").exists()) == batch["repo_state"]
    assert batch["seconds"] < 120, f"grading three notebooks took {batch['seconds']:.0f} s"
