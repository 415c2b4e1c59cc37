"""CNN lessons 3 and 4: the convolution backward pass, pooling, BatchNorm2d and 1x1 convolutions.

The derivations are chapters/cnn/conv-backward-derivation.md and chapters/cnn/pooling-and-batchnorm.ipynb;
the code is dlbook/scratch/conv_backward.py and dlbook/scratch/pooling.py. Each check the notebooks
run is repeated here, plus planted bugs that the checks must catch.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dlbook.scratch.conv_backward as cb
import dlbook.scratch.pooling as pool
from dlbook.gradients import compare, rel_error

f64 = torch.float64


# --- convolution backward ---------------------------------------------------------------------


def test_check_conv_backward_both_methods() -> None:
    report = cb.check_conv_backward()
    assert len(report.errors) == 3 * 2 * len(cb.DEFAULT_SETTINGS)
    report.assert_ok()


@pytest.mark.parametrize("method", ["flipped", "im2col"])
@pytest.mark.parametrize(
    "setting",
    [
        cb.ConvSetting(n=2, c_in=2, c_out=3, h=6, w=5, stride=2, padding=1),
        cb.ConvSetting(n=1, c_in=2, c_out=2, h=5, w=5, k=2, stride=1, padding=0),
    ],
    ids=lambda s: s.label(),
)
def test_gradcheck_conv(method: str, setting: cb.ConvSetting) -> None:
    assert cb.gradcheck_conv(setting, method)


def test_worked_example_flipped_kernel() -> None:
    """The notebook's 3x3 / 2x2 example: dX is the full convolution with rot180(W), not with W."""
    X = torch.tensor([[1.0, 2.0, 0.0], [3.0, 1.0, 2.0], [0.0, 1.0, 1.0]], dtype=f64)[None, None]
    W = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=f64)[None, None]
    dY = torch.tensor([[1.0, 0.0], [2.0, -1.0]], dtype=f64)[None, None]
    dx, dw, db = cb.conv2d_backward_flipped(X, W, dY)
    expected = torch.tensor([[1.0, 2.0, 0.0], [5.0, 7.0, -2.0], [6.0, 5.0, -4.0]], dtype=f64)
    torch.testing.assert_close(dx[0, 0], expected, rtol=0, atol=0)
    torch.testing.assert_close(dw[0, 0], torch.tensor([[6.0, 2.0], [2.0, 2.0]], dtype=f64), rtol=0, atol=0)
    assert db.item() == 2.0
    unflipped = F.conv2d(F.pad(dY, (1, 1, 1, 1)), W)[0, 0]
    assert rel_error(unflipped, expected) > 0.1


def test_dilate_and_flip_shapes() -> None:
    dy = torch.arange(6.0).reshape(1, 1, 2, 3)
    d = cb.dilate(dy, 2)
    assert d.shape == (1, 1, 3, 5)
    assert torch.equal(d[0, 0, ::2, ::2], dy[0, 0]) and d[0, 0, 1].abs().sum() == 0
    assert cb.dilate(dy, 1) is dy
    w = torch.randn(4, 3, 2, 5)
    wf = cb.flip_kernel(w)
    assert wf.shape == (3, 4, 2, 5) and torch.equal(wf[1, 2, 0, 0], w[2, 1, 1, 4])


def test_library_functions_agree() -> None:
    """torch.nn.grad.conv2d_input/weight and conv_transpose2d (with output_padding r) are the same map."""
    setting = cb.ConvSetting(c_in=2, c_out=3, h=10, w=9, stride=2, padding=1)
    x, w, _, dy = cb.random_conv_problem(setting, seed=7)
    dx, dw, _ = cb.conv2d_backward_flipped(x, w, dy, 2, 1)
    r = ((10 + 2 - 3) % 2, (9 + 2 - 3) % 2)
    compare(
        {"a": dx, "b": dx, "c": dw},
        {
            "a": torch.nn.grad.conv2d_input(x.shape, w, dy, stride=2, padding=1),
            "b": F.conv_transpose2d(dy, w, stride=2, padding=1, output_padding=r),
            "c": torch.nn.grad.conv2d_weight(x, w.shape, dy, stride=2, padding=1),
        },
    ).assert_ok()


