"""Importing a Canvas or Moodle zip of submissions (``dlbook.grading.lms``) and grading it with
``grade --zip`` (one end-to-end batch, in a temporary copy of the course)."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import stat
import zipfile
from pathlib import Path

import nbformat
import pytest
from grading_helpers import REPO, make_course, points_of, tree_files

from dlbook.grading import cli
from dlbook.grading.lms import (
    RECORD_NAME,
    LmsImportError,
    expected_name,
    import_zip,
    sanitize_student_id,
)

SOLUTION = REPO / "solutions" / "ann" / "mlp-lab.ipynb"
LAB = REPO / "labs" / "ann" / "mlp-lab.ipynb"
NOTEBOOKS = ["mlp-lab.ipynb"]
EMPTY = nbformat.writes(nbformat.v4.new_notebook()).encode()


def _zip(path: Path, members: list[tuple[str, bytes, tuple[int, ...]]]) -> Path:
    """A zip at ``path`` with ``(name, data, date_time)`` members, in that order."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data, when in members:
            archive.writestr(zipfile.ZipInfo(name, date_time=when), data)
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


T1 = (2026, 1, 12, 9, 30, 0)
T2 = (2026, 1, 13, 18, 5, 0)


@pytest.fixture
def canvas_zip(tmp_path: Path) -> Path:
    return _zip(
        tmp_path / "canvas.zip",
        [
            ("smithjohn_12345_67890_mlp-lab.ipynb", SOLUTION.read_bytes(), T1),
            ("doejane_LATE_2222_3333_mlp-lab-1.ipynb", EMPTY, T1),
            # submitted twice: the later one (in time, listed first here) is kept
            ("leeann_4444_5556_mlp-lab-2.ipynb", SOLUTION.read_bytes(), T2),
            ("leeann_4444_5555_mlp-lab.ipynb", EMPTY, T1),
            ("smithjohn_12345_67891_notes.txt", b"my notes\n", T1),
            ("readme.txt", b"exported by Canvas\n", T1),
        ],
    )


def test_canvas_zip_layout_renaming_duplicates_and_leftovers(tmp_path: Path, canvas_zip: Path) -> None:
    before = _digest(canvas_zip)
    dest = tmp_path / "imported"
    report = import_zip(canvas_zip, dest, "ann", notebooks=NOTEBOOKS)

    assert _digest(canvas_zip) == before  # the zip is only read
    files = tree_files(dest)
    assert sorted(files) == [
        "doejane/mlp-lab.ipynb", "leeann/mlp-lab.ipynb", RECORD_NAME, "smithjohn/mlp-lab.ipynb",
    ]  # fmt: skip
    assert files["smithjohn/mlp-lab.ipynb"] == SOLUTION.read_bytes()
    assert files["leeann/mlp-lab.ipynb"] == SOLUTION.read_bytes(), "the later submission is kept"
    assert report.students == ["doejane", "leeann", "smithjohn"]

    # renamed by the LMS: saved under the lab's name, with a note
    (doe,) = [f for f in report.files if f.student_id == "doejane"]
    assert doe.renamed_from == "mlp-lab-1.ipynb" and doe.notebook == "mlp-lab.ipynb"
    assert "submitted as mlp-lab-1.ipynb, imported as mlp-lab.ipynb" in report.notes["doejane"]
    # duplicates: the latest by the zip's time, reported
    assert report.superseded == {"leeann_4444_5555_mlp-lab.ipynb": "leeann_4444_5556_mlp-lab-2.ipynb"}
    assert any(
        "submitted more than once: kept leeann_4444_5556_mlp-lab-2.ipynb" in n for n in report.notes["leeann"]
    )
    # nothing silently dropped
    assert report.unmatched == ["readme.txt"]
    assert report.refused == {"smithjohn_12345_67891_notes.txt": "not a notebook (.ipynb)"}
    text = report.format()
    assert "readme.txt" in text and "notes.txt" in text and "mlp-lab-1.ipynb" in text
    record = json.loads(files[RECORD_NAME])
    assert record["unmatched"] == ["readme.txt"] and len(record["files"]) == 3
    assert (dest / "smithjohn" / "mlp-lab.ipynb").stat().st_mtime == pytest.approx(
        __import__("datetime").datetime(*T1).timestamp()
    )


