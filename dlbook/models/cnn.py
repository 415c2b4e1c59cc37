"""Convolutional networks from LeNet to ResNet, their cost by hand, and the CNN training recipe.

Used by ``chapters/cnn/cnn-architectures.ipynb`` (lesson 5) and ``chapters/cnn/training-cnns.ipynb``
(lesson 7); the equation labels below are those lessons'.

Cost formulas for a ``Conv2d(c_in, c_out, k, groups=g)`` producing an ``h_out x w_out`` map:

* parameters  ``c_out * (c_in / g * k_h * k_w + 1)``  (eq-arch-params; drop the ``+1`` without bias)
* MACs        ``c_out * h_out * w_out * c_in / g * k_h * k_w``  (eq-arch-macs) per image

(output sizes and receptive fields are lesson 1's, in :mod:`dlbook.scratch.conv`).

A MAC is one multiply-accumulate; FLOPs are about twice the MACs. :func:`count_macs` sums the
hand formulas over every ``Conv2d`` and ``Linear`` a forward pass visits (forward hooks), so a
model's cost is computed from the same formulas the lesson derives, not from a black box.

Models (all take ``num_classes`` and ``in_channels``; the small ones are sized for 28x28 MNIST and
32x32 CIFAR so a CPU trains them in seconds):

* :class:`LeNet5` - LeCun et al. 1998 adapted to 28x28 (padding 2 on C1), ReLU or tanh
* :class:`AlexNetSmall` - AlexNet's ideas at small scale: large strided first kernel, ReLU,
  overlapping max-pooling, dropout before the fully connected layers
* :func:`vgg_block` / :class:`SmallVGG` - stacks of 3x3 convolutions, then a 2x2 max-pool
* :class:`InceptionModule` / :class:`SmallInception` - four parallel branches with 1x1 bottlenecks
* :class:`BasicBlock` / :class:`SmallResNet` - ``y = relu(F(x) + shortcut(x))`` (eq-arch-residual),
  with the projection shortcut built inside the block when the shape changes
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..gradients import GradientReport, compare

Tensor = torch.Tensor
IntPair = int | tuple[int, int]


def _pair(k: IntPair) -> tuple[int, int]:
    return (k, k) if isinstance(k, int) else (int(k[0]), int(k[1]))


# --- cost by hand ------------------------------------------------------------------------------


def conv2d_params(c_in: int, c_out: int, k: IntPair, groups: int = 1, bias: bool = True) -> int:
    """Learned parameters of ``Conv2d(c_in, c_out, k, groups=groups)``: c_out (c_in/g k_h k_w + 1) (eq-arch-params)."""
    if c_in % groups or c_out % groups:
        raise ValueError(f"groups={groups} must divide c_in={c_in} and c_out={c_out}")
    kh, kw = _pair(k)
    return c_out * (c_in // groups) * kh * kw + (c_out if bias else 0)


def conv2d_macs(
    c_in: int, c_out: int, k: IntPair, h_out: int, w_out: int, groups: int = 1, bias: bool = False
) -> int:
    """Multiply-accumulates for one image: c_out h_out w_out (c_in/g) k_h k_w (eq-arch-macs).

    Every output value is a dot product of length ``c_in/g * k_h * k_w``. ``bias=True`` adds one
    more per output value (the bias add), which is how ``torchinfo`` counts "mult-adds".
    """
    if c_in % groups or c_out % groups:
        raise ValueError(f"groups={groups} must divide c_in={c_in} and c_out={c_out}")
    kh, kw = _pair(k)
    return c_out * h_out * w_out * ((c_in // groups) * kh * kw + int(bias))


def linear_params(d_in: int, d_out: int, bias: bool = True) -> int:
    """(d_in + 1) d_out: a fully connected layer is a 1x1 convolution on a 1x1 map (eq-arch-params)."""
    return d_out * d_in + (d_out if bias else 0)


def linear_macs(d_in: int, d_out: int, bias: bool = False) -> int:
    """d_in d_out multiply-accumulates per input vector (plus d_out bias adds with ``bias=True``)."""
    return d_out * (d_in + int(bias))


def layer_macs(model: nn.Module, input_size: Sequence[int], bias: bool = False) -> dict[str, int]:
    """MACs of every ``Conv2d``/``Linear`` (by module name) in one forward pass of ``zeros(input_size)``.

    ``input_size`` includes the batch dimension, as in ``torchinfo.summary`` (use 1 for a per-image
    cost). The hooks apply :func:`conv2d_macs` and :func:`linear_macs` to the shapes the layers
    actually see, so strides, padding and pooling are accounted for without tracing by hand. The
    model runs in eval mode under ``no_grad`` on its own device (``meta`` works: no arithmetic at all).
    """
    macs: dict[str, int] = {}

    def hook(name: str):
        def count(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if isinstance(module, nn.Conv2d):
                n, _, h, w = output.shape
                use_bias = bias and module.bias is not None
                cost = n * conv2d_macs(module.in_channels, module.out_channels, module.kernel_size, h, w,
                                       module.groups, use_bias)
            else:  # nn.Linear: one dot product per output vector
                positions = output.numel() // module.out_features
                cost = positions * linear_macs(module.in_features, module.out_features, bias and module.bias is not None)
            macs[name] = macs.get(name, 0) + cost

        return count

    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    first = next(model.parameters(), None)
    device, dtype = (first.device, first.dtype) if first is not None else (torch.device("cpu"), torch.float32)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(tuple(input_size), device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return macs


def count_macs(model: nn.Module, input_size: Sequence[int], bias: bool = False) -> int:
    """Total multiply-accumulates of ``Conv2d`` and ``Linear`` layers for a batch of ``input_size``.

    The sum of :func:`layer_macs`, i.e. of the hand formulas eq-arch-macs. Pooling, activations and
    normalisation are not counted (they are a few operations per value, not per weight).
    """
    return sum(layer_macs(model, input_size, bias).values())


# --- models ------------------------------------------------------------------------------------


def kaiming_init(model: nn.Module, zero_last: bool = True) -> nn.Module:
    """He initialisation for ReLU networks (std sqrt(2 / fan_in), ANN lesson 4); zero biases.

    PyTorch's default for ``Conv2d``/``Linear`` has a third of that variance, which makes deep
    ReLU stacks without BatchNorm (AlexNet, VGG) start with vanishing signals. Max-pooling keeps
    the largest values, so activations still grow a little with depth; ``zero_last`` zeroes the
    output layer's weights so training starts from uniform predictions (loss ln K) anyway.
    """
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for m in layers:
        nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    if zero_last and layers:
        nn.init.zeros_(layers[-1].weight)
    return model


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) for 28x28 digits: conv-pool-conv-pool-conv-fc-fc.

    C1 ``Conv(1->6, 5x5, padding 2)`` keeps 28x28 (the paper padded the digits to 32x32 instead),
    S2 pools to 14x14, C3 ``Conv(6->16, 5x5)`` gives 10x10, S4 pools to 5x5, C5 ``Conv(16->120, 5x5)``
    gives 1x1, then F6 (84 units) and the output layer. 61,706 parameters for 10 classes.

    Differences from 1998, for a modern reader: C3 here sees all 6 input maps (the paper used a
    sparse connection table, 1,516 weights instead of 2,416), S2/S4 are plain max or average pools
    (the paper's had a trainable gain and bias), and the output is a linear layer read by softmax
    cross-entropy instead of Euclidean RBF units. ``activation="tanh", pool="avg"`` is the closest
    to the original; ``"relu"`` and ``"max"`` train faster.
    """

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, activation: str = "relu", pool: str = "max",
        padding: int = 2,
    ) -> None:
        super().__init__()
        acts = {"relu": nn.ReLU, "tanh": nn.Tanh}
        pools = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}
        if activation not in acts or pool not in pools:
            raise ValueError(f"activation must be one of {list(acts)} and pool one of {list(pools)}")
        act, pool_cls = acts[activation], pools[pool]
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=padding), act(), pool_cls(2),  # C1 6@28x28, S2 6@14x14
            nn.Conv2d(6, 16, 5), act(), pool_cls(2),  # C3 16@10x10, S4 16@5x5
            nn.Conv2d(16, 120, 5), act(),  # C5 120@1x1
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(120, 84), act(), nn.Linear(84, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class AlexNetSmall(nn.Module):
    """AlexNet's ideas (Krizhevsky et al. 2012) at the scale of 28x28 or 32x32 images.

    A large strided first kernel (7x7, stride 2, where AlexNet used 11x11 stride 4 on 224x224),
    ReLU everywhere, *overlapping* max-pooling (3x3 windows, stride 2), five convolutions, and
    dropout before each of the two hidden fully connected layers. Local response normalisation
    and the two-GPU split are left out: later work showed neither is needed.
    """

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, widths: Sequence[int] = (32, 64, 96),
        hidden: int = 256, dropout: float = 0.5,
    ) -> None:
        super().__init__()
        w1, w2, w3 = widths

        def pool() -> nn.MaxPool2d:
            return nn.MaxPool2d(kernel_size=3, stride=2, padding=1)  # overlapping: window 3 > stride 2

        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w1, 7, stride=2, padding=3), nn.ReLU(inplace=True), pool(),
            nn.Conv2d(w1, w2, 5, padding=2), nn.ReLU(inplace=True), pool(),
            nn.Conv2d(w2, w3, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(w3, w3, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(w3, w2, 3, padding=1), nn.ReLU(inplace=True), pool(),
        )
        self.pool = nn.AdaptiveAvgPool2d(2)  # 2x2 for both 28x28 and 32x32 inputs
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout), nn.Linear(w2 * 4, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )
        kaiming_init(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)))


