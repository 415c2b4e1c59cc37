"""Activation functions and their derivatives written out by hand (ANN lesson 2).

Each ``*_grad`` is the closed-form derivative from the Activations lesson, elementwise; softmax
is not elementwise, so it gets a Jacobian and a vector-Jacobian product instead.

The lesson's measurements live here too, so its tests run the same code: the fraction of
saturated sigmoid/tanh units (:func:`saturated_fraction`, with the closed form
:func:`saturated_fraction_exact`) and the count of dead ReLU units of a model
(:func:`unit_activity`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..gradients import GradientReport, rel_error

Tensor = torch.Tensor


def sigmoid(x: Tensor) -> Tensor:
    """sigma(x) = 1 / (1 + e^{-x}), computed without overflow for large |x|."""
    # exp of a non-positive number never overflows: pick the form by sign.
    e = torch.exp(-x.abs())
    return torch.where(x >= 0, 1 / (1 + e), e / (1 + e))


def sigmoid_grad(x: Tensor) -> Tensor:
    """sigma'(x) = sigma(x) (1 - sigma(x)); at most 1/4, at x = 0."""
    s = sigmoid(x)
    return s * (1 - s)


def tanh(x: Tensor) -> Tensor:
    """tanh(x) = 2 sigma(2x) - 1 (a rescaled, zero-centred sigmoid)."""
    return 2 * sigmoid(2 * x) - 1


def tanh_grad(x: Tensor) -> Tensor:
    """tanh'(x) = 1 - tanh(x)^2; at most 1, at x = 0."""
    return 1 - tanh(x) ** 2


def relu(x: Tensor) -> Tensor:
    """max(0, x)."""
    return torch.clamp_min(x, 0)


def relu_grad(x: Tensor) -> Tensor:
    """1 for x > 0 and 0 otherwise (PyTorch's convention at the kink x = 0 is 0 as well)."""
    return (x > 0).to(x.dtype)


def leaky_relu(x: Tensor, slope: float = 0.01) -> Tensor:
    """x for x > 0, slope * x otherwise: continuous, with a kink at 0."""
    return torch.where(x > 0, x, slope * x)


def leaky_relu_grad(x: Tensor, slope: float = 0.01) -> Tensor:
    """1 for x > 0, ``slope`` otherwise: never exactly zero, so no unit can die."""
    return torch.where(x > 0, torch.ones_like(x), torch.full_like(x, slope))


def _std_normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


def _std_normal_pdf(x: Tensor) -> Tensor:
    return torch.exp(-0.5 * x**2) / math.sqrt(2 * math.pi)


def gelu(x: Tensor) -> Tensor:
    """GELU(x) = x Phi(x), Phi the standard normal CDF (the exact form, as ``F.gelu``)."""
    return x * _std_normal_cdf(x)


def gelu_grad(x: Tensor) -> Tensor:
    """GELU'(x) = Phi(x) + x phi(x), phi the standard normal density."""
    return _std_normal_cdf(x) + x * _std_normal_pdf(x)


def softmax(z: Tensor, dim: int = -1) -> Tensor:
    """softmax(z)_i = e^{z_i - max z} / sum_j e^{z_j - max z}: the shift changes nothing but overflow."""
    shifted = z - z.amax(dim=dim, keepdim=True)
    e = torch.exp(shifted)
    return e / e.sum(dim=dim, keepdim=True)


def softmax_jacobian(z: Tensor) -> Tensor:
    """d softmax(z) / dz = diag(s) - s s^T for one vector z of length K: a (K, K) matrix."""
    s = softmax(z)
    return torch.diag(s) - torch.outer(s, s)


def softmax_vjp(z: Tensor, grad_out: Tensor, dim: int = -1) -> Tensor:
    """g^T J without forming J: s * (g - <g, s>), batched along ``dim``."""
    s = softmax(z, dim=dim)
    return s * (grad_out - (grad_out * s).sum(dim=dim, keepdim=True))


@dataclass(frozen=True)
class Activation:
    """An activation with its hand derivative and the library function it must equal."""

    name: str
    fn: Callable[[Tensor], Tensor]
    grad: Callable[[Tensor], Tensor]
    library: Callable[[Tensor], Tensor]
    output_range: str


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in [
        Activation("sigmoid", sigmoid, sigmoid_grad, torch.sigmoid, "(0, 1)"),
        Activation("tanh", tanh, tanh_grad, torch.tanh, "(-1, 1)"),
        Activation("relu", relu, relu_grad, F.relu, "[0, inf)"),
        Activation("leaky_relu", leaky_relu, leaky_relu_grad, lambda x: F.leaky_relu(x, 0.01), "(-inf, inf)"),
        Activation("gelu", gelu, gelu_grad, F.gelu, "[-0.17, inf)"),
    ]
}


