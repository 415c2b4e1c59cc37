"""Autograde a folder of submissions, one nbgrader process per student, into :class:`GradeRow` results.

For each student: find the expected notebooks, validate them (JSON + nbformat) before nbgrader
sees them, copy the valid ones into nbgrader's submitted folder, run
``nbgrader autograde ASSIGNMENT --student ID --force`` in a subprocess with a wall-clock limit,
then read the scores from the gradebook. A bad submission only ever produces its own row.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat

from .course import CourseLayout
from .gradebook import exercise_of, notebook_max_score, submitted_score
from .release import notebook_differences, register_assignment
from .report import GradeRow
from .runner import run_nbgrader, summarize_error
from .submissions import STUDENT_ID, Submission, find_submissions, student_folders
from .validation import validate_notebook

DEFAULT_TIMEOUT = 600.0
_GRADEBOOK_LOCK = threading.Lock()  # this process reads the gradebook from one thread at a time


def _grade_order(layout: CourseLayout, assignment: str, notebook: str) -> list[str]:
    """Grade ids of the graded cells of a source notebook, in notebook order."""
    nb = nbformat.read(layout.source_dir / assignment / notebook, as_version=4)
    meta = (cell.metadata.get("nbgrader", {}) for cell in nb.cells)
    return [m["grade_id"] for m in meta if m.get("grade") and "grade_id" in m]


def _graded_row(layout: CourseLayout, assignment: str, sub: Submission, order: list[str]) -> GradeRow:
    """Row of a notebook that nbgrader autograded without error."""
    notebook_id = Path(sub.notebook).stem
    result = submitted_score(layout.db_url, assignment, sub.student_id, notebook_id, order)
    if result is None:
        return GradeRow(
            sub.student_id,
            assignment,
            sub.notebook,
            "autograde-error",
            "nbgrader finished but the gradebook has no score for this notebook",
            max_score=notebook_max_score(layout.db_url, assignment, notebook_id),
        )
    exercises: dict[str, float] = {}
    for name, (score, _) in result.tests.items():
        exercises[exercise_of(name)] = exercises.get(exercise_of(name), 0.0) + score
    failed = result.failed
    message = f"failed: {', '.join(failed)}" if failed else "all tests passed"
    return GradeRow(
        sub.student_id,
        assignment,
        sub.notebook,
        "graded",
        message,
        score=result.score,
        max_score=result.max_score,
        exercises=exercises,
    )


def _autograde_student(
    layout: CourseLayout,
    assignment: str,
    student_id: str,
    valid: list[Submission],
    timeout: float,
    orders: dict[str, list[str]],
) -> list[GradeRow]:
    """Copy a student's valid notebooks into the submitted folder, autograde them, return rows."""
    folder = layout.step_folder(layout.submitted_dir, student_id, assignment)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for sub in valid:
        assert sub.path is not None
        shutil.copyfile(sub.path, folder / sub.notebook)
    args = ["autograde", assignment, f"--student={student_id}", "--force"]
    result = run_nbgrader(args, layout.root, timeout)
    if not result.ok and not result.timed_out and "database is locked" in result.output:
        result = run_nbgrader(args, layout.root, timeout)  # a parallel job held the SQLite gradebook
    rows = []
    with _GRADEBOOK_LOCK:
        for sub in valid:
            max_score = notebook_max_score(layout.db_url, assignment, Path(sub.notebook).stem)
            if result.timed_out:
                rows.append(
                    GradeRow(
                        student_id,
                        assignment,
                        sub.notebook,
                        "timeout",
                        f"autograding took longer than {timeout:g} s and was stopped",
                        max_score=max_score,
                    )
                )
            elif result.returncode != 0:
                rows.append(
                    GradeRow(
                        student_id,
                        assignment,
                        sub.notebook,
                        "autograde-error",
                        summarize_error(result.output),
                        max_score=max_score,
                    )
                )
            else:
                rows.append(_graded_row(layout, assignment, sub, orders[sub.notebook]))
    return rows


