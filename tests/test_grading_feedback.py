"""Grading nbgrader's own collected folder, then the students' feedback (``dlbook.grading.grade``,
``dlbook.grading.snapshot``, ``dlbook.grading.feedback``).

One batch (module fixture) in a temporary course: ``grade ann grading/submitted``, the layout
``nbgrader collect`` makes (``<student>/<assignment>/<notebook>`` with a ``timestamp.txt``),
with a correct submission, a wrong one (a hidden test fails) and a student whose folder holds only
another lab's notebook; then ``feedback ann``. Checked: every input byte-identical afterwards,
the rows, and no hidden test (text or markers) in any feedback file. The fast tests check the
output-replacing preprocessor and the leak check that deletes a file.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path

import nbformat
import pytest
from grading_helpers import (
    REPO,
    hidden_lines,
    html_text,
    make_course,
    run_grade,
    tree_files,
    with_cell_replaced,
)

from dlbook.grading import cli
from dlbook.grading.runner import CommandResult

SOLUTION = REPO / "solutions" / "ann" / "mlp-lab.ipynb"
LAB = REPO / "labs" / "ann" / "mlp-lab.ipynb"
HIDDEN = hidden_lines(SOLUTION, LAB)
MARKERS = ("BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
EX3_NO_MASK = """def linear_relu_backward(x, W, b, grad_out):
    return grad_out @ W.T, x.T @ grad_out, grad_out.sum(dim=0)
