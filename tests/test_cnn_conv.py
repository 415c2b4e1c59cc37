"""CNN lessons 1 and 2 (convolution basics, three ways): the notebooks' checks, edge cases, planted bugs.

The code is dlbook/scratch/conv.py; the equations are in chapters/cnn/convolution-basics.ipynb and
chapters/cnn/convolution-three-ways.ipynb.
"""

from __future__ import annotations

import random
import warnings

import pytest
import scipy.signal
import torch
import torch.nn.functional as F
from torch import nn

import dlbook.scratch.conv as conv
from dlbook.gradients import rel_error
from dlbook.scratch.conv import (
    ConvSetting,
    LayerSpec,
    check_output_size_grid,
    check_receptive_fields,
    check_three_ways,
    compare_three_ways,
    conv2d_im2col,
    conv2d_loops,
    conv_output_size,
    empirical_receptive_field,
    im2col,
    layer_specs,
    positive_copy,
    receptive_field,
    receptive_fields,
    same_padding,
    time_call,
)

f64 = torch.float64


# ---------------------------------------------------------------- output size (eq-conv-output-size)


def test_output_size_grid_matches_nn_conv2d() -> None:
    grid = check_output_size_grid()
    assert grid.ok, f"formula and nn.Conv2d disagree: {grid.mismatches[:5]}"
    assert grid.valid == 483 and grid.invalid == 165, (grid.valid, grid.invalid)


@pytest.mark.parametrize(("n", "k", "p", "s", "d", "expected"), [
    (28, 3, 1, 1, 1, 28), (28, 5, 0, 1, 1, 24), (224, 7, 3, 2, 1, 112), (112, 3, 1, 2, 1, 56),
    (7, 3, 0, 2, 1, 3), (8, 3, 0, 2, 1, 3), (10, 3, 2, 1, 2, 10), (5, 5, 0, 1, 1, 1),
])
def test_output_size_known_values(n: int, k: int, p: int, s: int, d: int, expected: int) -> None:
    assert conv_output_size(n, k, p, s, d) == expected


@pytest.mark.parametrize(("n", "k", "p", "d"), [(2, 3, 0, 1), (4, 3, 0, 2), (1, 2, 0, 1)])
def test_output_size_refuses_when_no_window_fits(n: int, k: int, p: int, d: int) -> None:
    with pytest.raises(ValueError):
        conv_output_size(n, k, p, 1, d)
    with pytest.raises(RuntimeError):
        nn.Conv2d(1, 1, k, padding=p, dilation=d)(torch.zeros(1, 1, n, n))


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("d", [1, 2, 3])
def test_same_padding_is_pytorchs_split(k: int, d: int) -> None:
    gen = torch.Generator().manual_seed(k * 10 + d)
    x = torch.randn(1, 2, 9, 7, generator=gen, dtype=f64)
    w = torch.randn(3, 2, k, k, generator=gen, dtype=f64)
    before, after = same_padding(k, d)
    with warnings.catch_warnings():  # odd total padding: PyTorch warns that it pads a copy of x
        warnings.simplefilter("ignore", UserWarning)
        same = F.conv2d(x, w, padding="same", dilation=d)
    assert same.shape[-2:] == x.shape[-2:]
    torch.testing.assert_close(same, F.conv2d(F.pad(x, (before, after, before, after)), w, dilation=d),
                               rtol=0, atol=0)


# ---------------------------------------------------------------- three ways agree (float64)


def test_three_ways_agree_on_the_lesson_settings() -> None:
    report = check_three_ways()
    assert len(report.errors) == 2 * len(conv.SETTINGS)
    report.assert_ok()


