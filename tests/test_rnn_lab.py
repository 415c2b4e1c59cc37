"""The RNN lab (``solutions/rnn`` -> ``labs/rnn``): clean, in sync with its release, graded as intended.

The grading checks of ``tests/test_cnn_lab.py``, for the ``rnn`` assignment (the notebook checks
of ``tests/test_lab_sync.py`` cover every lab folder). One ``grade rnn`` batch, in a temporary
copy of the course (``labs/`` and ``grading/`` of the repository are never touched), grades four
submissions: the solution, the lab as released, one with exercise 2 half right, and one with
*every* exercise half right in the way its hidden tests are meant to catch. The last one shows
that each exercise's partial credit is real: each passes its visible test and fails its hidden
one. The same batch checks that ``labs/rnn`` is in sync with ``solutions/rnn``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
import time
from pathlib import Path

import nbformat
import pytest
import test_lab_sync as sync  # tests/ is on sys.path: pytest imports these rootless modules by name
from test_grading import _make_course, _tree_digest

from dlbook.grading import cli

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENT = "rnn"
NOTEBOOK = "rnn-lab.ipynb"
SOLUTION = REPO / "solutions" / ASSIGNMENT / NOTEBOOK
LAB = REPO / "labs" / ASSIGNMENT / NOTEBOOK


def _points(path: Path) -> dict[str, dict[str, float]]:
    """Points per exercise (``ex1`` ...) and test cell (``ex1-visible`` ...), from the nbgrader metadata."""
    points: dict[str, dict[str, float]] = {}
    for cell in nbformat.read(path, as_version=4).cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("grade"):
            exercise = meta["grade_id"].split("-")[0]
            points.setdefault(exercise, {})[meta["grade_id"]] = float(meta["points"])
    return points


CELL_POINTS = _points(SOLUTION)
POINTS = {exercise: sum(cells.values()) for exercise, cells in CELL_POINTS.items()}
MAX_SCORE = sum(POINTS.values())

# Half-right answers: each passes the exercise's visible test (the simple case) and fails its hidden
# tests (the general case the statement describes).

# 1. `h_prev @ W_hh` runs (W_hh is square) but multiplies by W_hh^T: invisible while h_prev = 0.
EX1_UNTRANSPOSED = """def rnn_step(x_t, h_prev, W_xh, W_hh, b):
    return torch.tanh(h_prev @ W_hh + x_t @ W_xh.T + b)  # should be W_hh.T
"""

# 2a. The backward loop stops one step early: the first step's term delta_1 h_0^T is lost, which
# only shows when h_0 != 0.
EX2_FORGETS_H0 = """def bptt_grad_W_hh(x, h0, W_xh, W_hh, b, dh):
    hs = []
    h = h0
    for x_t in x:
        h = torch.tanh(h @ W_hh.T + x_t @ W_xh.T + b)
        hs.append(h)
    grad = torch.zeros_like(W_hh)
    from_next = torch.zeros_like(h0)
    for t in reversed(range(1, len(x))):  # stops at the second step: the first step's term uses h0
        delta = (dh[t] + from_next) * (1 - hs[t] ** 2)
        grad += delta.T @ hs[t - 1]
        from_next = delta @ W_hh
    return grad
"""

# 2b. Only the last step's loss is back-propagated: right for a loss on h_T, wrong for a per-step loss.
EX2_LAST_STEP_ONLY = """def bptt_grad_W_hh(x, h0, W_xh, W_hh, b, dh):
    hs = [h0]
    for x_t in x:
        hs.append(torch.tanh(hs[-1] @ W_hh.T + x_t @ W_xh.T + b))
    grad = torch.zeros_like(W_hh)
    g = dh[-1]  # should add dh[t - 1] at every step
    for t in range(len(x), 0, -1):
        delta = g * (1 - hs[t] ** 2)
        grad += delta.T @ hs[t - 1]
        g = delta @ W_hh
    return grad
"""

# 3. The LSTM of 1997, without a forget gate: c = c_prev + i * g. Right whenever c_prev = 0.
EX3_NO_FORGET_GATE = """def lstm_cell(x, h_prev, c_prev, W_ih, W_hh, b_ih, b_hh):
    i, f, g, o = (x @ W_ih.T + b_ih + h_prev @ W_hh.T + b_hh).chunk(4, dim=1)
    c = c_prev + torch.sigmoid(i) * torch.tanh(g)  # should be sigmoid(f) * c_prev + ...
    return torch.sigmoid(o) * torch.tanh(c), c
"""

# 4. Each tensor clipped on its own instead of the global norm: right for a single parameter.
EX4_PER_TENSOR = """def clip_grad_norm(parameters, max_norm):
    norms = []
    for p in parameters:
        if p.grad is None:
            continue
        norm = p.grad.norm()
        norms.append(norm)
        if norm > max_norm:  # should compare (and rescale by) the norm of all gradients together
            p.grad.mul_(max_norm / (norm + 1e-6))
    return torch.stack(norms).norm()
"""

# 5. The backward half taken at the last valid step too: right for one-directional RNNs only.
EX5_BACKWARD_AT_END = """def last_valid_state(outputs, lengths, bidirectional=False):
    return outputs[torch.arange(outputs.shape[0]), lengths - 1]  # the backward direction ends at t = 0
"""

HALF_RIGHT = {
    "ex1-solution": EX1_UNTRANSPOSED,
    "ex2-solution": EX2_LAST_STEP_ONLY,
    "ex3-solution": EX3_NO_FORGET_GATE,
    "ex4-solution": EX4_PER_TENSOR,
    "ex5-solution": EX5_BACKWARD_AT_END,
}


def _with_cells_replaced(sources: dict[str, str]) -> nbformat.NotebookNode:
    """The solution notebook with the source of each cell ``grade_id`` replaced (a student's edits)."""
    nb = nbformat.read(SOLUTION, as_version=4)
    for grade_id, source in sources.items():
        cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id]
        assert len(cells) == 1, grade_id
        cells[0].source = source
    return nb


