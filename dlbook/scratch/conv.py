"""The forward convolution from scratch, three ways, and the receptive field (CNN lessons 1 and 2).

The equations are in ``chapters/cnn/convolution-basics.ipynb`` and
``chapters/cnn/convolution-three-ways.ipynb``; the labels below are theirs. Conventions follow
``torch.nn.functional.conv2d``, which computes a *cross-correlation* (the kernel is not flipped):

    x  (N, C_in, H, W)          w  (C_out, C_in, k_h, k_w)          b  (C_out,)
    y[n, o, i, j] = b[o] + sum_{c,u,v} w[o, c, u, v] * xpad[n, c, s i + d u, s j + d v]
    H_out = floor((H + 2 p - d (k_h - 1) - 1) / s) + 1                     (eq-conv-output-size)

* :func:`conv2d_loops` - the definition (eq-conv-cross-correlation) as nested loops over the output;
* :func:`im2col` and :func:`conv2d_im2col` - every window copied into a column, then one matrix
  product (eq-conv-unfold, eq-conv-im2col-matmul);
* :func:`receptive_field` - the analytic receptive field of a stack (eq-conv-receptive-field), and
  :func:`empirical_receptive_field` - the same measured with a one-hot gradient;
* :func:`check_three_ways`, :func:`check_output_size_grid` and :func:`check_receptive_fields` -
  the checks that the notebooks and ``tests/test_cnn_conv.py`` both run.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import product
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..gradients import TOLERANCE, GradientReport, compare

Tensor = torch.Tensor
IntPair = int | tuple[int, int]


def _pair(v: IntPair) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


# --------------------------------------------------------------------------------------------
# Output size
# --------------------------------------------------------------------------------------------


def conv_output_size(n: int, k: int, padding: int = 0, stride: int = 1, dilation: int = 1) -> int:
    """floor((n + 2p - d(k-1) - 1) / s) + 1 along one axis: eq. (eq-conv-output-size).

    The padded input has n + 2p entries, a dilated kernel spans d(k-1) + 1 of them, and the
    windows start at 0, s, 2s, ... as long as they fit. Raises ``ValueError`` when not even one
    window fits (PyTorch raises a ``RuntimeError`` in the same cases).
    """
    if min(n, k, stride, dilation) < 1 or padding < 0:
        raise ValueError(f"invalid setting n={n}, k={k}, p={padding}, s={stride}, d={dilation}")
    span = dilation * (k - 1) + 1
    out = (n + 2 * padding - span) // stride + 1
    if out < 1:
        raise ValueError(f"a kernel spanning {span} does not fit an input of {n} padded by {padding}")
    return out


def same_padding(k: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) zero padding that keeps the size at stride 1: d(k-1) in total.

    Split evenly when d(k-1) is even; otherwise the extra zero goes after (right/bottom), which is
    what ``nn.Conv2d(padding="same")`` does.
    """
    total = dilation * (k - 1)
    return total // 2, total - total // 2


# --------------------------------------------------------------------------------------------
# Way 1: the definition as loops
# --------------------------------------------------------------------------------------------


def conv2d_loops(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
) -> Tensor:
    """Cross-correlation by direct loops over every output entry: eq. (eq-conv-cross-correlation).

    The source article's ``convolution`` function, corrected and generalised: a batch dimension,
    a bias, dilation, rectangular settings, and the output (and padding) created with the input's
    dtype and device (the original's ``torch.zeros`` silently rounds float64 inputs to float32
    and fails for inputs on a GPU).
    """
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    n_batch, c_in, h, w = x.shape
    c_out, c_in_w, kh, kw = weight.shape
    if c_in_w != c_in:
        raise ValueError(f"input has {c_in} channels but the kernel expects {c_in_w}")
    h_out = conv_output_size(h, kh, ph, sh, dh)
    w_out = conv_output_size(w, kw, pw, sw, dw)
    xp = F.pad(x, (pw, pw, ph, ph))  # zeros of x's dtype, on x's device
    out = x.new_zeros(n_batch, c_out, h_out, w_out)
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    for n in range(n_batch):
        for o in range(c_out):
            for i in range(h_out):
                for j in range(w_out):
                    top, left = i * sh, j * sw
                    patch = xp[n, :, top : top + span_h : dh, left : left + span_w : dw]  # (C_in, kh, kw)
                    out[n, o, i, j] = (weight[o] * patch).sum()
            if bias is not None:
                out[n, o] += bias[o]
    return out


# --------------------------------------------------------------------------------------------
# Way 2: im2col + one matrix product
# --------------------------------------------------------------------------------------------


