"""An L-layer ReLU MLP with softmax cross-entropy, forward and backward by hand (ANN lesson 3).

Conventions (the Backpropagation derivation, ``chapters/ann/backprop-derivation.md``, uses the
same): a batch is a row matrix ``X`` of shape (N, d_0); layer l has ``W_l`` of shape
(d_{l-1}, d_l) and ``b_l`` of shape (d_l,);

    Z_l = A_{l-1} W_l + b_l,   A_l = relu(Z_l)  (l < L),   Z_L = logits,
    loss = -(1/N) sum_n log softmax(Z_L)[n, y_n].

No autograd is used here; :func:`check_mlp_gradients` proves the result against it, and
:func:`lockstep_with_autograd` shows that training with it equals ``torch.optim.SGD``.
Note that ``nn.Linear`` stores the transpose, ``weight`` of shape (d_l, d_{l-1}).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..gradients import GradientReport, compare, gradcheck64, rel_error
from ..train import History
from .activations import relu, relu_grad

Tensor = torch.Tensor
Params = list[tuple[Tensor, Tensor]]  # [(W_1, b_1), ..., (W_L, b_L)]


def init_mlp(sizes: list[int], generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Params:
    """Kaiming-normal weights (std sqrt(2 / d_{l-1}), see the Initialization lesson), zero biases."""
    params: Params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        W = torch.randn(fan_in, fan_out, generator=generator, dtype=dtype) * math.sqrt(2.0 / fan_in)
        params.append((W, torch.zeros(fan_out, dtype=dtype)))
    return params


@dataclass
class ForwardCache:
    """What the backward pass needs: each layer's input A_{l-1} and pre-activation Z_l."""

    inputs: list[Tensor]
    preacts: list[Tensor]


def mlp_forward(params: Params, X: Tensor) -> tuple[Tensor, ForwardCache]:
    """Logits Z_L (N, d_L) and the cache: eq. (eq-mlp-forward)."""
    A, inputs, preacts = X, [], []
    for l, (W, b) in enumerate(params):
        inputs.append(A)
        Z = A @ W + b
        preacts.append(Z)
        A = relu(Z) if l < len(params) - 1 else Z
    return A, ForwardCache(inputs, preacts)


def log_softmax(Z: Tensor) -> Tensor:
    """log softmax over the last axis with the log-sum-exp shift, stable for any logits.

    The course's one implementation: the MLP's (N, C) logits and the RNN's (T, B, V) both use it.
    """
    m = Z.amax(dim=-1, keepdim=True)
    return Z - m - torch.log(torch.exp(Z - m).sum(dim=-1, keepdim=True))