def _check_student(
    folder: Path, assignment: str, notebooks: list[str]
) -> tuple[list[Submission], dict[str, GradeRow]]:
    """Split a student's expected notebooks into valid ones and rows for the problems found."""
    student_id = folder.name
    if not STUDENT_ID.match(student_id):
        return [], {
            name: GradeRow(
                student_id,
                assignment,
                name,
                "invalid-student-id",
                "use letters, digits and . _ @ - only (no spaces)",
            )
            for name in notebooks
        }
    valid: list[Submission] = []
    problems: dict[str, GradeRow] = {}
    for sub in find_submissions(folder, assignment, notebooks):
        if sub.path is None:
            hint = f"; found instead: {', '.join(sub.others)}" if sub.others else ""
            problems[sub.notebook] = GradeRow(
                student_id,
                assignment,
                sub.notebook,
                "missing-notebook",
                f"no {sub.notebook} in {folder.name}/{hint}",
            )
            continue
        problem = validate_notebook(sub.path)
        if problem is None:
            valid.append(sub)
        else:
            problems[sub.notebook] = GradeRow(
                student_id, assignment, sub.notebook, "invalid-notebook", problem
            )
    return valid, problems


def grade_submissions(
    layout: CourseLayout,
    assignment: str,
    submissions_dir: Path,
    timeout: float = DEFAULT_TIMEOUT,
    jobs: int = 1,
    progress: Callable[[str], None] | None = None,
) -> list[GradeRow]:
    """Grade every student folder of ``submissions_dir``; one row per student and notebook.

    ``timeout`` is the wall-clock limit, in seconds, of one student's autograding; ``jobs`` is
    how many students are autograded at the same time (each one is an nbgrader process and a
    kernel; they share the SQLite gradebook, so keep it small).
    ``progress`` receives one line per step (default: print to stderr).
    """
    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    notebooks = layout.source_notebooks(assignment)
    orders = {name: _grade_order(layout, assignment, name) for name in notebooks}

    say(f"registering assignment {assignment!r} in the gradebook ({layout.db_url})")
    with tempfile.TemporaryDirectory(prefix="dlbook-grade-") as scratch:
        generated = register_assignment(layout, assignment, Path(scratch))
        stale = notebook_differences(generated, layout.release_dir / assignment)
    if stale:
        say(
            f"warning: {layout.release_dir / assignment} is out of date with the sources "
            f"({stale[0]}{', ...' if len(stale) > 1 else ''}); students may have an older lab. "
            f"Run `python -m dlbook.grading release {assignment}`."
        )

    checked: dict[str, tuple[list[Submission], dict[str, GradeRow]]] = {}
    for folder in student_folders(Path(submissions_dir)):
        try:
            checked[folder.name] = _check_student(folder, assignment, notebooks)
        except Exception as exc:  # e.g. an unreadable folder: report it, go on
            checked[folder.name] = (
                [],
                {
                    name: GradeRow(
                        folder.name, assignment, name, "autograde-error", f"{type(exc).__name__}: {exc}"
                    )
                    for name in notebooks
                },
            )

    def autograde(student_id: str) -> list[GradeRow]:
        valid = checked[student_id][0]
        say(f"autograding {student_id} ({', '.join(s.notebook for s in valid)})")
        try:
            return _autograde_student(layout, assignment, student_id, valid, timeout, orders)
        except Exception as exc:  # never lose the batch to one student
            return [
                GradeRow(
                    student_id, assignment, s.notebook, "autograde-error", f"{type(exc).__name__}: {exc}"
                )
                for s in valid
            ]

    to_grade = [student_id for student_id, (valid, _) in checked.items() if valid]
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:  # threads only wait on subprocesses
        graded = dict(zip(to_grade, pool.map(autograde, to_grade)))

    rows: list[GradeRow] = []
    for student_id, (_, problems) in checked.items():
        by_notebook = {**problems, **{row.notebook: row for row in graded.get(student_id, [])}}
        for name in notebooks:
            row = by_notebook[name]
            if row.max_score is None:
                row.max_score = notebook_max_score(layout.db_url, assignment, Path(name).stem)
            rows.append(row)
    return rows