def test_the_lab_has_five_exercises_of_three_points() -> None:
    assert POINTS == {f"ex{i}": 3.0 for i in range(1, 6)}, POINTS
    for exercise, cells in CELL_POINTS.items():
        assert cells == {f"{exercise}-visible": 1.0, f"{exercise}-hidden": 2.0}, cells


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One ``grade rnn`` run over four submissions in a temporary course; rows by student."""
    root = tmp_path_factory.mktemp("rnn-grading")
    course = _make_course(root / "course")
    subs = root / "submissions"
    (subs / "full" / ASSIGNMENT).mkdir(parents=True)  # nested layout <student>/<assignment>/<notebook>
    shutil.copy2(SOLUTION, subs / "full" / ASSIGNMENT / NOTEBOOK)
    (subs / "untouched").mkdir()
    shutil.copy2(LAB, subs / "untouched" / NOTEBOOK)
    (subs / "partial").mkdir()
    nbformat.write(_with_cells_replaced({"ex2-solution": EX2_FORGETS_H0}), subs / "partial" / NOTEBOOK)
    (subs / "half-right").mkdir()
    nbformat.write(_with_cells_replaced(HALF_RIGHT), subs / "half-right" / NOTEBOOK)
    out = root / "grades.csv"
    repo_state = (_tree_digest(REPO / "labs"), (REPO / "grading").exists())
    stdout, stderr = io.StringIO(), io.StringIO()
    start = time.monotonic()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main(
            ["grade", ASSIGNMENT, str(subs), "--out", str(out), "--course-root", str(course)]
            + ["--timeout", "300", "--jobs", "2"]
        )
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return {
        "code": code,
        "rows": rows,
        "by_student": {r["student_id"]: r for r in rows},
        "stdout": stdout.getvalue(),
        "log": stderr.getvalue(),  # progress lines, and the warning if labs/rnn is stale
        "seconds": time.monotonic() - start,
        "repo_state": repo_state,
    }


@pytest.mark.slow
def test_batch_grades_every_student(batch: dict) -> None:
    assert batch["code"] == 0, batch["stdout"]
    assert sorted(batch["by_student"]) == ["full", "half-right", "partial", "untouched"]
    for row in batch["rows"]:
        assert (row["assignment"], row["notebook"]) == (ASSIGNMENT, NOTEBOOK)
        assert row["status"] == "graded", f"{row['student_id']}: {row['status']}: {row['message']} ({row.get('notes')})"
        assert float(row["max_score"]) == MAX_SCORE == 15


@pytest.mark.slow
def test_committed_lab_matches_its_release(batch: dict) -> None:
    """``grade`` generates the assignment afresh from solutions/rnn (in the temporary course) and
    warns when the lab students have, labs/rnn, differs from it (``notebook_differences``)."""
    assert "registering assignment 'rnn'" in batch["log"], batch["log"]
    stale = [line for line in batch["log"].splitlines() if "out of date" in line]
    assert not stale, sync.RELEASE_HINT.format(a=ASSIGNMENT) + ":\n" + "\n".join(stale)


@pytest.mark.slow
def test_solution_gets_full_marks(batch: dict) -> None:
    row = batch["by_student"]["full"]
    assert float(row["score"]) == MAX_SCORE, row
    assert {ex: float(row[ex]) for ex in POINTS} == POINTS
    assert row["message"] == "all tests passed"


@pytest.mark.slow
def test_unmodified_lab_gets_zero(batch: dict) -> None:
    row = batch["by_student"]["untouched"]
    assert float(row["score"]) == 0, row
    assert all(float(row[ex]) == 0 for ex in POINTS), row


@pytest.mark.slow
def test_half_right_exercise_gets_partial_credit(batch: dict) -> None:
    """Exercise 2 forgets the first step's term: its visible test (h_0 = 0) passes, 13 of 15."""
    row = batch["by_student"]["partial"]
    assert float(row["ex2"]) == CELL_POINTS["ex2"]["ex2-visible"] == 1, (
        "exercise 2 passes its visible test only"
    )
    assert {ex: float(row[ex]) for ex in POINTS if ex != "ex2"} == {ex: 3.0 for ex in POINTS if ex != "ex2"}
    assert float(row["score"]) == MAX_SCORE - CELL_POINTS["ex2"]["ex2-hidden"] == 13, row
    assert "ex2-hidden" in row["message"] and "ex2-visible" not in row["message"], row["message"]


@pytest.mark.slow
def test_every_exercise_has_real_partial_credit(batch: dict) -> None:
    """Each exercise half right at once: every visible test passes, every hidden one fails, 5 of 15."""
    row = batch["by_student"]["half-right"]
    visible = {ex: cells[f"{ex}-visible"] for ex, cells in CELL_POINTS.items()}
    assert {ex: float(row[ex]) for ex in POINTS} == visible == {f"ex{i}": 1.0 for i in range(1, 6)}, row
    assert float(row["score"]) == sum(visible.values()) == 5, row
    for ex in POINTS:
        assert f"{ex}-hidden" in row["message"] and f"{ex}-visible" not in row["message"], row["message"]


@pytest.mark.slow
def test_grading_never_touches_the_repository(batch: dict) -> None:
    assert (_tree_digest(REPO / "labs"), (REPO / "grading").exists()) == batch["repo_state"]
    assert batch["seconds"] < 180, f"grading four notebooks took {batch['seconds']:.0f} s"