def _random_settings(count: int, seed: int) -> list[ConvSetting]:
    rng = random.Random(seed)
    settings = []
    while len(settings) < count:
        s = ConvSetting(n=rng.randint(1, 3), c_in=rng.randint(1, 4), c_out=rng.randint(1, 4),
                        h=rng.randint(3, 12), w=rng.randint(3, 12), k=rng.randint(1, 5), stride=rng.randint(1, 3),
                        padding=rng.randint(0, 3), dilation=rng.randint(1, 3))
        try:
            conv_output_size(s.h, s.k, s.padding, s.stride, s.dilation)
            conv_output_size(s.w, s.k, s.padding, s.stride, s.dilation)
        except ValueError:
            continue
        settings.append(s)
    return settings


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_three_ways_agree_on_random_settings(seed: int) -> None:
    report = check_three_ways(_random_settings(8, seed), seed=100 * seed)
    assert report.ok, str(report)


def test_rectangular_kernel_and_per_axis_settings() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 11, 9, generator=gen, dtype=f64)
    w = torch.randn(2, 3, 3, 2, generator=gen, dtype=f64)
    b = torch.randn(2, generator=gen, dtype=f64)
    kwargs = {"stride": (1, 2), "padding": (2, 0), "dilation": (2, 1)}
    reference = F.conv2d(x, w, b, **kwargs)
    assert rel_error(conv2d_loops(x, w, b, **kwargs), reference) < 1e-12
    assert rel_error(conv2d_im2col(x, w, b, **kwargs), reference) < 1e-12


def test_no_bias_and_dtype_kept() -> None:
    x, w, _ = ConvSetting().tensors(seed=5)
    for fn in (conv2d_loops, conv2d_im2col):
        out = fn(x, w, None, 1, 1)
        assert out.dtype == f64
        assert rel_error(out, F.conv2d(x, w, padding=1)) < 1e-12


def test_channel_mismatch_is_refused() -> None:
    x = torch.zeros(1, 3, 5, 5)
    w = torch.zeros(2, 4, 3, 3)
    for fn in (conv2d_loops, conv2d_im2col):
        with pytest.raises(ValueError, match="channels"):
            fn(x, w)


def test_the_source_articles_float32_buffers_lose_precision() -> None:
    """The seed's `convolution` builds its output with torch.zeros (float32): float64 proofs fail."""

    def seed_convolution(image: torch.Tensor, kernel: torch.Tensor, stride: int = 1, padding: int = 0):
        c_in, h, w = image.shape
        c_out, _, kh, kw = kernel.shape
        out_h, out_w = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
        padded = torch.zeros(c_in, h + 2 * padding, w + 2 * padding)
        padded[:, padding:padding + h, padding:padding + w] = image
        output = torch.zeros(c_out, out_h, out_w)
        for c in range(c_out):
            for i in range(out_h):
                for j in range(out_w):
                    patch = padded[:, i * stride:i * stride + kh, j * stride:j * stride + kw]
                    output[c, i, j] = torch.sum(kernel[c] * patch)
        return output

    x, w, _ = ConvSetting(n=1).tensors(seed=7)
    reference = F.conv2d(x, w, padding=1)
    seed_out = seed_convolution(x[0], w, padding=1)
    assert seed_out.dtype == torch.float32
    assert rel_error(seed_out[None], reference) > 1e-9, "the seed's float32 rounding should be visible"
    assert rel_error(conv2d_loops(x, w, padding=1), reference) < 1e-12


def test_hand_example_four_by_four() -> None:
    X = torch.tensor([[1, 2, 0, 1], [0, 1, 3, 1], [2, 1, 0, 2], [1, 0, 1, 3]], dtype=f64)[None, None]
    K = torch.tensor([[1, 0], [-1, 2]], dtype=f64)[None, None]
    correlation = torch.tensor([[3, 7, -1], [0, 0, 7], [1, 3, 5]], dtype=f64)
    for fn in (F.conv2d, conv2d_loops, conv2d_im2col):
        assert torch.equal(fn(X, K)[0, 0], correlation), fn