def im2col(
    x: Tensor, kh: int, kw: int, stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1
) -> Tensor:
    """Every (C_in, kh, kw) window of the padded input as a column: (N, C_in*kh*kw, L).

    eq. (eq-conv-unfold). Row index c*kh*kw + u*kw + v (channel, then kernel row, then kernel
    column: the order of ``weight.reshape(C_out, -1)``); column index i*W_out + j (row-major over
    the output positions, L = H_out * W_out).
    """
    return F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)


def conv2d_im2col(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
) -> Tensor:
    """Y = W_mat @ cols + b, reshaped to (N, C_out, H_out, W_out): eq. (eq-conv-im2col-matmul)."""
    n_batch, c_in, h, w = x.shape
    c_out, c_in_w, kh, kw = weight.shape
    if c_in_w != c_in:
        raise ValueError(f"input has {c_in} channels but the kernel expects {c_in_w}")
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    h_out, w_out = conv_output_size(h, kh, ph, sh, dh), conv_output_size(w, kw, pw, sw, dw)
    cols = im2col(x, kh, kw, stride, padding, dilation)  # (N, C_in*kh*kw, L)
    out = weight.reshape(c_out, -1) @ cols  # (C_out, C_in*kh*kw) @ (N, C_in*kh*kw, L) -> (N, C_out, L)
    if bias is not None:
        out = out + bias.view(1, c_out, 1)
    return out.reshape(n_batch, c_out, h_out, w_out)


# --------------------------------------------------------------------------------------------
# The checks the notebooks and the tests share
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvSetting:
    """One random convolution problem: batch, channels, image size, kernel, stride, padding, dilation.

    The one description of a convolution to check, shared by the forward lessons (``tensors``)
    and the backward lesson (``scratch.conv_backward.random_conv_problem``). Kernel, stride,
    padding and dilation are an int or a (height, width) pair.
    """

    n: int = 2
    c_in: int = 3
    c_out: int = 4
    h: int = 7
    w: int = 6
    k: IntPair = 3
    stride: IntPair = 1
    padding: IntPair = 0
    dilation: IntPair = 1

    @property
    def name(self) -> str:
        return f"k{self.k} s{self.stride} p{self.padding} d{self.dilation} {self.h}x{self.w}"

    def label(self) -> str:
        return f"k={self.k} s={self.stride} p={self.padding} {self.h}x{self.w}"

    def tensors(self, seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor, Tensor]:
        """Random x (N, C_in, H, W), weight (C_out, C_in, k_h, k_w) and bias (C_out,), seeded."""
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(self.n, self.c_in, self.h, self.w, generator=gen, dtype=dtype)
        weight = torch.randn(self.c_out, self.c_in, *_pair(self.k), generator=gen, dtype=dtype)
        bias = torch.randn(self.c_out, generator=gen, dtype=dtype)
        return x, weight, bias


SETTINGS: tuple[ConvSetting, ...] = (
    ConvSetting(),
    ConvSetting(padding=1),
    ConvSetting(stride=2, padding=1),
    ConvSetting(h=9, w=8, dilation=2, padding=2),
    ConvSetting(n=1, c_in=2, c_out=3, h=8, w=11, k=2, stride=3),
    ConvSetting(n=3, c_in=1, c_out=2, h=10, w=10, k=5, stride=2, padding=3, dilation=2),
    ConvSetting(n=1, c_in=4, c_out=1, h=5, w=5, k=1),
)


def compare_three_ways(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: IntPair = 1, padding: IntPair = 0,
    dilation: IntPair = 1, tolerance: float = TOLERANCE,
) -> GradientReport:
    """Relative error of :func:`conv2d_loops` and :func:`conv2d_im2col` against ``F.conv2d``."""
    kwargs = {"stride": stride, "padding": padding, "dilation": dilation}
    reference = F.conv2d(x, weight, bias, **kwargs)
    mine = {"loops": conv2d_loops(x, weight, bias, **kwargs), "im2col": conv2d_im2col(x, weight, bias, **kwargs)}
    return compare(mine, {name: reference for name in mine}, tolerance)


def check_three_ways(settings: Iterable[ConvSetting] = SETTINGS, seed: int = 0) -> GradientReport:
    """Loops and im2col against ``F.conv2d`` in float64 for every setting, in one report."""
    errors: dict[str, float] = {}
    for i, s in enumerate(settings):
        x, weight, bias = s.tensors(seed + i)
        report = compare_three_ways(x, weight, bias, s.stride, s.padding, s.dilation)
        errors.update({f"{way} {s.name}": err for way, err in report.errors.items()})
    return GradientReport(errors)


