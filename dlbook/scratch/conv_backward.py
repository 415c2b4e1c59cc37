"""The backward pass of a 2-D convolution by hand, two ways (CNN lesson 3).

The derivation is ``chapters/cnn/conv-backward-derivation.md``; the equation labels below are
its. Conventions follow ``torch.nn.functional.conv2d`` (a cross-correlation):

    x  (N, C_in, H_in, W_in)        w  (C_out, C_in, k_h, k_w)        b  (C_out,)
    y  (N, C_out, H_out, W_out)     H_out = (H_in + 2 p - k_h) // s + 1
    y[n, o, u, v] = b[o] + sum_{c,i,j} w[o, c, i, j] * xpad[n, c, s u + i, s v + j]

Given ``dy = dL/dy`` the functions return ``(dx, dw, db)`` without autograd:

* :func:`conv2d_backward_flipped`: dx is a *full* convolution of the (dilated) output gradient
  with the spatially flipped, channel-transposed kernel, and dw a cross-correlation of the padded
  input with the (dilated) output gradient, both computed with ``F.conv2d`` on rearranged tensors.
* :func:`conv2d_backward_im2col`: the matrix form, ``dW = dY_mat @ cols^T`` and
  ``dcols = W_mat^T @ dY_mat`` folded back onto the image (col2im).

:func:`check_conv_backward` compares both with ``torch.autograd`` in float64, and
:class:`Conv2dFunction` wraps them so that ``gradcheck64`` can compare them with finite differences.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..gradients import GradientReport, compare, gradcheck64
from .conv import (  # one description of a convolution problem
    ConvSetting,
    IntPair,
    _pair,
    conv_output_size,  # eq. (eq-conv-output-size); re-exported for the lesson
)

Tensor = torch.Tensor
Method = Literal["flipped", "im2col"]


def flip_kernel(w: Tensor) -> Tensor:
    """rot180 of every k_h x k_w slice, with in/out channels swapped: (C_in, C_out, k_h, k_w).

    This is the kernel of eq. (eq-convbp-grad-x): ``w_bar[c, o, i, j] = w[o, c, k_h-1-i, k_w-1-j]``.
    """
    return w.flip(-2, -1).transpose(0, 1)


def dilate(dy: Tensor, stride: IntPair) -> Tensor:
    """Insert s-1 zeros between neighbouring entries: (.., H_out, W_out) -> (.., (H_out-1)s+1, ..).

    eq. (eq-convbp-dilate); the identity for stride 1.
    """
    sh, sw = _pair(stride)
    if sh == sw == 1:
        return dy
    *lead, h, w = dy.shape
    out = dy.new_zeros(*lead, (h - 1) * sh + 1, (w - 1) * sw + 1)
    out[..., ::sh, ::sw] = dy
    return out


def conv2d_grad_input_flipped(
    dy: Tensor, w: Tensor, input_hw: tuple[int, int], stride: IntPair = 1, padding: IntPair = 0
) -> Tensor:
    """dL/dx as a full convolution: eqs. (eq-convbp-grad-x) and (eq-convbp-grad-x-general).

    Dilate dy by the stride, pad it by k-1 on every side and cross-correlate it with the flipped,
    channel-transposed kernel. The result covers the padded input except the last r = (H_in + 2p - k)
    mod s rows/columns, which no window reached (their gradient is zero); then crop the padding.
    """
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    kh, kw = w.shape[-2:]
    full = F.conv2d(F.pad(dilate(dy, (sh, sw)), (kw - 1, kw - 1, kh - 1, kh - 1)), flip_kernel(w))
    h_pad, w_pad = input_hw[0] + 2 * ph, input_hw[1] + 2 * pw
    full = F.pad(full, (0, w_pad - full.shape[-1], 0, h_pad - full.shape[-2]))  # the r unreached rows/cols
    return full[..., ph : ph + input_hw[0], pw : pw + input_hw[1]]


def conv2d_grad_weight_correlation(
    x: Tensor, dy: Tensor, kernel_hw: tuple[int, int], stride: IntPair = 1, padding: IntPair = 0
) -> Tensor:
    """dL/dw as a cross-correlation of the padded input with the (dilated) output gradient.

    eq. (eq-convbp-grad-w): ``dw[o, c] = sum_n xpad[n, c] * dy_dilated[n, o]`` (``*`` = cross-correlation).
    The batch plays the role of the channels being summed: x becomes (C_in, N, H, W) and dy the
    kernel (C_out, N, H', W'), so one ``F.conv2d`` gives (C_in, C_out, >= k_h, >= k_w).
    """
    ph, pw = _pair(padding)
    kh, kw = kernel_hw
    xp = F.pad(x, (pw, pw, ph, ph))
    corr = F.conv2d(xp.transpose(0, 1), dilate(dy, stride).transpose(0, 1))  # (C_in, C_out, k_h + r, k_w + r)
    return corr[..., :kh, :kw].transpose(0, 1)


def conv2d_backward_flipped(
    x: Tensor, w: Tensor, dy: Tensor, stride: IntPair = 1, padding: IntPair = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dw, db) from the convolution identities: eqs. (eq-convbp-grad-x), (eq-convbp-grad-w),
    (eq-convbp-grad-b), with the output gradient dilated by the stride (eq-convbp-dilate)."""
    dx = conv2d_grad_input_flipped(dy, w, tuple(x.shape[-2:]), stride, padding)
    dw = conv2d_grad_weight_correlation(x, dy, tuple(w.shape[-2:]), stride, padding)
    return dx, dw, dy.sum(dim=(0, 2, 3))


