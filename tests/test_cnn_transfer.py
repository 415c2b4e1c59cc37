"""Proofs and unit tests of dlbook.transfer (lesson chapters/cnn/transfer-learning.ipynb).

Each float64 proof also runs on a planted bug, which the same comparison must reject.
"""

from __future__ import annotations

import copy
import hashlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from dlbook.gradients import compare, rel_error
from dlbook.transfer import (
    RESNET18_FILE,
    FrozenBatchNorm,
    MissingWeightsError,
    cached_state,
    check_hash_prefix,
    config_key,
    count_trainable,
    discriminative_param_groups,
    extract_features,
    fold_batchnorm,
    freeze,
    gray_conv_from_rgb,
    labelled_subset,
    load_resnet18,
    sgd_step_by_hand,
    softmax_regression_grad,
    stratified_parts,
)

f64 = torch.float64


def small_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Flatten(), nn.Linear(6 * 2 * 2, 3)),
    )


# --- eq-transfer-probe-grad -------------------------------------------------------------------------


def _probe_problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 7, generator=gen, dtype=f64)
    y = torch.randint(0, 5, (40,), generator=gen)
    w = (0.5 * torch.randn(5, 7, generator=gen, dtype=f64)).requires_grad_()
    b = (0.5 * torch.randn(5, generator=gen, dtype=f64)).requires_grad_()
    F.cross_entropy(x @ w.T + b, y).backward()
    return x, y, w, b


def test_probe_gradient_matches_autograd():
    x, y, w, b = _probe_problem()
    dw, db = softmax_regression_grad(x, y, w.detach(), b.detach())
    compare({"dW": dw, "db": db}, {"dW": w.grad, "db": b.grad}).assert_ok()


def test_probe_gradient_planted_bug_is_rejected():
    x, y, w, b = _probe_problem()
    probs = torch.softmax(x @ w.detach().T + b.detach(), dim=1)
    delta = probs - F.one_hot(y, 5).to(f64)  # bug: forgets the 1/N of the mean
    assert not compare({"dW": delta.T @ x}, {"dW": w.grad}).ok


# --- eq-transfer-bn-fold ----------------------------------------------------------------------------


def _conv_bn(bias: bool = True):
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 5, 3, padding=1, stride=2, bias=bias).double()
    bn = nn.BatchNorm2d(5).double()
    with torch.no_grad():  # non-trivial statistics and affine parameters
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    return conv.eval(), bn.eval()


@pytest.mark.parametrize("bias", [True, False])
def test_folded_conv_equals_conv_then_eval_batchnorm(bias):
    conv, bn = _conv_bn(bias)
    x = torch.randn(4, 3, 9, 9, dtype=f64)
    with torch.no_grad():
        reference = bn(conv(x))
        assert rel_error(fold_batchnorm(conv, bn)(x), reference) < 1e-8
        assert rel_error(fold_batchnorm(conv, bn)(x), fuse_conv_bn_eval(conv, bn)(x)) < 1e-8


def test_folding_planted_bug_is_rejected():
    conv, bn = _conv_bn()
    x = torch.randn(4, 3, 9, 9, dtype=f64)
    buggy = fold_batchnorm(conv, bn)
    with torch.no_grad():
        buggy.bias.copy_(bn.bias - bn.running_mean)  # bug: the shift is not scaled by gamma / sqrt(var + eps)
        assert rel_error(buggy(x), bn(conv(x))) > 1e-3


# --- eq-transfer-disc-lr ----------------------------------------------------------------------------


def _one_step(hand: bool, factor: float = 2.6, lr: float = 0.1) -> tuple[list[dict], torch.Tensor]:
    net = small_net().double()
    groups = discriminative_param_groups(list(net), lr=lr, factor=factor)
    x = torch.randn(8, 1, 8, 8, dtype=f64, generator=torch.Generator().manual_seed(3))
    F.cross_entropy(net(x), torch.arange(8) % 3).backward()
    if hand:
        sgd_step_by_hand(groups)
    else:
        torch.optim.SGD(groups).step()
    return groups, torch.cat([p.detach().flatten() for p in net.parameters()])