@dataclass
class GridCheck:
    """The output-size formula against ``nn.Conv2d`` on a grid of (n, k, p, s, d)."""

    valid: int = 0  # settings where a window fits: the sizes were compared
    invalid: int = 0  # settings where both PyTorch and the formula refuse
    mismatches: list[tuple] = field(default_factory=list)  # (n, k, p, s, d, formula, pytorch)

    @property
    def ok(self) -> bool:
        return not self.mismatches


def check_output_size_grid(
    sizes: Sequence[int] = (1, 2, 3, 5, 8, 13),
    kernels: Sequence[int] = (1, 2, 3, 5),
    paddings: Sequence[int] = (0, 1, 2),
    strides: Sequence[int] = (1, 2, 3),
    dilations: Sequence[int] = (1, 2, 3),
) -> GridCheck:
    """:func:`conv_output_size` against the shape ``nn.Conv2d`` produces, for every combination.

    The input is n x (n + 3), so each setting checks two different sizes.
    """
    result = GridCheck()
    for n, k, p, s, d in product(sizes, kernels, paddings, strides, dilations):
        try:
            mine: tuple[int, int] | None = (conv_output_size(n, k, p, s, d), conv_output_size(n + 3, k, p, s, d))
        except ValueError:
            mine = None
        conv = nn.Conv2d(1, 1, k, stride=s, padding=p, dilation=d, bias=False)
        try:
            with torch.no_grad():
                theirs: tuple[int, int] | None = tuple(conv(torch.zeros(1, 1, n, n + 3)).shape[-2:])
        except RuntimeError:
            theirs = None
        if mine is None and theirs is None:
            result.invalid += 1
            continue
        if mine != theirs:
            result.mismatches.append((n, k, p, s, d, mine, theirs))
        else:
            result.valid += 1
    return result


# --------------------------------------------------------------------------------------------
# Receptive field
# --------------------------------------------------------------------------------------------


class LayerSpec(NamedTuple):
    """The geometry of one spatial layer (convolution or pooling); padding does not matter."""

    kernel: int
    stride: int = 1
    dilation: int = 1


POINTWISE = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.Sigmoid, nn.Tanh, nn.BatchNorm2d, nn.Identity, nn.Dropout)


def _square(v: IntPair, what: str) -> int:
    a, b = _pair(v)
    if a != b:
        raise ValueError(f"{what} {v} is not square; receptive_field handles square layers only")
    return a


def layer_specs(model: nn.Module) -> list[LayerSpec]:
    """The spatial layers of a sequential model, in order (pointwise layers are skipped)."""
    specs = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            specs.append(LayerSpec(_square(module.kernel_size, "kernel"), _square(module.stride, "stride"),
                                   _square(module.dilation, "dilation")))
        elif isinstance(module, nn.MaxPool2d):
            specs.append(LayerSpec(_square(module.kernel_size, "kernel"), _square(module.stride, "stride"),
                                   _square(module.dilation, "dilation")))
        elif isinstance(module, nn.AvgPool2d):
            specs.append(LayerSpec(_square(module.kernel_size, "kernel"), _square(module.stride, "stride")))
        elif isinstance(module, POINTWISE + (nn.Sequential,)):
            continue
        else:
            raise TypeError(f"layer_specs does not know the geometry of {type(module).__name__}")
    return specs


def receptive_fields(layers: Sequence[LayerSpec | tuple[int, ...]]) -> list[int]:
    """r_l after each layer: r_l = r_{l-1} + d_l (k_l - 1) j_{l-1}, j_l = j_{l-1} s_l, r_0 = j_0 = 1.

    eq. (eq-conv-receptive-field): a layer widens the field by its (dilated) kernel's extra span,
    measured in input pixels, and j (the "jump", the product of the strides so far) is how many
    input pixels one step on the layer's input moves.
    """
    r, jump, out = 1, 1, []
    for layer in layers:
        k, s, d = LayerSpec(*layer)
        r += d * (k - 1) * jump
        jump *= s
        out.append(r)
    return out


def receptive_field(layers: Sequence[LayerSpec | tuple[int, ...]]) -> int:
    """The receptive field (in input pixels, per side) of the whole stack: eq. (eq-conv-receptive-field)."""
    fields = receptive_fields(layers)
    return fields[-1] if fields else 1


@dataclass
class EmpiricalField:
    """A measured receptive field: its size and the gradient footprint it was measured from."""

    size: tuple[int, int]  # (rows, columns) of input pixels with a non-zero gradient
    footprint: Tensor  # (H, W) |d out[0, 0, centre] / d x| summed over input channels
    centre: tuple[int, int]  # the output position that was back-propagated


