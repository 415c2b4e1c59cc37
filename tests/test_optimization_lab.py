"""The optimization lab (``solutions/optimization`` -> ``labs/optimization``): graded as intended.

The grading checks of ``tests/test_rnn_lab.py``, for the ``optimization`` assignment (the notebook
checks of ``tests/test_lab_sync.py`` cover every lab folder). One ``grade optimization`` batch, in a
temporary copy of the course (``labs/`` and ``grading/`` of the repository are never touched),
grades four submissions: the solution, the lab as released, one with exercise 3 half right, and one
with *every* exercise half right in the way its hidden tests are meant to catch. The last one shows
that each exercise's partial credit is real: each passes its visible test and fails its hidden
one. The same batch checks that ``labs/optimization`` is in sync with ``solutions/optimization``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
import test_lab_sync as sync  # tests/ is on sys.path: pytest imports these rootless modules by name
from grading_helpers import cell_points, make_course, repo_state, run_grade

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENT = "optimization"
NOTEBOOK = "optimization-lab.ipynb"
SOLUTION = REPO / "solutions" / ASSIGNMENT / NOTEBOOK
LAB = REPO / "labs" / ASSIGNMENT / NOTEBOOK

CELL_POINTS: dict[str, dict[str, float]] = {}
for _grade_id, _points in cell_points(SOLUTION).items():
    CELL_POINTS.setdefault(_grade_id.split("-")[0], {})[_grade_id] = _points
POINTS = {exercise: sum(cells.values()) for exercise, cells in CELL_POINTS.items()}
MAX_SCORE = sum(POINTS.values())

# Half-right answers: each passes the exercise's visible test (the simple case) and fails its hidden
# tests (the general case the statement describes).

# 1. AdamW's decoupled decay instead of Adam's L2 penalty: the same as Adam while weight_decay = 0.
EX1_DECOUPLED_DECAY = """def adam_step(param, grad, state, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    beta1, beta2 = betas
    if not state:
        state["m"], state["v"], state["t"] = torch.zeros_like(param), torch.zeros_like(param), 0
    state["t"] += 1
    param.mul_(1 - lr * weight_decay)  # AdamW: torch.optim.Adam adds weight_decay * param to grad instead
    state["m"] = beta1 * state["m"] + (1 - beta1) * grad
    state["v"] = beta2 * state["v"] + (1 - beta2) * grad**2
    m_hat = state["m"] / (1 - beta1 ** state["t"])
    v_hat = state["v"] / (1 - beta2 ** state["t"])
    param -= lr * m_hat / (v_hat.sqrt() + eps)
"""

# 2. The cosine adds min_lr on top of the full swing: right while min_lr = 0, else it starts at
# base_lr + min_lr.
EX2_FLOOR_ON_TOP = """def warmup_cosine_lr(step, base_lr, warmup_steps, total_steps, min_lr=0.0, start_factor=0.1):
    if step < warmup_steps:
        return base_lr * (start_factor + (1 - start_factor) * step / warmup_steps)
    progress = min(step - warmup_steps, total_steps - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + 0.5 * base_lr * (1 + math.cos(math.pi * progress))  # should scale (base_lr - min_lr)
"""

# 3a. optimizer.step() after unscale_ instead of scaler.step(optimizer): right until a step overflows,
# when it writes inf/nan into the weights.
EX3_STEPS_ON_OVERFLOW = """def amp_train_step(model, optimizer, scaler, loss_fn, x, y, max_norm=None, dtype=torch.float16):
    optimizer.zero_grad()
    with torch.autocast(device_type=x.device.type, dtype=dtype):
        loss = loss_fn(model(x), y)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()  # should be scaler.step(optimizer): it skips the step when a gradient is inf or nan
    scaler.update()
    return loss.item()
"""

# 3b. Clipping before unscale_: it clips S times the gradients. Right whenever nothing is clipped.
EX3_CLIPS_SCALED = """def amp_train_step(model, optimizer, scaler, loss_fn, x, y, max_norm=None, dtype=torch.float16):
    optimizer.zero_grad()
    with torch.autocast(device_type=x.device.type, dtype=dtype):
        loss = loss_fn(model(x), y)
    scaler.scale(loss).backward()
    if max_norm is not None:  # should call scaler.unscale_(optimizer) first
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    scaler.step(optimizer)
    scaler.update()
    return loss.item()
"""

# 4. One norm over all groups and one threshold: right for an optimizer with a single group.
EX4_ONE_GLOBAL_NORM = """def clip_grad_norm_per_group(optimizer, max_norm, error_if_nonfinite=False):
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    total = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))  # should be one norm per group
    if error_if_nonfinite and not torch.isfinite(total):
        raise RuntimeError("non-finite gradient norm")
    coef = max_norm / (total + 1e-6)
    if coef < 1:
        for g in grads:
            g.mul_(coef)
    return [total for _ in optimizer.param_groups]