def test_parameter_group_sgd_equals_hand_update():
    groups, with_torch = _one_step(hand=False)
    assert [g["lr"] for g in groups] == pytest.approx([0.1 / 2.6**2, 0.1 / 2.6, 0.1])
    _, by_hand = _one_step(hand=True)
    assert rel_error(with_torch, by_hand) < 1e-12


def test_parameter_group_planted_bug_is_rejected():
    _, with_torch = _one_step(hand=False)
    groups, _ = _one_step(hand=True, lr=0.0)  # same gradients, parameters still at the start
    with torch.no_grad():
        for g in groups:
            for p in g["params"]:
                p.sub_(0.1 * p.grad)  # bug: one learning rate for every group
    buggy = torch.cat([p.detach().flatten() for g in groups for p in g["params"]])
    assert rel_error(buggy, with_torch) > 1e-6


def test_groups_skip_frozen_blocks_and_factor_one_is_uniform():
    net = small_net()
    freeze(net[0])
    groups = discriminative_param_groups(list(net), lr=0.01, factor=1.0)
    assert len(groups) == 2 and all(g["lr"] == 0.01 for g in groups)
    with pytest.raises(ValueError):
        discriminative_param_groups(list(net), lr=0.01, factor=0.0)


# --- eq-transfer-gray -------------------------------------------------------------------------------


def test_gray_conv_equals_rgb_conv_on_repeated_gray():
    rgb = nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=True).double()
    g = torch.randn(2, 1, 20, 20, dtype=f64)
    with torch.no_grad():
        assert rel_error(gray_conv_from_rgb(rgb)(g), rgb(g.repeat(1, 3, 1, 1))) < 1e-8


def test_gray_conv_planted_bug_is_rejected():
    rgb = nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False).double()
    g = torch.randn(2, 1, 20, 20, dtype=f64)
    buggy = gray_conv_from_rgb(rgb)
    with torch.no_grad():
        buggy.weight.copy_(rgb.weight.mean(dim=1, keepdim=True))  # bug: mean instead of sum
        assert rel_error(buggy(g), rgb(g.repeat(1, 3, 1, 1))) > 1e-3


# --- freezing and frozen BatchNorm --------------------------------------------------------------------


def test_freeze_counts_and_stops_updates():
    net = small_net()
    total = sum(p.numel() for p in net.parameters())
    frozen = freeze(net[:2])
    assert count_trainable(net) == total - frozen
    before = copy.deepcopy(net.state_dict())
    model = FrozenBatchNorm(net).train()
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    F.cross_entropy(model(torch.randn(8, 1, 8, 8)), torch.arange(8) % 3).backward()
    opt.step()
    after = net.state_dict()
    for key in before:  # weights AND running statistics of the frozen blocks are untouched
        if key.startswith(("0.", "1.")):
            assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["2.1.weight"], after["2.1.weight"])


def test_plain_train_mode_changes_frozen_batchnorm_statistics():
    """Why FrozenBatchNorm exists: requires_grad=False alone leaves BatchNorm updating its statistics."""
    net = small_net()
    freeze(net[:2])
    before = net[0][1].running_mean.clone()
    net.train()(torch.randn(8, 1, 8, 8))
    assert not torch.equal(before, net[0][1].running_mean)


