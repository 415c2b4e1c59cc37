"""Feedback for students without the hidden tests: ``python -m dlbook.grading feedback ASSIGNMENT``.

``nbgrader generate_feedback`` renders the autograded notebooks as they are, and they hold the
hidden tests: in the sources of their test cells and, when a hidden ``assert`` fails, in the
traceback of its output. :func:`generate_feedback` runs nbgrader's ``GenerateFeedback`` (one
HTML file per student and notebook in the feedback folder, ``grading/feedback``) with two more
preprocessors:

- :class:`HideHiddenTestOutputs` replaces the outputs of every cell that held hidden tests by a
  neutral message that keeps the result (passed or failed) and the points;
- nbgrader's ``ClearHiddenTests`` removes the hidden tests from the sources.

Then every file written for the assignment is checked (:func:`find_leaks`) for the text of each
hidden test (lines between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS`` in the
sources) and for the markers; a file that still shows one is deleted and reported.
"""

from __future__ import annotations

import html.parser
import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbgrader.preprocessors import NbGraderPreprocessor
from nbgrader.utils import determine_grade, is_grade

from .course import CourseLayout
from .runner import run_nbgrader, summarize_error

BEGIN_HIDDEN = "BEGIN HIDDEN TESTS"
END_HIDDEN = "END HIDDEN TESTS"
MIN_SECRET_CHARS = 8  # shorter hidden lines (``else:``, ``)``) say nothing about the tests

#: The preprocessors of nbgrader's ``GenerateFeedback``, with ours and ``ClearHiddenTests`` added:
#: the outputs are replaced while the cell still shows which ones held hidden tests.
FEEDBACK_PREPROCESSORS = [
    "nbgrader.preprocessors.GetGrades",
    "dlbook.grading.feedback.HideHiddenTestOutputs",
    "nbgrader.preprocessors.ClearHiddenTests",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
]


class HideHiddenTestOutputs(NbGraderPreprocessor):
    """Replace the outputs of cells that held hidden tests by a neutral message.

    A failing hidden ``assert`` prints its own line in the traceback, and a passing one may print
    (warnings); the message keeps what the student may know: passed or failed, and the points
    (from the gradebook, set by ``GetGrades``, else from the outputs).
    """

    def preprocess_cell(self, cell, resources, cell_index):  # type: ignore[no-untyped-def]
        if cell.cell_type != "code" or BEGIN_HIDDEN not in cell.source:
            return cell, resources
        meta = cell.metadata.get("nbgrader", {})
        score, points = meta.get("score"), meta.get("points")
        if score is None or points is None:
            try:
                score, points = determine_grade(cell) if is_grade(cell) else (None, None)
            except Exception:
                score, points = None, None
        failed = any(o.get("output_type") == "error" for o in cell.get("outputs", []))
        if score is not None and points is not None:
            failed = float(score) < float(points)
            result = f"{float(score):g} / {float(points):g} points"
        else:
            result = "no score"
        if failed:
            message = f"Hidden tests failed ({result}). They and their output are not shown."
            cell.outputs = [
                nbformat.v4.new_output(
                    "error", ename="HiddenTestsFailed", evalue=message, traceback=[message]
                )
            ]
        else:
            message = f"Hidden tests passed ({result}).\n"
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=message)]
        return cell, resources


def hidden_test_lines(source_notebooks: list[Path]) -> list[str]:
    """The lines of hidden tests that feedback must not show, from the source notebooks.

    Lines between the markers, stripped; left out: lines that appear outside the hidden tests
    (in the visible tests, the setup or the solutions: nothing secret) and very short ones.
    """
    hidden: list[str] = []
    public: list[str] = []
    for path in source_notebooks:
        for cell in nbformat.read(path, as_version=4).cells:
            inside = False
            for line in cell.source.splitlines():
                if BEGIN_HIDDEN in line:
                    inside = True
                elif END_HIDDEN in line:
                    inside = False
                elif inside:
                    hidden.append(line.strip())
                else:
                    public.append(line)
    public_text = "\n".join(public)
    return list(
        dict.fromkeys(
            line for line in hidden if len(line) >= MIN_SECRET_CHARS and line not in public_text
        )
    )


class _Text(html.parser.HTMLParser):
    """All the text of an HTML document (scripts and styles included), entities decoded."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


_SPACE = re.compile(r"\s+")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _squeeze(text: str) -> str:
    return _SPACE.sub(" ", _ANSI.sub("", text))


def find_leaks(path: Path, hidden_lines: list[str]) -> list[str]:
    """What of the hidden tests the file at ``path`` shows: the markers, hidden lines (first 3).

    The raw file and its text (HTML tags removed, entities decoded: syntax highlighting splits a
    line into many tags) are both searched, with runs of white space made one space.
    """
    raw = Path(path).read_bytes().decode("utf-8", errors="replace")
    parser = _Text()
    try:
        parser.feed(raw)
        parser.close()
    except Exception:  # not HTML: the raw text is searched
        pass
    haystacks = [_squeeze(raw), _squeeze("".join(parser.parts))]
    found = [m for m in (BEGIN_HIDDEN, END_HIDDEN) if any(m in h for h in haystacks)]
    for line in hidden_lines:
        needle = _squeeze(line)
        if any(needle in h for h in haystacks):
            found.append(line)
    return found[:3] + ([f"{len(found) - 3} more"] if len(found) > 3 else [])


@dataclass
class FeedbackReport:
    """Outcome of :func:`generate_feedback`: files written and checked, files deleted because
    they showed hidden tests (path -> what), autograded notebooks without feedback, nbgrader's
    error (empty when it succeeded)."""

    written: list[Path] = field(default_factory=list)
    leaked: dict[Path, list[str]] = field(default_factory=dict)
    missing: list[Path] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not (self.leaked or self.missing or self.error)


def _folders(layout: CourseLayout, step_dir: Path, assignment: str) -> list[Path]:
    """Each student's folder of ``assignment`` in a grading step (e.g. the autograded one)."""
    pattern = layout.step_folder(step_dir, "*", assignment).relative_to(layout.root).as_posix()
    return sorted(p for p in layout.root.glob(pattern) if p.is_dir())


def generate_feedback(layout: CourseLayout, assignment: str) -> FeedbackReport:
    """Write and check the feedback of every autograded student of ``assignment``; see the module."""
    assert layout.feedback_dir is not None
    sources = [layout.source_dir / assignment / name for name in layout.source_notebooks(assignment)]
    hidden = hidden_test_lines(sources)
    args = ["generate_feedback", assignment, "--force"]
    args += [f"--GenerateFeedback.preprocessors={name}" for name in FEEDBACK_PREPROCESSORS]
    result = run_nbgrader(args, layout.root)
    report = FeedbackReport(error="" if result.ok else summarize_error(result.output))
    for folder in _folders(layout, layout.feedback_dir, assignment):
        for path in sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink()):
            leaks = find_leaks(path, hidden) if path.is_file() and not path.is_symlink() else ["a link"]
            if leaks:
                path.unlink()
                report.leaked[path] = leaks
            else:
                report.written.append(path)
    def key(path: Path, step_dir: Path) -> Path:
        return path.relative_to(step_dir).with_suffix("")

    done = {key(p, layout.feedback_dir) for p in [*report.written, *report.leaked]}
    for folder in _folders(layout, layout.autograded_dir, assignment):
        report.missing += [
            nb for nb in sorted(folder.glob("*.ipynb")) if key(nb, layout.autograded_dir) not in done
        ]
    return report
