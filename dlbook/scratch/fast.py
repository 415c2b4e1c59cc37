"""The lesson "As fast as possible": what its changes do to the math, by hand.

* :func:`nchw_offset`, :func:`nhwc_offset`: eq-fast-offset, where element (n, c, h, w) lives in
  memory in each layout; channels-last changes the addresses, never the values.
* :func:`tta_logits`: eq-fast-tta, flip test-time augmentation, the mean of the logits of an image
  and its mirror image.
* :func:`tta_input_grad`: eq-fast-tta-grad, its gradient with respect to the image: the mirror's
  gradient must be mirrored back (the flip is a permutation P with P^T = P).
* :func:`time_factors`: eq-fast-factors, a change's speed-up split into fewer epochs times cheaper
  epochs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def nchw_offset(index: Sequence[int], shape: Sequence[int]) -> int:
    """eq-fast-offset, NCHW: ((n C + c) H + h) W + w for element (n, c, h, w) of an (N, C, H, W) tensor."""
    n, c, h, w = index
    _, C, H, W = shape
    return ((n * C + c) * H + h) * W + w


def nhwc_offset(index: Sequence[int], shape: Sequence[int]) -> int:
    """eq-fast-offset, NHWC (channels-last): ((n H + h) W + w) C + c; the C values of a pixel are adjacent."""
    n, c, h, w = index
    _, C, H, W = shape
    return ((n * H + h) * W + w) * C + c


def tta_logits(model: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """eq-fast-tta: (f(x) + f(P x)) / 2, P the left-right mirror of the images (N, C, H, W)."""
    return (model(x) + model(x.flip(-1))) / 2


def tta_input_grad(model: Callable[[Tensor], Tensor], x: Tensor, upstream: Tensor) -> Tensor:
    """eq-fast-tta-grad: the gradient of <upstream, tta_logits(x)> with respect to x,
    (g(x) + P g(P x)) / 2, from the two plain gradients g of <upstream, f(.)>."""

    def grad_at(z: Tensor) -> Tensor:
        z = z.detach().requires_grad_(True)
        (g,) = torch.autograd.grad((model(z) * upstream).sum(), z)
        return g

    return (grad_at(x) + grad_at(x.flip(-1)).flip(-1)) / 2


def time_factors(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """eq-fast-factors: for two runs with ``epochs`` to the target and ``seconds_per_epoch``, the
    speed-up T_before / T_after and its two factors (their product is the speed-up)."""
    epochs = before["epochs"] / after["epochs"]
    per_epoch = before["seconds_per_epoch"] / after["seconds_per_epoch"]
    return {"speedup": epochs * per_epoch, "fewer_epochs": epochs, "cheaper_epochs": per_epoch}
