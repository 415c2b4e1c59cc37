"""The checks every graded lab gets (``test_cnn_lab``, ``test_rnn_lab``, ``test_optimization_lab``).

One ``grade`` batch per lab, in a temporary copy of the course (the repository's ``labs/`` and
``grading/`` are never touched), over submissions built from the solution: the solution itself
(full marks), the lab as released (zero), and students whose named solution cells are replaced by
half-right answers (each such exercise keeps its visible points and loses its hidden ones, so
partial credit is exact). The same batch checks that the committed lab is in sync with its source.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import nbformat
import pytest
import test_lab_sync as sync  # tests/ is on sys.path: pytest imports these rootless modules by name
from grading_helpers import REPO, cell_points, make_course, repo_state, run_grade


@dataclass(frozen=True)
class Lab:
    assignment: str
    notebook: str

    @property
    def solution(self) -> Path:
        return REPO / "solutions" / self.assignment / self.notebook

    @property
    def release(self) -> Path:
        return REPO / "labs" / self.assignment / self.notebook

    @cached_property
    def cells(self) -> dict[str, dict[str, float]]:
        """Points per test cell, grouped by exercise: ``{"ex1": {"ex1-visible": 1.0, ...}, ...}``."""
        grouped: dict[str, dict[str, float]] = {}
        for grade_id, points in cell_points(self.solution).items():
            grouped.setdefault(grade_id.split("-")[0], {})[grade_id] = points
        return grouped

    @property
    def points(self) -> dict[str, float]:
        return {exercise: sum(cells.values()) for exercise, cells in self.cells.items()}

    @property
    def max_score(self) -> float:
        return sum(self.points.values())

    def with_cells_replaced(self, sources: dict[str, str]) -> nbformat.NotebookNode:
        """The solution with the source of each cell ``grade_id`` replaced (a student's edits)."""
        nb = nbformat.read(self.solution, as_version=4)
        for grade_id, source in sources.items():
            cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id]
            assert len(cells) == 1, grade_id
            cells[0].source = source
        return nb

    def grade(self, root: Path, edited: dict[str, dict[str, str]]) -> dict:
        """One batch: ``full`` (the solution, nested layout), ``untouched`` (the release) and one
        student per entry of ``edited`` (student id -> replaced cell sources)."""
        course = make_course(root / "course")
        subs = root / "submissions"
        (subs / "full" / self.assignment).mkdir(parents=True)  # <student>/<assignment>/<notebook>
        shutil.copy2(self.solution, subs / "full" / self.assignment / self.notebook)
        (subs / "untouched").mkdir()
        shutil.copy2(self.release, subs / "untouched" / self.notebook)
        for student, sources in edited.items():
            (subs / student).mkdir()
            nbformat.write(self.with_cells_replaced(sources), subs / student / self.notebook)
        before = repo_state()
        result = run_grade(course, self.assignment, subs, root / "grades.csv", "--timeout", "300", "--jobs", "2")
        return {**result, "repo_state": before, "students": ["full", "untouched", *edited]}


def check_every_student_graded(lab: Lab, batch: dict) -> None:
    assert batch["code"] == 0, batch["stdout"]
    assert sorted(batch["by_student"]) == sorted(batch["students"])
    for row in batch["rows"]:
        assert (row["assignment"], row["notebook"]) == (lab.assignment, lab.notebook)
        assert row["status"] == "graded", f"{row['student_id']}: {row['status']}: {row['message']} ({row.get('notes')})"
        assert float(row["max_score"]) == lab.max_score


def check_release_in_sync(lab: Lab, batch: dict) -> None:
    """``grade`` generates the assignment afresh from ``solutions/`` (in the temporary course) and
    warns when the lab students have, ``labs/``, differs from it."""
    assert f"registering assignment '{lab.assignment}'" in batch["log"], batch["log"]
    stale = [line for line in batch["log"].splitlines() if "out of date" in line]
    assert not stale, sync.RELEASE_HINT.format(a=lab.assignment) + ":\n" + "\n".join(stale)


def check_full_marks(lab: Lab, batch: dict) -> None:
    row = batch["by_student"]["full"]
    assert float(row["score"]) == lab.max_score, row
    assert {ex: float(row[ex]) for ex in lab.points} == lab.points
    assert row["message"] == "all tests passed"


def check_zero(lab: Lab, batch: dict) -> None:
    row = batch["by_student"]["untouched"]
    assert float(row["score"]) == 0, row
    assert all(float(row[ex]) == 0 for ex in lab.points), row


