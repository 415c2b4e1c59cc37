"""Lesson 4's layers by hand: max/average/adaptive pooling, BatchNorm2d and 1x1 convolutions.

The equations are derived in ``chapters/cnn/pooling-and-batchnorm.ipynb``; the labels below are
its. Tensors are (N, C, H, W) as in PyTorch. Each forward returns what its backward needs, each
backward uses no autograd, and the ``check_*`` functions compare both with PyTorch in float64.

Tie rule of max pooling: when several entries of a window share the maximum, the **first one in
row-major order** (top-left first) is the argmax and receives the whole gradient. PyTorch's CPU
kernel happens to do the same, but the rule is an implementation detail (a subgradient: any
convex combination of the tied entries is valid), so the checks use tie-free inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..gradients import GradientReport, compare

Tensor = torch.Tensor


def _windows(x: Tensor, k: int, stride: int, pad_value: float, padding: int) -> tuple[Tensor, int, int]:
    """Every k x k window as a column: (N*C, k*k, L), plus the output height and width."""
    n, c, h, w = x.shape
    xp = F.pad(x, (padding,) * 4, value=pad_value).reshape(n * c, 1, h + 2 * padding, w + 2 * padding)
    cols = F.unfold(xp, k, stride=stride)
    return cols, (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1


def max_pool2d_forward(
    x: Tensor, k: int, stride: int | None = None, padding: int = 0
) -> tuple[Tensor, Tensor]:
    """Max over each k x k window, and the argmax as a flat index into H*W: eq. (eq-pool-max).

    The indices use the convention of ``F.max_pool2d(..., return_indices=True)``; ties go to the
    first maximum in row-major order (``torch.argmax`` returns the first).
    """
    stride = k if stride is None else stride
    n, c, h, w = x.shape
    cols, ho, wo = _windows(x, k, stride, -math.inf, padding)
    y, a = cols.max(dim=1)  # (N*C, L): value and position inside the window, a = i*k + j
    oh = torch.arange(ho, device=x.device).repeat_interleave(wo)  # output row of each column
    ow = torch.arange(wo, device=x.device).repeat(ho)
    rows = oh * stride + a // k - padding  # back to unpadded input coordinates
    cols_ = ow * stride + a % k - padding
    return y.reshape(n, c, ho, wo), (rows * w + cols_).reshape(n, c, ho, wo)


def max_pool2d_backward(dy: Tensor, indices: Tensor, input_hw: tuple[int, int]) -> Tensor:
    """Route each output gradient to its window's argmax: eq. (eq-pool-max-grad).

    Where overlapping windows share an argmax, their gradients add up (``scatter_add_``).
    """
    n, c = dy.shape[:2]
    dx = dy.new_zeros(n * c, input_hw[0] * input_hw[1])
    dx.scatter_add_(1, indices.reshape(n * c, -1), dy.reshape(n * c, -1))  # add, not assign: overlaps
    return dx.reshape(n, c, *input_hw)


def avg_pool2d_forward(x: Tensor, k: int, stride: int | None = None, padding: int = 0) -> Tensor:
    """Mean over each k x k window, zero padding counted (``count_include_pad=True``): eq. (eq-pool-avg)."""
    stride = k if stride is None else stride
    cols, ho, wo = _windows(x, k, stride, 0.0, padding)
    return cols.mean(dim=1).reshape(*x.shape[:2], ho, wo)


def avg_pool2d_backward(
    dy: Tensor, input_hw: tuple[int, int], k: int, stride: int | None = None, padding: int = 0
) -> Tensor:
    """Spread each output gradient evenly, dy / k^2, over its window: eq. (eq-pool-avg-grad).

    ``F.fold`` (col2im) adds up the shares of overlapping windows.
    """
    stride = k if stride is None else stride
    n, c = dy.shape[:2]
    dcols = (dy.reshape(n * c, 1, -1) / (k * k)).expand(n * c, k * k, dy.shape[-2] * dy.shape[-1])
    dx = F.fold(dcols, input_hw, k, padding=padding, stride=stride)
    return dx.reshape(n, c, *input_hw)


def adaptive_bins(in_size: int, out_size: int) -> list[tuple[int, int]]:
    """Bin i covers [floor(i*H/out), ceil((i+1)*H/out)): eq. (eq-pool-adaptive-bins).

    Integer arithmetic, so no floating-point rounding can move a boundary. Neighbouring bins
    overlap by one element when ``out_size`` does not divide ``in_size``.
    """
    return [((i * in_size) // out_size, -((-(i + 1) * in_size) // out_size)) for i in range(out_size)]


def adaptive_avg_pool2d_forward(x: Tensor, out_hw: tuple[int, int]) -> Tensor:
    """Mean over each adaptive bin (rows x columns), like ``nn.AdaptiveAvgPool2d(out_hw)``."""
    rows, cols = adaptive_bins(x.shape[-2], out_hw[0]), adaptive_bins(x.shape[-1], out_hw[1])
    y = x.new_empty(*x.shape[:2], *out_hw)
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            y[..., i, j] = x[..., r0:r1, c0:c1].mean(dim=(-2, -1))
    return y


def adaptive_avg_pool2d_backward(dy: Tensor, input_hw: tuple[int, int]) -> Tensor:
    """Each bin spreads dy / (bin area) over its pixels; overlapping bins add up."""
    rows, cols = adaptive_bins(input_hw[0], dy.shape[-2]), adaptive_bins(input_hw[1], dy.shape[-1])
    dx = dy.new_zeros(*dy.shape[:2], *input_hw)
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            dx[..., r0:r1, c0:c1] += (dy[..., i, j] / ((r1 - r0) * (c1 - c0)))[..., None, None]
    return dx


# --- BatchNorm2d -------------------------------------------------------------------------------


@dataclass
class BatchNorm2dCache:
    """What the backward pass needs: normalised input, 1/sigma and gamma, plus the batch statistics."""

    xhat: Tensor  # (N, C, H, W)
    inv_std: Tensor  # (C,) 1 / sqrt(var + eps)
    gamma: Tensor  # (C,)
    mean: Tensor  # (C,) batch mean
    var: Tensor  # (C,) biased batch variance (divides by M)

    @property
    def m(self) -> int:
        """M = N * H * W, the number of values each channel's statistics average over."""
        return self.xhat.numel() // self.xhat.shape[1]