def positive_copy(model: nn.Module) -> nn.Module:
    """A float64 copy in which no gradient can cancel: constant positive kernels, zero biases.

    Every convolution kernel becomes 1 / (C_in k_h k_w) (an average), BatchNorm the identity, and
    max pooling an average pooling of the same geometry: the max sends its gradient to one pixel per
    window, which shows where the gradient *went* for one input, not what *can* influence the output.
    """
    model = copy.deepcopy(model).double().eval()

    def fix(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.MaxPool2d):
                if _pair(child.dilation) != (1, 1):
                    raise ValueError("a dilated max pool has no average-pool twin")
                setattr(module, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode))
            else:
                fix(child)

    fix(model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.fill_(1.0 / module.weight[0].numel())
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()  # weight 1, bias 0, running mean 0, running var 1
    return model


def empirical_receptive_field(model: nn.Module, input_shape: Sequence[int]) -> EmpiricalField:
    """Measure the receptive field: back-propagate a one-hot gradient from the centre output.

    ``input_shape`` is (C, H, W). On :func:`positive_copy` of the model with an all-ones input every
    activation is positive, so the input gradient is non-zero exactly on the pixels that can reach
    the centre output; the size is the extent of that set. Raises ``ValueError`` if the footprint
    touches the input's border (the input is too small to see the whole field).
    """
    c, h, w = input_shape[-3:]
    probe = positive_copy(model)
    x = torch.ones(1, c, h, w, dtype=torch.float64, requires_grad=True)
    out = probe(x)
    ci, cj = out.shape[-2] // 2, out.shape[-1] // 2
    (grad,) = torch.autograd.grad(out[0, 0, ci, cj], x)
    footprint = grad[0].abs().sum(0)
    rows = footprint.sum(1).nonzero().flatten()
    cols = footprint.sum(0).nonzero().flatten()
    if rows.numel() == 0:
        raise ValueError("the centre output does not depend on the input")
    if rows[0] == 0 or cols[0] == 0 or rows[-1] == h - 1 or cols[-1] == w - 1:
        raise ValueError(f"the footprint touches the border of the {h}x{w} input: use a larger input")
    size = (int(rows[-1] - rows[0]) + 1, int(cols[-1] - cols[0]) + 1)
    return EmpiricalField(size, footprint, (ci, cj))


def example_stacks(channels: int = 2) -> dict[str, nn.Sequential]:
    """Small stacks whose receptive fields grow in different ways (used by lesson 1 and the tests)."""
    c = channels

    def conv(k: int = 3, s: int = 1, d: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(c, c, k, stride=s, padding=d * (k - 1) // 2, dilation=d), nn.ReLU()]

    return {
        "four 3x3 convs": nn.Sequential(*conv(), *conv(), *conv(), *conv()),
        "three 3x3 convs, stride 2": nn.Sequential(*conv(s=2), *conv(s=2), *conv(s=2)),
        "3x3 convs, dilation 1, 2, 4": nn.Sequential(*conv(d=1), *conv(d=2), *conv(d=4)),
        "conv-pool-conv-pool-conv": nn.Sequential(
            *conv(), nn.MaxPool2d(2), *conv(), nn.MaxPool2d(2), nn.BatchNorm2d(c), *conv()
        ),
        "7x7 stride 2 + 3x3 max pool stride 2": nn.Sequential(
            *conv(k=7, s=2), nn.MaxPool2d(3, 2, padding=1), *conv(), *conv()
        ),
    }


def check_receptive_fields(
    stacks: dict[str, nn.Module] | None = None, input_size: int = 64, channels: int = 2
) -> dict[str, tuple[int, tuple[int, int]]]:
    """{name: (analytic r, measured (rows, cols))} for each stack (default :func:`example_stacks`)."""
    stacks = example_stacks(channels) if stacks is None else stacks
    result = {}
    for name, model in stacks.items():
        analytic = receptive_field(layer_specs(model))
        measured = empirical_receptive_field(model, (channels, input_size, input_size)).size
        result[name] = (analytic, measured)
    return result


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def time_call(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls, after ``warmup`` calls.

    The course's one timer, :func:`dlbook.perf.median_seconds`: CUDA work is asynchronous, so the
    clock reads only after the device has finished; the median ignores the odd run slowed down by
    another process on a shared machine.
    """
    from ..perf import median_seconds  # imported here: perf imports the models, which import scratch

    return median_seconds(fn, repeats=repeats, warmup=warmup)