def check_visible_only(lab: Lab, batch: dict, student: str, exercises: list[str]) -> None:
    """Each exercise in ``exercises`` earns exactly its visible test's points and fails its hidden
    test; every other exercise earns full points."""
    row = batch["by_student"][student]
    expected = {ex: lab.cells[ex][f"{ex}-visible"] if ex in exercises else lab.points[ex] for ex in lab.points}
    assert {ex: float(row[ex]) for ex in lab.points} == expected, row
    assert float(row["score"]) == sum(expected.values()) < lab.max_score, row
    for ex in exercises:
        assert f"{ex}-hidden" in row["message"] and f"{ex}-visible" not in row["message"], row["message"]


def check_repository_untouched(batch: dict, limit_seconds: float) -> None:
    assert repo_state() == batch["repo_state"]
    assert batch["seconds"] < limit_seconds, f"grading took {batch['seconds']:.0f} s"


class LabGradingChecks:
    """Every check above as pytest tests over one ``grade`` batch. A lab's test module subclasses it as
    ``Test<Name>Lab`` and sets the class attributes; pytest collects the inherited tests there (this
    base class is not collected: its name does not start with ``Test``)."""

    lab: Lab
    partial: dict[str, str]  # cell sources of the student with one exercise half right
    partial_exercise: str  # that exercise ("ex4"): it keeps its visible points, loses its hidden ones
    limit_seconds: float = 180

    @classmethod
    def edited(cls) -> dict[str, dict[str, str]]:
        return {"partial": cls.partial}

    @pytest.fixture(scope="class")
    @classmethod
    def batch(cls, tmp_path_factory: pytest.TempPathFactory) -> dict:
        """One ``grade`` run over the solution, the release and the edited students; rows by student."""
        return cls.lab.grade(tmp_path_factory.mktemp(f"{cls.lab.assignment}-grading"), cls.edited())

    exercises: int = 5  # the CNN lab has eight

    def test_every_exercise_is_worth_three_points(self) -> None:
        assert self.lab.points == {f"ex{i}": 3.0 for i in range(1, self.exercises + 1)}, self.lab.points

    @pytest.mark.slow
    def test_batch_grades_every_student(self, batch: dict) -> None:
        check_every_student_graded(self.lab, batch)

    @pytest.mark.slow
    def test_committed_lab_matches_its_release(self, batch: dict) -> None:
        check_release_in_sync(self.lab, batch)

    @pytest.mark.slow
    def test_solution_gets_full_marks(self, batch: dict) -> None:
        check_full_marks(self.lab, batch)

    @pytest.mark.slow
    def test_unmodified_lab_gets_zero(self, batch: dict) -> None:
        check_zero(self.lab, batch)

    @pytest.mark.slow
    def test_half_right_exercise_gets_partial_credit(self, batch: dict) -> None:
        check_visible_only(self.lab, batch, "partial", [self.partial_exercise])

    @pytest.mark.slow
    def test_grading_never_touches_the_repository(self, batch: dict) -> None:
        check_repository_untouched(batch, limit_seconds=self.limit_seconds)


def graded_cell_outcomes(lab: Lab, sources: dict[str, str]) -> dict[str, bool]:
    """Run the solution with the cells ``sources`` replaced, in this process, cell by cell as a
    kernel would; whether each graded test cell passed (its hidden tests included: the solution
    holds them). A test cell that raises fails; a failing solution cell fails the run."""
    nb = lab.with_cells_replaced(sources)
    namespace: dict = {"__name__": "__lab__"}
    passed: dict[str, bool] = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        meta = cell.metadata.get("nbgrader", {})
        code = compile(cell.source, f"{lab.notebook}:{meta.get('grade_id', cell.get('id'))}", "exec")
        if meta.get("grade"):
            try:
                exec(code, namespace)
                passed[meta["grade_id"]] = True
            except Exception:
                passed[meta["grade_id"]] = False
        else:
            exec(code, namespace)
    return passed


class EveryExerciseHalfRight(LabGradingChecks):
    """Adds a student with *every* exercise half right at once (``half_right``): each passes its
    visible test and fails its hidden one, so each exercise's partial credit is shown to be real.

    That student's batch row already shows how one half-right exercise is scored, so the second
    half-right answer of ``partial`` is checked without a grading run (a run costs a kernel and
    nbgrader's start, seconds of CI): in this process, it passes its exercise's visible test,
    fails the hidden one, and leaves every other exercise passing."""

    half_right: dict[str, str]

    @classmethod
    def edited(cls) -> dict[str, dict[str, str]]:
        return {"half-right": cls.half_right}

    def test_half_right_exercise_gets_partial_credit(self) -> None:  # no batch: see the class docstring
        passed = graded_cell_outcomes(self.lab, self.partial)
        ex = self.partial_exercise
        assert passed[f"{ex}-visible"] and not passed[f"{ex}-hidden"], passed
        assert all(ok for cell, ok in passed.items() if not cell.startswith(f"{ex}-")), passed

    @pytest.mark.slow
    def test_every_exercise_has_real_partial_credit(self, batch: dict) -> None:
        check_visible_only(self.lab, batch, "half-right", list(self.lab.points))