"""
TIMESTAMP = "2026-01-12 09:30:00.000000 UTC\n"


def _squeeze(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def _leaks(path: Path) -> list[str]:
    """Hidden test lines and markers found in a file (its raw text and, for HTML, its text)."""
    raw = path.read_text(encoding="utf-8")
    texts = [_squeeze(raw)] + ([html_text(path)] if path.suffix == ".html" else [])
    return [s for s in (*MARKERS, *HIDDEN) if any(_squeeze(s) in t for t in texts)]


def _feedback(course: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["feedback", "ann", "--course-root", str(course)])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("collected")
    course = make_course(root / "course")
    submitted = course / "grading" / "submitted"  # where nbgrader collect puts submissions
    for student, nb in [
        ("right", nbformat.read(SOLUTION, as_version=4)),
        ("wrong", with_cell_replaced(SOLUTION, "ex3-solution", EX3_NO_MASK)),
    ]:
        folder = submitted / student / "ann"
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / "mlp-lab.ipynb")
        (folder / "timestamp.txt").write_text(TIMESTAMP, encoding="utf-8")
    (submitted / "right" / "ann" / "my-notes.csv").write_bytes(b"epoch,loss\n1,0.5\n\x00\xff")
    other = submitted / "carol" / "cnn"  # carol handed in the CNN lab only
    other.mkdir(parents=True)
    shutil.copy2(REPO / "labs" / "cnn" / "cnn-lab.ipynb", other / "cnn-lab.ipynb")
    (other / "timestamp.txt").write_text(TIMESTAMP, encoding="utf-8")
    before = tree_files(submitted)
    result = run_grade(course, "ann", submitted, root / "grades.csv", "--timeout", "300", "--jobs", "2")
    result["inputs"] = (before, tree_files(submitted))
    result["feedback"] = _feedback(course)
    return result


@pytest.mark.slow
def test_grading_nbgraders_submitted_folder_leaves_every_input_byte_identical(batch: dict) -> None:
    before, after = batch["inputs"]
    assert len(before) == 7, sorted(before)  # 3 notebooks, 3 timestamps, a data file
    assert after.keys() == before.keys(), sorted(after.keys() ^ before.keys())
    changed = [rel for rel in before if after[rel] != before[rel]]
    assert not changed, f"grading changed submissions: {changed}"
    assert "files byte-identical after grading" in batch["log"], batch["log"][-2000:]
    assert batch["code"] == 0, batch["log"][-3000:]
    rows = batch["by_student"]
    assert sorted(rows) == ["carol", "right", "wrong"]
    assert rows["right"]["status"] == "graded" and float(rows["right"]["score"]) == 15, rows["right"]
    assert rows["wrong"]["status"] == "graded" and float(rows["wrong"]["score"]) == 12, rows["wrong"]
    assert rows["wrong"]["message"] == "failed: ex3-visible, ex3-hidden"
    autograded = batch["course"] / "grading" / "autograded"
    assert sorted(p.parent.parent.name for p in autograded.glob("*/ann/mlp-lab.ipynb")) == ["right", "wrong"]


@pytest.mark.slow
def test_another_labs_notebook_is_reported_not_graded_as_a_rename(batch: dict) -> None:
    row = batch["by_student"]["carol"]
    assert row["status"] == "missing-notebook", row
    assert "another lab's notebook (cnn/cnn-lab.ipynb, lab cnn)" in row["message"], row
    assert "renamed" not in row["notes"] and row["score"] == "", row


@pytest.mark.slow
def test_feedback_has_one_html_per_student_and_no_hidden_test(batch: dict) -> None:
    code, out, err = batch["feedback"]
    assert code == 0, out + err
    feedback = batch["course"] / "grading" / "feedback"
    files = sorted(p for p in feedback.rglob("*") if p.is_file())
    assert [p.relative_to(feedback).as_posix() for p in files] == [
        "right/ann/mlp-lab.html",
        "wrong/ann/mlp-lab.html",
    ], out + err
    for path in files:
        assert not _leaks(path), f"{path} shows hidden tests: {_leaks(path)[:3]}"
    # the grep finds them where they are: the autograded notebooks hold every hidden test
    autograded = batch["course"] / "grading" / "autograded" / "wrong" / "ann" / "mlp-lab.ipynb"
    assert set(_leaks(autograded)) >= {*MARKERS, HIDDEN[0]}
    # what the student may know stays: each hidden test cell's result and points
    wrong = html_text(feedback / "wrong" / "ann" / "mlp-lab.html")
    assert "Hidden tests failed (0 / 2 points)" in wrong
    assert wrong.count("Hidden tests passed") == 4
    assert "Score: 12.0 / 15.0" in wrong
    right = html_text(feedback / "right" / "ann" / "mlp-lab.html")
    assert right.count("Hidden tests passed") == 5 and "Hidden tests failed" not in right


def test_hidden_test_outputs_are_replaced_keeping_pass_and_points() -> None:
    from dlbook.grading.feedback import HideHiddenTestOutputs

    source = "assert f(1) == 1\n### BEGIN HIDDEN TESTS\nassert f(2) == 99, 'secret'\n### END HIDDEN TESTS"
    failing = nbformat.v4.new_code_cell(source)
    failing.metadata["nbgrader"] = {"grade": True, "grade_id": "ex1-hidden", "points": 2, "score": 0.0}
    failing.outputs = [
        nbformat.v4.new_output(
            "error", ename="AssertionError", evalue="secret", traceback=["----> 3 assert f(2) == 99, 'secret'"]
        )
    ]
    passing = nbformat.v4.new_code_cell(source)
    passing.metadata["nbgrader"] = {"grade": True, "grade_id": "ex2-hidden", "points": 2, "score": 2.0}
    passing.outputs = [nbformat.v4.new_output("stream", name="stderr", text="warning at f(2) == 99")]
    visible = nbformat.v4.new_code_cell("print('f(2) == 99')")
    visible.outputs = [nbformat.v4.new_output("stream", name="stdout", text="f(2) == 99\n")]
    nb = nbformat.v4.new_notebook(cells=[failing, passing, visible])
    nb, _ = HideHiddenTestOutputs().preprocess(nb, {})
    (fail_out,) = nb.cells[0].outputs
    assert fail_out.output_type == "error" and "99" not in str(fail_out)
    assert "Hidden tests failed (0 / 2 points)" in fail_out.evalue
    assert nb.cells[1].outputs == [
        nbformat.v4.new_output("stream", name="stdout", text="Hidden tests passed (2 / 2 points).\n")
    ]
    assert nb.cells[2].outputs[0].text == "f(2) == 99\n"  # not a hidden test cell: untouched


def test_feedback_that_shows_a_hidden_test_is_deleted_and_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nbgrader replaced by a stub that writes two files: a clean one and one showing a hidden
    test line the way nbconvert renders code (one tag per token, entities escaped)."""
    import dlbook.grading.feedback as feedback

    course = make_course(tmp_path / "course")
    line = next(h for h in HIDDEN if "<" in h or "&" in h or '"' in h)
    tokens = re.split(r"(\W)", line)
    rendered = "".join(f'<span class="n">{t.replace("&", "&amp;").replace("<", "&lt;")}</span>' for t in tokens)

    def fake_nbgrader(args, course_root, timeout=None, marker=None):  # type: ignore[no-untyped-def]
        for student, body in [("clean", "<p>all good</p>"), ("leaky", f"<pre>{rendered}</pre>")]:
            folder = course / "grading" / "feedback" / student / "ann"
            folder.mkdir(parents=True)
            (folder / "mlp-lab.html").write_text(f"<html><body>{body}</body></html>", encoding="utf-8")
        assert "--GenerateFeedback.preprocessors=nbgrader.preprocessors.ClearHiddenTests" in args
        return CommandResult(0, "", False, 0.0)

    monkeypatch.setattr(feedback, "run_nbgrader", fake_nbgrader)
    code, out, err = _feedback(course)
    assert code == 1, out + err
    assert not (course / "grading" / "feedback" / "leaky" / "ann" / "mlp-lab.html").exists()
    assert (course / "grading" / "feedback" / "clean" / "ann" / "mlp-lab.html").exists()
    assert "grading/feedback/leaky/ann/mlp-lab.html showed hidden tests" in err, err
    assert "wrote grading/feedback/clean/ann/mlp-lab.html" in out
