"""ANN lesson 2 (chapters/ann/activation-functions.ipynb): the same checks as the notebook, plus
edge cases of dlbook/scratch/activations.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlbook.scratch import activations as act
from dlbook.scratch.activations import ACTIVATIONS, Activation, check_activations

F64 = torch.float64


def test_activation_report_ok():
    report = check_activations()
    print(report)
    assert set(report.errors) >= {f"{n}'(x)" for n in ACTIVATIONS} | {"softmax vjp", "softmax jacobian"}
    report.assert_ok()


def test_activation_report_catches_a_wrong_derivative(monkeypatch):
    # sigma' written as sigma * (1 + sigma) instead of sigma * (1 - sigma): the check must fail.
    good = ACTIVATIONS["sigmoid"]
    wrong = Activation(
        "sigmoid", good.fn, lambda x: act.sigmoid(x) * (1 + act.sigmoid(x)), good.library, "(0, 1)"
    )
    monkeypatch.setitem(ACTIVATIONS, "sigmoid", wrong)
    report = check_activations()
    assert not report.ok
    assert report.worst[0] == "sigmoid'(x)"
    with pytest.raises(AssertionError, match="sigmoid'"):
        report.assert_ok()


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_sigmoid_finite_at_extremes(dtype):
    x = torch.tensor([-1000.0, 1000.0], dtype=dtype)
    y, dy = act.sigmoid(x), act.sigmoid_grad(x)
    assert torch.isfinite(y).all() and torch.isfinite(dy).all()
    assert y.tolist() == [0.0, 1.0]
    assert dy.tolist() == [0.0, 0.0]
    # The textbook derivative e^{-x} / (1 + e^{-x})^2 is inf / inf = nan at x = -1000.
    naive_grad = torch.exp(-x) / (1 + torch.exp(-x)) ** 2
    assert torch.isnan(naive_grad[0])


def test_tanh_finite_at_extremes():
    x = torch.tensor([-1000.0, 0.0, 1000.0], dtype=F64)
    assert act.tanh(x).tolist() == [-1.0, 0.0, 1.0]
    assert act.tanh_grad(x).tolist() == [0.0, 1.0, 0.0]


def test_sigmoid_grad_range_is_half_open_quarter():
    """(0, 0.25]: the maximum 1/4 is attained at x = 0 (the source article wrote (0, 0.25))."""
    x = torch.arange(-30_000, 30_001, dtype=F64) / 1000  # a grid that contains 0 exactly
    g = act.sigmoid_grad(x)
    assert g.max().item() == 0.25
    assert x[g.argmax()].item() == 0.0
    assert (g > 0).all()


def test_softmax_of_huge_equal_logits():
    z = torch.tensor([1000.0, 1000.0])
    assert act.softmax(z).tolist() == [0.5, 0.5]
    naive = torch.exp(z) / torch.exp(z).sum()
    assert torch.isnan(naive).all()  # what the shift protects against


def test_softmax_shift_invariance_and_sums_to_one():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(5, 7, generator=gen, dtype=F64) * 10
    s = act.softmax(z)
    assert torch.allclose(s.sum(-1), torch.ones(5, dtype=F64))
    assert torch.allclose(act.softmax(z + 123.0), s, rtol=0, atol=1e-14)


def test_softmax_two_logits_is_sigmoid():
    x = torch.linspace(-10, 10, 201, dtype=F64)
    s1 = act.softmax(torch.stack([x, torch.zeros_like(x)], dim=1))[:, 0]
    assert torch.allclose(s1, act.sigmoid(x), rtol=0, atol=1e-15)


def test_softmax_jacobian_structure():
    z = torch.tensor([0.3, -1.2, 2.0, 0.0], dtype=F64)
    J = act.softmax_jacobian(z)
    s = act.softmax(z)
    assert torch.allclose(J, J.T)
    assert torch.allclose(J.sum(dim=0), torch.zeros(4, dtype=F64), atol=1e-15)  # sum_i s_i = 1
    assert torch.allclose(torch.diag(J), s * (1 - s))
    g = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64)
    assert torch.allclose(act.softmax_vjp(z, g), g @ J)


def test_leaky_relu_slope_and_continuity():
    x = torch.tensor([-2.0, -1e-12, 1e-12, 3.0], dtype=F64)
    assert act.leaky_relu(x, slope=0.1).tolist() == pytest.approx([-0.2, -1e-13, 1e-12, 3.0])
    assert act.leaky_relu_grad(x, slope=0.1).tolist() == [0.1, 0.1, 1.0, 1.0]
    assert act.leaky_relu(torch.tensor([-5.0]), slope=0.01).item() == pytest.approx(-0.05)
    # Continuous at 0 (the source article called it discontinuous): both one-sided limits are 0.
    eps = torch.tensor([1e-9, 1e-6, 1e-3], dtype=F64)
    assert act.leaky_relu(-eps).abs().max() < 1e-4 and act.leaky_relu(eps).max() < 1e-2
    assert act.leaky_relu(torch.tensor(0.0)).item() == 0.0
    # The derivative is the discontinuous part: it jumps from the slope to 1.
    assert act.leaky_relu_grad(-eps).unique().tolist() == [0.01]
    assert act.leaky_relu_grad(eps).unique().tolist() == [1.0]


def test_relu_grad_at_zero_matches_pytorch_convention():
    x = torch.tensor([0.0], dtype=F64, requires_grad=True)
    (g,) = torch.autograd.grad(F.relu(x).sum(), x)
    assert act.relu_grad(x.detach()).item() == g.item() == 0.0


def test_gelu_minimum_and_derivative_range():
    x = torch.linspace(-4, 4, 80001, dtype=F64)
    y, dy = act.gelu(x), act.gelu_grad(x)
    assert y.min().item() == pytest.approx(-0.170, abs=1e-3)
    assert x[y.argmin()].item() == pytest.approx(-0.752, abs=1e-3)
    # extrema of GELU' at x = +-sqrt(2), where GELU'' = phi(x) (2 - x^2) = 0
    assert dy.max().item() == pytest.approx(1.129, abs=1e-3)
    assert dy.min().item() == pytest.approx(-0.129, abs=1e-3)


@pytest.mark.parametrize("name, edge", [("sigmoid", 4.5849), ("tanh", 2.9932)])
def test_saturation_edge(name, edge):
    x_star = act.saturation_edge(name)
    assert x_star == pytest.approx(edge, abs=1e-4)
    g = ACTIVATIONS[name].grad(torch.tensor([x_star], dtype=F64)).item()
    assert g == pytest.approx(0.01, rel=1e-9)


def test_saturation_edge_rejects_impossible_level():
    with pytest.raises(ValueError):
        act.saturation_edge("sigmoid", 0.3)  # sigmoid' never exceeds 0.25
    with pytest.raises(KeyError):
        act.saturation_edge("relu")


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_saturated_fraction_matches_closed_form(name):
    gen = torch.Generator().manual_seed(0)
    for scale in (0.5, 1, 2, 4, 8, 16):
        measured = act.saturated_fraction(ACTIVATIONS[name].grad, scale, generator=gen)
        exact = act.saturated_fraction_exact(name, scale)
        assert abs(measured - exact) < 0.005, f"{name}, s={scale}: measured {measured:.4f}, exact {exact:.4f}"
    assert act.saturated_fraction_exact(name, 0.5) < 1e-6
    assert act.saturated_fraction_exact(name, 16) > 0.75


def test_derivative_product_through_a_stack():
    # E[prod f'(z_l)] = (E f'(z))^L for independent z_l; sigmoid's factor is at most 1/4.
    gen = torch.Generator().manual_seed(1)
    Z = torch.randn(200_000, 6, generator=gen, dtype=F64)
    m = act.sigmoid_grad(Z).mean().item()
    assert 0.2 < m < 0.25
    sampled = act.sigmoid_grad(Z).prod(dim=1).mean().item()
    assert sampled == pytest.approx(m**6, rel=0.05)
    assert sampled <= 0.25**6
    assert act.relu_grad(Z).mean().item() == pytest.approx(0.5, abs=0.005)


def _mlp(make_act) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 16), make_act(), nn.Linear(16, 8), make_act(), nn.Linear(8, 3))


def test_unit_activity_counts_dead_relus():
    X = torch.randn(256, 10, generator=torch.Generator().manual_seed(0))
    model = _mlp(nn.ReLU)
    healthy = act.unit_activity(model, X)
    assert [u.layer for u in healthy] == ["1", "3"]
    assert [u.width for u in healthy] == [16, 8]
    assert healthy[0].dead == 0  # Gaussian inputs switch every first-layer unit on somewhere
    with torch.no_grad():
        model[0].bias[:5] = -100.0  # five first-layer units can never fire again
    units = act.unit_activity(model, X, batch_size=100)  # several batches: the max is accumulated
    assert units[0].dead == units[0].never_positive == 5
    assert units[0].dead_fraction == 5 / 16


def test_unit_activity_leaky_relu_has_no_dead_units():
    X = torch.randn(256, 10, generator=torch.Generator().manual_seed(0))
    model = _mlp(lambda: nn.LeakyReLU(0.01))
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # every first-layer unit is negative for every input
    units = act.unit_activity(model, X)
    assert units[0].never_positive == 16
    assert units[0].dead == 0  # slope 0.01 > 0: the gradient still flows


def test_unit_activity_handles_inplace_relu_and_restores_mode():
    X = torch.randn(64, 10, generator=torch.Generator().manual_seed(0))
    model = _mlp(lambda: nn.ReLU(inplace=True))
    with torch.no_grad():
        model[0].bias.fill_(-100.0)
    model.train()
    units = act.unit_activity(model, X)
    assert units[0].dead == 16  # read before the in-place op overwrote the pre-activation
    assert model.training
    assert not model[1]._forward_pre_hooks  # hooks removed


def test_saturated_fraction_is_a_fraction():
    frac = act.saturated_fraction(act.sigmoid_grad, 4.0, n=1000, generator=torch.Generator().manual_seed(0))
    assert 0.0 <= frac <= 1.0
    assert math.isclose(act.saturated_fraction_exact("sigmoid", 4.0), 0.2517, abs_tol=1e-4)
