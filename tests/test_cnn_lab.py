"""The CNN lab (``solutions/cnn`` -> ``labs/cnn``): clean, in sync with its release, graded as intended.

The grading checks that ``tests/test_grading.py`` runs for the ANN lab, for the ``cnn``
assignment (the notebook checks of ``tests/test_lab_sync.py`` cover every lab folder). One
``grade cnn`` batch, in a temporary copy of the course (``labs/`` and ``grading/`` of the repository
are never touched), grades three submissions: the solution, the lab as released, and one with
exercise 4 half right. The same batch checks that ``labs/cnn`` is in sync: ``grade`` generates the
assignment afresh from ``solutions/cnn`` and warns when the committed lab differs from it.
"""

from __future__ import annotations

import pytest
from lab_checks import (
    Lab,
    check_every_student_graded,
    check_full_marks,
    check_release_in_sync,
    check_repository_untouched,
    check_visible_only,
    check_zero,
)

LAB = Lab("cnn", "cnn-lab.ipynb")

# Exercise 4 with the classic bug: `=` instead of `+=`, so an input that wins several overlapping
# windows keeps only the last gradient. Right for non-overlapping windows (the visible tests),
# wrong for overlapping ones (the hidden tests): the exercise earns part of its points.
EX4_OVERWRITES = """def maxpool2d_backward(x, dy, kernel_size, stride):
    dx = torch.zeros_like(x)
    n, c, h_out, w_out = dy.shape
    for i in range(h_out):
        for j in range(w_out):
            window = x[:, :, i * stride : i * stride + kernel_size, j * stride : j * stride + kernel_size]
            winner = window.reshape(n, c, -1).argmax(dim=-1)
            for b in range(n):
                for ch in range(c):
                    u, v = divmod(winner[b, ch].item(), kernel_size)
                    dx[b, ch, i * stride + u, j * stride + v] = dy[b, ch, i, j]  # should be +=
    return dx
"""


def test_the_lab_has_five_exercises_of_three_points() -> None:
    assert LAB.points == {f"ex{i}": 3.0 for i in range(1, 6)}, LAB.points


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One ``grade cnn`` run over three submissions in a temporary course; rows by student."""
    return LAB.grade(tmp_path_factory.mktemp("cnn-grading"), {"partial": {"ex4-solution": EX4_OVERWRITES}})


@pytest.mark.slow
def test_batch_grades_every_student(batch: dict) -> None:
    check_every_student_graded(LAB, batch)


@pytest.mark.slow
def test_committed_lab_matches_its_release(batch: dict) -> None:
    check_release_in_sync(LAB, batch)


@pytest.mark.slow
def test_solution_gets_full_marks(batch: dict) -> None:
    check_full_marks(LAB, batch)


@pytest.mark.slow
def test_unmodified_lab_gets_zero(batch: dict) -> None:
    check_zero(LAB, batch)


@pytest.mark.slow
def test_half_right_exercise_gets_partial_credit(batch: dict) -> None:
    """Exercise 4 overwrites instead of accumulating: right for non-overlapping windows only."""
    check_visible_only(LAB, batch, "partial", ["ex4"])


@pytest.mark.slow
def test_grading_never_touches_the_repository(batch: dict) -> None:
    check_repository_untouched(batch, limit_seconds=120)
