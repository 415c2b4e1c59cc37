"""CNN lesson "Efficient and modern blocks": depthwise-separable convolution, inverted residual,
ConvNeXt block, tiny ViT.

The code is dlbook/models/modern.py; the notebook is chapters/cnn/modern-blocks.ipynb. Each proof
is checked with a planted bug that the same comparison must reject.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchinfo
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from dlbook.gradients import rel_error
from dlbook.models import SmallResNet
from dlbook.models.modern import (
    ConvNeXtBlock,
    ConvNeXtSmall,
    InvertedResidual,
    LayerNorm2d,
    MobileNetSmall,
    PatchEmbed,
    TinyViT,
    channels_layer_norm,
    depthwise_conv2d,
    patch_embed_linear,
    patchify,
    pointwise_conv2d,
    separable_cost,
    separable_ratio,
    time_separable,
    vit_macs,
)
from dlbook.models.sequence_classifiers import count_parameters, width_for_budget
from dlbook.perf import conv2d_macs, count_macs, counted_flops

TOL = 1e-8


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


# --- depthwise-separable convolution -----------------------------------------------------------------


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (1, 0), (2, 2)])
def test_depthwise_equals_grouped_conv2d(stride: int, padding: int) -> None:
    x, w, b = randn(2, 5, 9, 10), randn(5, 1, 3, 3, seed=1), randn(5, seed=2)
    ours = depthwise_conv2d(x, w, b, stride=stride, padding=padding)
    assert rel_error(ours, F.conv2d(x, w, b, stride=stride, padding=padding, groups=5)) < TOL


def test_planted_bug_flipped_depthwise_kernel_is_rejected() -> None:
    """The textbook (flipped-kernel) convolution is not what groups=C computes: the check must see it."""
    x, w = randn(2, 5, 9, 9), randn(5, 1, 3, 3, seed=1)
    buggy = depthwise_conv2d(x, w.flip(-1, -2), padding=1)
    assert rel_error(buggy, F.conv2d(x, w, padding=1, groups=5)) > 0.1


def test_depthwise_rejects_a_dense_weight() -> None:
    with pytest.raises(ValueError):
        depthwise_conv2d(randn(1, 4, 5, 5), randn(4, 4, 3, 3))


def test_pointwise_equals_1x1_conv_and_planted_transpose_is_rejected() -> None:
    x, w, b = randn(3, 6, 5, 4), randn(6, 6, 1, 1, seed=1), randn(6, seed=2)
    assert rel_error(pointwise_conv2d(x, w, b), F.conv2d(x, w, b)) < TOL
    buggy = pointwise_conv2d(x, w.transpose(0, 1), b)  # mixing with W^T instead of W
    assert rel_error(buggy, F.conv2d(x, w, b)) > 0.1


@pytest.mark.parametrize("c_in,c_out,k,hw", [(64, 128, 3, 14), (32, 32, 5, 7), (3, 16, 3, 28)])
def test_separable_cost_by_hand_equals_pytorch_torchinfo_and_flop_counter(c_in: int, c_out: int, k: int, hw: int) -> None:
    cost = separable_cost(c_in, c_out, k, hw, hw)
    standard = nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False)
    pair = nn.Sequential(nn.Conv2d(c_in, c_in, k, padding=k // 2, groups=c_in, bias=False),
                         nn.Conv2d(c_in, c_out, 1, bias=False))
    x = torch.randn(1, c_in, hw, hw)
    for name, module in (("standard", standard), ("separable", pair)):
        info = torchinfo.summary(module, input_data=x, verbose=0)
        assert cost[f"{name}_params"] == count_parameters(module) == info.total_params
        assert cost[f"{name}_macs"] == counted_flops(lambda m=module: m(x))[0] // 2 == info.total_mult_adds
    assert cost["separable_macs"] / cost["standard_macs"] == pytest.approx(separable_ratio(c_out, k), rel=1e-12)
    # planted bug: counting the depthwise layer as a dense k x k convolution (forgetting groups = C)
    buggy = conv2d_macs(c_in, c_in, k, hw, hw) + conv2d_macs(c_in, c_out, 1, hw, hw)
    assert buggy != counted_flops(lambda: pair(x))[0] // 2


def test_time_separable_reports_consistent_quantities() -> None:
    r = time_separable(8, 6, k=3, batch=2, repeats=1)
    assert set(r["seconds"]) == {"standard", "depthwise", "pointwise", "pair"}
    assert all(t > 0 for t in r["seconds"].values())
    assert r["mac_speedup"] == pytest.approx(1 / separable_ratio(8, 3))
    # the roofline intensities: about k^2 C / 8 for the dense layer, below k^2 / 8 for the depthwise one
    assert r["intensity"]["depthwise"] < 9 / 8 < r["intensity"]["standard"]


# --- inverted residual and ConvNeXt ----------------------------------------------------------------


def test_inverted_residual_shortcut_and_parameter_count() -> None:
    t, c = 4, 8
    keep, down = InvertedResidual(c, c, 1, t).eval(), InvertedResidual(c, 2 * c, 2, t).eval()
    hand = c * t * c + 9 * t * c + t * c * c + 2 * (2 * t * c + c)
    assert count_parameters(keep) == hand
    x = torch.randn(2, c, 8, 8)
    with torch.no_grad():
        assert torch.allclose(keep(x) - x, keep.block(x), atol=1e-6)
        assert down(x).shape == (2, 2 * c, 4, 4) and not down.use_residual
    assert not isinstance(keep.block[-1], (nn.ReLU, nn.ReLU6)), "the projection must stay linear"


def test_channels_layer_norm_equals_layer_norm_and_planted_bugs_are_rejected() -> None:
    x, g, b = randn(3, 7, 4, 5), randn(7, seed=1), randn(7, seed=2)
    ours = channels_layer_norm(x, g, b, eps=1e-6)
    reference = F.layer_norm(x.permute(0, 2, 3, 1), (7,), g, b, 1e-6).permute(0, 3, 1, 2)
    assert rel_error(ours, reference) < TOL
    ln = LayerNorm2d(7, eps=1e-6).double()
    with torch.no_grad():
        ln.weight.copy_(g)
        ln.bias.copy_(b)
        assert rel_error(ln(x), reference) < TOL
    # planted bugs: the unbiased variance, and BatchNorm's statistics (over batch and positions)
    mean = x.mean(1, keepdim=True)
    unbiased = (x - mean) / torch.sqrt(x.var(1, keepdim=True, unbiased=True) + 1e-6) * g.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)
    assert rel_error(unbiased, reference) > 1e-3
    batch_stats = F.batch_norm(x, None, None, g, b, training=True, eps=1e-6)
    assert rel_error(batch_stats, reference) > 0.1


def test_convnext_block_starts_near_identity_and_keeps_shape() -> None:
    torch.manual_seed(0)
    block = ConvNeXtBlock(12).eval()
    x = torch.randn(2, 12, 7, 7)
    with torch.no_grad():
        y = block(x)
    assert y.shape == x.shape
    assert ((y - x).norm() / x.norm()).item() < 1e-4
    assert block.dwconv.groups == 12 and block.dwconv.kernel_size == (7, 7)
    assert block.pwconv1.out_channels == 4 * 12


# --- the Vision Transformer -------------------------------------------------------------------------


@pytest.mark.parametrize("patch,channels", [(4, 1), (7, 1), (2, 3)])
def test_patch_embedding_conv_equals_patchify_times_matrix(patch: int, channels: int) -> None:
    torch.manual_seed(0)
    embed = PatchEmbed(channels, 16, patch).double()
    x = randn(2, channels, 28, 28)
    assert rel_error(embed(x), patch_embed_linear(x, embed.proj.weight, embed.proj.bias, patch)) < TOL


def test_planted_bug_patches_flattened_channels_last_are_rejected() -> None:
    """Flattening each patch as (row, column, channel) does not match the conv weight's (channel, row, column)."""
    torch.manual_seed(0)
    embed = PatchEmbed(3, 16, 4).double()
    x = randn(2, 3, 8, 8)
    n = x.shape[0]
    wrong = x.reshape(n, 3, 2, 4, 2, 4).permute(0, 2, 4, 3, 5, 1).reshape(n, 4, 48)
    buggy = wrong @ embed.proj.weight.reshape(16, -1).T + embed.proj.bias
    assert rel_error(buggy, embed(x)) > 0.1
    assert patchify(x, 4).shape == (2, 4, 48)
    with pytest.raises(ValueError):
        patchify(x, 3)