def conv2d_backward_im2col(
    x: Tensor, w: Tensor, dy: Tensor, stride: IntPair = 1, padding: IntPair = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dw, db) in matrix form: eqs. (eq-convbp-im2col-grad-w) and (eq-convbp-im2col-grad-x).

    cols = unfold(x): (N, C_in k_h k_w, L) with L = H_out W_out; W_mat = w as (C_out, C_in k_h k_w);
    dY_mat = dy as (N, C_out, L). Then dW_mat = sum_n dY_mat[n] cols[n]^T, dcols = W_mat^T dY_mat,
    and dx = fold(dcols) adds every column entry back onto the pixel it was copied from (col2im).
    """
    n, c_out = dy.shape[:2]
    kernel = tuple(w.shape[-2:])
    cols = F.unfold(x, kernel, padding=padding, stride=stride)  # (N, C_in k_h k_w, L)
    dy_mat = dy.reshape(n, c_out, -1)  # (N, C_out, L)
    w_mat = w.reshape(c_out, -1)  # (C_out, C_in k_h k_w)
    dw = (dy_mat @ cols.transpose(1, 2)).sum(dim=0).reshape(w.shape)  # sum_n dY_mat[n] cols[n]^T
    dcols = w_mat.T @ dy_mat  # (N, C_in k_h k_w, L)
    dx = F.fold(dcols, tuple(x.shape[-2:]), kernel, padding=padding, stride=stride)
    return dx, dw, dy.sum(dim=(0, 2, 3))


def conv2d_backward(
    x: Tensor, w: Tensor, dy: Tensor, stride: IntPair = 1, padding: IntPair = 0, method: Method = "im2col"
) -> tuple[Tensor, Tensor, Tensor]:
    """(dL/dx, dL/dw, dL/db) of ``y = F.conv2d(x, w, b, stride, padding)`` given ``dy = dL/dy``.

    No autograd: ``method`` picks the convolution form or the im2col form (same numbers).
    """
    if method == "flipped":
        return conv2d_backward_flipped(x, w, dy, stride, padding)
    if method == "im2col":
        return conv2d_backward_im2col(x, w, dy, stride, padding)
    raise ValueError(f"method must be 'flipped' or 'im2col', got {method!r}")


DEFAULT_SETTINGS = (
    ConvSetting(w=7),  # stride 1, no padding: the first part of the derivation
    ConvSetting(h=8, w=6, padding=1),  # "same" padding, non-square image
    ConvSetting(c_in=2, c_out=3, h=9, w=9, stride=2),  # stride 2, every row reached
    ConvSetting(c_in=2, c_out=3, h=10, w=9, stride=2, padding=1),  # r = 1 unreached row
    ConvSetting(n=1, c_in=3, c_out=2, h=11, w=12, k=5, stride=3, padding=2),
    ConvSetting(n=3, c_in=1, c_out=2, h=8, w=9, k=(2, 3), stride=(2, 1), padding=(0, 1)),  # rectangular
)


def autograd_conv_grads(
    x: Tensor, w: Tensor, b: Tensor, dy: Tensor, stride: IntPair, padding: IntPair
) -> tuple[Tensor, Tensor, Tensor]:
    """The reference: autograd through ``F.conv2d`` with upstream gradient ``dy`` (loss = sum(y * dy))."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, w, b)]
    y = F.conv2d(leaves[0], leaves[1], leaves[2], stride=stride, padding=padding)
    return torch.autograd.grad(y, leaves, grad_outputs=dy)