def test_im2col_index_order() -> None:
    """cols[n, c*kh*kw + u*kw + v, i*W_out + j] = xpad[n, c, s*i + d*u, s*j + d*v] (eq-conv-unfold)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 9, 8, generator=gen, dtype=f64)
    kh, kw, s, p, d = 3, 2, 2, 1, 2
    xp = F.pad(x, (p, p, p, p))
    cols = im2col(x, kh, kw, s, p, d)
    w_out = conv_output_size(8, kw, p, s, d)
    for n, c, u, v, i, j in [(0, 0, 0, 0, 0, 0), (1, 2, 2, 1, 3, 2), (0, 1, 1, 0, 2, 3), (1, 0, 2, 1, 1, 1)]:
        assert cols[n, c * kh * kw + u * kw + v, i * w_out + j] == xp[n, c, s * i + d * u, s * j + d * v]


# ---------------------------------------------------------------- flipped-kernel identity


def test_flipped_kernel_correlation_is_true_convolution() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 20, 17, generator=gen, dtype=f64)  # 3 channels
    k = torch.randn(3, 3, 4, generator=gen, dtype=f64)  # one asymmetric kernel per channel
    true = sum(torch.from_numpy(scipy.signal.convolve2d(x[c].numpy(), k[c].numpy(), mode="valid")) for c in range(3))
    flipped = F.conv2d(x[None], k.flip(-2, -1)[None])[0, 0]
    assert rel_error(flipped, true) < 1e-12, "eq-conv-flip-identity fails"
    unflipped = F.conv2d(x[None], k[None])[0, 0]
    assert rel_error(unflipped, true) > 0.1, "without the flip the check must fail (the kernel is asymmetric)"


# ---------------------------------------------------------------- receptive field


def test_receptive_field_analytic_equals_empirical() -> None:
    result = check_receptive_fields()
    assert result == {
        "four 3x3 convs": (9, (9, 9)),
        "three 3x3 convs, stride 2": (15, (15, 15)),
        "3x3 convs, dilation 1, 2, 4": (15, (15, 15)),
        "conv-pool-conv-pool-conv": (18, (18, 18)),
        "7x7 stride 2 + 3x3 max pool stride 2": (27, (27, 27)),
    }


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("kind", ["stride1", "stride2", "dilated", "pooled", "mixed5x5"])
def test_receptive_field_families(kind: str, depth: int) -> None:
    layers: list[nn.Module] = []
    for l in range(depth):
        if kind == "stride1":
            layers += [nn.Conv2d(1, 1, 3, padding=1), nn.ReLU()]
        elif kind == "stride2":
            layers += [nn.Conv2d(1, 1, 3, stride=2, padding=1), nn.ReLU()]
        elif kind == "dilated":
            layers += [nn.Conv2d(1, 1, 3, padding=2**l, dilation=2**l), nn.ReLU()]
        elif kind == "pooled":
            layers += [nn.Conv2d(1, 1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        else:
            layers += [nn.Conv2d(1, 1, 5, stride=1 + l % 2, padding=2), nn.BatchNorm2d(1), nn.AvgPool2d(3, 1)]
    model = nn.Sequential(*layers)
    analytic = receptive_field(layer_specs(model))
    assert empirical_receptive_field(model, (1, 96, 96)).size == (analytic, analytic)


def test_receptive_field_known_values() -> None:
    assert receptive_fields([(3, 1)] * 3) == [3, 5, 7]  # VGG: three 3x3 see as far as one 7x7
    assert receptive_field([LayerSpec(7, 2), LayerSpec(3, 2)]) == 11  # ResNet stem: conv 7/2 + max pool 3/2
    assert receptive_field([LayerSpec(3, 1, 2)]) == 5  # one dilated 3x3 spans 5 pixels
    assert receptive_field([]) == 1


def test_empirical_field_needs_a_large_enough_input() -> None:
    model = nn.Sequential(*[nn.Conv2d(1, 1, 3, padding=1) for _ in range(5)])  # r = 11
    with pytest.raises(ValueError, match="border"):
        empirical_receptive_field(model, (1, 9, 9))
    assert empirical_receptive_field(model, (1, 15, 15)).size == (11, 11)


def test_positive_copy_leaves_the_model_alone() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Conv2d(2, 1, 3))
    before = [p.clone() for p in model.parameters()]
    probe = positive_copy(model)
    assert isinstance(model[1], nn.MaxPool2d) and isinstance(probe[1], nn.AvgPool2d)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all((m.weight > 0).all() for m in probe.modules() if isinstance(m, nn.Conv2d))


def test_layer_specs_refuses_unknown_layers() -> None:
    with pytest.raises(TypeError):
        layer_specs(nn.Sequential(nn.Conv2d(1, 1, 3), nn.AdaptiveAvgPool2d(1)))


# ---------------------------------------------------------------- timing helper


def test_time_call_runs_warmup_plus_repeats() -> None:
    calls = []
    seconds = time_call(lambda: calls.append(1), repeats=5, warmup=2)
    assert len(calls) == 7 and 0 <= seconds < 0.1


# ---------------------------------------------------------------- planted bugs must be caught


def test_off_by_one_output_size_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forgetting the '- 1' of eq-conv-output-size (a common slip) gives one output too many."""

    def forgot_minus_one(n: int, k: int, padding: int = 0, stride: int = 1, dilation: int = 1) -> int:
        return (n + 2 * padding - dilation * (k - 1)) // stride + 1

    monkeypatch.setattr(conv, "conv_output_size", forgot_minus_one)
    grid = check_output_size_grid()
    assert not grid.ok and len(grid.mismatches) > 100, len(grid.mismatches)
    with pytest.raises((ValueError, RuntimeError)):  # the loops/im2col shapes no longer match F.conv2d
        check_three_ways()


