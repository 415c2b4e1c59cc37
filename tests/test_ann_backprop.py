"""Lesson 3 (Backpropagation by hand): the notebook's proofs, plus edge cases and planted bugs.

The derivation is chapters/ann/backprop-derivation.md; the code is dlbook/scratch/mlp.py.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import dlbook.scratch.mlp as mlp
from dlbook.gradients import compare
from dlbook.scratch.mlp import (
    check_mlp_gradients,
    evaluate_mlp,
    gradcheck_mlp,
    init_mlp,
    lockstep_with_autograd,
    mlp_backward,
    mlp_forward,
    softmax_cross_entropy,
    softmax_cross_entropy_grad,
    to_torch_mlp,
    train_mlp,
)


def test_check_mlp_gradients_ok() -> None:
    report = check_mlp_gradients()
    assert report.ok, str(report)
    report.assert_ok()


@pytest.mark.parametrize("sizes", [(5, 3), (3, 4, 2), (8, 16, 16, 16, 3)])
def test_check_mlp_gradients_other_depths(sizes: tuple[int, ...]) -> None:
    # L = 1 (no hidden layer: the recursion never runs) up to L = 4.
    report = check_mlp_gradients(sizes=sizes, n=7, seed=3)
    assert report.ok, str(report)


def test_gradcheck_mlp() -> None:
    assert gradcheck_mlp()


def test_two_two_two_example_by_hand() -> None:
    """The notebook's pencil-and-paper network: the printed numbers are the true gradients."""
    f64 = torch.float64
    X = torch.tensor([[1.0, 2.0], [-1.0, 0.5]], dtype=f64)
    y = torch.tensor([0, 1])
    W1 = torch.tensor([[0.1, -0.2], [0.3, -0.4]], dtype=f64)
    b1 = torch.tensor([0.0, 0.1], dtype=f64)
    W2 = torch.tensor([[0.5, -0.3], [0.2, 0.6]], dtype=f64)
    b2 = torch.zeros(2, dtype=f64)
    (dW1, db1), (dW2, db2) = mlp_backward([(W1, b1), (W2, b2)], mlp_forward([(W1, b1), (W2, b2)], X)[1], y)
    torch.testing.assert_close(dW1, torch.tensor([[-0.3454, 0.1], [-0.1908, -0.05]], dtype=f64), atol=1e-4, rtol=0)
    torch.testing.assert_close(db2, torch.tensor([0.0682, -0.0682], dtype=f64), atol=1e-4, rtol=0)
    leaves = [t.clone().requires_grad_(True) for t in (W1, b1, W2, b2)]
    loss = F.cross_entropy(torch.relu(X @ leaves[0] + leaves[1]) @ leaves[2] + leaves[3], y)
    auto = dict(zip(["W1", "b1", "W2", "b2"], torch.autograd.grad(loss, leaves), strict=True))
    compare({"W1": dW1, "b1": db1, "W2": dW2, "b2": db2}, auto).assert_ok()


def test_single_neuron_of_the_source_article() -> None:
    """The article prints dL/dw = -0.0067; its own code gives -0.0249 (the chain rule agrees)."""
    x, w, b = (torch.tensor([v], dtype=torch.float64, requires_grad=True) for v in (1.0, 0.5, 0.1))
    ((torch.sigmoid(w * x + b) - 0.7) ** 2).backward()
    a = 1 / (1 + math.exp(-0.6))
    hand = 2 * (a - 0.7) * a * (1 - a)
    assert abs(w.grad.item() - hand) < 1e-12 and abs(b.grad.item() - hand) < 1e-12
    assert round(hand, 4) == -0.0249


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softmax_cross_entropy_huge_logits(dtype: torch.dtype) -> None:
    Z = torch.tensor([[1000.0, 0.0, -1000.0], [1e4, 1e4, 0.0], [-5e3, 2.0, 7.0]], dtype=dtype)
    y = torch.tensor([2, 0, 1])
    loss = softmax_cross_entropy(Z, y)
    assert torch.isfinite(loss), f"loss overflowed: {loss}"
    torch.testing.assert_close(loss, F.cross_entropy(Z, y))
    grad = softmax_cross_entropy_grad(Z, y)
    assert torch.isfinite(grad).all()
    Zr = Z.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(F.cross_entropy(Zr, y), Zr)
    torch.testing.assert_close(grad, auto)


def test_output_delta_rows_sum_to_zero() -> None:
    # (P - Y)/N: every row of a probability vector minus a one-hot sums to zero.
    Z = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grad = softmax_cross_entropy_grad(Z, torch.tensor([0, 1, 2, 3, 0, 1]))
    torch.testing.assert_close(grad.sum(dim=1), torch.zeros(6, dtype=torch.float64))


def test_wrong_relu_derivative_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A planted bug (relu' = 1 everywhere, i.e. a linear network's derivative) must fail both checks."""
    monkeypatch.setattr(mlp, "relu_grad", lambda x: torch.ones_like(x))
    report = check_mlp_gradients()
    assert not report.ok, f"the gradient check did not notice a wrong relu'\n{report}"
    assert report.errors["W4"] < 1e-8, "the last layer does not use relu' and should still agree"
    with pytest.raises(AssertionError):
        report.assert_ok()
    with pytest.raises(RuntimeError):  # torch.autograd.GradcheckError
        gradcheck_mlp()


def test_missing_one_over_n_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forgetting the 1/N of eq-delta-output scales every gradient by N: the check must fail."""
    right = mlp.softmax_cross_entropy_grad
    monkeypatch.setattr(mlp, "softmax_cross_entropy_grad", lambda Z, y: right(Z, y) * len(y))
    report = check_mlp_gradients()
    assert not report.ok
    assert all(err > 0.5 for name, err in report.errors.items() if name != "loss"), str(report)


def test_to_torch_mlp_computes_the_same_logits() -> None:
    gen = torch.Generator().manual_seed(0)
    params = init_mlp([6, 5, 4, 3], gen, torch.float64)
    X = torch.randn(8, 6, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(to_torch_mlp(params)(X), mlp_forward(params, X)[0], rtol=0, atol=1e-13)


def test_lockstep_with_autograd_agrees() -> None:
    gen = torch.Generator().manual_seed(0)
    params = init_mlp([10, 16, 8, 4], gen, torch.float64)
    X = torch.randn(96, 10, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (96,), generator=gen)
    before = [W.clone() for W, _ in params]
    first, losses, drift = lockstep_with_autograd(params, X, y, lr=0.1, steps=10, batch_size=32)
    first.assert_ok()
    assert len(losses) == 10
    assert max(abs(a - b) / abs(b) for a, b in losses) < 1e-12
    assert drift < 1e-12
    assert all(torch.equal(W, W0) for (W, _), W0 in zip(params, before, strict=True)), "params were modified"


def test_train_mlp_learns_without_autograd() -> None:
    """Three well-separated Gaussian blobs: the hand-written SGD must fit them, with no graph built."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]])
    y = torch.randint(0, 3, (600,), generator=gen)
    X = centres[y] + 0.5 * torch.randn(600, 2, generator=gen)
    params = init_mlp([2, 16, 3], gen)
    history = train_mlp(params, (X[:500], y[:500]), (X[500:], y[500:]), epochs=5, lr=0.1, batch_size=32,
                        progress=False)
    assert [r["epoch"] for r in history.records] == [1, 2, 3, 4, 5]
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert history.last["val_acc"] > 0.95, history.last
    assert all(not W.requires_grad and W.grad is None for W, _ in params)
    assert evaluate_mlp(params, X[500:], y[500:])["acc"] == history.last["val_acc"]
