"""The grader survives hostile and broken submissions: one ``grade ann`` batch, one student per case.

Every student gets exactly one row with a clear status, score and notes, the batch completes and
no row is lost: a notebook that raises, one that loops forever (``--timeout``), malformed JSON, a
renamed and a missing notebook, deleted and edited test cells (restored and reported), an output
flood (capped and reported), code that reads and rewrites the hidden tests and the gradebook, code
that monkeypatches what the tests rely on, and a folder name that is no valid student id.

The batch runs in a temporary copy of the course; the repository's ``grading/`` and ``labs/`` are
never touched. It costs one nbgrader run per autograded student (seconds each) plus ``TIMEOUT``
for the student that never finishes, overlapped with the others by ``--jobs 2``.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import nbformat
import pytest
from grading_helpers import (
    REPO,
    cell_points,
    cell_source,
    make_course,
    repo_state,
    run_grade,
    with_cell_replaced,
)

from dlbook.grading.gradebook import stored_scores
from dlbook.grading.integrity import load_reference, repair, scan_code
from dlbook.grading.runner import OUTPUT_HEAD, OUTPUT_TAIL, run_command

SOLUTION = REPO / "solutions" / "ann" / "mlp-lab.ipynb"
NOTEBOOK = "mlp-lab.ipynb"
CELLS = cell_points(SOLUTION)
MAX_SCORE = sum(CELLS.values())
TIMEOUT = 30  # seconds per student; the looping student is stopped after this (a normal one takes
# under 10 s on CI's loaded CPU: 30 s keeps a wide margin and costs the batch half the wait of 60 s)

# Exercise 2 "solved" by returning zeros: wrong, so its tests fail unless they are tampered with.
EX2_ZEROS = """def softmax_cross_entropy_backward(logits, targets):
    return torch.zeros_like(logits)
"""
# ... and the same wrong answer that makes the tests pass by replacing what they rely on.
EX2_MONKEYPATCH = (
    EX2_ZEROS
    + """
rel_error = lambda actual, expected: 0.0  # every comparison of the tests now succeeds
torch.allclose = lambda *args, **kwargs: True
"""
)
# Exercise 3 with the ReLU mask forgotten: its tests fail.
EX3_NO_MASK = """def linear_relu_backward(x, W, b, grad_out):
    return grad_out @ W.T, x.T @ grad_out, grad_out.sum(dim=0)
"""
HIDDEN_LINE = "dense_param_count([5]) == 0"  # a line of the hidden tests of exercise 1

# A cell that looks for the hidden tests around the kernel, leaks what it finds into its output,
# and rewrites the instructor's source and the gradebook of its run. The strings it searches for
# are split so that the submitted notebook itself does not contain them.
READ_HIDDEN = """import os, sqlite3
_needles = [("dense_param_count([5])" + " == 0").encode(), ("BEGIN HIDDEN" + " TESTS").encode()]
_root = os.path.abspath(os.path.join(os.getcwd(), "..", "..", ".."))
_hits = []
for _folder, _, _files in os.walk(_root):
    for _name in _files:
        try:
            _data = open(os.path.join(_folder, _name), "rb").read()
        except OSError:
            continue
        if any(_n in _data for _n in _needles):
            _hits.append(os.path.join(_folder, _name))
