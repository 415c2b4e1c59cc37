"""Grading of the course labs with nbgrader.

The repository root is the nbgrader course root (see ``nbgrader_config.py``): instructor sources
live in ``solutions/``, generated student labs in ``labs/`` and everything produced while grading
(submissions, autograded copies, the SQLite gradebook) in the git-ignored ``grading/``.

Command line: ``python -m dlbook.grading`` (or ``dlbook-grade``) with the subcommands

- ``release ASSIGNMENT``: regenerate ``labs/ASSIGNMENT`` from ``solutions/ASSIGNMENT``;
- ``grade ASSIGNMENT SUBMISSIONS_DIR --out grades.csv``: autograde a folder of submissions.

Modules: :mod:`.course` (layout), :mod:`.runner` (subprocesses), :mod:`.release`,
:mod:`.validation`, :mod:`.submissions`, :mod:`.gradebook`, :mod:`.grade`, :mod:`.report`,
:mod:`.cli`. Nothing here is imported by the labs themselves.
"""

from __future__ import annotations

from .course import CourseLayout, find_course_root, load_layout
from .grade import grade_submissions
from .release import release
from .report import STATUSES, GradeRow

__all__ = [
    "STATUSES",
    "CourseLayout",
    "GradeRow",
    "find_course_root",
    "grade_submissions",
    "load_layout",
    "release",
]
