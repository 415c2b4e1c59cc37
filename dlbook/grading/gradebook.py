"""Read scores back from the nbgrader gradebook."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class NotebookScore:
    """Scores of one submitted notebook; ``tests`` maps each graded cell id to (score, max)."""

    score: float
    max_score: float
    tests: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def failed(self) -> list[str]:
        """Graded cells that did not get full marks, in gradebook order."""
        return [name for name, (score, top) in self.tests.items() if score < top]


def exercise_of(grade_id: str) -> str:
    """Exercise a graded cell belongs to: its id up to the first ``-`` (``ex3-hidden`` -> ``ex3``)."""
    return grade_id.split("-", 1)[0]


def notebook_max_score(db_url: str, assignment: str, notebook: str) -> float | None:
    """Maximum score of ``notebook`` (a name without ``.ipynb``), or ``None`` if unknown."""
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(db_url) as gb:
        try:
            return float(gb.find_notebook(notebook, assignment).max_score)
        except MissingEntry:
            return None


def submitted_score(
    db_url: str, assignment: str, student_id: str, notebook: str, order: list[str] | None = None
) -> NotebookScore | None:
    """Autograded scores of a student's notebook, or ``None`` if the gradebook has no such submission.

    ``order``: grade ids in notebook order (the gradebook does not keep it); others come last.
    """
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(db_url) as gb:
        try:
            submission = gb.find_submission_notebook(notebook, assignment, student_id)
        except MissingEntry:
            return None
        rank = {name: i for i, name in enumerate(order or [])}
        grades = sorted(submission.grades, key=lambda g: (rank.get(g.name, len(rank)), g.name))
        tests = {g.name: (float(g.score or 0.0), float(g.max_score or 0.0)) for g in grades}
        return NotebookScore(float(submission.score or 0.0), float(submission.max_score or 0.0), tests)


def autograded_cells(
    db_url: str, assignment: str, student_id: str, notebook: str
) -> dict[str, tuple[float | None, float]] | None:
    """``grade id -> (auto score, max score)`` of a submitted notebook, or ``None`` if the
    gradebook has no such submission."""
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(db_url) as gb:
        try:
            submission = gb.find_submission_notebook(notebook, assignment, student_id)
        except MissingEntry:
            return None
        return {
            g.name: (None if g.auto_score is None else float(g.auto_score), float(g.max_score or 0.0))
            for g in submission.grades
        }


def store_scores(
    db_url: str, assignment: str, student_id: str, notebook: str, scores: dict[str, float]
) -> None:
    """Record autograded ``scores`` (grade id -> points) of a student's notebook in a gradebook
    that knows the assignment: the student and the submission are created when needed, like
    ``nbgrader autograde`` does; manual scores are kept."""
    import warnings

    from nbgrader.api import Gradebook

    with Gradebook(db_url) as gb, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SQLAlchemy warns about nbgrader's own session use
        gb.update_or_create_student(student_id)
        gb.update_or_create_submission(assignment, student_id)
        for name, score in scores.items():
            grade = gb.find_grade(name, notebook, assignment, student_id)
            grade.auto_score = score
            grade.needs_manual_grade = grade.manual_score is not None
        gb.db.commit()


def stored_scores(db_url: str, assignment: str, student_id: str, notebook: str) -> dict[str, float | None]:
    """``grade id -> auto score`` of a student's notebook in a gradebook (empty if none)."""
    cells = autograded_cells(db_url, assignment, student_id, notebook)
    return {name: auto for name, (auto, _) in (cells or {}).items()}
