"""Command line: ``python -m dlbook.grading`` / ``dlbook-grade``.

Examples (from anywhere inside the repository)::

    python -m dlbook.grading release ann
    python -m dlbook.grading grade ann submissions/ --out grades.csv --timeout 600 --jobs 2
    python -m dlbook.grading grade ann grading/submitted    # what nbgrader collect gathered
    python -m dlbook.grading grade ann --zip canvas-export.zip   # an LMS download (Canvas, Moodle)
    python -m dlbook.grading feedback ann

Exit status: 0 when the command completed (a batch with bad submissions included), 1 when
nbgrader itself could not run (e.g. generating the assignment failed), when feedback could not be
written for every autograded notebook or showed hidden tests (deleted), or when the grader's
dependencies are not installed (``pip install 'dlbook[grading]'``); 2 for usage errors (unknown
assignment, missing folder, a submissions folder inside the grader's output, no course found, a
``--zip`` that cannot be imported).

Only the standard library and :mod:`.course` are imported up front: without the ``grading``
extra, every command fails with one line naming it instead of a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .course import CourseError, CourseLayout, ReleaseError, find_course_root
from .runner import DEFAULT_MAX_OUTPUT, DEFAULT_TIMEOUT

#: Top-level modules that only the ``grading`` extra installs (directly or through nbgrader).
GRADER_MODULES = frozenset(
    {"nbgrader", "nbformat", "nbconvert", "nbclient", "traitlets", "jupyter_client", "sqlalchemy", "psutil"}
)
INSTALL_HINT = "the grader needs: pip install 'dlbook[grading]'"


def build_parser() -> argparse.ArgumentParser:
    """Argument parser with the ``release``, ``grade`` and ``feedback`` subcommands."""
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
        nargs="?",
        metavar="SUBMISSIONS_DIR",
        help="one folder per student: <student_id>/<notebook>.ipynb "
        "or <student_id>/<assignment>/<notebook>.ipynb (e.g. grading/submitted); never modified",
    )
    p_grade.add_argument(
        "--zip",
        type=Path,
        default=None,
        metavar="EXPORT.zip",
        help="instead of SUBMISSIONS_DIR: a zip downloaded from Canvas or Moodle, imported into a new "
        "folder grading/imported/<time>/ and graded from there (the zip is only read)",
    )
    p_grade.add_argument(
        "--pattern",
        default=None,
        metavar="REGEX",
        help="with --zip: regular expression matched against the whole path of each file in the zip, "
        "with the named groups student_id and file (default: Canvas, then Moodle names)",
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

    p_feedback = sub.add_parser(
        "feedback",
        parents=[common],
        help="write one HTML feedback file per student from the autograded notebooks, "
        "without the hidden tests",
    )
    p_feedback.add_argument("assignment", help="assignment name, e.g. ann")
    return parser


def _layout(course_root: Path | None) -> CourseLayout:
    """Course layout from ``--course-root`` or the discovered course."""
    from .course import load_layout

    return load_layout(course_root if course_root is not None else find_course_root())


def _release(args: argparse.Namespace) -> int:
    from .release import release

    layout = _layout(args.course_root)
    files = release(layout, args.assignment)
    for path in files:
        print(f"wrote {path.relative_to(layout.root)}")
    return 0


def _grade(args: argparse.Namespace) -> int:
    from .grade import grade_submissions
    from .report import format_summary, write_csv
    from .snapshot import is_inside

    layout = _layout(args.course_root)
    notebooks = layout.source_notebooks(args.assignment)  # unknown assignment: usage error before any work
    if (args.submissions is None) == (args.zip is None):
        raise CourseError("give either SUBMISSIONS_DIR or --zip EXPORT.zip")
    if args.pattern is not None and args.zip is None:
        raise CourseError("--pattern only applies to --zip")
    if args.timeout <= 0 or args.jobs < 1 or args.max_output < 1:
        raise CourseError("--timeout, --jobs and --max-output must be positive")
    imported = None
    if args.zip is not None:
        from .lms import compile_pattern, import_zip

        if args.pattern is not None:
            compile_pattern(args.pattern)  # a usage error before anything is written
        if not args.zip.is_file():
            raise CourseError(f"zip file not found: {args.zip}")
        imported = import_zip(
            args.zip, _import_folder(layout), args.assignment, args.pattern, notebooks=notebooks
        )
        print(imported.format(), file=sys.stderr, flush=True)
        if not imported.files:
            raise CourseError(f"no notebook imported from {args.zip}; see above (--pattern?)")
        args.submissions = imported.dest
    if not args.submissions.is_dir():
        raise CourseError(f"submissions folder not found: {args.submissions}")
    if is_inside(args.out.resolve(), args.submissions.resolve()):
        raise CourseError(f"--out {args.out} is inside the submissions folder, which grading never writes")
    rows = grade_submissions(
        layout,
        args.assignment,
        args.submissions,
        timeout=args.timeout,
        jobs=args.jobs,
        max_output=args.max_output,
    )
    if imported is not None:
        for row in rows:
            for note in imported.notes.get(row.student_id, []):
                row.add_note(f"LMS import: {note}")
    write_csv(rows, args.out)
    print(format_summary(rows))
    if imported is not None:
        again = f"grade {args.assignment} {imported.dest}"
        print(f"\nimported into {imported.dest} (kept; to grade it again: {again})")
    print(f"\nwrote {args.out}")
    return 0


def _import_folder(layout: CourseLayout) -> Path:
    """A new folder ``grading/imported/<time>`` (``-2``, ``-3``... when taken) for an LMS zip."""
    import time

    base = layout.submitted_dir.parent / "imported" / time.strftime("%Y%m%d-%H%M%S")
    folder, n = base, 1
    while folder.exists():
        n += 1
        folder = base.with_name(f"{base.name}-{n}")
    return folder


def _feedback(args: argparse.Namespace) -> int:
    from .feedback import generate_feedback

    layout = _layout(args.course_root)
    report = generate_feedback(layout, args.assignment)

    def rel(path: Path) -> str:
        try:
            return path.relative_to(layout.root).as_posix()
        except ValueError:
            return str(path)

    for path in report.written:
        print(f"wrote {rel(path)}")
    for path, leaks in report.leaked.items():
        print(f"error: {rel(path)} showed hidden tests ({'; '.join(leaks)}): deleted", file=sys.stderr)
    for path in report.missing:
        print(f"error: no feedback for {rel(path)}", file=sys.stderr)
    if report.error:
        print(f"error: nbgrader generate_feedback: {report.error} (see grading/nbgrader.log)", file=sys.stderr)
    checked = len(report.written) + len(report.leaked)
    print(f"\n{len(report.written)} feedback file(s) checked free of hidden tests, "
          f"{len(report.leaked)} deleted, {len(report.missing)} missing (of {checked} checked)")
    return 0 if report.ok else 1


def _missing_extra(exc: ModuleNotFoundError) -> bool:
    """Whether ``exc`` is a dependency of the ``grading`` extra that is not installed."""
    return (exc.name or "").split(".")[0] in GRADER_MODULES


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    command = {"release": _release, "grade": _grade, "feedback": _feedback}[args.command]
    try:
        return command(args)
    except ModuleNotFoundError as exc:
        if not _missing_extra(exc):
            raise
        print(f"error: {INSTALL_HINT} (missing: {(exc.name or '').split('.')[0]})", file=sys.stderr)
        return 1
    except CourseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ReleaseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
