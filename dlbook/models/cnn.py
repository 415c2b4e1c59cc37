"""Convolutional networks from LeNet to ResNet: architectures only.

Used by ``chapters/cnn/cnn-architectures.ipynb`` (lesson 2.5) and ``chapters/cnn/training-cnns.ipynb``
(lesson 2.7). Their cost by hand (parameters and multiply-accumulates, eq-arch-params and
eq-arch-macs) is measuring code and lives in :mod:`dlbook.perf`; He initialisation is
:func:`dlbook.scratch.init.kaiming_init`; the on-device crop and flip is
:class:`dlbook.data.augment.RandomCropFlip`; label smoothing and the one-cycle schedule are the
optimization chapter's (:mod:`dlbook.scratch.regularization`, :mod:`dlbook.scratch.schedules`).

Models (all take ``num_classes`` and ``in_channels``; the small ones are sized for 28x28 MNIST or
Fashion-MNIST and 32x32 CIFAR so a CPU trains them in seconds):

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
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..gradients import GradientReport, compare
from ..scratch.init import kaiming_init

Tensor = torch.Tensor
IntPair = int | tuple[int, int]


# --- models ------------------------------------------------------------------------------------


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) for 28x28 images (digits then, garments in the course): conv-pool-conv-pool-conv-fc-fc.

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
