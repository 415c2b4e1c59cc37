"""Weight initialisation by hand and the variance propagation behind it (ANN lesson 4).

For a layer z = W a with fan_in inputs, independent zero-mean weights of variance s^2 give
Var(z) = fan_in * s^2 * E[a^2] (eq-init-forward-var in ``chapters/ann/initialization-derivation.md``).
Keeping Var(z) constant across layers gives

* Xavier/Glorot (tanh/linear, E[a^2] ~ Var(z)):  s^2 = 2 / (fan_in + fan_out)  (eq-init-xavier: forward
  and backward averaged)
* Kaiming/He (ReLU, E[a^2] = Var(z) / 2):         s^2 = 2 / fan_in  (eq-init-kaiming)

PyTorch's ``nn.Linear`` stores ``weight`` as (fan_out, fan_in): fan_in is ``weight.shape[1]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

Tensor = torch.Tensor


def xavier_std(fan_in: int, fan_out: int, gain: float = 1.0) -> float:
    """sqrt(2 / (fan_in + fan_out)), times the activation's gain: eq. (eq-init-xavier)."""
    return gain * math.sqrt(2.0 / (fan_in + fan_out))


def kaiming_std(fan_in: int, negative_slope: float = 0.0) -> float:
    """sqrt(2 / ((1 + a^2) fan_in)) for (leaky) ReLU with negative-side slope a: eq. (eq-init-kaiming)."""
    return math.sqrt(2.0 / ((1 + negative_slope**2) * fan_in))


def kaiming_init(model: nn.Module, zero_last: bool = True) -> nn.Module:
    """He initialisation of every ``Conv2d``/``Linear`` of a ReLU network with :func:`kaiming_std`
    (eq. (eq-init-kaiming), std sqrt(2 / fan_in)); zero biases.

    fan_in is what one output unit sums over: ``in_features``, or ``in_channels / groups * k_h * k_w``
    for a convolution (``weight[0].numel()`` either way). PyTorch's default for these layers has a
    third of that variance, which makes deep ReLU stacks without BatchNorm (AlexNet, VGG) start with
    vanishing signals. ``zero_last`` zeroes the output layer's weights so training starts from
    uniform predictions (loss ln K): max-pooling keeps the largest values, so activations still grow
    a little with depth. Draws the same numbers as ``nn.init.kaiming_normal_(nonlinearity="relu")``.
    """
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for m in layers:
            m.weight.normal_(0.0, kaiming_std(m.weight[0].numel()))
            if m.bias is not None:
                m.bias.zero_()
        if zero_last and layers:
            layers[-1].weight.zero_()
    return model


def uniform_limit(std: float) -> float:
    """U(-l, l) has variance l^2 / 3, so the uniform twin of a std is l = sqrt(3) * std."""
    return math.sqrt(3.0) * std


InitFn = Callable[[Tensor, torch.Generator], Tensor]


def _normal(std_of: Callable[[int, int], float]) -> InitFn:
    def init(weight: Tensor, gen: torch.Generator) -> Tensor:
        fan_out, fan_in = weight.shape  # nn.Linear stores W as (out, in)
        with torch.no_grad():
            return weight.normal_(0.0, std_of(fan_in, fan_out), generator=gen)

    return init


def _zeros(weight: Tensor, gen: torch.Generator) -> Tensor:
    with torch.no_grad():
        return weight.zero_()


INITS: dict[str, InitFn] = {
    "zeros": _zeros,
    "normal(0, 0.01)": _normal(lambda fi, fo: 0.01),
    "xavier": _normal(lambda fi, fo: xavier_std(fi, fo)),
    "kaiming": _normal(lambda fi, fo: kaiming_std(fi)),
}