def softmax_cross_entropy(Z: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy of integer labels ``y`` under softmax(Z): eq. (eq-softmax-ce)."""
    return -log_softmax(Z)[torch.arange(len(y)), y].mean()


def softmax_cross_entropy_grad(Z: Tensor, y: Tensor) -> Tensor:
    """dL/dZ_L = (softmax(Z_L) - onehot(y)) / N: eq. (eq-delta-output)."""
    P = torch.exp(log_softmax(Z))
    P[torch.arange(len(y)), y] -= 1
    return P / len(y)


def mlp_backward(params: Params, cache: ForwardCache, y: Tensor) -> Params:
    """[(dL/dW_l, dL/db_l)] for every layer, from the output back: eqs. (eq-grad-W)-(eq-delta-recursion)."""
    delta = softmax_cross_entropy_grad(cache.preacts[-1], y)  # dL/dZ_L, shape (N, d_L)
    grads: Params = []
    for l in reversed(range(len(params))):
        W, _ = params[l]
        A_prev = cache.inputs[l]
        grads.append((A_prev.T @ delta, delta.sum(dim=0)))  # dW_l = A_{l-1}^T delta_l, db_l = 1^T delta_l
        if l > 0:
            # delta_{l-1} = (delta_l W_l^T) * relu'(Z_{l-1})
            delta = (delta @ W.T) * relu_grad(cache.preacts[l - 1])
    return grads[::-1]


def sgd_step(params: Params, grads: Params, lr: float) -> Params:
    """theta <- theta - lr * dL/dtheta, in place (no autograd graph to worry about)."""
    for (W, b), (dW, db) in zip(params, grads, strict=True):
        W.sub_(lr * dW)
        b.sub_(lr * db)
    return params


def predict(params: Params, X: Tensor, batch_size: int = 4096) -> Tensor:
    """Class predictions, in batches so large evaluation sets fit in memory."""
    return torch.cat([mlp_forward(params, X[i : i + batch_size])[0].argmax(1) for i in range(0, len(X), batch_size)])


def evaluate_mlp(params: Params, X: Tensor, y: Tensor, batch_size: int = 4096) -> dict[str, float]:
    """Mean cross-entropy and accuracy of the hand-written MLP over (X, y)."""
    loss, correct = torch.zeros((), dtype=X.dtype, device=X.device), 0
    for i in range(0, len(X), batch_size):
        logits, _ = mlp_forward(params, X[i : i + batch_size])
        yb = y[i : i + batch_size]
        loss += softmax_cross_entropy(logits, yb) * len(yb)
        correct += int((logits.argmax(1) == yb).sum())
    return {"loss": loss.item() / len(X), "acc": correct / len(X)}


@torch.no_grad()  # nothing here needs autograd: the gradients come from mlp_backward
def train_mlp(
    params: Params,
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor] | None = None,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> History:
    """Minibatch SGD on the hand-written MLP: forward, :func:`mlp_backward`, :func:`sgd_step`.

    Updates ``params`` in place and returns a :class:`~dlbook.train.History` shaped like the one
    :func:`dlbook.train.fit` returns (``train_loss`` is the running mean over the epoch's batches;
    ``val_loss``/``val_acc`` when ``val`` is given), so the same plots apply.
    """
    X, y = train
    gen = torch.Generator().manual_seed(seed)  # the shuffling order, identical on every device
    history, elapsed = History(), 0.0
    bar = tqdm(range(epochs), desc="epochs (hand backward)", disable=not progress)
    for epoch in bar:
        start = time.perf_counter()
        order = torch.randperm(len(X), generator=gen).to(X.device)
        total = torch.zeros((), dtype=X.dtype, device=X.device)
        for i in range(0, len(X), batch_size):
            idx = order[i : i + batch_size]
            logits, cache = mlp_forward(params, X[idx])
            total += softmax_cross_entropy(logits, y[idx]) * len(idx)
            sgd_step(params, mlp_backward(params, cache, y[idx]), lr)
        elapsed += time.perf_counter() - start
        record = {"epoch": epoch + 1, "train_loss": total.item() / len(X)}
        if val is not None:
            record.update({f"val_{k}": v for k, v in evaluate_mlp(params, *val).items()})
        record["train_seconds"] = elapsed
        history.records.append(record)
        bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k != "epoch"})
    return history


def to_torch_mlp(params: Params) -> nn.Sequential:
    """The same network as ``nn.Sequential(Linear, ReLU, ..., Linear)``, with copies of ``params``.

    ``nn.Linear`` computes ``x @ weight.T + bias``, so ``weight`` is our ``W_l`` transposed.
    """
    layers: list[nn.Module] = []
    for l, (W, b) in enumerate(params):
        linear = nn.Linear(W.shape[0], W.shape[1], dtype=W.dtype, device=W.device)
        with torch.no_grad():
            linear.weight.copy_(W.T)
            linear.bias.copy_(b)
        layers += [linear] + ([nn.ReLU()] if l < len(params) - 1 else [])
    return nn.Sequential(*layers)


def lockstep_with_autograd(
    params: Params, X: Tensor, y: Tensor, *, lr: float, steps: int = 20, batch_size: int = 64
) -> tuple[GradientReport, list[tuple[float, float]], float]:
    """Train a copy of ``params`` by hand and its :func:`to_torch_mlp` twin with autograd and
    ``torch.optim.SGD`` on the same ``steps`` minibatches of (X, y), side by side.

    Returns the first step's gradient report (hand vs autograd), the (hand, torch) loss of every
    step, and the relative difference of the final weights.
    """
    mine = [(W.clone(), b.clone()) for W, b in params]
    model = to_torch_mlp(params)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    losses: list[tuple[float, float]] = []
    first: GradientReport | None = None
    for step in range(steps):
        start = (step * batch_size) % len(X)
        xb, yb = X[start : start + batch_size], y[start : start + batch_size]
        logits, cache = mlp_forward(mine, xb)
        grads = mlp_backward(mine, cache, yb)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        losses.append((softmax_cross_entropy(logits, yb).item(), loss.item()))
        if first is None:
            names = _flatten_names(len(mine))
            hand = [t for dW, db in grads for t in (dW.T, db)]  # dW.T: nn.Linear's layout
            auto = [t for m in linears for t in (m.weight.grad, m.bias.grad)]
            first = compare(dict(zip(names, hand, strict=True)), dict(zip(names, auto, strict=True)))
        sgd_step(mine, grads, lr)
        opt.step()
    if first is None:
        raise ValueError("lockstep_with_autograd needs steps >= 1")
    drift = max(rel_error(W.T, m.weight) for (W, _), m in zip(mine, linears, strict=True))
    return first, losses, drift


def _flatten_names(n_layers: int) -> list[str]:
    return [name for l in range(1, n_layers + 1) for name in (f"W{l}", f"b{l}")]


def check_mlp_gradients(sizes: tuple[int, ...] = (12, 16, 16, 10, 5), n: int = 32, seed: int = 0) -> GradientReport:
    """Every dL/dW_l and dL/db_l of the hand backward against autograd, in float64."""
    gen = torch.Generator().manual_seed(seed)
    params = init_mlp(list(sizes), gen, torch.float64)
    for _, b in params:  # non-zero biases, so the db checks are not trivially 0 == 0
        b.normal_(0, 0.1, generator=gen)
    X = torch.randn(n, sizes[0], generator=gen, dtype=torch.float64)
    y = torch.randint(0, sizes[-1], (n,), generator=gen)

    logits, cache = mlp_forward(params, X)
    manual = mlp_backward(params, cache, y)

    leaves = [t.clone().requires_grad_(True) for pair in params for t in pair]
    pairs = list(zip(leaves[::2], leaves[1::2], strict=True))
    loss = softmax_cross_entropy(mlp_forward(pairs, X)[0], y)
    reference = torch.autograd.grad(loss, leaves)

    names = _flatten_names(len(params))
    flat_manual = [t for pair in manual for t in pair]
    report = compare(dict(zip(names, flat_manual, strict=True)), dict(zip(names, reference, strict=True)))
    # The loss itself must also equal PyTorch's cross-entropy.
    report.errors["loss"] = abs(loss.item() - torch.nn.functional.cross_entropy(logits, y).item())
    return report


class ManualMLPLoss(torch.autograd.Function):
    """The MLP loss as an autograd Function whose backward is :func:`mlp_backward`.

    ``torch.autograd.gradcheck`` then compares our backward with finite differences.
    """

    @staticmethod
    def forward(ctx, X: Tensor, y: Tensor, *flat: Tensor) -> Tensor:  # type: ignore[override]
        params = list(zip(flat[::2], flat[1::2], strict=True))
        logits, cache = mlp_forward(params, X)
        ctx.params, ctx.cache, ctx.y = params, cache, y
        return softmax_cross_entropy(logits, y)

    @staticmethod
    def backward(ctx, grad_loss: Tensor):  # type: ignore[override]
        grads = mlp_backward(ctx.params, ctx.cache, ctx.y)
        flat = [grad_loss * g for pair in grads for g in pair]
        return (None, None, *flat)


def gradcheck_mlp(sizes: tuple[int, ...] = (6, 8, 7, 4), n: int = 5, seed: int = 0) -> bool:
    """Finite-difference check of the hand backward (``torch.autograd.gradcheck``, float64)."""
    gen = torch.Generator().manual_seed(seed)
    params = init_mlp(list(sizes), gen, torch.float64)
    for _, b in params:
        b.normal_(0, 0.1, generator=gen)
    X = torch.randn(n, sizes[0], generator=gen, dtype=torch.float64)
    y = torch.randint(0, sizes[-1], (n,), generator=gen)
    flat = [t for pair in params for t in pair]
    return gradcheck64(lambda *p: ManualMLPLoss.apply(X, y, *p), flat)
