"""Vanishing and exploding gradients in a vanilla RNN, and gradient clipping, from scratch.

The lesson chapters/rnn/vanishing-exploding.ipynb derives, for the recurrence

    h_i = tanh(W_hh h_{i-1} + W_xh x_i + b)                               (eq-vanish-recurrence)

the Jacobian of one step and of many steps,

    dh_i/dh_{i-1} = diag(1 - h_i^2) W_hh                                  (eq-vanish-step)
    dh_t/dh_k     = prod_{i=t}^{k+1} diag(1 - h_i^2) W_hh  (latest factor on the left)
                                                                          (eq-vanish-product)

and the bound ||dh_t/dh_k|| <= (gamma sigma_max(W_hh))^(t-k)  (eq-vanish-bound). Everything here
is plain tensor code without autograd; the notebook and tests/test_rnn_gradient_flow.py compare it
with ``torch.autograd.functional.jacobian`` and with ``torch.nn.utils.clip_grad_*_``.

Shapes: ``xs`` (T, D) holds the inputs x_1..x_T of one sequence, ``h0`` (H,), ``W_hh`` (H, H),
``W_xh`` (H, D), ``b`` (H,). States are returned as (T+1, H) with h_0 in row 0, so row i is h_i.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

Nonlinearity = Literal["tanh", "linear"]


# --- the recurrence and its Jacobians -----------------------------------------------------------


def rnn_states(
    W_hh: Tensor, W_xh: Tensor, b: Tensor, xs: Tensor, h0: Tensor, nonlinearity: Nonlinearity = "tanh"
) -> Tensor:
    """All hidden states h_0..h_T of eq. (eq-vanish-recurrence), as a (T+1, H) tensor.

    ``nonlinearity="linear"`` drops the tanh: h_i = W_hh h_{i-1} + W_xh x_i + b, the contrast case
    whose Jacobian is a pure matrix power.
    """
    states = [h0]
    for x in xs:
        a = W_hh @ states[-1] + W_xh @ x + b  # pre-activation a_i
        states.append(torch.tanh(a) if nonlinearity == "tanh" else a)
    return torch.stack(states)


def step_jacobians(W_hh: Tensor, hs: Tensor, nonlinearity: Nonlinearity = "tanh") -> Tensor:
    """J_i = dh_i/dh_{i-1} = diag(1 - h_i^2) W_hh for i = 1..T, eq. (eq-vanish-step): (T, H, H).

    tanh'(a_i) = 1 - tanh(a_i)^2 = 1 - h_i^2, so the derivative is read off the *output* h_i; no
    need to keep the pre-activation. ``diag(d) @ W`` is computed as ``d[:, None] * W`` (row i of
    W_hh scaled by d_i) instead of building the diagonal matrix.
    """
    later = hs[1:]  # h_1..h_T
    if nonlinearity == "linear":
        return W_hh.expand(len(later), *W_hh.shape).clone()
    return (1 - later**2)[:, :, None] * W_hh


def jacobian_products(
    W_hh: Tensor,
    W_xh: Tensor,
    b: Tensor,
    xs: Tensor,
    h0: Tensor,
    k: int = 0,
    nonlinearity: Nonlinearity = "tanh",
) -> Tensor:
    """dh_t/dh_k for t = k, k+1, ..., T, eq. (eq-vanish-product): a (T-k+1, H, H) tensor.

    Runs the real recurrence from ``h0`` over ``xs``, then multiplies the step Jacobians in the
    order the chain rule dictates: each new factor J_t goes on the *left*,
    dh_t/dh_k = J_t (dh_{t-1}/dh_k). Entry 0 is the identity (t = k); entry n is the gap t-k = n.
    """
    hs = rnn_states(W_hh, W_xh, b, xs, h0, nonlinearity)
    J = step_jacobians(W_hh, hs, nonlinearity)
    products = [torch.eye(W_hh.shape[0], dtype=W_hh.dtype, device=W_hh.device)]
    for t in range(k + 1, len(xs) + 1):
        products.append(J[t - 1] @ products[-1])  # J[t-1] is dh_t/dh_{t-1}
    return torch.stack(products)


def spectral_norms(matrices: Tensor) -> Tensor:
    """Largest singular value (the operator 2-norm) of each matrix in a (..., H, H) stack."""
    return torch.linalg.matrix_norm(matrices, ord=2)


def grad_flow(hs: Tensor, W_hh: Tensor, t: int, k: int) -> Tensor:
    """The source article's ``grad_flow``, corrected: dh_t/dh_k from stored states ``hs`` (T+1, H).

    The printed version called ``torch.tanh_prime`` (no such function), read ``t``, ``k``, ``h_i``
    and ``W_hh`` that it never received, evaluated tanh' at h_i instead of at the pre-activation
    (tanh'(a_i) = 1 - h_i^2, not tanh'(h_i)), and multiplied the new factor on the right
    (``grad @ jacobian``), which builds J_{k+1} ... J_t: the reverse of the chain-rule order.
    """
    if not 0 <= k <= t < len(hs):
        raise ValueError(f"need 0 <= k <= t <= T, got k={k}, t={t}, T={len(hs) - 1}")
    grad = torch.eye(W_hh.shape[0], dtype=W_hh.dtype, device=W_hh.device)
    for i in range(k + 1, t + 1):
        jacobian = torch.diag(1 - hs[i] ** 2) @ W_hh  # dh_i/dh_{i-1}, eq. (eq-vanish-step)
        grad = jacobian @ grad  # latest factor on the left
    return grad


def autograd_jacobian(
    W_hh: Tensor,
    W_xh: Tensor,
    b: Tensor,
    xs: Tensor,
    h0: Tensor,
    t: int,
    k: int,
    nonlinearity: Nonlinearity = "tanh",
) -> Tensor:
    """Reference dh_t/dh_k from ``torch.autograd.functional.jacobian`` (not used by the lesson's code).

    h_k is computed by the recurrence, then treated as the free variable: the function maps h_k to
    h_t by running steps k+1..t on the same inputs.
    """
    h_k = rnn_states(W_hh, W_xh, b, xs[:k], h0, nonlinearity)[-1].detach()

    def h_t_of(h: Tensor) -> Tensor:
        return rnn_states(W_hh, W_xh, b, xs[k:t], h, nonlinearity)[-1]

    return torch.autograd.functional.jacobian(h_t_of, h_k, vectorize=True)  # one batched backward pass


# --- recurrent matrices with a chosen spectrum --------------------------------------------------


def spectral_radius(W: Tensor) -> float:
    """rho(W) = max |eigenvalue|: the growth rate of ||W^n|| for large n (Gelfand's formula)."""
    return float(torch.linalg.eigvals(W).abs().max())


def matrix_with_radius(
    n: int,
    radius: float,
    kind: Literal["orthogonal", "gaussian"] = "orthogonal",
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """A seeded (n, n) recurrent matrix whose spectral radius is exactly ``radius``.

    ``orthogonal``: ``radius`` times a random orthogonal matrix (QR of a Gaussian with the signs
    fixed), so every singular value and every |eigenvalue| equals ``radius``: sigma_max = rho and the
    bound (eq-vanish-bound) is tight for a linear RNN. ``gaussian``: i.i.d. entries rescaled so that
    rho = radius; its sigma_max is then about twice rho, the typical gap for a non-normal matrix.
    """
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=g, dtype=torch.float64)
    if kind == "orthogonal":
        Q, R = torch.linalg.qr(A)
        W = Q * torch.sign(torch.diagonal(R))  # sign fix: Haar-distributed, not biased by QR
    elif kind == "gaussian":
        W = A / spectral_radius(A)
    else:
        raise ValueError(f"kind must be 'orthogonal' or 'gaussian', not {kind!r}")
    return (radius * W).to(dtype)


# --- gradient clipping ---------------------------------------------------------------------------


def global_grad_norm(grads: Sequence[Tensor], norm_type: float = 2.0) -> Tensor:
    """The norm of all gradients concatenated into one vector (eq-vanish-global-norm).

    For p = 2 this is sqrt(sum_j ||g_j||^2); for p = inf, the largest |entry| of any tensor.
    """
    if not grads:
        return torch.tensor(0.0)
    if math.isinf(norm_type):
        return torch.stack([g.detach().abs().max() for g in grads]).max()
    per_tensor = torch.stack([torch.linalg.vector_norm(g.detach(), norm_type) for g in grads])
    return torch.linalg.vector_norm(per_tensor, norm_type)


def clip_grad_norm(
    grads: Sequence[Tensor], max_norm: float, norm_type: float = 2.0, eps: float = 1e-6
) -> tuple[list[Tensor], Tensor]:
    """Global-norm clipping, eq. (eq-vanish-clip-norm): returns (clipped copies, norm before clipping).

    If the global norm N exceeds ``max_norm``, every gradient is multiplied by the same factor
    max_norm / (N + eps); the direction of the full update is kept, only its length shrinks. The
    ``eps`` and the min(., 1) match ``torch.nn.utils.clip_grad_norm_``, which scales in place.
    """
    total = global_grad_norm(grads, norm_type)
    scale = torch.clamp(max_norm / (total + eps), max=1.0)
    return [g * scale.to(g.dtype) for g in grads], total


def clip_grad_value(grads: Sequence[Tensor], clip_value: float) -> list[Tensor]:
    """Element-wise clipping to [-clip_value, clip_value] (eq-vanish-clip-value): copies, not in place.

    Unlike norm clipping, this changes the direction of the update: large entries are cut,
    small ones kept, as ``torch.nn.utils.clip_grad_value_`` does.
    """
    return [g.clamp(-clip_value, clip_value) for g in grads]