print("SANDBOX-HITS", len(_hits), _hits)
_source = {source!r}  # the course, found by absolute path
_text = open(_source, encoding="utf-8").read()
print(_text[_text.index("BEGIN HIDDEN" + " TESTS"):][:2000])
open(_source, "w", encoding="utf-8").write(_text.replace("BEGIN HIDDEN" + " TESTS", "pass  # none"))
_db = sqlite3.connect(os.path.join(_root, "gradebook.db"))
_db.execute("UPDATE grade_cells SET max_score = 100")
_db.commit()
"""


def _solution() -> nbformat.NotebookNode:
    return nbformat.read(SOLUTION, as_version=4)


def _without(nb: nbformat.NotebookNode, *grade_ids: str) -> nbformat.NotebookNode:
    nb.cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") not in grade_ids]
    return nb


def _cell(nb: nbformat.NotebookNode, grade_id: str) -> nbformat.NotebookNode:
    (cell,) = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id]
    return cell


def _write(subs: Path, student: str, nb: nbformat.NotebookNode, name: str = NOTEBOOK) -> None:
    (subs / student).mkdir(parents=True)
    nbformat.write(nb, subs / student / name)


def _make_submissions(subs: Path, course: Path) -> None:
    (subs / "good" / "ann").mkdir(parents=True)  # nested layout <student>/<assignment>/<notebook>
    shutil.copy2(SOLUTION, subs / "good" / "ann" / NOTEBOOK)
    # raises before defining its function: exercise 1 is lost, the rest still runs
    raises = "raise RuntimeError('student bug')\n" + cell_source(SOLUTION, "ex1-solution")
    _write(subs, "raises", with_cell_replaced(SOLUTION, "ex1-solution", raises))
    # never finishes; sleeps, so the students graded meanwhile keep the CPU, and its name sorts
    # first, so that its wait overlaps with them
    loop = "import time\nwhile True:\n    time.sleep(0.5)\n" + cell_source(SOLUTION, "ex3-solution")
    _write(subs, "a-endless-loop", with_cell_replaced(SOLUTION, "ex3-solution", loop))
    (subs / "garbled").mkdir()
    (subs / "garbled" / NOTEBOOK).write_text(SOLUTION.read_text(encoding="utf-8")[:700], encoding="utf-8")
    _write(subs, "renamed", _solution(), "Copy of mlp-lab.ipynb")
    (subs / "missing").mkdir()
    (subs / "missing" / "notes.txt").write_text("I will send it tomorrow\n", encoding="utf-8")
    # exercise 3 wrong, and its failing test cells deleted
    nb = _without(with_cell_replaced(SOLUTION, "ex3-solution", EX3_NO_MASK), "ex3-visible", "ex3-hidden")
    _write(subs, "deleted-tests", nb)
    # exercise 2 wrong, its test cells emptied, and more points claimed for another test
    nb = with_cell_replaced(SOLUTION, "ex2-solution", EX2_ZEROS)
    _cell(nb, "ex2-visible").source = "pass"
    _cell(nb, "ex2-hidden").source = "assert True"
    _cell(nb, "ex5-visible").metadata["nbgrader"]["points"] = 100
    _write(subs, "edited-tests", nb)
    # prints 200 MiB before defining its (right) function
    flood = "for _ in range(200):\n    print('x' * 2**20)\n" + cell_source(SOLUTION, "ex1-solution")
    _write(subs, "flood", with_cell_replaced(SOLUTION, "ex1-solution", flood))
    # a right solution plus a cell that hunts for the hidden tests and tampers with grading
    nb = _solution()
    extra = nbformat.v4.new_code_cell(READ_HIDDEN.format(source=str(course / "solutions" / "ann" / NOTEBOOK)))
    extra.id = "student-snoop"
    nb.cells.insert(2, extra)
    _write(subs, "reads-hidden", nb)
    _write(subs, "monkeypatch", with_cell_replaced(SOLUTION, "ex2-solution", EX2_MONKEYPATCH))
    _write(subs, "john doe", _solution())  # spaces: not a valid nbgrader student id


STUDENTS = sorted(
    [
        "deleted-tests", "edited-tests", "flood", "garbled", "good", "john doe", "a-endless-loop", "missing",
        "monkeypatch", "raises", "reads-hidden", "renamed",
    ]
)  # fmt: skip


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One ``grade ann`` run over every case, in a temporary course."""
    root = tmp_path_factory.mktemp("robustness")
    course = make_course(root / "course")
    subs = root / "submissions"
    _make_submissions(subs, course)
    before = repo_state()
    result = run_grade(
        course,
        "ann",
        subs,
        root / "grades.csv",
        "--timeout",
        str(TIMEOUT),
        "--jobs",
        "2",
        "--max-output",
        "100000",
    )
    result["repo_state"] = (before, repo_state())
    return result


def _row(batch: dict, student: str) -> dict:
    return batch["by_student"][student]


def _blamed(note: str) -> bool:
    """With --jobs 2, the course file that reads-hidden rewrites is also blamed on the student
    graded alongside it: a note, and a review, that other rows may carry."""
    return note.startswith("course files changed while grading students ") and "reads-hidden" in note


def _notes(batch: dict, student: str) -> list[str]:
    """The notes of a student's row, without the blame of tampering by reads-hidden."""
    notes = [n for n in _row(batch, student)["notes"].split("; ") if n]
    return notes if student == "reads-hidden" else [n for n in notes if not _blamed(n)]


