"""Helpers shared by the grading tests (``test_grading*``, ``test_cnn_lab``, ``lab_checks``).

Each grading test builds a temporary copy of the course (configuration, ``solutions/``,
``labs/``), writes submissions next to it and runs one ``grade`` batch through the command line;
the real ``grading/`` and ``labs/`` of the repository are never touched.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import shutil
import time
from pathlib import Path

import nbformat

from dlbook.grading import cli

REPO = Path(__file__).resolve().parents[1]


def points_of(path: Path) -> dict[str, float]:
    """Points per exercise (``ex1`` ...), from the nbgrader metadata of a source notebook."""
    points: dict[str, float] = {}
    for cell in nbformat.read(path, as_version=4).cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("grade"):
            exercise = meta["grade_id"].split("-")[0]
            points[exercise] = points.get(exercise, 0.0) + float(meta["points"])
    return points


def cell_points(path: Path) -> dict[str, float]:
    """Points per graded cell (``ex1-visible`` ...), in notebook order."""
    return {
        c.metadata["nbgrader"]["grade_id"]: float(c.metadata["nbgrader"]["points"])
        for c in nbformat.read(path, as_version=4).cells
        if c.metadata.get("nbgrader", {}).get("grade")
    }


def with_cell_replaced(notebook: Path, grade_id: str, source: str) -> nbformat.NotebookNode:
    """``notebook`` with the source of cell ``grade_id`` replaced (a student's edit)."""
    nb = nbformat.read(notebook, as_version=4)
    cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id]
    assert len(cells) == 1, grade_id
    cells[0].source = source
    return nb


def cell_source(notebook: Path, grade_id: str) -> str:
    """Source of cell ``grade_id`` of ``notebook``."""
    nb = nbformat.read(notebook, as_version=4)
    (cell,) = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id]
    return cell.source


def tree_digest(folder: Path) -> str:
    """Digest of every file (path and bytes) under ``folder``."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def make_course(root: Path) -> Path:
    """A temporary course at ``root``: the configuration, ``solutions/`` and ``labs/``."""
    root.mkdir(parents=True)
    shutil.copy2(REPO / "nbgrader_config.py", root)
    shutil.copytree(REPO / "solutions", root / "solutions")
    shutil.copytree(REPO / "labs", root / "labs")
    return root


def repo_state() -> tuple[str, bool]:
    """What grading must leave alone in the repository: ``labs/`` and the absence of ``grading/``."""
    return tree_digest(REPO / "labs"), (REPO / "grading").exists()


def run_grade(course: Path, assignment: str, submissions: Path, out: Path, *options: str) -> dict:
    """``grade`` through the command line; exit code, CSV rows (also by student), stdout, log, time."""
    stdout, stderr = io.StringIO(), io.StringIO()
    start = time.monotonic()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main(
            ["grade", assignment, str(submissions), "--out", str(out), "--course-root", str(course), *options]
        )
    seconds = time.monotonic() - start
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return {
        "code": code,
        "rows": rows,
        "by_student": {r["student_id"]: r for r in rows},
        "stdout": stdout.getvalue(),
        "log": stderr.getvalue(),
        "seconds": seconds,
        "course": course,
    }


def tree_files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``: relative path -> bytes (to prove a tree byte-identical)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def hidden_lines(source: Path, release: Path) -> list[str]:
    """Each line of the hidden tests of ``source`` (between ``### BEGIN HIDDEN TESTS`` and
    ``### END HIDDEN TESTS``), stripped, that the released lab ``release`` does not show anyway."""
    released = "\n".join(c.source for c in nbformat.read(release, as_version=4).cells)
    found: list[str] = []
    for cell in nbformat.read(source, as_version=4).cells:
        inside = False
        for line in cell.source.splitlines():
            if "### BEGIN HIDDEN TESTS" in line:
                inside = True
            elif "### END HIDDEN TESTS" in line:
                inside = False
            elif inside and line.strip() and line.strip() not in released:
                found.append(line.strip())
    assert found, f"{source} has no hidden test line"
    return found


def html_text(path: Path) -> str:
    """The text of an HTML file (tags removed, entities decoded), runs of white space made one space."""
    import html.parser
    import re

    class Text(html.parser.HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.parts: list[str] = []

        def handle_data(self, data: str) -> None:
            self.parts.append(data)

    parser = Text()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return re.sub(r"\s+", " ", "".join(parser.parts))
