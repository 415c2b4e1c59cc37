"""Grading of the course labs with nbgrader.

The repository root is the nbgrader course root (see ``nbgrader_config.py``): instructor sources
live in ``solutions/``, generated student labs in ``labs/`` and everything produced while grading
(submissions, autograded copies, the SQLite gradebook) in the git-ignored ``grading/``.

Command line: ``python -m dlbook.grading`` (or ``dlbook-grade``) with the subcommands

- ``release ASSIGNMENT``: regenerate ``labs/ASSIGNMENT`` from ``solutions/ASSIGNMENT``, each
  notebook stamped with its lab's identity;
- ``grade ASSIGNMENT SUBMISSIONS_DIR --out grades.csv``: autograde a folder of submissions (also
  ``grading/submitted``, where ``nbgrader collect`` puts them), which is never modified; with
  ``--zip EXPORT.zip`` instead of the folder, a Canvas or Moodle download (:mod:`.lms`);
- ``feedback ASSIGNMENT``: one HTML file per student and notebook, without the hidden tests.

Its dependencies are the ``grading`` extra: ``pip install 'dlbook[grading]'``.

Modules: :mod:`.course` (layout), :mod:`.runner` (subprocesses), :mod:`.release`,
:mod:`.validation`, :mod:`.submissions` (finding notebooks, the lab stamp), :mod:`.snapshot`
(the submissions are graded from a copy and proven unchanged), :mod:`.integrity` (locked cells,
code and output checks), :mod:`.sandbox` (one throw-away course per student), :mod:`.executor`
and :mod:`.kernel_guard` (loaded by nbgrader and by the student's kernel inside a sandbox),
:mod:`.gradebook`, :mod:`.grade`, :mod:`.feedback`, :mod:`.report`, :mod:`.lms` (LMS zips),
:mod:`.cli`. Nothing here is
imported by the labs themselves.

The names below are imported lazily: the sandbox loads :mod:`.executor` into nbgrader and
:mod:`.kernel_guard` into the student's kernel, and neither should pay for the rest.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "STATUSES": ".report",
    "GradeRow": ".report",
    "CourseLayout": ".course",
    "find_course_root": ".course",
    "load_layout": ".course",
    "grade_submissions": ".grade",
    "ImportReport": ".lms",
    "import_zip": ".lms",
}  # the release function is dlbook.grading.release.release (the submodule has the same name)

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
