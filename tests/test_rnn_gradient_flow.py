"""RNN lesson 3: vanishing and exploding gradients, and gradient clipping.

The derivation is in chapters/rnn/vanishing-exploding.ipynb; the code is
dlbook/scratch/gradient_flow.py. The notebook's checks are repeated here: the Jacobian products of
eq. (eq-vanish-product) equal torch.autograd.functional.jacobian in float64, the bound
(eq-vanish-bound) holds, and the from-scratch clipping equals torch.nn.utils.clip_grad_*_. Planted
bugs (the source article's mistakes) must make the check fail.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import dlbook.scratch.gradient_flow as gf
from dlbook.gradients import TOLERANCE, compare, rel_error

f64 = torch.float64
H, D, T = 8, 3, 30


def problem(radius: float, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """A seeded float64 RNN (W_hh with the given spectral radius) and an input sequence."""
    g = torch.Generator().manual_seed(seed + 100)
    W_hh = gf.matrix_with_radius(H, radius, kind="gaussian", seed=seed)
    W_xh = torch.randn(H, D, generator=g, dtype=f64)
    b = 0.1 * torch.randn(H, generator=g, dtype=f64)
    xs = torch.randn(T, D, generator=g, dtype=f64)
    h0 = 0.5 * torch.randn(H, generator=g, dtype=f64)
    return W_hh, W_xh, b, xs, h0


# --- the Jacobian products ------------------------------------------------------------------------


@pytest.mark.parametrize("nonlinearity", ["tanh", "linear"])
@pytest.mark.parametrize("radius", [0.9, 1.0, 1.5, 3.0])
def test_products_equal_autograd_jacobian(radius: float, nonlinearity: str) -> None:
    W_hh, W_xh, b, xs, h0 = problem(radius)
    mine, ref = {}, {}
    for k in (0, 7):
        products = gf.jacobian_products(W_hh, W_xh, b, xs, h0, k=k, nonlinearity=nonlinearity)
        assert products.shape == (T - k + 1, H, H)
        torch.testing.assert_close(products[0], torch.eye(H, dtype=f64), rtol=0, atol=0)
        for t in (k + 1, k + 5, T):
            mine[f"dh{t}/dh{k}"] = products[t - k]
            ref[f"dh{t}/dh{k}"] = gf.autograd_jacobian(W_hh, W_xh, b, xs, h0, t, k, nonlinearity)
    compare(mine, ref).assert_ok()


def test_corrected_grad_flow_equals_autograd() -> None:
    W_hh, W_xh, b, xs, h0 = problem(1.5, seed=3)
    hs = gf.rnn_states(W_hh, W_xh, b, xs, h0)
    for t, k in ((T, 0), (20, 11), (4, 4)):
        assert rel_error(gf.grad_flow(hs, W_hh, t, k), gf.autograd_jacobian(W_hh, W_xh, b, xs, h0, t, k)) < TOLERANCE
    with pytest.raises(ValueError):
        gf.grad_flow(hs, W_hh, 3, 5)


def test_states_match_nn_rnn() -> None:
    """nn.RNN (tanh, b_ih = b, b_hh = 0) runs the same recurrence, and its dh_T/dh_0 is the same."""
    W_hh, W_xh, b, xs, h0 = problem(1.2, seed=5)
    rnn = nn.RNN(D, H, nonlinearity="tanh").double()
    with torch.no_grad():
        rnn.weight_hh_l0.copy_(W_hh)
        rnn.weight_ih_l0.copy_(W_xh)
        rnn.bias_ih_l0.copy_(b)
        rnn.bias_hh_l0.zero_()
    out, _ = rnn(xs, h0[None])
    hs = gf.rnn_states(W_hh, W_xh, b, xs, h0)
    assert rel_error(out, hs[1:]) < TOLERANCE
    library = torch.autograd.functional.jacobian(lambda h: rnn(xs, h[None])[0][-1], h0)
    assert rel_error(gf.jacobian_products(W_hh, W_xh, b, xs, h0)[-1], library) < TOLERANCE


def _buggy_products(W_hh: torch.Tensor, hs: torch.Tensor, bug: str) -> torch.Tensor:
    """dh_T/dh_0 with one of the source article's mistakes planted."""
    grad = torch.eye(W_hh.shape[0], dtype=f64)
    for i in range(1, len(hs)):
        if bug == "no diag(1-h^2)":
            J = W_hh
        elif bug == "tanh'(h_i) instead of 1-h_i^2":
            J = torch.diag(1 - torch.tanh(hs[i]) ** 2) @ W_hh
        else:  # "right-multiplied": grad @ J builds J_1 J_2 ... J_T
            J = torch.diag(1 - hs[i] ** 2) @ W_hh
        grad = grad @ J if bug == "right-multiplied" else J @ grad
    return grad


@pytest.mark.parametrize("bug", ["no diag(1-h^2)", "tanh'(h_i) instead of 1-h_i^2", "right-multiplied"])
def test_planted_bugs_fail_the_check(bug: str) -> None:
    W_hh, W_xh, b, xs, h0 = problem(1.5, seed=1)
    hs = gf.rnn_states(W_hh, W_xh, b, xs, h0)
    ref = gf.autograd_jacobian(W_hh, W_xh, b, xs, h0, T, 0)
    assert rel_error(_buggy_products(W_hh, hs, bug), ref) > 1e-2
    assert not compare({"J": _buggy_products(W_hh, hs, bug)}, {"J": ref}).ok