def _c(t: Tensor) -> Tensor:
    """A per-channel vector (C,) as (1, C, 1, 1), to broadcast over N, H and W."""
    return t.reshape(1, -1, 1, 1)


def batchnorm2d_forward(
    x: Tensor, gamma: Tensor, beta: Tensor, eps: float = 1e-5
) -> tuple[Tensor, BatchNorm2dCache]:
    """Training-mode BatchNorm2d: eq. (eq-bn2d-forward).

    Per-channel mean and biased variance over (N, H, W); returns the output and the backward's cache.
    """
    mean = x.mean(dim=(0, 2, 3))
    var = x.var(dim=(0, 2, 3), unbiased=False)
    inv_std = 1.0 / torch.sqrt(var + eps)
    xhat = (x - _c(mean)) * _c(inv_std)
    return _c(gamma) * xhat + _c(beta), BatchNorm2dCache(xhat, inv_std, gamma, mean, var)


def batchnorm2d_backward(dy: Tensor, cache: BatchNorm2dCache) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dgamma, dbeta): eq. (eq-bn2d-backward).

    dbeta = sum(dy), dgamma = sum(dy * xhat) over (N, H, W), and
    dx = gamma / (sigma M) * (M dy - dbeta - xhat * dgamma), with M = N H W.
    """
    dbeta = dy.sum(dim=(0, 2, 3))
    dgamma = (dy * cache.xhat).sum(dim=(0, 2, 3))
    m = cache.m
    dx = _c(cache.gamma * cache.inv_std / m) * (m * dy - _c(dbeta) - cache.xhat * _c(dgamma))
    return dx, dgamma, dbeta


def batchnorm2d_running_update(
    running_mean: Tensor, running_var: Tensor, cache: BatchNorm2dCache, momentum: float = 0.1
) -> tuple[Tensor, Tensor]:
    """New running statistics: eq. (eq-bn2d-running). The variance is the *unbiased* one, var * M/(M-1)."""
    m = cache.m
    new_mean = (1 - momentum) * running_mean + momentum * cache.mean
    new_var = (1 - momentum) * running_var + momentum * cache.var * m / (m - 1)
    return new_mean, new_var


def batchnorm2d_eval(
    x: Tensor, running_mean: Tensor, running_var: Tensor, gamma: Tensor, beta: Tensor, eps: float = 1e-5
) -> Tensor:
    """Evaluation mode: the running statistics replace the batch's, eq. (eq-bn2d-eval)."""
    return _c(gamma / torch.sqrt(running_var + eps)) * (x - _c(running_mean)) + _c(beta)


