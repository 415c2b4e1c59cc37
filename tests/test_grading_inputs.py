"""The grader never changes a submission (``dlbook.grading.snapshot``; the end-to-end check, grading
nbgrader's own ``grading/submitted``, is in ``test_grading_feedback``)."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest
from grading_helpers import make_course, tree_files

from dlbook.grading import cli
from dlbook.grading.snapshot import Snapshot


def _grade(course: Path, submissions: Path, out: Path) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = cli.main(["grade", "ann", str(submissions), "--out", str(out), "--course-root", str(course)])
    return code, err.getvalue()


def test_submissions_inside_the_graders_output_are_refused(tmp_path: Path) -> None:
    course = make_course(tmp_path / "course")
    grading = course / "grading"
    for folder in ("autograded", "feedback", "logs"):
        (grading / folder / "alice" / "ann").mkdir(parents=True)
        (grading / folder / "alice" / "ann" / "mlp-lab.ipynb").write_text("{}", encoding="utf-8")
    before = tree_files(grading)
    for subs in (grading / "autograded", grading / "feedback" / "alice", grading / "logs", grading, course):
        code, err = _grade(course, subs, tmp_path / "grades.csv")
        assert code == 2, (subs, err)
        assert err.startswith("error: refusing to grade") and len(err.strip().splitlines()) == 1, err
    code, err = _grade(course, grading / "autograded", tmp_path / "grades.csv")
    assert "which the grader writes" in err
    assert tree_files(grading) == before
    assert not (tmp_path / "grades.csv").exists()


def test_grades_file_inside_the_submissions_is_refused(tmp_path: Path) -> None:
    course = make_course(tmp_path / "course")
    subs = course / "grading" / "submitted"
    (subs / "alice").mkdir(parents=True)
    code, err = _grade(course, subs, subs / "grades.csv")
    assert code == 2 and "inside the submissions folder" in err, err
    assert not (subs / "grades.csv").exists()


def test_snapshot_restores_what_changed_and_reports_it(tmp_path: Path) -> None:
    subs = tmp_path / "subs"
    (subs / "alice" / "ann").mkdir(parents=True)
    (subs / "alice" / "ann" / "mlp-lab.ipynb").write_bytes(b'{"cells": []}')
    (subs / "alice" / "ann" / "timestamp.txt").write_bytes(b"2026-01-12 09:30:00 UTC\n")
    (subs / "bob").mkdir()
    (subs / "bob" / "data.bin").write_bytes(bytes(range(256)))
    (subs / "bob" / "link").symlink_to("data.bin")
    (subs / "carol").mkdir()
    (subs / "carol" / "mlp-lab.ipynb").write_text("{}", encoding="utf-8")
    before = tree_files(subs)
    with Snapshot(subs) as snap:
        assert tree_files(snap.folder) == before
        assert snap.verify() == {}  # nothing changed
        (subs / "alice" / "ann" / "mlp-lab.ipynb").write_bytes(b"")  # emptied
        (subs / "alice" / "ann" / "timestamp.txt").unlink()  # deleted
        os.remove(subs / "bob" / "link")
        (subs / "bob" / "link").symlink_to("/etc/passwd")  # retargeted
        (subs / "carol" / "extra.txt").write_text("new", encoding="utf-8")  # appeared
        changes = snap.verify()
        scratch = snap.scratch
    assert not scratch.exists()
    assert tree_files(subs) == {**before, "carol/extra.txt": b"new"}
    assert os.readlink(subs / "bob" / "link") == "data.bin"
    assert changes == {
        "alice": [
            "alice/ann/mlp-lab.ipynb (restored from the snapshot)",
            "alice/ann/timestamp.txt (restored from the snapshot)",
        ],
        "bob": ["bob/link (restored from the snapshot)"],
        "carol": ["carol/extra.txt (new, left in place)"],
    }


@pytest.mark.parametrize("layout", ["flat", "nested"])
def test_snapshot_is_a_copy_not_the_original(tmp_path: Path, layout: str) -> None:
    subs = tmp_path / "subs"
    folder = subs / "alice" / ("ann" if layout == "nested" else "")
    folder.mkdir(parents=True)
    (folder / "mlp-lab.ipynb").write_text("{}", encoding="utf-8")
    with Snapshot(subs) as snap:
        assert snap.folder != subs and subs not in snap.folder.parents
        (snap.folder / "alice").rename(snap.folder / "gone")  # grading may do anything to its copy
        assert snap.verify() == {}
    assert (folder / "mlp-lab.ipynb").read_text(encoding="utf-8") == "{}"