"""

# 5. Each micro-batch loss divided by k: right only when the micro-batches have equal sizes.
EX5_DIVIDES_BY_K = """def accumulation_step(model, optimizer, loss_fn, micro_batches):
    optimizer.zero_grad()
    losses = []
    for x, y in micro_batches:
        loss = loss_fn(model(x), y) / len(micro_batches)  # should weigh by x.shape[0] / N
        loss.backward()
        losses.append(loss.item())
    optimizer.step()
    return sum(losses)
"""

HALF_RIGHT = {
    "ex1-solution": EX1_DECOUPLED_DECAY,
    "ex2-solution": EX2_FLOOR_ON_TOP,
    "ex3-solution": EX3_STEPS_ON_OVERFLOW,
    "ex4-solution": EX4_ONE_GLOBAL_NORM,
    "ex5-solution": EX5_DIVIDES_BY_K,
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
    """One ``grade optimization`` run over four submissions in a temporary course; rows by student."""
    root = tmp_path_factory.mktemp("optimization-grading")
    course = make_course(root / "course")
    subs = root / "submissions"
    (subs / "full" / ASSIGNMENT).mkdir(parents=True)  # nested layout <student>/<assignment>/<notebook>
    shutil.copy2(SOLUTION, subs / "full" / ASSIGNMENT / NOTEBOOK)
    (subs / "untouched").mkdir()
    shutil.copy2(LAB, subs / "untouched" / NOTEBOOK)
    (subs / "partial").mkdir()
    nbformat.write(_with_cells_replaced({"ex3-solution": EX3_CLIPS_SCALED}), subs / "partial" / NOTEBOOK)
    (subs / "half-right").mkdir()
    nbformat.write(_with_cells_replaced(HALF_RIGHT), subs / "half-right" / NOTEBOOK)
    before = repo_state()
    result = run_grade(course, ASSIGNMENT, subs, root / "grades.csv", "--timeout", "300", "--jobs", "2")
    return {**result, "repo_state": before}


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
    """``grade`` generates the assignment afresh from solutions/optimization (in the temporary course)
    and warns when the lab students have, labs/optimization, differs from it."""
    assert f"registering assignment '{ASSIGNMENT}'" in batch["log"], batch["log"]
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
    """Exercise 3 clips the scaled gradients: its visible test (no clipping) passes, 13 of 15."""
    row = batch["by_student"]["partial"]
    assert float(row["ex3"]) == CELL_POINTS["ex3"]["ex3-visible"] == 1, (
        "exercise 3 passes its visible test only"
    )
    assert {ex: float(row[ex]) for ex in POINTS if ex != "ex3"} == {ex: 3.0 for ex in POINTS if ex != "ex3"}
    assert float(row["score"]) == MAX_SCORE - CELL_POINTS["ex3"]["ex3-hidden"] == 13, row
    assert "ex3-hidden" in row["message"] and "ex3-visible" not in row["message"], row["message"]


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
    assert repo_state() == batch["repo_state"]
    assert batch["seconds"] < 180, f"grading four notebooks took {batch['seconds']:.0f} s"