def test_coverage_checkerboard() -> None:
    """All-ones kernel and dy: stride 1 covers the interior evenly (9), stride 2 unevenly (1, 2, 4)."""

    def cover(stride: int) -> torch.Tensor:
        out = cb.conv_output_size(11, 3, padding=1, stride=stride)
        return cb.conv2d_backward(
            torch.zeros(1, 1, 11, 11, dtype=f64),
            torch.ones(1, 1, 3, 3, dtype=f64),
            torch.ones(1, 1, out, out, dtype=f64),
            stride,
            1,
        )[0][0, 0, 1:-1, 1:-1]

    assert set(cover(1).int().flatten().tolist()) == {9}
    assert set(cover(2).int().flatten().tolist()) == {1, 2, 4}


def test_mnist_batch_matches_nn_conv2d(mirror) -> None:
    from dlbook.data import load_mnist

    images, labels = (t[:32] for t in load_mnist("quick").train.tensors)
    images = images.double()
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 4, 5, stride=2, padding=2).double()
    head = nn.Linear(4 * 14 * 14, 10).double()
    x_leaf = images.clone().requires_grad_(True)
    out = conv(x_leaf)
    out.retain_grad()
    F.cross_entropy(head(torch.relu(out).flatten(1)), labels).backward()
    for method in ("flipped", "im2col"):
        dx, dw, db = cb.conv2d_backward(images, conv.weight.detach(), out.grad, 2, 2, method)
        compare(
            {"dx": dx, "dw": dw, "db": db}, {"dx": x_leaf.grad, "dw": conv.weight.grad, "db": conv.bias.grad}
        ).assert_ok()


def test_manual_conv2d_trains_like_nn_conv2d() -> None:
    """Ten SGD steps with ManualConv2d and with nn.Conv2d from the same start: same losses (float64)."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 2, 9, 9, generator=gen, dtype=f64), torch.randint(0, 3, (40,), generator=gen)
    losses = {}
    for cls in (cb.ManualConv2d, nn.Conv2d):
        torch.manual_seed(0)
        model = nn.Sequential(
            cls(2, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3)
        ).double()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        losses[cls] = []
        for i in range(10):
            opt.zero_grad()
            loss = F.cross_entropy(model(x[i * 4 : i * 4 + 4]), y[i * 4 : i * 4 + 4])
            loss.backward()
            opt.step()
            losses[cls].append(loss.item())
    assert max(abs(a - b) for a, b in zip(*losses.values())) < 1e-12
    with pytest.raises(ValueError):
        cb.ManualConv2d(2, 4, 3, bias=False)


def test_unknown_method_rejected() -> None:
    x, w, _, dy = cb.random_conv_problem(cb.ConvSetting())
    with pytest.raises(ValueError):
        cb.conv2d_backward(x, w, dy, method="fft")


def test_non_flipped_kernel_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug: the input gradient uses W instead of rot180(W) (channels still transposed)."""
    monkeypatch.setattr(cb, "flip_kernel", lambda w: w.transpose(0, 1))
    report = cb.check_conv_backward()
    assert not report.ok
    flipped_dx = [err for name, err in report.errors.items() if name.startswith("dx flipped")]
    assert min(flipped_dx) > 0.1, str(report)
    assert all(err < 1e-8 for name, err in report.errors.items() if not name.startswith("dx flipped")), (
        "only the flipped-kernel dx should be affected"
    )
    with pytest.raises(AssertionError):
        report.assert_ok()
    with pytest.raises(RuntimeError):  # torch.autograd.GradcheckError
        cb.gradcheck_conv(method="flipped")