def test_moodle_zip_folders_and_flat_names(tmp_path: Path) -> None:
    archive = _zip(
        tmp_path / "moodle.zip",
        [
            ("Jane Doe_4711_assignsubmission_file_/mlp-lab.ipynb", SOLUTION.read_bytes(), T1),
            ("José Álvarez_4712_assignsubmission_file_/mlp-lab (1).ipynb", EMPTY, T1),
            ("Ann Lee_4713_assignsubmission_file_mlp-lab.ipynb", EMPTY, T1),  # "in folders" off
            ("Ann Lee_4713_assignsubmission_onlinetext_/onlinetext.html", b"<p>hi</p>", T1),
        ],
    )
    dest = tmp_path / "out"
    report = import_zip(archive, dest, "ann", notebooks=NOTEBOOKS)
    assert sorted(tree_files(dest)) == [
        "Ann-Lee_4713/mlp-lab.ipynb", "Jane-Doe_4711/mlp-lab.ipynb", "Jose-Alvarez_4712/mlp-lab.ipynb", RECORD_NAME,
    ]  # fmt: skip
    assert "submitted as mlp-lab (1).ipynb, imported as mlp-lab.ipynb" in report.notes["Jose-Alvarez_4712"]
    assert "LMS name 'Jane Doe_4711' imported as student id 'Jane-Doe_4711'" in report.notes["Jane-Doe_4711"]
    assert report.unmatched == ["Ann Lee_4713_assignsubmission_onlinetext_/onlinetext.html"]


def test_pattern_override_and_unknown_names_kept(tmp_path: Path) -> None:
    archive = _zip(
        tmp_path / "other.zip",
        [
            ("ps1/alice--Copy of mlp-lab.ipynb", EMPTY, T1),
            ("ps1/bob--mlp-lab.ipynb", EMPTY, T1),
            ("smithjohn_12345_67890_mlp-lab.ipynb", EMPTY, T1),  # Canvas, but not this pattern
        ],
    )
    report = import_zip(
        archive, tmp_path / "out", "ann", r"ps1/(?P<student_id>\w+)--(?P<file>.+)", notebooks=NOTEBOOKS
    )
    # a name that is not the lab's with a suffix is kept: the grader finds the lab by its metadata
    assert sorted(tree_files(tmp_path / "out")) == [
        "alice/Copy of mlp-lab.ipynb",
        "bob/mlp-lab.ipynb",
        RECORD_NAME,
    ]
    assert report.unmatched == ["smithjohn_12345_67890_mlp-lab.ipynb"]
    with pytest.raises(LmsImportError, match="named groups"):
        import_zip(archive, tmp_path / "out2", "ann", r"(?P<student>\w+)_(?P<file>.+)", notebooks=NOTEBOOKS)
    assert not (tmp_path / "out2").exists()


def test_unsafe_members_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "evil_1_2_mlp-lab.ipynb"
    archive = tmp_path / "evil.zip"
    _zip(
        archive,
        [
            ("../../evil_1_2_mlp-lab.ipynb", EMPTY, T1),
            ("/tmp/abs_1_2_mlp-lab.ipynb", EMPTY, T1),
            ("..\\winevil_1_2_mlp-lab.ipynb", EMPTY, T1),
            ("good_1_2_mlp-lab.ipynb", EMPTY, T1),
        ],
    )
    with zipfile.ZipFile(archive, "a") as zf:  # a symbolic link to a file outside
        link = zipfile.ZipInfo("link_1_2_mlp-lab.ipynb", date_time=T1)
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    before = _digest(archive)
    dest = tmp_path / "sub" / "out"
    report = import_zip(archive, dest, "ann", notebooks=NOTEBOOKS)
    assert sorted(tree_files(dest)) == ["good/mlp-lab.ipynb", RECORD_NAME]
    assert report.refused == {
        "../../evil_1_2_mlp-lab.ipynb": "refused: a path with '..'",
        "/tmp/abs_1_2_mlp-lab.ipynb": "refused: an absolute path",
        "..\\winevil_1_2_mlp-lab.ipynb": "refused: a path with '..'",
        "link_1_2_mlp-lab.ipynb": "refused: a symbolic link",
    }
    assert not outside.exists() and sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["out"]
    assert _digest(archive) == before