def test_wrong_unfold_order_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows ordered (kernel row, kernel column, channel) instead of (channel, row, column)."""
    right = conv.im2col

    def wrong_order(x, kh, kw, stride=1, padding=0, dilation=1):
        cols = right(x, kh, kw, stride, padding, dilation)
        n, _, length = cols.shape
        return cols.view(n, x.shape[1], kh * kw, length).transpose(1, 2).reshape(n, -1, length)

    monkeypatch.setattr(conv, "im2col", wrong_order)
    report = check_three_ways()
    assert not report.ok
    assert all(err < 1e-12 for name, err in report.errors.items() if name.startswith("loops")), str(report)
    assert report.errors["im2col k3 s1 p0 d1 7x6"] > 0.1, str(report)
    x, w, b = ConvSetting().tensors()
    with pytest.raises(AssertionError):
        compare_three_ways(x, w, b).assert_ok()


def test_kernel_reshaped_with_axes_swapped_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reshaping the kernel with kh and kw swapped pairs weights with the wrong pixels."""
    right = conv.conv2d_im2col
    monkeypatch.setattr(conv, "conv2d_im2col", lambda x, w, b=None, **kw: right(x, w.transpose(-2, -1), b, **kw))
    x, w, b = ConvSetting().tensors()
    assert not compare_three_ways(x, w, b).ok


def test_receptive_field_without_the_jump_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dropping the product of strides j_{l-1} from eq-conv-receptive-field: strided stacks disagree."""

    def no_jump(layers):
        r, out = 1, []
        for layer in layers:
            k, _, d = LayerSpec(*layer)
            r += d * (k - 1)
            out.append(r)
        return out

    monkeypatch.setattr(conv, "receptive_fields", no_jump)
    result = check_receptive_fields()
    wrong = {name for name, (analytic, measured) in result.items() if measured != (analytic, analytic)}
    assert wrong == {"three 3x3 convs, stride 2", "conv-pool-conv-pool-conv", "7x7 stride 2 + 3x3 max pool stride 2"}


def test_random_weights_could_hide_the_field() -> None:
    """Why positive_copy exists: a ReLU stack with an all-zero kernel has no gradient at all."""
    model = nn.Sequential(nn.Conv2d(1, 1, 3), nn.ReLU(), nn.Conv2d(1, 1, 3))
    with torch.no_grad():
        model[0].weight.zero_()
    x = torch.ones(1, 1, 9, 9, requires_grad=True)
    model(x)[0, 0, 2, 2].backward()
    assert x.grad.abs().sum() == 0
    assert empirical_receptive_field(model, (1, 9, 9)).size == (5, 5)