def check_activations(n: int = 2001, span: float = 8.0) -> GradientReport:
    """Each activation and derivative against the library function and autograd, in float64.

    The grid avoids x = 0 exactly, where ReLU and Leaky ReLU have no derivative (autograd
    returns a convention there, not a derivative). Softmax is checked through its VJP.
    """
    x = torch.linspace(-span, span, n, dtype=torch.float64)
    x = x[x != 0]
    errors: dict[str, float] = {}
    for a in ACTIVATIONS.values():
        xr = x.clone().requires_grad_(True)
        y = a.library(xr)
        (auto_grad,) = torch.autograd.grad(y.sum(), xr)
        errors[f"{a.name}(x)"] = rel_error(a.fn(x), y.detach())
        errors[f"{a.name}'(x)"] = rel_error(a.grad(x), auto_grad)
    gen = torch.Generator().manual_seed(0)
    z = (torch.randn(64, 10, generator=gen, dtype=torch.float64) * 5).requires_grad_(True)
    g = torch.randn(64, 10, generator=gen, dtype=torch.float64)
    s = torch.softmax(z, dim=-1)
    (auto_vjp,) = torch.autograd.grad(s, z, g)
    errors["softmax(z)"] = rel_error(softmax(z.detach()), s.detach())
    errors["softmax vjp"] = rel_error(softmax_vjp(z.detach(), g), auto_vjp)
    z0 = z.detach()[0]
    errors["softmax jacobian"] = rel_error(
        softmax_jacobian(z0), torch.autograd.functional.jacobian(lambda v: torch.softmax(v, -1), z0)
    )
    return GradientReport(errors)


# --- Measurements used by the Activations lesson (saturation, dead units) -------------------------


def saturation_edge(name: str, level: float = 0.01) -> float:
    """The |x| beyond which sigmoid'(x) or tanh'(x) drops below ``level`` (closed form).

    sigmoid: s(1 - s) = level at s = (1 + sqrt(1 - 4 level)) / 2, so x* = log(s / (1 - s));
    tanh: 1 - t^2 = level at t = sqrt(1 - level), so x* = atanh(t).
    """
    if name == "sigmoid":
        if not 0 < level < 0.25:
            raise ValueError(f"sigmoid' takes values in (0, 0.25]; level {level} is outside (0, 0.25)")
        s = (1 + math.sqrt(1 - 4 * level)) / 2
        return math.log(s / (1 - s))
    if name == "tanh":
        if not 0 < level < 1:
            raise ValueError(f"tanh' takes values in (0, 1]; level {level} is outside (0, 1)")
        return math.atanh(math.sqrt(1 - level))
    raise KeyError(f"saturation_edge knows sigmoid and tanh, not {name!r}")


def saturated_fraction_exact(name: str, scale: float, level: float = 0.01) -> float:
    """P(f'(z) < level) for z ~ N(0, scale^2): P(|z| > x*) = erfc(x* / (scale sqrt 2))."""
    return math.erfc(saturation_edge(name, level) / (scale * math.sqrt(2)))


def saturated_fraction(
    grad: Callable[[Tensor], Tensor],
    scale: float,
    n: int = 200_000,
    level: float = 0.01,
    generator: torch.Generator | None = None,
) -> float:
    """Measured fraction of units with derivative ``grad(z) < level`` when z ~ N(0, scale^2)."""
    z = torch.randn(n, generator=generator, dtype=torch.float64) * scale
    return float((grad(z) < level).double().mean())


@dataclass(frozen=True)
class UnitActivity:
    """Per activation layer: how many units never fire, and how many have a zero gradient.

    ``never_positive``: the pre-activation is <= 0 for every input (a ReLU outputs 0 throughout).
    ``dead``: the local derivative f'(z) is 0 for every input, so no gradient reaches the unit's
    incoming weights and bias and it cannot recover. For ReLU the two coincide; Leaky ReLU has
    derivative ``negative_slope`` > 0 there, so it has no dead units by construction.
    """

    layer: str
    width: int
    never_positive: int
    dead: int

    @property
    def dead_fraction(self) -> float:
        return self.dead / self.width


_LOCAL_GRAD: dict[type[nn.Module], Callable[[nn.Module, Tensor], Tensor]] = {
    nn.ReLU: lambda m, z: relu_grad(z),
    nn.LeakyReLU: lambda m, z: leaky_relu_grad(z, m.negative_slope),  # type: ignore[arg-type]
    nn.Sigmoid: lambda m, z: sigmoid_grad(z),
    nn.Tanh: lambda m, z: tanh_grad(z),
    nn.GELU: lambda m, z: gelu_grad(z),
}


@torch.no_grad()
def unit_activity(model: nn.Module, X: Tensor, batch_size: int = 4096) -> list[UnitActivity]:
    """Run ``X`` through ``model`` (eval mode) and count never-firing and dead units per activation.

    Units are the channels of dimension 1 of each activation's input (features of an MLP layer).
    A forward *pre*-hook reads the pre-activation before the module runs, so ``inplace=True``
    activations are measured correctly too.
    """
    acts = {name: m for name, m in model.named_modules() if type(m) in _LOCAL_GRAD}
    max_z: dict[str, Tensor] = {}
    max_grad: dict[str, Tensor] = {}

    def hook(name: str) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def record(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            z = inputs[0].transpose(0, 1).reshape(inputs[0].shape[1], -1)  # (units, everything else)
            g = _LOCAL_GRAD[type(module)](module, z)
            zmax, gmax = z.amax(dim=1), g.abs().amax(dim=1)
            max_z[name] = torch.maximum(max_z[name], zmax) if name in max_z else zmax
            max_grad[name] = torch.maximum(max_grad[name], gmax) if name in max_grad else gmax

        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in acts.items()]
    was_training = model.training
    model.eval()
    try:
        dev = next(model.parameters()).device
        for start in range(0, len(X), batch_size):
            model(X[start : start + batch_size].to(dev))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [
        UnitActivity(name, len(max_z[name]), int((max_z[name] <= 0).sum()), int((max_grad[name] == 0).sum()))
        for name in acts
        if name in max_z
    ]