def test_missing_dilation_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug: forgetting to dilate dy for stride > 1 breaks dx and dw, but not stride-1 settings."""
    monkeypatch.setattr(cb, "dilate", lambda dy, stride: dy)
    report = cb.check_conv_backward(methods=("flipped",))
    for name, err in report.errors.items():
        strided = "s=1 " not in name and not name.startswith("db")
        assert (err > 1e-3) == strided, f"{name}: {err:.1e}\n{report}"


def test_col2im_must_sum_overlaps() -> None:
    """Planted bug: scattering column gradients by assignment (last write wins) instead of adding them."""
    setting = cb.ConvSetting(n=1, c_in=1, c_out=2, h=6, w=6, k=3, stride=1, padding=0)
    x, w, b, dy = cb.random_conv_problem(setting)
    auto_dx = cb.autograd_conv_grads(x, w, b, dy, 1, 0)[0]
    dcols = w.reshape(2, -1).T @ dy.reshape(1, 2, -1)  # (1, 9, 16)
    wrong = torch.zeros(6, 6, dtype=f64)
    for col in range(16):
        u, v = divmod(col, 4)
        wrong[u : u + 3, v : v + 3] = dcols[0, :, col].reshape(3, 3)  # assignment: overlaps lost
    assert rel_error(wrong[None, None], auto_dx) > 0.1
    right = F.fold(dcols, (6, 6), 3)
    assert rel_error(right, auto_dx) < 1e-12


# --- pooling ----------------------------------------------------------------------------------


@pytest.mark.parametrize("check", [pool.check_max_pool, pool.check_avg_pool, pool.check_adaptive_avg_pool])
def test_pooling_matches_pytorch(check) -> None:
    check().assert_ok()


def test_max_pool_ties_first_maximum() -> None:
    x = torch.tensor(
        [[[[1.0, 3.0, 3.0, 0.0], [3.0, 2.0, 1.0, 1.0], [0.0, 0.0, 5.0, 5.0], [0.0, 0.0, 5.0, 5.0]]]]
    )
    y, idx = pool.max_pool2d_forward(x, 2)
    assert idx.flatten().tolist() == [1, 2, 8, 10]  # row-major first maximum of each window
    dx = pool.max_pool2d_backward(torch.ones_like(y), idx, (4, 4))
    assert dx.sum() == 4 and dx[0, 0, 0, 1] == 1 and dx[0, 0, 1, 0] == 0


def test_max_pool_overlapping_windows_add_gradients() -> None:
    x = torch.zeros(1, 1, 5, 5, dtype=f64)
    x[0, 0, 2, 2] = 1.0  # the max of all four 3x3 stride-2 windows
    y, idx = pool.max_pool2d_forward(x, 3, 2)
    dx = pool.max_pool2d_backward(torch.ones_like(y), idx, (5, 5))
    assert dx[0, 0, 2, 2] == 4


def test_max_pool_backward_by_assignment_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug: scatter_ (assignment) instead of scatter_add_ loses gradient where windows overlap."""

    def assigned(dy, indices, input_hw):
        n, c = dy.shape[:2]
        dx = dy.new_zeros(n * c, input_hw[0] * input_hw[1])
        dx.scatter_(1, indices.reshape(n * c, -1), dy.reshape(n * c, -1))
        return dx.reshape(n, c, *input_hw)

    monkeypatch.setattr(pool, "max_pool2d_backward", assigned)
    report = pool.check_max_pool(settings=((3, 1, 1), (2, 2, 0)))
    assert report.errors["dx k=3 s=1 p=1"] > 1e-3, str(report)
    assert report.errors["dx k=2 s=2 p=0"] < 1e-12, "non-overlapping windows are unaffected"


@pytest.mark.parametrize(("h_in", "h_out"), [(7, 3), (10, 4), (5, 7), (28, 5), (13, 1), (8, 4)])
def test_adaptive_bins_rule(h_in: int, h_out: int) -> None:
    bins = pool.adaptive_bins(h_in, h_out)
    assert bins == [(math.floor(i * h_in / h_out), math.ceil((i + 1) * h_in / h_out)) for i in range(h_out)]
    assert bins[0][0] == 0 and bins[-1][1] == h_in
    assert all(a < b for a, b in bins), "every bin is non-empty"
    assert all(nxt[0] <= prev[1] for prev, nxt in zip(bins, bins[1:])), "no input row is skipped"
    if h_out <= h_in:
        assert all(nxt[0] >= prev[1] - 1 for prev, nxt in zip(bins, bins[1:])), "neighbours overlap by <= 1"
    x = torch.randn(1, 1, h_in, 3, dtype=f64)
    torch.testing.assert_close(
        pool.adaptive_avg_pool2d_forward(x, (h_out, 1)), F.adaptive_avg_pool2d(x, (h_out, 1))
    )


# --- BatchNorm2d ------------------------------------------------------------------------------


def test_check_batchnorm2d() -> None:
    pool.check_batchnorm2d().assert_ok()
    pool.check_batchnorm2d(shape=(2, 5, 1, 1), eps=1e-3, seed=3).assert_ok()  # M = 2: the smallest batch


def test_batchnorm2d_gradcheck() -> None:
    """Finite differences against the hand-written backward, through a torch.autograd.Function."""
    from dlbook.gradients import gradcheck64

    class BN(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, gamma, beta):
            y, cache = pool.batchnorm2d_forward(x, gamma, beta)
            ctx.cache = cache
            return y

        @staticmethod
        def backward(ctx, dy):
            return pool.batchnorm2d_backward(dy, ctx.cache)

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 3, 2, generator=gen, dtype=f64)
    assert gradcheck64(
        BN.apply, [x, torch.rand(2, generator=gen, dtype=f64) + 0.5, torch.randn(2, generator=gen, dtype=f64)]
    )