# --- spectra and the bound -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["orthogonal", "gaussian"])
def test_matrix_with_radius(kind: str) -> None:
    W = gf.matrix_with_radius(16, 1.7, kind=kind, seed=2)
    assert W.dtype == f64 and W.shape == (16, 16)
    assert math.isclose(gf.spectral_radius(W), 1.7, rel_tol=1e-10)
    sigma = torch.linalg.svdvals(W)
    if kind == "orthogonal":
        torch.testing.assert_close(sigma, torch.full((16,), 1.7, dtype=f64))
    else:
        assert sigma[0] > 1.7 * 1.2  # non-normal: sigma_max clearly above rho
    assert torch.equal(W, gf.matrix_with_radius(16, 1.7, kind=kind, seed=2))  # seeded
    assert not torch.equal(W, gf.matrix_with_radius(16, 1.7, kind=kind, seed=3))
    with pytest.raises(ValueError):
        gf.matrix_with_radius(4, 1.0, kind="uniform")  # type: ignore[arg-type]


@pytest.mark.parametrize("radius", [0.9, 1.5, 3.0])
def test_bound_holds_and_is_tight_for_linear_orthogonal(radius: float) -> None:
    W_hh = gf.matrix_with_radius(H, radius, seed=4)
    _, W_xh, b, xs, h0 = problem(radius)
    n = torch.arange(T + 1, dtype=f64)
    bound = radius**n  # gamma = 1 for tanh, sigma_max = radius for a scaled orthogonal matrix
    tanh_norms = gf.spectral_norms(gf.jacobian_products(W_hh, W_xh, b, xs, h0))
    linear_norms = gf.spectral_norms(gf.jacobian_products(W_hh, W_xh, b, xs, h0, nonlinearity="linear"))
    assert torch.all(tanh_norms <= bound * (1 + 1e-12))
    torch.testing.assert_close(linear_norms, bound, rtol=1e-10, atol=0)
    assert tanh_norms[-1] < bound[-1] * 0.5  # saturation makes the tanh net strictly smaller


def test_step_jacobians_shape_and_saturation() -> None:
    W_hh = gf.matrix_with_radius(H, 1.0, seed=0)
    hs = torch.stack([torch.zeros(H, dtype=f64), torch.full((H,), 0.999999, dtype=f64)])
    J = gf.step_jacobians(W_hh, hs)
    assert J.shape == (1, H, H)
    assert J.abs().max() < 1e-5  # a saturated unit passes (almost) no gradient back


# --- clipping ---------------------------------------------------------------------------------------


def _grads(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=f64) * scale for s, scale in (((5, 4), 3.0), ((4,), 0.1), ((7, 5), 1.0))]


def _torch_params(grads: list[torch.Tensor]) -> list[nn.Parameter]:
    params = [nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    return params


@pytest.mark.parametrize("norm_type", [2.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_equals_torch(max_norm: float, norm_type: float) -> None:
    grads = _grads()
    params = _torch_params(grads)
    total_torch = nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type)
    clipped, total = gf.clip_grad_norm(grads, max_norm, norm_type=norm_type)
    assert rel_error(total, total_torch) < TOLERANCE
    compare({str(i): c for i, c in enumerate(clipped)}, {str(i): p.grad for i, p in enumerate(params)}).assert_ok()
    if max_norm == 1e6:  # below the threshold: unchanged
        compare({str(i): c for i, c in enumerate(clipped)}, {str(i): g for i, g in enumerate(grads)}).assert_ok()
    else:
        assert math.isclose(float(gf.global_grad_norm(clipped, norm_type)), max_norm, rel_tol=1e-5)


def test_clip_norm_keeps_direction_clip_value_does_not() -> None:
    grads = _grads(1)
    flat = torch.cat([g.flatten() for g in grads])
    by_norm = torch.cat([g.flatten() for g in gf.clip_grad_norm(grads, 1.0)[0]])
    by_value = torch.cat([g.flatten() for g in gf.clip_grad_value(grads, 0.5)])
    cos = nn.functional.cosine_similarity
    assert cos(flat, by_norm, dim=0) > 1 - 1e-12
    assert cos(flat, by_value, dim=0) < 0.99


def test_clip_grad_value_equals_torch() -> None:
    grads = _grads(2)
    params = _torch_params(grads)
    nn.utils.clip_grad_value_(params, 0.5)
    clipped = gf.clip_grad_value(grads, 0.5)
    compare({str(i): c for i, c in enumerate(clipped)}, {str(i): p.grad for i, p in enumerate(params)}).assert_ok()
    assert max(float(c.abs().max()) for c in clipped) == 0.5


def test_planted_clipping_bug_fails() -> None:
    """Clipping each tensor to max_norm on its own (a per-tensor, not global, norm) is a different map."""
    grads = _grads()
    params = _torch_params(grads)
    nn.utils.clip_grad_norm_(params, 1.0)
    per_tensor = [gf.clip_grad_norm([g], 1.0)[0][0] for g in grads]
    assert max(rel_error(a, p.grad) for a, p in zip(per_tensor, params)) > 0.1