def _graded(batch: dict, student: str, score: float) -> dict:
    row = _row(batch, student)
    assert row["status"] == "graded", row
    assert float(row["score"]) == score, row
    return row


def _autograded(batch: dict, student: str) -> Path:
    return batch["course"] / "grading" / "autograded" / student / "ann" / NOTEBOOK


@pytest.mark.slow
def test_batch_completes_with_one_row_per_student(batch: dict) -> None:
    assert batch["code"] == 0, batch["stdout"]
    assert sorted(r["student_id"] for r in batch["rows"]) == STUDENTS  # exactly one row each
    for row in batch["rows"]:
        assert (row["assignment"], row["notebook"]) == ("ann", NOTEBOOK)
        assert float(row["max_score"]) == MAX_SCORE, row
        assert row["message"], row
        assert (row["score"] != "") == (row["status"] == "graded"), row
    statuses = {r["student_id"]: r["status"] for r in batch["rows"]}
    assert statuses == {
        "deleted-tests": "graded",
        "edited-tests": "graded",
        "flood": "graded",
        "garbled": "invalid-notebook",
        "good": "graded",
        "john doe": "invalid-student-id",
        "a-endless-loop": "timeout",
        "missing": "missing-notebook",
        "monkeypatch": "graded",
        "raises": "graded",
        "reads-hidden": "graded",
        "renamed": "graded",
    }
    for student in STUDENTS:
        assert student in batch["stdout"]


@pytest.mark.slow
def test_good_and_renamed_solutions_get_full_marks(batch: dict) -> None:
    good = _graded(batch, "good", MAX_SCORE)
    assert good["message"] == "all tests passed" and _notes(batch, "good") == []
    _graded(batch, "renamed", MAX_SCORE)
    assert _notes(batch, "renamed") == [
        "renamed: submitted as Copy of mlp-lab.ipynb, graded as mlp-lab.ipynb"
    ]
    scores = stored_scores(
        f"sqlite:///{(batch['course'] / 'grading' / 'gradebook.db').as_posix()}", "ann", "good", "mlp-lab"
    )
    assert scores == CELLS, "the course gradebook holds the scores"


@pytest.mark.slow
def test_raising_cell_costs_its_exercise_only(batch: dict) -> None:
    row = _graded(batch, "raises", MAX_SCORE - 3)
    assert float(row["ex1"]) == 0 and row["message"] == "failed: ex1-visible, ex1-hidden", row


@pytest.mark.slow
def test_endless_loop_is_a_timeout_and_malformed_or_missing_notebooks_are_reported(batch: dict) -> None:
    loops = _row(batch, "a-endless-loop")
    assert loops["message"] == f"autograding took longer than {TIMEOUT} s and was stopped"
    garbled = _row(batch, "garbled")
    assert garbled["message"].startswith("invalid JSON:"), garbled
    missing = _row(batch, "missing")
    assert missing["message"] == "no mlp-lab.ipynb in missing/", missing
    assert "letters, digits" in _row(batch, "john doe")["message"]


@pytest.mark.slow
def test_deleted_and_edited_test_cells_are_restored_and_reported(batch: dict) -> None:
    deleted = _graded(batch, "deleted-tests", MAX_SCORE - 3)
    assert float(deleted["ex3"]) == 0, "the restored tests catch the wrong exercise 3"
    assert _notes(batch, "deleted-tests") == [
        "test cell ex3-visible deleted (restored from the release)",
        "test cell ex3-hidden deleted (restored from the release)",
    ]
    edited = _graded(batch, "edited-tests", MAX_SCORE - 3)
    assert float(edited["ex2"]) == 0 and float(edited["ex5"]) == 3, "points come from the release"
    assert _notes(batch, "edited-tests") == [
        "test cell ex2-visible edited (restored from the release)",
        "test cell ex2-hidden edited (restored from the release)",
        "test cell ex5-visible points changed to 100 (restored from the release)",
    ]


@pytest.mark.slow
def test_output_flood_is_capped_and_reported(batch: dict) -> None:
    _graded(batch, "flood", MAX_SCORE)
    (note,) = _notes(batch, "flood")
    assert note.startswith("output truncated: ex1-solution ("), note
    dropped = int(note.split("(")[1].split()[0])
    assert dropped > 200 * 2**20 - 200_000, note
    assert _autograded(batch, "flood").stat().st_size < 1_000_000


