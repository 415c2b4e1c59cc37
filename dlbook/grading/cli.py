"""Command line: ``python -m dlbook.grading`` / ``dlbook-grade``.

Examples (from anywhere inside the repository)::

    python -m dlbook.grading release ann
    python -m dlbook.grading grade ann submissions/ --out grades.csv --timeout 600 --jobs 2

Exit status: 0 when the command completed (a batch with bad submissions included), 1 when
nbgrader itself could not run (e.g. generating the assignment failed), 2 for usage errors
(unknown assignment, missing folder, no course found).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .course import CourseError, CourseLayout, find_course_root, load_layout
from .grade import DEFAULT_MAX_OUTPUT, DEFAULT_TIMEOUT, grade_submissions
from .release import ReleaseError, release
from .report import format_summary, write_csv


def build_parser() -> argparse.ArgumentParser:
    """Argument parser with the ``release`` and ``grade`` subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--course-root",
        type=Path,
        default=None,
        help="nbgrader course root (default: the folder holding nbgrader_config.py, "
        "searched upwards from the current directory)",
    )
    parser = argparse.ArgumentParser(
        prog="dlbook-grade", description="Release and grade the course labs with nbgrader."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p_release = sub.add_parser(
        "release", parents=[common], help="regenerate labs/ASSIGNMENT from solutions/ASSIGNMENT"
    )
    p_release.add_argument("assignment", help="assignment name, e.g. ann")

    p_grade = sub.add_parser(
        "grade", parents=[common], help="autograde a folder of submissions into a CSV file"
    )
    p_grade.add_argument("assignment", help="assignment name, e.g. ann")
    p_grade.add_argument(
        "submissions",
        type=Path,
        metavar="SUBMISSIONS_DIR",
        help="one folder per student: <student_id>/<notebook>.ipynb "
        "or <student_id>/<assignment>/<notebook>.ipynb",
    )
    p_grade.add_argument(
        "--out", type=Path, default=Path("grades.csv"), help="CSV file to write (default: grades.csv)"
    )
    p_grade.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"wall-clock limit per student, in seconds (default: {DEFAULT_TIMEOUT:g})",
    )
    p_grade.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="students autograded in parallel (default: 1; at most the number of CPU cores)",
    )
    p_grade.add_argument(
        "--max-output",
        type=int,
        default=DEFAULT_MAX_OUTPUT,
        metavar="CHARS",
        help=f"characters of output kept per cell, 5x that per notebook (default: {DEFAULT_MAX_OUTPUT})",
    )
    return parser


def _layout(course_root: Path | None) -> CourseLayout:
    """Course layout from ``--course-root`` or the discovered course."""
    return load_layout(course_root if course_root is not None else find_course_root())


def _release(args: argparse.Namespace) -> int:
    layout = _layout(args.course_root)
    files = release(layout, args.assignment)
    for path in files:
        print(f"wrote {path.relative_to(layout.root)}")
    return 0


def _grade(args: argparse.Namespace) -> int:
    layout = _layout(args.course_root)
    layout.source_notebooks(args.assignment)  # unknown assignment: usage error before any work
    if not args.submissions.is_dir():
        raise CourseError(f"submissions folder not found: {args.submissions}")
    if args.timeout <= 0 or args.jobs < 1 or args.max_output < 1:
        raise CourseError("--timeout, --jobs and --max-output must be positive")
    rows = grade_submissions(
        layout,
        args.assignment,
        args.submissions,
        timeout=args.timeout,
        jobs=args.jobs,
        max_output=args.max_output,
    )
    write_csv(rows, args.out)
    print(format_summary(rows))
    print(f"\nwrote {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return _release(args) if args.command == "release" else _grade(args)
    except CourseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ReleaseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
