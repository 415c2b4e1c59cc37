"""Lesson 4 (Weight initialisation): the notebook's proofs and measured facts, as tests.

The derivation is chapters/ann/initialization-derivation.md; the code is dlbook/scratch/init.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dlbook.scratch.init import (
    INITS,
    TORCH_INITS,
    apply_init,
    deep_stack,
    kaiming_std,
    propagate,
    sample_torch_init,
    std_tolerance,
    symmetry_after_training,
    torch_init_std,
    uniform_limit,
    xavier_std,
)
from dlbook.scratch.mlp import init_mlp, mlp_backward, mlp_forward

FANS = [(784, 256), (256, 256), (256, 10), (3, 1000)]


@pytest.mark.parametrize(("fan_in", "fan_out"), FANS)
def test_hand_formulas_equal_torch_documented_formulas(fan_in: int, fan_out: int) -> None:
    assert xavier_std(fan_in, fan_out) == pytest.approx(torch_init_std("xavier", fan_in, fan_out), rel=1e-12)
    assert kaiming_std(fan_in) == pytest.approx(torch_init_std("kaiming", fan_in, fan_out), rel=1e-12)
    # the source article's uniform limits
    assert uniform_limit(xavier_std(fan_in, fan_out)) == pytest.approx(math.sqrt(6 / (fan_in + fan_out)), rel=1e-12)
    assert uniform_limit(kaiming_std(fan_in)) == pytest.approx(math.sqrt(6 / fan_in), rel=1e-12)


def test_leaky_relu_formula() -> None:
    assert kaiming_std(100, negative_slope=0.2) == pytest.approx(math.sqrt(2 / (1.04 * 100)))
    assert kaiming_std(100, negative_slope=1.0) == pytest.approx(math.sqrt(1 / 100))  # linear: LeCun
    with pytest.raises(ValueError):
        torch_init_std("orthogonal", 3, 3)


@pytest.mark.parametrize("kind", list(TORCH_INITS))
def test_nn_init_draws_the_formula_std(kind: str) -> None:
    fan_in, fan_out = 1000, 500
    weight = sample_torch_init(kind, fan_in, fan_out)
    assert weight.shape == (fan_out, fan_in)
    expected = TORCH_INITS[kind][1](fan_in, fan_out)
    assert abs(weight.std().item() / expected - 1) < std_tolerance(weight.numel())
    assert abs(weight.mean().item()) < 5 * expected / math.sqrt(weight.numel())
    if "uniform" in kind:
        assert weight.abs().max().item() <= uniform_limit(expected) * (1 + 1e-6)


def test_std_check_can_fail() -> None:
    # A sqrt(2) error (Xavier where Kaiming was meant, for equal fans) is far outside the tolerance.
    weight = sample_torch_init("xavier_normal_", 1000, 1000)
    assert abs(weight.std().item() / kaiming_std(1000) - 1) > 50 * std_tolerance(weight.numel())


def test_nn_linear_default_is_one_sixth_of_kaiming() -> None:
    torch.manual_seed(0)
    std = nn.Linear(1000, 500).weight.std().item()
    assert std == pytest.approx(1 / math.sqrt(3 * 1000), rel=std_tolerance(500_000))
    assert kaiming_std(1000, negative_slope=math.sqrt(5)) == pytest.approx(1 / math.sqrt(3 * 1000))


def test_relu_second_moment_is_half_the_variance() -> None:
    """E[relu(z)^2] = Var(z)/2 for symmetric z (eq-init-relu-moment), by Monte Carlo."""
    gen = torch.Generator().manual_seed(0)
    n = 1_000_000
    for z in (2.0 * torch.randn(n, generator=gen, dtype=torch.float64),
              3.0 * (2 * torch.rand(n, generator=gen, dtype=torch.float64) - 1)):
        ratio = (torch.relu(z) ** 2).mean() / z.var()
        assert ratio.item() == pytest.approx(0.5, abs=0.005)


def test_forward_variance_formula() -> None:
    """Var(z) = n Var(w) E[a^2] (eq-init-forward-var) with non-centred inputs (a = relu outputs)."""
    gen = torch.Generator().manual_seed(1)
    n_in, std_w = 400, 0.05
    a = torch.relu(torch.randn(4000, n_in, generator=gen, dtype=torch.float64))
    W = std_w * torch.randn(n_in, 300, generator=gen, dtype=torch.float64)
    predicted = n_in * std_w**2 * (a**2).mean()
    assert (a @ W).var().item() == pytest.approx(predicted.item(), rel=0.05)


@pytest.fixture(scope="module")
def relu_stats():
    return {name: propagate(name, activation="relu", dtype=torch.float64) for name in INITS}


def _ratio(series: list[float]) -> float:
    return series[-1] / series[0]


def test_propagate_kaiming_keeps_the_signal(relu_stats) -> None:
    s = relu_stats["kaiming"]
    assert len(s.activation_std) == len(s.gradient_std) == 50
    assert 1 / 3 < _ratio(s.activation_std) < 3
    assert 1 / 3 < _ratio(s.gradient_std) < 3
    assert max(s.activation_std) / min(s.activation_std) < 3
    assert s.activation_std[0] == pytest.approx(math.sqrt(2), rel=0.05)  # raw input, not a ReLU output


def test_propagate_small_and_xavier_collapse_under_relu(relu_stats) -> None:
    assert _ratio(relu_stats["xavier"].activation_std) < 1e-5
    assert _ratio(relu_stats["xavier"].gradient_std) > 1e5  # gradients vanish toward the input
    assert _ratio(relu_stats["normal(0, 0.01)"].activation_std) < 1e-30
    # Xavier with equal fans under ReLU: a factor sqrt(2) per layer, 2^(-49/2) over the stack
    assert 0.25 < _ratio(relu_stats["xavier"].activation_std) / 2 ** (-49 / 2) < 4


def test_propagate_zeros_is_exactly_zero(relu_stats) -> None:
    s = relu_stats["zeros"]
    assert all(v == 0.0 for v in s.activation_std + s.gradient_std)


def test_float32_underflows_where_float64_does_not() -> None:
    # Why the lesson runs the experiment in float64.
    s32 = propagate("normal(0, 0.01)", width=128, n=128, dtype=torch.float32)
    s64 = propagate("normal(0, 0.01)", width=128, n=128, dtype=torch.float64)
    assert s32.activation_std[-1] == 0.0 and s64.activation_std[-1] > 0.0


def test_propagate_tanh() -> None:
    xavier = propagate("xavier", activation="tanh", dtype=torch.float64)
    kaiming = propagate("kaiming", activation="tanh", dtype=torch.float64)
    assert 1e-2 < _ratio(xavier.activation_std) < 1  # slow decay, no exponential collapse
    assert 1 / _ratio(kaiming.gradient_std) > 3  # gradients grow toward the input


def test_symmetry_never_breaks_with_constant_init() -> None:
    assert symmetry_after_training(init_value=0.5) == 0.0
    assert symmetry_after_training(init_value=0.0) == 0.0
    assert symmetry_after_training(init_value=None) > 0.1


def test_zero_init_leaves_only_the_output_bias_gradient() -> None:
    gen = torch.Generator().manual_seed(0)
    params = init_mlp([20, 8, 6, 4], gen, torch.float64)
    for W, _ in params:
        W.zero_()
    X = torch.randn(32, 20, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (32,), generator=gen)
    grads = mlp_backward(params, mlp_forward(params, X)[1], y)
    assert all(torch.count_nonzero(dW) == 0 for dW, _ in grads)
    assert all(torch.count_nonzero(db) == 0 for _, db in grads[:-1])
    assert torch.count_nonzero(grads[-1][1]) > 0


def test_apply_init() -> None:
    model = deep_stack(3, 64)
    apply_init(model, "kaiming", torch.Generator().manual_seed(0))
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert all(torch.count_nonzero(m.bias) == 0 for m in linears)
    weights = torch.cat([m.weight.detach().flatten() for m in linears])
    assert weights.std().item() == pytest.approx(kaiming_std(64), rel=0.05)
    with pytest.raises(ValueError):
        apply_init(model, "glorot", torch.Generator())