def test_all_bn_keeps_every_batchnorm_in_eval_and_eval_still_works():
    net = small_net()
    model = FrozenBatchNorm(net, all_bn=True).train()
    assert not any(m.training for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    assert net[2][1].training  # other layers stay in training mode
    model.eval()
    assert not any(m.training for m in net.modules())


def test_extract_features_restores_mode_and_batches():
    net = small_net()
    net.train()
    x = torch.randn(10, 1, 8, 8)
    out = extract_features(net[:2], x, batch_size=3)
    assert out.shape == (10, 6, 2, 2) and net.training
    with torch.no_grad():
        assert torch.allclose(out, net[:2].eval()(x), atol=1e-6)


# --- data helpers and the cache -------------------------------------------------------------------------


def test_labelled_subset_is_balanced_seeded_and_checked():
    labels = torch.arange(100) % 4
    a, b = labelled_subset(labels, 5, seed=0), labelled_subset(labels, 5, seed=0)
    assert torch.equal(a, b) and torch.bincount(labels[a]).tolist() == [5, 5, 5, 5]
    assert not torch.equal(a, labelled_subset(labels, 5, seed=1))
    with pytest.raises(ValueError):
        labelled_subset(labels, 26, seed=0)


def test_stratified_parts_are_disjoint_and_cover():
    labels = torch.arange(1000) % 10
    test, val, rest = stratified_parts(labels, [300, 100], seed=0)
    assert (len(test), len(val), len(rest)) == (300, 100, 600)
    joined = torch.cat([test, val, rest])
    assert len(joined.unique()) == 1000
    assert torch.bincount(labels[test]).tolist() == [30] * 10


def test_cached_state_trains_once_per_config(tmp_path, monkeypatch):
    monkeypatch.setenv("DLBOOK_DATA_DIR", str(tmp_path))
    calls = []

    def train(model):
        calls.append(1)
        with torch.no_grad():
            model.weight.fill_(3.0)

    model, loaded = cached_state(nn.Linear(2, 2), {"a": 1}, train)
    assert not loaded and len(calls) == 1
    model, loaded = cached_state(nn.Linear(2, 2), {"a": 1}, train)
    assert loaded and len(calls) == 1 and torch.all(model.weight == 3.0)
    _, loaded = cached_state(nn.Linear(2, 2), {"a": 2}, train)
    assert not loaded and len(calls) == 2
    assert config_key({"a": 1, "b": 2}) == config_key({"b": 2, "a": 1})


# --- the ResNet-18 loader, offline on a generated state dict -------------------------------------------------


def _generated_weights(folder, corrupt: bool = False):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    state = resnet18(weights=None).state_dict()
    tmp = folder / "weights.pth"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    prefix = ("0" if digest[0] != "0" else "1") + digest[1:8] if corrupt else digest[:8]
    path = folder / f"resnet18-{prefix}.pth"
    tmp.rename(path)
    return path, state


def test_load_resnet18_from_generated_state_dict(tmp_path):
    path, state = _generated_weights(tmp_path)
    model = load_resnet18(path, num_classes=10)
    assert model.conv1.in_channels == 1 and model.fc.out_features == 10
    assert torch.equal(model.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(model.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    out = model.eval()(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, 10)
    rgb = load_resnet18(path, gray=False)
    assert rgb.conv1.in_channels == 3
    with torch.no_grad():  # eq-transfer-gray on the whole network
        g = torch.randn(2, 1, 64, 64)
        rgb.fc = model.fc
        assert rel_error(model(g), rgb.eval()(g.repeat(1, 3, 1, 1))) < 1e-4


def test_load_resnet18_rejects_a_wrong_hash(tmp_path):
    path, _ = _generated_weights(tmp_path, corrupt=True)
    with pytest.raises(ValueError, match="does not start with"):
        load_resnet18(path)
    with pytest.raises(ValueError, match="no '-<sha256 prefix>.pth'"):
        check_hash_prefix(tmp_path / "weights.pth")


def test_missing_resnet18_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("DLBOOK_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("DLBOOK_RESNET18", raising=False)
    with pytest.raises(MissingWeightsError) as info:
        load_resnet18()
    message = str(info.value)
    assert RESNET18_FILE in message and "download" in message and "DLBOOK_RESNET18" in message