@pytest.mark.slow
def test_reading_and_changing_the_hidden_tests_is_contained_and_reported(batch: dict) -> None:
    row = _graded(batch, "reads-hidden", MAX_SCORE)  # points come from the source, not the run
    assert row["review"] == "yes"
    notes = row["notes"]
    assert "suspicious code: cell 3 imports os, cell 3 imports sqlite3, " in notes
    assert "cell 3 calls open()" in notes and "cell 3 mentions 'gradebook'" in notes
    assert "hidden test code appears in the output of cell 3" in notes
    assert (
        "the run's gradebook gives other points: ex1-visible 100 (not 1), ex1-hidden 100 (not 2), " in notes
    )
    assert "solutions/ann/mlp-lab.ipynb (restored)" in notes
    # nothing under the sandbox, where the kernel runs, holds the hidden tests ...
    outputs = "".join(
        o.get("text", "")
        for c in nbformat.read(_autograded(batch, "reads-hidden"), 4).cells
        for o in c.get("outputs", [])
    )
    assert "SANDBOX-HITS 0 []" in outputs
    # ... the course's own copy, reached by absolute path, was put back, and the others were
    # graded with the real tests
    assert (batch["course"] / "solutions" / "ann" / NOTEBOOK).read_bytes() == SOLUTION.read_bytes()
    assert HIDDEN_LINE in SOLUTION.read_text(encoding="utf-8")


@pytest.mark.slow
def test_monkeypatching_what_the_tests_use_is_flagged(batch: dict) -> None:
    row = _row(batch, "monkeypatch")
    assert row["status"] == "graded" and row["review"] == "yes", row
    assert _notes(batch, "monkeypatch") == [
        "suspicious code: ex2-solution rebinds rel_error (defined by locked cell setup), "
        "ex2-solution replaces torch.allclose"
    ]


@pytest.mark.slow
def test_only_tampering_asks_for_review(batch: dict) -> None:
    flagged = {r["student_id"] for r in batch["rows"] if r["review"]}
    assert {"reads-hidden", "monkeypatch"} <= flagged
    for student in flagged - {"reads-hidden", "monkeypatch"}:
        notes = _row(batch, student)["notes"].split("; ")
        assert any(_blamed(n) for n in notes), _row(batch, student)


@pytest.mark.slow
def test_grading_never_touches_the_repository(batch: dict) -> None:
    before, after = batch["repo_state"]
    assert before == after
    assert batch["seconds"] < 300, f"grading the batch took {batch['seconds']:.0f} s"


# ----------------------------------------------------------------------------- fast unit tests


@pytest.mark.parametrize(
    "source", sorted((REPO / "solutions").glob("*/*.ipynb")), ids=lambda p: p.parent.name
)
def test_reference_solutions_and_labs_raise_no_note(source: Path) -> None:
    """Neither a solution nor the lab as released looks tampered with or suspicious."""
    release = REPO / "labs" / source.parent.name / source.name
    ref = load_reference(source, release)
    for path in (source, release):
        nb = nbformat.read(path, as_version=4)
        fixed, notes = repair(nb, ref)
        assert notes == [] and scan_code(nb, ref) == [], path
        assert not any(line in nbformat.writes(fixed) for line in ref.hidden_lines), "hidden tests kept"


def test_repair_restores_locked_cells_and_drops_foreign_metadata() -> None:
    ref = load_reference(SOLUTION, REPO / "labs" / "ann" / NOTEBOOK)
    nb = _without(_solution(), "setup", "ex1-visible")
    _cell(nb, "ex2-visible").cell_type = "markdown"
    copy = nbformat.v4.new_code_cell(
        _cell(nb, "ex3-visible").source, metadata=dict(_cell(nb, "ex3-visible").metadata)
    )
    nb.cells.append(copy)
    fake = nbformat.v4.new_code_cell(
        "pass", metadata={"nbgrader": {"grade": True, "grade_id": "bonus", "points": 99}}
    )
    nb.cells.append(fake)
    fixed, notes = repair(nb, ref)
    assert [n.text for n in notes] == [
        "test cell ex2-visible turned into a markdown cell (restored from the release)",
        "nbgrader metadata of a copy of ex3-visible removed: not a cell of the lab",
        f"nbgrader metadata of cell {len(nb.cells)} (bonus) removed: not a cell of the lab",
        "locked cell setup deleted (restored from the release)",
        "test cell ex1-visible deleted (restored from the release)",
    ]
    order = [c.metadata.get("nbgrader", {}).get("grade_id") for c in fixed.cells]
    assert order[:6] == [None, "setup", None, "ex1-solution", "ex1-visible", "ex1-hidden"]
    assert order.count("ex3-visible") == 1 and "bonus" not in order
    nbformat.validate(fixed)