# --- checks against PyTorch --------------------------------------------------------------------


def tie_free(shape: tuple[int, ...], seed: int = 0, dtype: torch.dtype = torch.float64) -> Tensor:
    """A random permutation of 0..numel-1 (scaled): all values distinct, so every argmax is unique."""
    gen = torch.Generator().manual_seed(seed)
    n = math.prod(shape)
    return (torch.randperm(n, generator=gen).to(dtype) / n - 0.5).reshape(shape)


def _reference(
    fn: Callable[[Tensor], Tensor | tuple[Tensor, ...]], x: Tensor, dy: Tensor
) -> tuple[Tensor, Tensor]:
    """Output and input gradient (upstream ``dy``) of a PyTorch op via autograd."""
    leaf = x.detach().clone().requires_grad_(True)
    y = fn(leaf)
    y = y[0] if isinstance(y, tuple) else y
    (dx,) = torch.autograd.grad(y, leaf, grad_outputs=dy)
    return y.detach(), dx


PoolSetting = tuple[int, int, int]  # (kernel, stride, padding)
POOL_SETTINGS: tuple[PoolSetting, ...] = (
    (2, 2, 0),
    (3, 2, 1),
    (3, 1, 1),
    (2, 1, 0),
    (3, 3, 0),
)  # overlaps included


def check_max_pool(
    shape: tuple[int, int, int, int] = (2, 3, 9, 8),
    settings: tuple[PoolSetting, ...] = POOL_SETTINGS,
    seed: int = 0,
) -> GradientReport:
    """Max pooling output, argmax indices and input gradient vs ``F.max_pool2d`` (tie-free input)."""
    manual, reference = {}, {}
    x = tie_free(shape, seed)
    for k, s, p in settings:
        y, idx = max_pool2d_forward(x, k, s, p)
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + k), dtype=x.dtype)
        ref_y, ref_dx = _reference(lambda t, k=k, s=s, p=p: F.max_pool2d(t, k, s, p), x, dy)
        _, ref_idx = F.max_pool2d(x, k, s, p, return_indices=True)
        tag = f"k={k} s={s} p={p}"
        manual |= {
            f"y {tag}": y,
            f"indices {tag}": idx.double(),
            f"dx {tag}": max_pool2d_backward(dy, idx, shape[-2:]),
        }
        reference |= {f"y {tag}": ref_y, f"indices {tag}": ref_idx.double(), f"dx {tag}": ref_dx}
    return compare(manual, reference)


def check_avg_pool(
    shape: tuple[int, int, int, int] = (2, 3, 9, 8),
    settings: tuple[PoolSetting, ...] = POOL_SETTINGS,
    seed: int = 0,
) -> GradientReport:
    """Average pooling output and input gradient vs ``F.avg_pool2d`` (padding counted in the mean)."""
    manual, reference = {}, {}
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    for k, s, p in settings:
        y = avg_pool2d_forward(x, k, s, p)
        dy = torch.randn(y.shape, generator=gen, dtype=x.dtype)
        ref_y, ref_dx = _reference(lambda t, k=k, s=s, p=p: F.avg_pool2d(t, k, s, p), x, dy)
        tag = f"k={k} s={s} p={p}"
        manual |= {f"y {tag}": y, f"dx {tag}": avg_pool2d_backward(dy, shape[-2:], k, s, p)}
        reference |= {f"y {tag}": ref_y, f"dx {tag}": ref_dx}
    return compare(manual, reference)


SizePair = tuple[tuple[int, int], tuple[int, int]]  # ((H_in, W_in), (H_out, W_out))
ADAPTIVE_SIZES: tuple[SizePair, ...] = (
    ((7, 7), (3, 3)),
    ((10, 9), (4, 5)),
    ((5, 6), (7, 4)),
    ((28, 28), (5, 1)),
    ((13, 11), (1, 1)),
)


