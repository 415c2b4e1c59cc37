import pytest
import torch
from torch.autograd.gradcheck import GradcheckError

from dlbook.gradients import GradientReport, autograd_grads, compare, gradcheck64, rel_error


def test_rel_error_is_zero_for_equal_and_scale_free():
    a = torch.randn(5, 3, dtype=torch.float64)
    assert rel_error(a, a.clone()) == 0.0
    assert rel_error(a * 1e6, a * 1e6 * (1 + 1e-10)) == pytest.approx(rel_error(a, a * (1 + 1e-10)), rel=1e-3)


def test_rel_error_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        rel_error(torch.zeros(2), torch.zeros(3))


def test_compare_flags_a_wrong_gradient():
    w = torch.randn(4, 4, dtype=torch.float64)
    good = compare({"W": w}, {"W": w.clone()})
    assert good.ok
    bad = compare({"W": w, "b": w[0]}, {"W": w * 1.001, "b": w[0]})
    assert not bad.ok and bad.worst[0] == "W"
    with pytest.raises(AssertionError, match="W off by"):
        bad.assert_ok()
    assert "FAIL" in str(bad)


def test_compare_requires_same_names():
    with pytest.raises(KeyError):
        compare({"W": torch.zeros(1)}, {"V": torch.zeros(1)})


def test_autograd_grads_match_closed_form():
    x = torch.randn(6, dtype=torch.float64)
    grads = autograd_grads(lambda w: (w * x).pow(2).sum(), {"w": torch.ones(6)})
    assert grads["w"].dtype == torch.float64
    assert rel_error(grads["w"], 2 * x**2) < 1e-12


def test_report_ok_respects_tolerance():
    assert GradientReport({"a": 1e-9}).ok
    assert not GradientReport({"a": 1e-7}).ok


class _WrongSquare(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**2

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * 2.1 * x  # wrong on purpose: the derivative is 2x


class _RightSquare(_WrongSquare):
    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * 2 * x


def test_gradcheck64_accepts_right_and_rejects_wrong_backward():
    x = torch.randn(5)
    assert gradcheck64(_RightSquare.apply, [x])
    with pytest.raises(GradcheckError):
        gradcheck64(_WrongSquare.apply, [x])
