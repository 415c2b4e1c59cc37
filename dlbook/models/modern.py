"""Efficient and modern blocks: depthwise-separable convolution, the inverted residual, the ConvNeXt
block and a tiny Vision Transformer, with the small networks built from them.

Used by ``chapters/cnn/modern-blocks.ipynb``; the equation labels below are that lesson's. Cost
by hand (parameters, multiply-accumulates) reuses :mod:`dlbook.perf` (``conv2d_params``,
``conv2d_macs``, ``linear_macs``): one implementation per equation.

From scratch (each proved equal to PyTorch in the lesson and in ``tests/test_cnn_blocks.py``):

* :func:`depthwise_conv2d` - one k x k filter per channel, as k^2 shifted slices (eq-blocks-depthwise)
* :func:`pointwise_conv2d` - a 1x1 convolution as one matrix product over positions
* :func:`channels_layer_norm` - LayerNorm over the channels of every pixel (eq-blocks-layernorm)
* :func:`patchify` / :func:`patch_embed_linear` - non-overlapping patches, flattened, times a
  matrix: the ViT patch embedding (eq-blocks-patch), equal to a strided convolution

Modules:

* :class:`DepthwiseSeparable` - MobileNet's block: depthwise k x k - BN - ReLU - pointwise - BN - ReLU
* :class:`InvertedResidual` - MobileNetV2's block: 1x1 expand - depthwise 3x3 - 1x1 linear projection,
  with the identity shortcut when the shape is kept
* :class:`LayerNorm2d`, :class:`ConvNeXtBlock` - 7x7 depthwise, LayerNorm, 1x1 expand x4, GELU,
  1x1 project, layer scale, residual
* :class:`PatchEmbed`, :class:`TinyViT` - patches as tokens, a class token, learned positions and
  ``nn.TransformerEncoder`` layers
* :class:`MobileNetSmall`, :class:`ConvNeXtSmall` - 28x28 classifiers with a ``width`` knob, for a
  comparison at a matched parameter budget (:func:`dlbook.models.sequence_classifiers.width_for_budget`)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..perf import conv2d_macs, conv2d_params, linear_macs

Tensor = torch.Tensor


# --- cost by hand --------------------------------------------------------------------------------


def separable_cost(c_in: int, c_out: int, k: int, h_out: int, w_out: int, bias: bool = False) -> dict[str, int]:
    """Parameters and MACs of a standard k x k convolution and of the depthwise-separable pair.

    The pair is a depthwise k x k convolution (``groups=c_in``, one filter per channel) followed by
    a pointwise 1x1 convolution ``c_in -> c_out`` (eq-blocks-separable); both are eq-arch-params and
    eq-arch-macs with the right ``groups``, so this only adds the two terms.
    """
    return {
        "standard_params": conv2d_params(c_in, c_out, k, bias=bias),
        "separable_params": conv2d_params(c_in, c_in, k, groups=c_in, bias=bias) + conv2d_params(c_in, c_out, 1, bias=bias),
        "standard_macs": conv2d_macs(c_in, c_out, k, h_out, w_out),
        "separable_macs": conv2d_macs(c_in, c_in, k, h_out, w_out, groups=c_in) + conv2d_macs(c_in, c_out, 1, h_out, w_out),
    }


def separable_ratio(c_out: int, k: int) -> float:
    """MACs (and, without biases, parameters) of the separable pair over the standard convolution: 1/C' + 1/k^2."""
    return 1 / c_out + 1 / k**2


def vit_macs(tokens: int, dim: int, mlp: int, depth: int, patch_in: int, num_classes: int) -> int:
    """MACs of one image through :class:`TinyViT` by hand (eq-blocks-vit-macs).

    Patch embedding (tokens - 1 patches of ``patch_in`` values each, the class token is not
    computed), then per layer: Q, K, V and output projections (4 L d^2), attention scores Q K^T and
    the weighted sum of values (2 L^2 d, whatever the number of heads), the MLP (2 L d m); then
    the head on the class token. LayerNorm, softmax and GELU are a few operations per value and
    are not counted, as for BatchNorm and ReLU in a CNN.
    """
    layer = 4 * linear_macs(dim, dim) * tokens + 2 * tokens * tokens * dim + tokens * (linear_macs(dim, mlp) + linear_macs(mlp, dim))
    return (tokens - 1) * linear_macs(patch_in, dim) + depth * layer + linear_macs(dim, num_classes)