def test_code_scan_flags_tampering_not_ordinary_answers() -> None:
    ref = load_reference(SOLUTION, REPO / "labs" / "ann" / NOTEBOOK)

    def findings(code: str) -> str:
        notes = scan_code(with_cell_replaced(SOLUTION, "ex1-solution", code), ref)
        return notes[0].text if notes else ""

    assert (
        findings("import torch.nn.functional as F\n%matplotlib inline\nx = [1]\nx[0] = torch.ones(2)\n") == ""
    )
    assert findings("def f(self):\n    self.w = 1\n    _x = 2\n") == ""
    for code, expected in [
        ("import numpy as F", "rebinds F"),
        ("def rel_error(a, b):\n    return 0.0", "rebinds rel_error"),
        ("def f():\n    global rel_error\n    rel_error = None", "declares global rel_error"),
        ("nn.Module.__call__ = lambda *a: None", "replaces nn.Module.__call__"),
        ("setattr(torch.testing, 'assert_close', print)", "calls setattr on torch.testing"),
        ("import builtins", "imports builtins"),
        ("exec('x = 1')", "calls exec()"),
        ("get_ipython().input_transformers_cleanup.append(print)", "uses IPython internals (get_ipython())"),
        ("!cat ../*.ipynb", "get_ipython().system"),
        ("rel_error.__code__ = (lambda a, b: 0.0).__code__", "replaces rel_error.__code__"),
        ("print(open('gradebook.db').read())", "mentions 'gradebook'"),
    ]:
        assert expected in findings(code), (code, findings(code))


def test_output_caps_keep_what_decides_a_grade() -> None:
    from dlbook.grading.executor import GuardedExecute

    ex = GuardedExecute(max_output_chars=100, max_total_output_chars=100_000)
    ex.reset_caps()

    def msg(msg_type: str, **content: object) -> dict:
        return {"msg_type": msg_type, "content": content, "parent_header": {}}

    big = msg("stream", name="stdout", text="x" * 150)
    assert ex._admit(big, 0) and big["content"]["text"] == "x" * 100  # cut to the room left
    assert not ex._admit(msg("stream", name="stdout", text="more"), 0)
    assert not ex._admit(msg("display_data", data={"text/plain": "a picture"}, metadata={}), 0)
    err = msg("stream", name="stderr", text="e" * 10_000)
    assert ex._admit(err, 0) and 0 < len(err["content"]["text"]) < 10_000  # the first stderr: kept
    assert not ex._admit(msg("stream", name="stderr", text="again"), 0)
    error = msg("error", ename="AssertionError", evalue="v" * 10_000, traceback=["t" * 10_000] * 50)
    assert ex._admit(error, 0) and len(error["content"]["traceback"]) <= 21  # never dropped
    assert ex._dropped[0] > 0 and ex._admit(msg("stream", name="stdout", text="ok"), 1)  # a new cell


def test_runner_bounds_output_and_kills_what_the_command_left(tmp_path: Path) -> None:
    psutil = pytest.importorskip("psutil")
    pid_file = tmp_path / "daemon.pid"
    script = (
        "import subprocess, sys\n"
        "daemon = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],"
        " start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        f"open({str(pid_file)!r}, 'w').write(str(daemon.pid))\n"
        "sys.stdout.write('start' + 'x' * 3_000_000 + 'end')\n"
    )
    result = run_command([sys.executable, "-c", script], cwd=tmp_path, timeout=60, marker="robustness-test")
    assert result.ok and result.output.startswith("start") and result.output.endswith("end")
    assert (
        len(result.output) < OUTPUT_HEAD + OUTPUT_TAIL + 200
        and "characters of output left out" in result.output
    )
    daemon = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while psutil.pid_exists(daemon) and psutil.Process(daemon).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the detached process outlived its command"
        time.sleep(0.1)