def test_size_limits_stop_zip_bombs(tmp_path: Path) -> None:
    big = b"{" + b" " * 400_000 + b"}"  # compresses to almost nothing
    archive = _zip(
        tmp_path / "bomb.zip",
        [("a_1_2_mlp-lab.ipynb", big, T1), ("b_1_3_mlp-lab.ipynb", EMPTY, T1)],
    )
    report = import_zip(archive, tmp_path / "one", "ann", notebooks=NOTEBOOKS, max_member_bytes=100_000)
    assert report.refused == {"a_1_2_mlp-lab.ipynb": "refused: larger than 100000 bytes"}
    assert report.students == ["b"]
    # the total: the import stops and leaves nothing behind
    with pytest.raises(LmsImportError, match="bytes of notebooks"):
        import_zip(archive, tmp_path / "all", "ann", notebooks=NOTEBOOKS, max_total_bytes=200_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.zip", "one"]


def test_dest_must_be_new_and_the_zip_a_zip(tmp_path: Path, canvas_zip: Path) -> None:
    dest = tmp_path / "taken"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(LmsImportError, match="not empty"):
        import_zip(canvas_zip, dest, "ann", notebooks=NOTEBOOKS)
    assert tree_files(dest) == {"keep.txt": b"mine"}
    (tmp_path / "empty").mkdir()
    assert import_zip(canvas_zip, tmp_path / "empty", "ann", notebooks=NOTEBOOKS).students
    (tmp_path / "fake.zip").write_bytes(b"not a zip")
    with pytest.raises(LmsImportError, match="not a readable zip"):
        import_zip(tmp_path / "fake.zip", tmp_path / "new", "ann", notebooks=NOTEBOOKS)
    assert not (tmp_path / "new").exists()


def test_names() -> None:
    assert expected_name("mlp-lab-1.ipynb", NOTEBOOKS) == "mlp-lab.ipynb"
    assert expected_name("mlp-lab-1 (2).ipynb", NOTEBOOKS) == "mlp-lab.ipynb"
    assert expected_name("mlp-lab.ipynb", NOTEBOOKS) is None  # already right
    assert expected_name("cnn-lab-1.ipynb", NOTEBOOKS) is None
    assert expected_name("lab-2-1.ipynb", ["lab-2.ipynb"]) == "lab-2.ipynb"
    assert sanitize_student_id("Zoë O'Brien_17") == "Zoe-O-Brien_17"
    assert sanitize_student_id("../..") == "" and sanitize_student_id("  ") == ""


@pytest.mark.slow
def test_grade_zip_end_to_end(tmp_path: Path) -> None:
    course = make_course(tmp_path / "course")
    archive = _zip(
        tmp_path / "canvas.zip",
        [
            ("smithjohn_12345_67890_mlp-lab.ipynb", SOLUTION.read_bytes(), T1),
            ("doejane_LATE_2222_3333_mlp-lab-1.ipynb", LAB.read_bytes(), T1),
        ],
    )
    before = _digest(archive)
    out = tmp_path / "grades.csv"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main(
            [
                "grade",
                "ann",
                "--zip",
                str(archive),
                "--out",
                str(out),
                "--course-root",
                str(course),
                "--jobs",
                "1",
            ]
        )
    assert code == 0, stderr.getvalue()
    assert _digest(archive) == before
    (imported,) = (course / "grading" / "imported").iterdir()
    assert sorted(tree_files(imported)) == ["doejane/mlp-lab.ipynb", RECORD_NAME, "smithjohn/mlp-lab.ipynb"]
    with open(out, newline="", encoding="utf-8") as fh:
        rows = {r["student_id"]: r for r in csv.DictReader(fh)}
    assert sorted(rows) == ["doejane", "smithjohn"]  # one row per student
    points = points_of(SOLUTION)
    assert list(points) == ["ex1", "ex2", "ex3", "ex4", "ex5"]
    full, empty = rows["smithjohn"], rows["doejane"]
    assert full["status"] == "graded" and float(full["score"]) == sum(points.values()), full
    assert {ex: float(full[ex]) for ex in points} == points  # the per-exercise columns
    assert empty["status"] == "graded" and all(float(empty[ex]) == 0 for ex in points), empty
    assert "LMS import: submitted as mlp-lab-1.ipynb, imported as mlp-lab.ipynb" in empty["notes"]
    assert "imported 2 notebook(s) of 2 student(s)" in stderr.getvalue()
    # usage errors: both or neither input, a pattern without groups
    for argv in (
        ["grade", "ann"],
        ["grade", "ann", str(tmp_path), "--zip", str(archive)],
        ["grade", "ann", "--zip", str(archive), "--pattern", "(x"],
    ):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert cli.main([*argv, "--course-root", str(course)]) == 2
    assert len(list((course / "grading" / "imported").iterdir())) == 1