# --- from scratch --------------------------------------------------------------------------------


def depthwise_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: int = 1, padding: int = 0) -> Tensor:
    """Depthwise convolution (eq-blocks-depthwise): channel c of the output sees only channel c of the input.

    ``weight`` is (C, 1, k, k), the layout of ``Conv2d(C, C, k, groups=C)``. The sum over the k^2
    kernel offsets is written as k^2 shifted slices of the padded input, each multiplied by one
    weight per channel: there is no sum over channels, which is the whole saving.
    """
    n, c, h, w = x.shape
    k = weight.shape[-1]
    if weight.shape != (c, 1, k, k):
        raise ValueError(f"a depthwise weight for {c} channels must be ({c}, 1, k, k), got {tuple(weight.shape)}")
    xp = F.pad(x, (padding,) * 4)
    h_out, w_out = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    out = x.new_zeros(n, c, h_out, w_out)
    for u in range(k):
        for v in range(k):
            window = xp[:, :, u : u + stride * (h_out - 1) + 1 : stride, v : v + stride * (w_out - 1) + 1 : stride]
            out += weight[:, 0, u, v].view(1, c, 1, 1) * window
    return out if bias is None else out + bias.view(1, c, 1, 1)


def pointwise_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """A 1x1 convolution as one matrix product: (C', C) times the (C, H W) matrix of every image."""
    n, c, h, w = x.shape
    out = weight.reshape(weight.shape[0], c) @ x.reshape(n, c, h * w)
    if bias is not None:
        out = out + bias.view(1, -1, 1)
    return out.reshape(n, -1, h, w)