def _conv_bn_relu(c_in: int, c_out: int, k: int, batch_norm: bool, stride: int = 1) -> list[nn.Module]:
    """A same-padded convolution, optional BatchNorm (then the conv needs no bias), ReLU."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.ReLU(inplace=True))
    return layers


def vgg_block(in_ch: int, out_ch: int, n_convs: int, batch_norm: bool = False) -> nn.Sequential:
    """VGG's unit (Simonyan & Zisserman 2015): ``n_convs`` 3x3 same-padded convolutions + ReLU, then 2x2 max-pool.

    Two stacked 3x3 convolutions see a 5x5 window with 18 C^2 weights instead of 25 C^2, three
    see 7x7 with 27 C^2 instead of 49 C^2 (eq-arch-vgg; receptive fields by eq-conv-receptive-field).
    ``batch_norm`` inserts BatchNorm after each convolution (VGG-BN, added later; the 2014 networks
    had none).
    """
    if n_convs < 1:
        raise ValueError("a VGG block needs at least one convolution")
    layers: list[nn.Module] = []
    for i in range(n_convs):
        layers += _conv_bn_relu(in_ch if i == 0 else out_ch, out_ch, 3, batch_norm)
    layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class SmallVGG(nn.Module):
    """VGG blocks with widths ``widths`` and ``convs`` 3x3 convolutions each, global pooling, two FC layers."""

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, widths: Sequence[int] = (16, 32, 64),
        convs: Sequence[int] = (1, 2, 2), hidden: int = 128, dropout: float = 0.3, batch_norm: bool = True,
    ) -> None:
        super().__init__()
        if len(widths) != len(convs):
            raise ValueError("widths and convs need one entry per block")
        blocks, prev = [], in_channels
        for width, n in zip(widths, convs):
            blocks.append(vgg_block(prev, width, n, batch_norm))
            prev = width
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(prev, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, num_classes),
        )
        kaiming_init(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class InceptionModule(nn.Module):
    """GoogLeNet's Inception module (Szegedy et al. 2015): four branches concatenated on channels.

    1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | 3x3 max-pool (stride 1) -> 1x1. The 1x1 "reduce" convolutions
    shrink the channels before the expensive 3x3 and 5x5 convolutions (eq-arch-bottleneck). All
    branches keep the spatial size, so the output has ``c1 + c3 + c5 + pool_proj`` channels
    (:attr:`out_channels`). ``InceptionModule(192, 64, 96, 128, 16, 32, 32)`` is GoogLeNet's 3a.
    """

    def __init__(
        self, in_ch: int, c1: int, c3_reduce: int, c3: int, c5_reduce: int, c5: int, pool_proj: int,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.branch1 = nn.Sequential(*_conv_bn_relu(in_ch, c1, 1, batch_norm))
        self.branch3 = nn.Sequential(*_conv_bn_relu(in_ch, c3_reduce, 1, batch_norm),
                                     *_conv_bn_relu(c3_reduce, c3, 3, batch_norm))
        self.branch5 = nn.Sequential(*_conv_bn_relu(in_ch, c5_reduce, 1, batch_norm),
                                     *_conv_bn_relu(c5_reduce, c5, 5, batch_norm))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1),
                                         *_conv_bn_relu(in_ch, pool_proj, 1, batch_norm))
        self.out_channels = c1 + c3 + c5 + pool_proj

    def forward(self, x: Tensor) -> Tensor:
        branches = (self.branch1, self.branch3, self.branch5, self.branch_pool)
        return torch.cat([branch(x) for branch in branches], dim=1)


class SmallInception(nn.Module):
    """A two-module GoogLeNet for small images: stem, Inception, pool, Inception, global average pool, FC."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, stem: int = 16, batch_norm: bool = True,
                 dropout: float = 0.2) -> None:
        super().__init__()
        a = InceptionModule(stem, 8, 8, 16, 4, 8, 8, batch_norm)  # -> 40 channels
        b = InceptionModule(a.out_channels, 16, 16, 24, 4, 8, 8, batch_norm)  # -> 56 channels
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, stem, 3, batch_norm), nn.MaxPool2d(2),
            a, nn.MaxPool2d(2), b,
        )
        # Global average pooling instead of large FC layers: the Network-in-Network idea GoogLeNet adopted.
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                        nn.Linear(b.out_channels, num_classes))
        kaiming_init(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """ResNet's basic block (He et al. 2016): ``relu(F(x) + shortcut(x))`` (eq-arch-residual).

    ``F`` is conv3x3(stride) - BN - ReLU - conv3x3 - BN. When the block changes the shape
    (``stride != 1`` or ``in_ch != out_ch``) ``x`` cannot be added to ``F(x)``; the block then
    builds its own *projection shortcut*, a 1x1 convolution with the same stride followed by BN
    (the paper's option B). Otherwise the shortcut is ``nn.Identity()``: no parameters, and the
    gradient reaches ``x`` unchanged through it (eq-arch-residual-grad).

    This corrects the source article's ``ResidualBlock``, which takes an external ``downsample``
    module that defaults to ``None`` and is never built, so any block with ``stride=2`` or a new
    channel count fails with a shape error in ``out += identity``.

    ``zero_init_residual=True`` zeroes the last BN's scale, so the block starts as the identity.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, zero_init_residual: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))
        else:
            self.shortcut = nn.Identity()
        if zero_init_residual:
            nn.init.zeros_(self.bn2.weight)

    def residual(self, x: Tensor) -> Tensor:
        """The residual branch F(x)."""
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.residual(x) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A CIFAR-style ResNet (He et al. 2016, section 4.2): 3x3 stem, three stages, global pool, FC.

    Stage ``i`` has ``blocks_per_stage[i]`` :class:`BasicBlock` of width ``widths[i]``; every stage
    after the first halves the resolution in its first block (which therefore has a projection
    shortcut). With ``widths=(16, 32, 64)`` and 3 blocks per stage this is ResNet-20 (0.27 M
    parameters; 6n + 2 = 20 weight layers), except that the paper's CIFAR nets used parameter-free
    zero-padding shortcuts (option A) where this one projects.
    """

    def __init__(
        self, num_classes: int = 10, in_channels: int = 3, widths: Sequence[int] = (16, 32, 64),
        blocks_per_stage: int | Sequence[int] = 3, zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        blocks = [blocks_per_stage] * len(widths) if isinstance(blocks_per_stage, int) else list(blocks_per_stage)
        if len(blocks) != len(widths):
            raise ValueError("blocks_per_stage needs one entry per stage (or one int for all)")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        stages, prev = [], widths[0]
        for i, (width, n) in enumerate(zip(widths, blocks)):
            stage = [BasicBlock(prev if j == 0 else width, width, stride=2 if (i > 0 and j == 0) else 1,
                                zero_init_residual=zero_init_residual) for j in range(n)]
            stages.append(nn.Sequential(*stage))
            prev = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(prev, num_classes))
        self.depth = 2 * sum(blocks) + 2  # weight layers on the longest path (stem + 2 per block + FC)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)))


def check_residual_jacobian(block: BasicBlock, x: Tensor) -> GradientReport:
    """Executable proof of eq-arch-residual-grad: d(F(x) + x)/dx = dF/dx + I, in float64.

    ``block`` must keep the shape (identity shortcut); a float64 copy runs in eval mode so BatchNorm
    is a fixed affine map. Compares autograd's Jacobian of the pre-activation sum ``F(x) + x`` with
    ``I`` plus autograd's Jacobian of the residual branch alone.
    """
    if not isinstance(block.shortcut, nn.Identity):
        raise ValueError("the identity-gradient check needs a block whose shortcut is the identity")
    block = copy.deepcopy(block).double().eval()  # a float64 copy: the caller's block is untouched
    x = x.double()
    jac_sum = torch.autograd.functional.jacobian(lambda t: block.residual(t) + block.shortcut(t), x)
    jac_res = torch.autograd.functional.jacobian(block.residual, x)
    n = x.numel()
    eye = torch.eye(n, dtype=torch.float64).reshape(jac_res.shape)
    return compare({"d(F(x) + x)/dx": jac_sum}, {"d(F(x) + x)/dx": jac_res + eye})


# --- the training recipe of lesson 7 -----------------------------------------------------------


class RandomCropFlip(nn.Module):
    """Random crop after zero padding + random horizontal flip, per image, on the device, train mode only.

    Put it first in an ``nn.Sequential`` with the network: ``fit`` calls ``model.train()`` and
    ``evaluate`` calls ``model.eval()``, so like dropout it augments training batches and is the
    identity at evaluation. Each image gets its own offset in ``[0, 2 * padding]`` in both axes and
    its own coin for the flip: ``torchvision.transforms.v2`` applied to a batch tensor would draw
    one crop for the whole batch. ``fill=0`` pads with the channel mean when inputs are standardised.
    """

    def __init__(self, padding: int = 4, flip: bool = True, fill: float = 0.0) -> None:
        super().__init__()
        self.padding, self.flip, self.fill = padding, flip, fill

    def extra_repr(self) -> str:
        return f"padding={self.padding}, flip={self.flip}, fill={self.fill}"

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or (self.padding == 0 and not self.flip):
            return x
        n, c, h, w = x.shape
        channels_last = c > 1 and x.is_contiguous(memory_format=torch.channels_last)
        if self.padding:
            p = self.padding
            padded = F.pad(x, (p, p, p, p), value=self.fill)
            dy = torch.randint(0, 2 * p + 1, (n, 1), device=x.device)
            dx = torch.randint(0, 2 * p + 1, (n, 1), device=x.device)
            rows = (dy + torch.arange(h, device=x.device))[:, None, :, None]  # (n, 1, h, 1)
            cols = (dx + torch.arange(w, device=x.device))[:, None, None, :]  # (n, 1, 1, w)
            batch = torch.arange(n, device=x.device)[:, None, None, None]
            chan = torch.arange(c, device=x.device)[None, :, None, None]
            x = padded[batch, chan, rows, cols]
        if self.flip:
            coin = torch.rand(n, device=x.device) < 0.5
            x = torch.where(coin[:, None, None, None], x.flip(3), x)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def smoothed_cross_entropy(logits: Tensor, target: Tensor, eps: float) -> Tensor:
    """Mean cross-entropy against label-smoothed targets q = (1 - eps) onehot(y) + eps / K (eq-train-cnn-smoothing).

    Written with the log-sum-exp trick, no autograd involved; equals
    ``F.cross_entropy(logits, target, label_smoothing=eps)``.
    """
    n, k = logits.shape
    shifted = logits - logits.max(dim=1, keepdim=True).values
    log_probs = shifted - shifted.exp().sum(dim=1, keepdim=True).log()
    q = torch.full_like(logits, eps / k)
    q[torch.arange(n), target] += 1.0 - eps
    return -(q * log_probs).sum() / n


def smoothed_cross_entropy_grad(logits: Tensor, target: Tensor, eps: float) -> Tensor:
    """dL/dz = (softmax(z) - q) / N for the mean smoothed cross-entropy (eq-train-cnn-smoothing-grad)."""
    n, k = logits.shape
    shifted = logits - logits.max(dim=1, keepdim=True).values
    probs = shifted.exp() / shifted.exp().sum(dim=1, keepdim=True)
    q = torch.full_like(logits, eps / k)
    q[torch.arange(n), target] += 1.0 - eps
    return (probs - q) / n


def one_cycle_lr(
    step: int | np.ndarray, total_steps: int, max_lr: float, pct_start: float = 0.3, div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> float | np.ndarray:
    """The one-cycle learning rate at ``step`` (eq-train-cnn-onecycle), as ``torch.optim.lr_scheduler.OneCycleLR``.

    Cosine warm-up from ``max_lr / div_factor`` to ``max_lr`` until step ``pct_start * T - 1``,
    then cosine annealing down to ``max_lr / (div_factor * final_div_factor)`` at step ``T - 1``.
    """
    start, low = max_lr / div_factor, max_lr / (div_factor * final_div_factor)
    peak = float(pct_start * total_steps) - 1
    last = total_steps - 1
    s = np.asarray(step, dtype=np.float64)

    def cos_anneal(a: float, b: float, frac: np.ndarray) -> np.ndarray:
        return b + (a - b) / 2 * (np.cos(math.pi * frac) + 1)

    up = cos_anneal(start, max_lr, s / peak)
    down = cos_anneal(max_lr, low, (s - peak) / (last - peak))
    lr = np.where(s <= peak, up, down)
    return float(lr) if lr.ndim == 0 else lr