def test_batchnorm2d_running_stats_and_eval_mode() -> None:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3, momentum=0.2).double()
    gamma, beta = bn.weight.detach(), bn.bias.detach()
    run_mean, run_var = torch.zeros(3, dtype=f64), torch.ones(3, dtype=f64)
    gen = torch.Generator().manual_seed(1)
    bn.train()
    for _ in range(5):
        x = 2 * torch.randn(4, 3, 5, 5, generator=gen, dtype=f64) + 1
        y = bn(x)
        mine, cache = pool.batchnorm2d_forward(x, gamma, beta, bn.eps)
        run_mean, run_var = pool.batchnorm2d_running_update(run_mean, run_var, cache, 0.2)
        assert rel_error(mine, y) < 1e-12
    assert rel_error(run_mean, bn.running_mean) < 1e-12 and rel_error(run_var, bn.running_var) < 1e-12
    bn.eval()
    with torch.no_grad():
        y_eval = bn(x)
    assert rel_error(pool.batchnorm2d_eval(x, run_mean, run_var, gamma, beta, bn.eps), y_eval) < 1e-12
    assert rel_error(y_eval, pool.batchnorm2d_forward(x, gamma, beta, bn.eps)[0]) > 1e-3


def test_biased_running_variance_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug: the running variance updated with the biased batch variance (no M/(M-1))."""

    def biased(running_mean, running_var, cache, momentum=0.1):
        return (
            (1 - momentum) * running_mean + momentum * cache.mean,
            (1 - momentum) * running_var + momentum * cache.var,
        )

    monkeypatch.setattr(pool, "batchnorm2d_running_update", biased)
    report = pool.check_batchnorm2d(shape=(2, 3, 2, 2))  # M = 8: M/(M-1) is far from 1
    assert not report.ok and report.errors["running_var"] > 1e-3, str(report)
    assert report.errors["dx"] < 1e-12


def test_batchnorm_backward_without_mean_terms_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug: treating mu and sigma as constants, dx = gamma * dy / sigma."""

    def naive(dy, cache):
        dx = (cache.gamma * cache.inv_std).reshape(1, -1, 1, 1) * dy
        return dx, (dy * cache.xhat).sum(dim=(0, 2, 3)), dy.sum(dim=(0, 2, 3))

    monkeypatch.setattr(pool, "batchnorm2d_backward", naive)
    report = pool.check_batchnorm2d()
    assert report.errors["dx"] > 1e-2 and report.errors["dgamma"] < 1e-12, str(report)


# --- 1x1 convolutions -------------------------------------------------------------------------


def test_conv1x1_equals_linear_over_channels() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 4, 1).double()
    linear = nn.Linear(6, 4).double()
    with torch.no_grad():
        linear.weight.copy_(conv.weight.flatten(1))
        linear.bias.copy_(conv.bias)
    x = torch.randn(3, 6, 5, 7, dtype=f64)
    expected = conv(x)
    compare(
        {
            "linear": linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2),
            "helper": pool.conv1x1_as_linear(x, conv.weight, conv.bias),
        },
        {"linear": expected, "helper": expected},
    ).assert_ok()
    assert rel_error(pool.conv1x1_as_linear(x, conv.weight), expected) > 1e-3, "the bias is part of the layer"
    square = nn.Conv2d(6, 6, 1).double()  # planted bug: W^T instead of W (same shape, different map)
    wrong = F.linear(x.permute(0, 2, 3, 1), square.weight.flatten(1).T, square.bias).permute(0, 3, 1, 2)
    assert rel_error(wrong, square(x)) > 1e-3


def test_inception_bottleneck_costs() -> None:
    direct = nn.Conv2d(192, 32, 5, padding=2)
    reduce, conv5 = nn.Conv2d(192, 16, 1), nn.Conv2d(16, 32, 5, padding=2)
    assert pool.conv_cost(192, 32, 5, (28, 28)) == (153_632, 120_422_400)
    assert pool.conv_cost(192, 16, 1, (28, 28))[0] + pool.conv_cost(16, 32, 5, (28, 28))[0] == 15_920
    assert pool.conv_cost(192, 16, 1, (28, 28))[1] + pool.conv_cost(16, 32, 5, (28, 28))[1] == 12_443_648
    assert sum(p.numel() for p in direct.parameters()) == 153_632
    assert sum(p.numel() for m in (reduce, conv5) for p in m.parameters()) == 15_920
    assert pool.conv_cost(3, 8, 3, (4, 4), bias=False) == (216, 3456)