def channels_layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-6) -> Tensor:
    """LayerNorm over the channels of every pixel of an (N, C, H, W) tensor (eq-blocks-layernorm).

    Each of the N H W vectors of C values is standardised with its own mean and (biased) variance,
    then scaled and shifted per channel. No statistics cross images or pixels, unlike BatchNorm,
    so training and evaluation compute the same function and batch size does not matter.
    """
    mean = x.mean(dim=1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


def patchify(x: Tensor, patch: int) -> Tensor:
    """Cut (N, C, H, W) images into non-overlapping patch x patch squares: (N, H W / p^2, C p^2).

    Patches are listed row by row; each is flattened channel-major (c, then row, then column), the
    order of a ``Conv2d`` weight's last three dimensions.
    """
    n, c, h, w = x.shape
    if h % patch or w % patch:
        raise ValueError(f"a {h}x{w} image does not split into {patch}x{patch} patches")
    x = x.reshape(n, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(n, (h // patch) * (w // patch), c * patch * patch)


def patch_embed_linear(x: Tensor, weight: Tensor, bias: Tensor, patch: int) -> Tensor:
    """The ViT patch embedding from scratch (eq-blocks-patch): ``patchify(x) @ E^T + b``, (N, L, D).

    ``weight`` is a (D, C, p, p) convolution weight, reshaped to the (D, C p^2) matrix E.
    """
    return patchify(x, patch) @ weight.reshape(weight.shape[0], -1).T + bias


# --- blocks --------------------------------------------------------------------------------------


class DepthwiseSeparable(nn.Module):
    """MobileNet's block (Howard et al. 2017): depthwise k x k - BN - ReLU - pointwise 1x1 - BN - ReLU.

    The depthwise convolution filters each channel on its own (``groups=in_ch``); the pointwise
    one mixes channels. Together they replace a k x k convolution at 1/C' + 1/k^2 of its cost.
    """

    def __init__(self, in_ch: int, out_ch: int, k: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_ch, in_ch, k, stride=stride, padding=k // 2, groups=in_ch, bias=False)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.pointwise = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn2(self.pointwise(F.relu(self.bn1(self.depthwise(x))))))


class InvertedResidual(nn.Module):
    """MobileNetV2's block (Sandler et al. 2018): expand 1x1 - depthwise 3x3 - project 1x1, linear output.

    The residual connects the *narrow* ends (the bottlenecks), and the wide middle (``expand``
    times the input channels) is where the cheap depthwise filter runs: the inverse of ResNet's
    bottleneck, which is wide at the ends. The projection has no ReLU (a "linear bottleneck"): a
    ReLU on a few channels would destroy information the narrow tensor cannot afford to lose.
    The shortcut is the identity when ``stride == 1`` and ``in_ch == out_ch``; otherwise there is none.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, expand: int = 4) -> None:
        super().__init__()
        hidden = in_ch * expand
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(in_ch, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
                   nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
                   nn.Conv2d(hidden, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class LayerNorm2d(nn.LayerNorm):
    """``nn.LayerNorm`` over the channels of an (N, C, H, W) tensor: moved to channels-last and back."""

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """The ConvNeXt block (Liu et al. 2022): x + gamma * W2 GELU(W1 LN(dwconv7x7(x))).

    The 7x7 depthwise convolution does the spatial mixing (a large window at little cost), the two
    1x1 convolutions (``4 dim`` wide in the middle: an inverted bottleneck) the channel mixing,
    as a Transformer's attention and MLP do. One LayerNorm and one GELU per block, no BatchNorm;
    the per-channel layer scale ``gamma`` starts at ``layer_scale`` (1e-6 in the paper), so every
    block starts close to the identity.
    """

    def __init__(self, dim: int, expand: int = 4, kernel: int = 7, layer_scale: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.pwconv1 = nn.Conv2d(dim, expand * dim, 1)
        self.pwconv2 = nn.Conv2d(expand * dim, dim, 1)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale)))

    def forward(self, x: Tensor) -> Tensor:
        out = self.pwconv2(F.gelu(self.pwconv1(self.norm(self.dwconv(x)))))
        return x + self.gamma.view(1, -1, 1, 1) * out


class PatchEmbed(nn.Module):
    """ViT's patch embedding as a ``Conv2d`` with kernel = stride = ``patch``: (N, C, H, W) -> (N, L, D).

    Each output position sees exactly one patch and applies the same D x (C p^2) matrix to it, so
    this *is* :func:`patch_embed_linear` (the lesson proves it), computed by the convolution kernel.
    """

    def __init__(self, in_ch: int, dim: int, patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_ch, dim, patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TinyViT(nn.Module):
    """A Vision Transformer (Dosovitskiy et al. 2021) for small images.

    Patch embedding, a learned class token prepended, learned position embeddings added, ``depth``
    pre-norm ``nn.TransformerEncoder`` layers (GELU MLP of ``mlp_ratio * dim``), a final LayerNorm
    and a linear head on the class token. No convolution after the first layer: whatever it knows
    about neighbouring pixels it must learn from data.
    """

    def __init__(self, dim: int = 64, depth: int = 2, heads: int = 4, patch: int = 7, mlp_ratio: int = 2,
                 image_size: int = 28, in_channels: int = 1, num_classes: int = 10, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = PatchEmbed(in_channels, dim, patch)
        self.tokens = (image_size // patch) ** 2 + 1
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, self.tokens, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, mlp_ratio * dim, dropout=dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        z = self.embed(x)
        z = torch.cat([self.cls.expand(len(z), -1, -1), z], dim=1) + self.pos
        return self.head(self.norm(self.encoder(z))[:, 0])


# --- small networks for 28x28 images -------------------------------------------------------------


class MobileNetSmall(nn.Module):
    """A MobileNetV2-style classifier: 3x3 stem, inverted residuals in three stages, pool, linear.

    Stage widths are ``width * (1, 2, 4)``. As in MobileNetV2 the stem has stride 2 (28 -> 14);
    the first block of a stage with stride 2 in ``strides`` halves the map again (14 -> 7), the
    other blocks keep the shape and add their identity shortcut.
    """

    def __init__(self, width: int = 8, blocks: Sequence[int] = (1, 2, 2), strides: Sequence[int] = (1, 2, 1),
                 expand: int = 4, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        widths = [width * m for m in (1, 2, 4)]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU6(inplace=True))
        layers: list[nn.Module] = []
        prev = widths[0]
        for w, n, stride in zip(widths, blocks, strides):
            for j in range(n):
                layers.append(InvertedResidual(prev, w, stride=stride if j == 0 else 1, expand=expand))
                prev = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(prev, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(self.stem(x)))


class ConvNeXtSmall(nn.Module):
    """A ConvNeXt-style classifier: 2x2 "patchify" stem, two stages of :class:`ConvNeXtBlock`, pool, LN, linear.

    As in ConvNeXt, the stem is a non-overlapping strided convolution (a patch embedding, 28 -> 14)
    followed by LayerNorm, and the downsampling between stages is LayerNorm then a 2x2 stride-2
    convolution (14 -> 7). Stage widths are ``width`` and ``2 width``.
    """

    def __init__(self, width: int = 16, blocks: Sequence[int] = (1, 2), in_channels: int = 1,
                 num_classes: int = 10, layer_scale: float = 1e-6) -> None:
        super().__init__()
        widths = [width * 2**i for i in range(len(blocks))]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 2, stride=2), LayerNorm2d(widths[0], eps=1e-6))
        stages: list[nn.Module] = []
        for i, (w, n) in enumerate(zip(widths, blocks)):
            if i > 0:
                stages += [LayerNorm2d(widths[i - 1], eps=1e-6), nn.Conv2d(widths[i - 1], w, 2, stride=2)]
            stages += [ConvNeXtBlock(w, layer_scale=layer_scale) for _ in range(n)]
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(widths[-1], eps=1e-6)
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.norm(self.stages(self.stem(x)).mean(dim=(2, 3))))


# --- measuring -----------------------------------------------------------------------------------


def time_separable(channels: int, size: int, k: int = 3, batch: int = 8, repeats: int = 5, seed: int = 0) -> dict:
    """Forward time of a standard k x k convolution and of the separable pair, at ``channels`` in and out.

    Each round times the four calls ``"standard"``, ``"depthwise"``, ``"pointwise"`` and ``"pair"``
    (depthwise then pointwise) one after the other under ``no_grad``, with :func:`dlbook.perf.timed`
    (on the CPU: seconds of CPU time of this process, which a job sharing the CPU does not inflate,
    unlike the wall clock); one untimed round first pays for allocation and kernel selection. The
    result holds the median seconds over ``repeats`` rounds, the MACs of the batch (eq-arch-macs),
    for the three layers the arithmetic intensity (eq-blocks-roofline: MACs per byte if every
    float32 tensor is read or written once) and the achieved rate in GMAC/s, the MAC speed-up
    ``standard / (depthwise + pointwise)`` and the measured speed-up, the median over rounds of
    ``standard time / pair time`` (a ratio within one round: a slow moment slows both calls).
    """
    import numpy as np

    from ..perf import timed

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, size, size, generator=gen)
    layers = {"standard": nn.Conv2d(channels, channels, k, padding=k // 2, bias=False),
              "depthwise": nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels, bias=False),
              "pointwise": nn.Conv2d(channels, channels, 1, bias=False)}
    layers["pair"] = nn.Sequential(layers["depthwise"], layers["pointwise"])
    rounds = []
    with torch.no_grad():
        for r in range(repeats + 1):
            times = {name: timed(lambda layer=layer: layer(x), x.device)[1].seconds for name, layer in layers.items()}
            if r > 0:  # round 0 is the warm-up
                rounds.append(times)
    seconds = {name: float(np.median([t[name] for t in rounds])) for name in layers}
    act = batch * channels * size * size  # values in each of X, D and Y (same size: stride 1, C' = C)
    macs = {"standard": batch * conv2d_macs(channels, channels, k, size, size),
            "depthwise": batch * conv2d_macs(channels, channels, k, size, size, groups=channels),
            "pointwise": batch * conv2d_macs(channels, channels, 1, size, size)}
    weights = {name: layers[name].weight.numel() for name in macs}
    return {
        "seconds": seconds,
        "macs": macs,
        "intensity": {name: macs[name] / (4 * (2 * act + weights[name])) for name in macs},
        "gmac_per_s": {name: macs[name] / seconds[name] / 1e9 for name in macs},
        "mac_speedup": macs["standard"] / (macs["depthwise"] + macs["pointwise"]),
        "speedup": float(np.median([t["standard"] / t["pair"] for t in rounds])),
    }