def check_adaptive_avg_pool(sizes: tuple[SizePair, ...] = ADAPTIVE_SIZES, seed: int = 0) -> GradientReport:
    """Adaptive average pooling (awkward in -> out sizes, even out > in) vs ``nn.AdaptiveAvgPool2d``."""
    manual, reference = {}, {}
    gen = torch.Generator().manual_seed(seed)
    for in_hw, out_hw in sizes:
        x = torch.randn(2, 3, *in_hw, generator=gen, dtype=torch.float64)
        dy = torch.randn(2, 3, *out_hw, generator=gen, dtype=torch.float64)
        ref_y, ref_dx = _reference(nn.AdaptiveAvgPool2d(out_hw), x, dy)
        tag = f"{in_hw[0]}x{in_hw[1]}->{out_hw[0]}x{out_hw[1]}"
        manual |= {
            f"y {tag}": adaptive_avg_pool2d_forward(x, out_hw),
            f"dx {tag}": adaptive_avg_pool2d_backward(dy, in_hw),
        }
        reference |= {f"y {tag}": ref_y, f"dx {tag}": ref_dx}
    return compare(manual, reference)


def check_batchnorm2d(
    shape: tuple[int, int, int, int] = (4, 3, 5, 6), eps: float = 1e-5, seed: int = 0
) -> GradientReport:
    """Output and (dx, dgamma, dbeta) of the hand-written BatchNorm2d vs autograd through
    ``F.batch_norm(training=True)``, and the running-statistics update vs ``nn.BatchNorm2d``."""
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    x = 3 * torch.randn(shape, generator=gen, dtype=f64) + 2
    gamma = 1 + 0.5 * torch.randn(shape[1], generator=gen, dtype=f64)
    beta = torch.randn(shape[1], generator=gen, dtype=f64)
    dy = torch.randn(shape, generator=gen, dtype=f64)

    y, cache = batchnorm2d_forward(x, gamma, beta, eps)
    dx, dgamma, dbeta = batchnorm2d_backward(dy, cache)

    leaves = [t.clone().requires_grad_(True) for t in (x, gamma, beta)]
    ref_y = F.batch_norm(leaves[0], None, None, leaves[1], leaves[2], training=True, eps=eps)
    ref_dx, ref_dgamma, ref_dbeta = torch.autograd.grad(ref_y, leaves, grad_outputs=dy)

    bn = nn.BatchNorm2d(shape[1], eps=eps, momentum=0.1).double()
    bn.train()
    bn(x)
    run_mean, run_var = batchnorm2d_running_update(
        torch.zeros_like(gamma), torch.ones_like(gamma), cache, 0.1
    )
    return compare(
        {
            "y": y,
            "dx": dx,
            "dgamma": dgamma,
            "dbeta": dbeta,
            "running_mean": run_mean,
            "running_var": run_var,
        },
        {
            "y": ref_y,
            "dx": ref_dx,
            "dgamma": ref_dgamma,
            "dbeta": ref_dbeta,
            "running_mean": bn.running_mean,
            "running_var": bn.running_var,
        },
    )


# --- 1x1 convolutions --------------------------------------------------------------------------


def conv1x1_as_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """A 1x1 convolution as one linear map applied to every pixel's channel vector: eq. (eq-pool-conv1x1).

    ``weight`` is the conv's (C_out, C_in, 1, 1); move channels last, multiply, move them back.
    """
    return F.linear(x.permute(0, 2, 3, 1), weight.flatten(1), bias).permute(0, 3, 1, 2)


def conv_cost(c_in: int, c_out: int, k: int, out_hw: tuple[int, int], bias: bool = True) -> tuple[int, int]:
    """(parameters, multiply-accumulates per image) of a k x k convolution: eq. (eq-pool-conv-cost).

    params = c_out (c_in k^2 + 1) with a bias; MACs = H_out W_out c_out c_in k^2.
    """
    from ..perf import conv2d_macs, conv2d_params  # the course's one cost formula (eq-arch-params/-macs)

    return conv2d_params(c_in, c_out, k, bias=bias), conv2d_macs(c_in, c_out, k, *out_hw)
