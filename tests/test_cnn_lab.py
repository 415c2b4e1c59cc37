"""The CNN lab (``solutions/cnn`` -> ``labs/cnn``): clean, in sync with its release, graded as intended.

The grading checks that ``tests/test_grading.py`` runs for the ANN lab, for the ``cnn``
assignment (the notebook checks of ``tests/test_lab_sync.py`` cover every lab folder). One
``grade cnn`` batch, in a temporary copy of the course (``labs/`` and ``grading/`` of the repository
are never touched), grades three submissions: the solution, the lab as released, and one with
exercise 4 half right. The same batch checks that ``labs/cnn`` is in sync: ``grade`` generates the
assignment afresh from ``solutions/cnn`` and warns when the committed lab differs from it.
"""

from __future__ import annotations

from lab_checks import Lab, LabGradingChecks

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


class TestCnnLab(LabGradingChecks):
    """Exercise 4 overwrites instead of accumulating: right for non-overlapping windows only."""

    lab = LAB
    exercises = 8
    partial = {"ex4-solution": EX4_OVERWRITES}
    partial_exercise = "ex4"
    limit_seconds = 120
