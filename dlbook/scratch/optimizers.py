"""SGD, momentum, Nesterov, RMSprop, Adam and AdamW written from their equations (Optimization lesson 1).

Each optimizer is a ``torch.optim.Optimizer`` subclass, so it plugs into any training loop
(``dlbook.train.fit`` included) exactly like ``torch.optim.SGD``. The update rules follow
``chapters/optimization/optimizers-derivation.md``; every line cites the equation label it implements:

* :class:`SGDScratch`      eq-optim-sgd, eq-optim-l2, eq-optim-momentum, eq-optim-nesterov-torch
* :class:`RMSpropScratch`  eq-optim-rmsprop (and its centered / momentum variants)
* :class:`AdamScratch`     eq-optim-adam-m, eq-optim-adam-v, eq-optim-adam-hat, eq-optim-adam-update
* :class:`AdamWScratch`    eq-optim-adamw (decoupled weight decay)

The per-parameter state (momentum buffers, moment estimates, step counts) lives in ``self.state[p]``
as the base class expects, so ``state_dict()`` / ``load_state_dict()`` work. :func:`compare_with_torch`
trains two copies of a model, one with ``torch.optim`` and one with a scratch optimizer, and reports
how far apart their parameters end up; the notebook and ``tests/test_opt_optimizers.py`` both call it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer

Tensor = torch.Tensor
Params = Iterable[Tensor] | Iterable[dict]
Closure = Callable[[], Tensor] | None
OptimizerFactory = Callable[[Iterable[Tensor]], Optimizer]


def _run_closure(closure: Closure) -> Tensor | None:
    # The closure re-evaluates the loss with gradients enabled (step() itself runs under no_grad).
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class SGDScratch(Optimizer):
    """Stochastic gradient descent with optional heavy-ball or Nesterov momentum.

    With ``g_t`` the gradient, ``lambda`` the weight decay, ``mu`` the momentum and ``tau`` the dampening:

    * L2 weight decay (eq-optim-l2):        ``g_t <- g_t + lambda p_{t-1}``
    * momentum buffer (eq-optim-momentum):  ``b_1 = g_1``, ``b_t = mu b_{t-1} + (1 - tau) g_t``
    * direction: ``d_t = b_t`` (heavy ball) or ``d_t = g_t + mu b_t`` (Nesterov, eq-optim-nesterov-torch)
    * update (eq-optim-sgd):                ``p_t = p_{t-1} - lr d_t``

    ``decoupled_weight_decay=True`` shrinks the weights directly, ``p <- (1 - lr lambda) p``
    (eq-optim-decoupled), instead of adding ``lambda p`` to the gradient; without momentum the two
    coincide (eq-optim-sgd-l2-equals-decay), with momentum they do not.
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        decoupled_weight_decay: bool = False,
    ) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"lr, momentum and weight_decay must be >= 0, got {lr}, {momentum}, {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum needs momentum > 0 and zero dampening")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Closure = None) -> Tensor | None:
        """One update of every parameter that has a gradient; returns the closure's loss, if any."""
        loss = _run_closure(closure)
        for group in self.param_groups:
            lr, mu, tau, lam = group["lr"], group["momentum"], group["dampening"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if lam != 0:
                    if group["decoupled_weight_decay"]:
                        p.mul_(1 - lr * lam)  # eq-optim-decoupled: shrink the weight, leave g alone
                    else:
                        g = g + lam * p  # eq-optim-l2: the gradient of (lambda / 2) ||p||^2
                if mu != 0:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        # PyTorch starts the buffer at b_1 = g_1 (no dampening on the first step).
                        state["momentum_buffer"] = g.clone()
                    else:
                        state["momentum_buffer"].mul_(mu).add_(g, alpha=1 - tau)  # eq-optim-momentum
                    b = state["momentum_buffer"]
                    d = g + mu * b if group["nesterov"] else b  # eq-optim-nesterov-torch / heavy ball
                else:
                    d = g
                p.add_(d, alpha=-lr)  # eq-optim-sgd: p_t = p_{t-1} - lr d_t
        return loss


class RMSpropScratch(Optimizer):
    """RMSprop: divide the gradient by a running root-mean-square of its recent values.

    * second moment (eq-optim-rmsprop-v):  ``v_t = alpha v_{t-1} + (1 - alpha) g_t^2``, ``v_0 = 0``
    * centered variant:                    ``gbar_t = alpha gbar_{t-1} + (1 - alpha) g_t``, and
      ``v_t - gbar_t^2`` (a variance) replaces ``v_t``
    * update (eq-optim-rmsprop):           ``p_t = p_{t-1} - lr g_t / (sqrt(v_t) + eps)``
    * with momentum ``mu``:                ``b_t = mu b_{t-1} + g_t / (sqrt(v_t) + eps)``, ``p_t = p_{t-1} - lr b_t``

    ``eps`` is added *outside* the square root, as in PyTorch. There is no bias correction: ``v_1`` is
    only ``(1 - alpha) g_1^2``, so the first steps are ``1 / sqrt(1 - alpha)`` (10x for 0.99) too large.
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
    ) -> None:
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {alpha}")
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum, centered=centered)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Closure = None) -> Tensor | None:
        """One RMSprop update (eq-optim-rmsprop) of every parameter that has a gradient."""
        loss = _run_closure(closure)
        for group in self.param_groups:
            lr, alpha, eps, lam, mu = (group[k] for k in ("lr", "alpha", "eps", "weight_decay", "momentum"))
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad if lam == 0 else p.grad + lam * p  # eq-optim-l2
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["square_avg"] = torch.zeros_like(p)
                    if group["centered"]:
                        state["grad_avg"] = torch.zeros_like(p)
                    if mu > 0:
                        state["momentum_buffer"] = torch.zeros_like(p)
                state["step"] += 1
                v = state["square_avg"]
                v.mul_(alpha).addcmul_(g, g, value=1 - alpha)  # eq-optim-rmsprop-v
                if group["centered"]:
                    gbar = state["grad_avg"]
                    gbar.mul_(alpha).add_(g, alpha=1 - alpha)
                    denom = (v - gbar * gbar).sqrt() + eps  # sqrt of a running variance
                else:
                    denom = v.sqrt() + eps
                if mu > 0:
                    b = state["momentum_buffer"]
                    b.mul_(mu).addcdiv_(g, denom)  # b_t = mu b_{t-1} + g_t / (sqrt(v_t) + eps)
                    p.add_(b, alpha=-lr)
                else:
                    # eq-optim-rmsprop. addcdiv_ (p + value * g / denom in one kernel) rounds as torch.optim
                    # does, so even float32 runs stay equal instead of drifting apart by rounding.
                    p.addcdiv_(g, denom, value=-lr)
        return loss


class AdamScratch(Optimizer):
    """Adam with bias-corrected moment estimates; ``weight_decay`` is L2 added to the gradient.

    * L2 (eq-optim-l2):              ``g_t <- g_t + lambda p_{t-1}`` (goes *through* the moments below)
    * first moment (eq-optim-adam-m):   ``m_t = beta1 m_{t-1} + (1 - beta1) g_t``
    * second moment (eq-optim-adam-v):  ``v_t = beta2 v_{t-1} + (1 - beta2) g_t^2``
    * bias correction (eq-optim-adam-hat): ``mhat_t = m_t / (1 - beta1^t)``, ``vhat_t = v_t / (1 - beta2^t)``
    * update (eq-optim-adam-update): ``p_t = p_{t-1} - lr mhat_t / (sqrt(vhat_t) + eps)``

    ``bias_correction=False`` drops eq-optim-adam-hat. That is a deliberate ablation (the lesson's
    planted bug), not a setting anyone should train with.
    """

    decoupled: bool = False  # AdamWScratch flips this: eq-optim-adamw instead of eq-optim-l2

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        bias_correction: bool = True,
    ) -> None:
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, bias_correction=bias_correction)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Closure = None) -> Tensor | None:
        """One Adam (or AdamW) update of every parameter that has a gradient."""
        loss = _run_closure(closure)
        for group in self.param_groups:
            lr, (beta1, beta2), eps, lam = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if lam != 0:
                    if self.decoupled:
                        p.mul_(1 - lr * lam)  # eq-optim-adamw: decay the weight, outside the moments
                    else:
                        g = g + lam * p  # eq-optim-l2: the decay term is rescaled by 1 / sqrt(vhat)
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(g, alpha=1 - beta1)  # eq-optim-adam-m
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)  # eq-optim-adam-v
                if group["bias_correction"]:
                    m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)  # eq-optim-adam-hat
                else:
                    m_hat, v_hat = m, v  # the planted bug: moments biased towards their zero start
                p.add_(m_hat / (v_hat.sqrt() + eps), alpha=-lr)  # eq-optim-adam-update
        return loss


class AdamWScratch(AdamScratch):
    """AdamW: Adam plus *decoupled* weight decay ``p <- (1 - lr lambda) p`` (eq-optim-adamw).

    The decay is applied to the weight before the Adam step and never enters ``m`` or ``v``, so every
    weight shrinks at the same rate ``lr lambda`` whatever its gradient history. ``torch.optim.AdamW``
    multiplies the decay by ``lr`` as here (the paper multiplies it by the schedule factor only).
    """

    decoupled = True

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


# --- the optimizers compared with torch.optim ---------------------------------------------------


def proof_settings() -> dict[str, tuple[OptimizerFactory, OptimizerFactory]]:
    """Name -> (torch.optim factory, scratch factory) with identical hyper-parameters.

    Weight decays are large on purpose (1e-2 to 1e-1), so that a wrong decay rule shows up.
    """
    torch_optim = torch.optim
    settings = {
        "SGD": dict(lr=0.05),
        "SGD + weight decay": dict(lr=0.05, weight_decay=1e-2),
        "SGD momentum": dict(lr=0.02, momentum=0.9),
        "SGD momentum + dampening + wd": dict(lr=0.02, momentum=0.9, dampening=0.3, weight_decay=1e-2),
        "SGD Nesterov + wd": dict(lr=0.02, momentum=0.9, nesterov=True, weight_decay=1e-2),
    }
    pairs = {name: (partial(torch_optim.SGD, **kw), partial(SGDScratch, **kw)) for name, kw in settings.items()}
    rms = {
        "RMSprop": dict(lr=1e-3, alpha=0.99, eps=1e-8),
        "RMSprop centered + momentum + wd": dict(lr=5e-4, alpha=0.9, momentum=0.5, centered=True, weight_decay=1e-2),
    }
    pairs |= {name: (partial(torch_optim.RMSprop, **kw), partial(RMSpropScratch, **kw)) for name, kw in rms.items()}
    pairs["Adam"] = (partial(torch_optim.Adam, lr=1e-3), partial(AdamScratch, lr=1e-3))
    adam_l2 = dict(lr=1e-3, betas=(0.8, 0.99), weight_decay=1e-2)
    pairs["Adam + L2 weight decay"] = (partial(torch_optim.Adam, **adam_l2), partial(AdamScratch, **adam_l2))
    pairs["AdamW"] = (partial(torch_optim.AdamW, lr=1e-3, weight_decay=0.1),
                      partial(AdamWScratch, lr=1e-3, weight_decay=0.1))
    return pairs


def small_mlp(d_in: int = 784, hidden: int = 32, d_out: int = 10, seed: int = 0,
              dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """A one-hidden-layer ReLU MLP with PyTorch's default init, seeded without touching the global RNG."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out)).to(dtype)


def batches_of(x: Tensor, y: Tensor, batch_size: int, dtype: torch.dtype = torch.float64) -> list[tuple[Tensor, Tensor]]:
    """Consecutive, unshuffled minibatches (the last partial one dropped): the same sequence every run."""
    n = len(x) // batch_size * batch_size
    return [(x[i : i + batch_size].to(dtype), y[i : i + batch_size]) for i in range(0, n, batch_size)]


def train_steps(model: nn.Module, optimizer: Optimizer, batches: Sequence[tuple[Tensor, Tensor]], steps: int,
                loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy) -> list[float]:
    """``steps`` plain training steps, cycling through ``batches``; returns the loss of each step."""
    losses = []
    for i in range(steps):
        x, y = batches[i % len(batches)]
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@dataclass
class Agreement:
    """How far apart two copies of a model end up after training with two optimizers."""

    name: str
    steps: int
    max_abs: float  # max |p_torch - p_scratch| over all parameters
    max_rel: float  # max over parameters of dlbook.gradients.rel_error
    moved: float  # max |p_final - p_initial|: the training really changed the weights

    def ok(self, tolerance: float = 1e-10) -> bool:
        return self.max_abs < tolerance and self.max_rel < tolerance

    def __str__(self) -> str:
        return (f"{self.name:34} {self.steps:4d} steps  max |diff| {self.max_abs:8.1e}  max rel {self.max_rel:8.1e}"
                f"  weights moved {self.moved:6.3f}")


def compare_with_torch(
    model: nn.Module,
    batches: Sequence[tuple[Tensor, Tensor]],
    make_torch: OptimizerFactory,
    make_scratch: OptimizerFactory,
    steps: int = 200,
    name: str = "",
) -> Agreement:
    """Train two deep copies of ``model`` on the same batches, one per optimizer, and compare weights.

    Each copy computes its own gradients, so a difference in any step propagates into every later
    gradient: agreement after many steps checks the whole trajectory, not one update.
    """
    from ..gradients import rel_error  # local: keep the optimizers importable on their own

    reference, mine = copy.deepcopy(model), copy.deepcopy(model)
    train_steps(reference, make_torch(reference.parameters()), batches, steps)
    train_steps(mine, make_scratch(mine.parameters()), batches, steps)
    pairs = [tuple(t.detach() for t in ps)
             for ps in zip(reference.parameters(), mine.parameters(), model.parameters(), strict=True)]
    return Agreement(
        name=name,
        steps=steps,
        max_abs=max(float((a - b).abs().max()) for a, b, _ in pairs),
        max_rel=max(rel_error(b, a) for a, b, _ in pairs),
        moved=max(float((a - p0).abs().max()) for a, _, p0 in pairs),
    )


# --- reference forms used by the derivation's equivalence claims ---------------------------------


def heavy_ball_lr_inside(grad: Callable[[Tensor], Tensor], p0: Tensor, lrs: Sequence[float],
                         momentum: float) -> Tensor:
    """The "lr inside" heavy ball (eq-optim-momentum-lr-inside): ``u_t = mu u_{t-1} - lr_t g_t``, ``p_t = p_{t-1} + u_t``.

    Returns the iterates (len(lrs) + 1, *p0.shape). With a constant lr it equals PyTorch's form
    (eq-optim-momentum) through ``u_t = -lr b_t``; after an lr change the two differ.
    """
    p, u, path = p0.clone(), torch.zeros_like(p0), [p0.clone()]
    for lr in lrs:
        u = momentum * u - lr * grad(p)
        p = p + u
        path.append(p.clone())
    return torch.stack(path)


def nesterov_sutskever(grad: Callable[[Tensor], Tensor], theta0: Tensor, lr: float, momentum: float,
                       steps: int) -> tuple[Tensor, Tensor]:
    """Nesterov momentum as Sutskever et al. write it (eq-optim-nesterov-sutskever).

    ``v_{t+1} = mu v_t - lr grad(theta_t + mu v_t)``, ``theta_{t+1} = theta_t + v_{t+1}``. Returns the
    iterates ``theta`` and the look-ahead points ``theta + mu v`` (both (steps + 1, *shape)); PyTorch's
    parameter is the look-ahead point (eq-optim-nesterov-lookahead).
    """
    theta, v = theta0.clone(), torch.zeros_like(theta0)
    thetas, lookaheads = [theta.clone()], [theta.clone()]
    for _ in range(steps):
        v = momentum * v - lr * grad(theta + momentum * v)
        theta = theta + v
        thetas.append(theta.clone())
        lookaheads.append(theta + momentum * v)
    return torch.stack(thetas), torch.stack(lookaheads)


def rosenbrock(p: Tensor, a: float = 1.0, b: float = 100.0) -> Tensor:
    """f(x, y) = (a - x)^2 + b (y - x^2)^2: a curved, narrow valley with its minimum 0 at (a, a^2)."""
    x, y = p[..., 0], p[..., 1]
    return (a - x) ** 2 + b * (y - x**2) ** 2


def trajectory(make_optimizer: OptimizerFactory, start: Sequence[float], steps: int,
               loss_fn: Callable[[Tensor], Tensor] = rosenbrock) -> tuple[Tensor, Tensor]:
    """Minimise a 2-D ``loss_fn`` from ``start``; returns the path (steps + 1, 2) and losses (steps + 1,)."""
    p = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    optimizer = make_optimizer([p])
    path, losses = [p.detach().clone()], []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn(p)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        path.append(p.detach().clone())
    losses.append(loss_fn(p.detach()).item())
    return torch.stack(path), torch.tensor(losses, dtype=torch.float64)


def adam_step_inflation(t: Tensor | int, betas: tuple[float, float] = (0.9, 0.999)) -> Tensor:
    """How much larger Adam's step is without bias correction, for a constant gradient: (1 - b1^t) / sqrt(1 - b2^t)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    beta1, beta2 = betas
    return (1 - beta1**t) / torch.sqrt(1 - beta2**t)


__all__ = [
    "AdamScratch", "AdamWScratch", "Agreement", "RMSpropScratch", "SGDScratch", "adam_step_inflation", "batches_of",
    "compare_with_torch", "heavy_ball_lr_inside", "nesterov_sutskever", "proof_settings", "rosenbrock",
    "small_mlp", "train_steps", "trajectory",
]