def random_conv_problem(
    setting: ConvSetting, seed: int = 0, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Random x, w, b and an upstream gradient dy of the right output shape for ``setting``."""
    gen = torch.Generator().manual_seed(seed)
    kh, kw = _pair(setting.k)
    (sh, sw), (ph, pw) = _pair(setting.stride), _pair(setting.padding)
    x = torch.randn(setting.n, setting.c_in, setting.h, setting.w, generator=gen, dtype=dtype)
    w = torch.randn(setting.c_out, setting.c_in, kh, kw, generator=gen, dtype=dtype)
    b = torch.randn(setting.c_out, generator=gen, dtype=dtype)
    out_hw = (
        conv_output_size(setting.h, kh, padding=ph, stride=sh),
        conv_output_size(setting.w, kw, padding=pw, stride=sw),
    )
    dy = torch.randn(setting.n, setting.c_out, *out_hw, generator=gen, dtype=dtype)
    return x, w, b, dy


def check_conv_backward(
    settings: tuple[ConvSetting, ...] = DEFAULT_SETTINGS,
    methods: tuple[Method, ...] = ("flipped", "im2col"),
    seed: int = 0,
) -> GradientReport:
    """Relative error of dx, dw, db from each method against autograd, per setting (float64)."""
    manual, reference = {}, {}
    for i, setting in enumerate(settings):
        x, w, b, dy = random_conv_problem(setting, seed + i)
        auto = autograd_conv_grads(x, w, b, dy, setting.stride, setting.padding)
        for method in methods:
            mine = conv2d_backward(x, w, dy, setting.stride, setting.padding, method)
            for name, m, a in zip(("dx", "dw", "db"), mine, auto):
                key = f"{name} {method:7} {setting.label()}"
                manual[key], reference[key] = m, a
    return compare(manual, reference)


class Conv2dFunction(torch.autograd.Function):
    """``F.conv2d`` forward with the hand-written backward, for gradcheck and for training."""

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        w: Tensor,
        b: Tensor,
        stride: IntPair = 1,
        padding: IntPair = 0,
        method: Method = "im2col",
    ) -> Tensor:
        ctx.save_for_backward(x, w)
        ctx.conf = (stride, padding, method)
        return F.conv2d(x, w, b, stride=stride, padding=padding)

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, w = ctx.saved_tensors
        dx, dw, db = conv2d_backward(x, w, dy, *ctx.conf)
        return dx, dw, db, None, None, None


class ManualConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` whose gradients come from :func:`conv2d_backward` instead of autograd's."""

    def __init__(self, *args, method: Method = "im2col", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.bias is None or self.groups != 1 or self.dilation != (1, 1) or self.padding_mode != "zeros":
            raise ValueError("ManualConv2d supports bias=True, groups=1, dilation=1 and zero padding only")
        self.method = method

    def forward(self, x: Tensor) -> Tensor:
        return Conv2dFunction.apply(x, self.weight, self.bias, self.stride, self.padding, self.method)


GRADCHECK_SETTING = ConvSetting(
    n=2, c_in=2, c_out=3, h=6, w=5, stride=2, padding=1
)  # small: 177 inputs to perturb


def gradcheck_conv(
    setting: ConvSetting = GRADCHECK_SETTING, method: Method = "im2col", seed: int = 0
) -> bool:
    """Finite differences against the hand-written backward (``torch.autograd.gradcheck``, float64)."""
    x, w, b, _ = random_conv_problem(setting, seed)
    return gradcheck64(
        lambda x, w, b: Conv2dFunction.apply(x, w, b, setting.stride, setting.padding, method), [x, w, b]
    )