def test_vit_macs_by_hand_equal_flop_counter_with_math_attention() -> None:
    vit = TinyViT(dim=24, depth=2, heads=4, patch=7)
    x = torch.randn(1, 1, 28, 28)
    hand = vit_macs(vit.tokens, 24, 48, 2, 49, 10)
    with sdpa_kernel(SDPBackend.MATH):
        counted = counted_flops(lambda: vit(x))[0] // 2
    assert counted == hand
    # planted bug: the formula without the attention products Q K^T and A V (2 L^2 D per layer)
    without_attention = hand - 2 * 2 * vit.tokens**2 * 24
    assert counted != without_attention
    # the fused CPU kernel may be missing from FlopCounterMode's table: never more than the hand count
    assert counted_flops(lambda: vit(x))[0] // 2 in (hand, without_attention)
    assert vit(torch.randn(3, 1, 28, 28)).shape == (3, 10)


# --- the networks of the comparison ----------------------------------------------------------------


def test_networks_match_the_resnet_budget_and_hooks_equal_flop_counter() -> None:
    budget = count_parameters(SmallResNet(in_channels=1, widths=(8, 16, 32), blocks_per_stage=1))
    models = {
        "mobilenet": MobileNetSmall(width_for_budget(lambda w: count_parameters(MobileNetSmall(w)), budget, hi=64)),
        "convnext": ConvNeXtSmall(width_for_budget(lambda w: count_parameters(ConvNeXtSmall(w)), budget, hi=64)),
        "vit": TinyViT(dim=4 * width_for_budget(lambda w: count_parameters(TinyViT(dim=4 * w)), budget, hi=32)),
    }
    x = torch.zeros(1, 1, 28, 28)
    for name, model in models.items():
        assert abs(count_parameters(model) / budget - 1) < 0.05, name
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10), name
        if name != "vit":
            model.eval()
            assert count_macs(model, (1, 1, 28, 28)) == counted_flops(lambda m=model: m(x))[0] // 2, name