def apply_init(model: nn.Module, init: str, generator: torch.Generator) -> nn.Module:
    """Initialise every ``nn.Linear`` weight of ``model`` with ``INITS[init]``, biases with zeros."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; use one of {', '.join(INITS)}")
    for m in model.modules():
        if isinstance(m, nn.Linear):
            INITS[init](m.weight, generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def deep_stack(depth: int, width: int, activation: str = "relu") -> nn.Sequential:
    """``depth`` Linear layers of equal width, each followed by the activation."""
    act = {"relu": nn.ReLU, "tanh": nn.Tanh}[activation]
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), act()]
    return nn.Sequential(*layers)


@dataclass
class LayerStats:
    """Per-layer std of the pre-activations z_l (forward) and of dL/dz_l (backward).

    Pre-activations are what the variance argument keeps constant: Var(z_l) = Var(z_{l-1})
    under Kaiming for ReLU (post-ReLU values are not zero-mean, so their std is not the quantity).
    """

    activation_std: list[float]
    gradient_std: list[float]
    activations: list[Tensor]
    gradients: list[Tensor]


def propagate(
    init: str,
    depth: int = 50,
    width: int = 256,
    activation: str = "relu",
    n: int = 512,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> LayerStats:
    """Push unit-variance inputs through a ``depth``-layer stack initialised with ``init``,
    then a unit-variance gradient back, and record the spread of both at every layer."""
    gen = torch.Generator().manual_seed(seed)
    model = apply_init(deep_stack(depth, width, activation).to(dtype), init, gen)
    x = torch.randn(n, width, generator=gen, dtype=dtype)
    acts: list[Tensor] = []
    h = x
    for m in model:
        h = m(h)
        if isinstance(m, nn.Linear):
            h.retain_grad()
            acts.append(h)
    h.backward(torch.randn(h.shape, generator=gen, dtype=dtype))
    grads = [a.grad.detach() for a in acts]
    acts = [a.detach() for a in acts]
    return LayerStats(
        [a.std().item() for a in acts], [g.std().item() for g in grads], acts, grads
    )


def torch_init_std(kind: str, fan_in: int, fan_out: int) -> float:
    """The std PyTorch's own ``nn.init`` documents for ``xavier_normal_`` / ``kaiming_normal_(relu)``."""
    if kind == "xavier":
        return nn.init.calculate_gain("linear") * math.sqrt(2.0 / (fan_in + fan_out))
    if kind == "kaiming":
        return nn.init.calculate_gain("relu") / math.sqrt(fan_in)
    raise ValueError(f"unknown init {kind!r}; use 'xavier' or 'kaiming'")


# PyTorch's initialisers and the std our hand formulas predict for a (fan_out, fan_in) weight.
TORCH_INITS: dict[str, tuple[Callable[..., Tensor], Callable[[int, int], float]]] = {
    "xavier_normal_": (nn.init.xavier_normal_, xavier_std),
    "xavier_uniform_": (nn.init.xavier_uniform_, xavier_std),
    "kaiming_normal_": (partial(nn.init.kaiming_normal_, nonlinearity="relu"), lambda fi, fo: kaiming_std(fi)),
    "kaiming_uniform_": (partial(nn.init.kaiming_uniform_, nonlinearity="relu"), lambda fi, fo: kaiming_std(fi)),
}


def sample_torch_init(kind: str, fan_in: int, fan_out: int, seed: int = 0) -> Tensor:
    """A (fan_out, fan_in) weight drawn by ``nn.init.<kind>`` with a seeded generator."""
    init, _ = TORCH_INITS[kind]
    return init(torch.empty(fan_out, fan_in), generator=torch.Generator().manual_seed(seed))


def std_tolerance(n: int, sigmas: float = 5.0) -> float:
    """Relative tolerance for a sample std of ``n`` normal draws: ``sigmas`` standard errors,
    the standard error of a sample std being about std / sqrt(2 n) (smaller for uniform draws)."""
    return sigmas / math.sqrt(2 * n)


def symmetry_after_training(
    init_value: float | None = 0.5, steps: int = 50, hidden: int = 8, seed: int = 0
) -> float:
    """Train a 2-layer tanh MLP on random data and return the largest difference between any two
    hidden units' incoming weights afterwards: 0 means the units never became different.

    ``init_value`` sets every weight to that constant (the symmetric start the derivation warns
    about); ``None`` draws Xavier-normal weights instead (the symmetry is broken from the start).
    """
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(128, 4, generator=gen)
    y = torch.randint(0, 3, (128,), generator=gen)
    model = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 3))
    for m in model:
        if isinstance(m, nn.Linear):
            if init_value is None:
                nn.init.xavier_normal_(m.weight, generator=gen)
            else:
                nn.init.constant_(m.weight, init_value)
            nn.init.zeros_(m.bias)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    W = model[0].weight.detach()
    return (W - W[0]).abs().max().item()
