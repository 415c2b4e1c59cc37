"""Grading results: one row per student and notebook, written as CSV and printed as a table."""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

#: Meaning of each status (also in book/instructors.md).
STATUSES: dict[str, str] = {
    "graded": "autograded; score is the sum of the passed test cells",
    "missing-notebook": "no notebook of the lab with the expected name (nor a single other notebook of the lab); "
    "another lab's notebook is named in the message",
    "invalid-notebook": "the file is not a valid notebook (too large, bad JSON, not nbformat 4, schema error)",
    "invalid-student-id": "the folder name cannot be used as an nbgrader student id",
    "timeout": "autograding the student took longer than --timeout seconds and was killed",
    "autograde-error": "nbgrader failed on the notebook (e.g. the kernel died); see the message and grading/logs/",
}

BASE_COLUMNS = [
    "student_id", "assignment", "notebook", "score", "max_score", "status", "message", "notes", "review",
]  # fmt: skip
NOTES_LIMIT = 2000  # characters of the notes column


@dataclass
class GradeRow:
    """Result for one notebook of one student. ``score`` is ``None`` unless ``status == "graded"``.

    ``notes``: what the grader noticed besides the status (a renamed notebook, restored locked
    cells, truncated output, suspicious code...); ``review``: at least one note asks for a person
    to look at the submission before the score is used.
    """

    student_id: str
    assignment: str
    notebook: str
    status: str
    message: str = ""
    score: float | None = None
    max_score: float | None = None
    exercises: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    review: bool = False

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}")
        self.message = " ".join(self.message.split())[:500]

    def add_note(self, text: str, review: bool = False) -> None:
        """Append a note (whitespace collapsed); ``review`` flags the row for a person."""
        text = " ".join(text.split()).replace(";", ",")  # "; " separates the notes in the CSV
        if text and text not in self.notes:
            self.notes.append(text)
        self.review = self.review or review

    @property
    def notes_text(self) -> str:
        """The notes as one CSV field."""
        text = "; ".join(self.notes)
        return text if len(text) <= NOTES_LIMIT else text[: NOTES_LIMIT - 3] + "..."


def _number(value: float | None) -> str:
    """``12.0`` -> ``"12"``, ``2.5`` -> ``"2.5"``, ``None`` -> ``""``."""
    return "" if value is None else f"{value:g}"


def _natural_key(text: str) -> list[object]:
    """Sort key putting ``ex2`` before ``ex10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def exercise_columns(rows: list[GradeRow]) -> list[str]:
    """Per-exercise column names present in ``rows``, in natural order."""
    return sorted({name for row in rows for name in row.exercises}, key=_natural_key)


def write_csv(rows: list[GradeRow], path: Path) -> None:
    """Write ``rows`` to ``path`` (UTF-8, one header line, per-exercise columns last)."""
    extra = exercise_columns(rows)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=BASE_COLUMNS + extra)
        writer.writeheader()
        for row in rows:
            record = {
                "student_id": row.student_id,
                "assignment": row.assignment,
                "notebook": row.notebook,
                "score": _number(row.score),
                "max_score": _number(row.max_score),
                "status": row.status,
                "message": row.message,
                "notes": row.notes_text,
                "review": "yes" if row.review else "",
            }
            record.update({name: _number(row.exercises.get(name)) for name in extra})
            writer.writerow(record)


def format_summary(rows: list[GradeRow], width: int = 60) -> str:
    """Plain-text table of ``rows`` followed by a count per status."""
    header = ("student", "notebook", "score", "status", "message")
    lines = [header]
    for row in rows:
        score = f"{_number(row.score) or '-'}/{_number(row.max_score) or '?'}"
        message = row.message if len(row.message) <= width else row.message[: width - 3] + "..."
        lines.append((row.student_id, row.notebook, score, row.status, message))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(line[:-1], widths)) + "  " + line[-1] for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * len(header[-1]))
    noted = [row for row in rows if row.notes]
    if noted:
        out.append("")
        out.append("notes ([review]: look at the submission before using its score):")
        for row in noted:
            flag = "[review] " if row.review else ""
            out.append(f"  {row.student_id} / {row.notebook}: {flag}{row.notes_text}")
    counts = Counter(row.status for row in rows)
    out.append("")
    summary = f"{len(rows)} row(s): " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    reviews = sum(row.review for row in rows)
    out.append(summary + (f"; {reviews} to review" if reviews else ""))
    return "\n".join(out)
