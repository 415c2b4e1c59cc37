"""Optimization lesson 3: regularisers from scratch (dlbook/scratch/regularization.py).

Inverted dropout must equal F.dropout / nn.Dropout mask for mask and preserve the expectation
(a planted unscaled dropout must fail); the label-smoothing loss and gradient must equal PyTorch's
in float64, and its optimum must sit at the logit gap of eq-reg-ls-gap; the BatchNorm1d reference
must match nn.BatchNorm1d in both modes; early stopping must pick, freeze and restore the best epoch.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dlbook.scratch.regularization as reg
from dlbook.gradients import gradcheck64, rel_error

f64 = torch.float64


# --- dropout --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, f64])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("shape", [(7,), (32, 64), (2, 3, 50)])
def test_inverted_dropout_equals_pytorch_with_the_same_seed(dtype, p, shape) -> None:
    x = torch.randn(shape, dtype=dtype)
    torch.manual_seed(11)
    reference = F.dropout(x, p, training=True)
    torch.manual_seed(11)
    module = nn.Dropout(p).train()(x)
    torch.manual_seed(11)
    ours = reg.inverted_dropout(x, p)
    assert torch.equal(ours, reference) and torch.equal(ours, module)


def test_dropout_mask_from_a_generator_is_reproducible() -> None:
    x = torch.ones(1000, dtype=f64)
    a = reg.dropout_mask(x, 0.3, torch.Generator().manual_seed(5))
    b = reg.dropout_mask(x, 0.3, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and set(a.unique().tolist()) <= {0.0, 1.0}
    assert abs(a.mean().item() - 0.7) < 0.05


def test_dropout_is_identity_in_eval_and_for_p_zero() -> None:
    x = torch.randn(10, 10)
    assert reg.inverted_dropout(x, 0.5, training=False) is x
    assert reg.inverted_dropout(x, 0.0) is x
    module = reg.DropoutScratch(0.5).eval()
    assert torch.equal(module(x), x)
    with pytest.raises(ValueError):
        reg.inverted_dropout(x, 1.0)


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_dropout_backward_equals_autograd(p) -> None:
    x = torch.randn(16, 20, dtype=f64, requires_grad=True)
    upstream = torch.randn(16, 20, dtype=f64)
    torch.manual_seed(3)
    (F.dropout(x, p, training=True) * upstream).sum().backward()
    torch.manual_seed(3)
    mask = reg.dropout_mask(x.detach(), p)
    assert rel_error(reg.dropout_backward(upstream, mask, p), x.grad) < 1e-12


def test_dropout_with_a_fixed_mask_passes_gradcheck() -> None:
    x = torch.randn(4, 5, dtype=f64, requires_grad=True)
    mask = reg.dropout_mask(x.detach(), 0.4, torch.Generator().manual_seed(0))
    assert gradcheck64(lambda t: reg.inverted_dropout(t, 0.4, mask=mask), (x,))


def _mean_z(fn, p: float, n: int = 20_000) -> float:
    xs = torch.linspace(0.5, 2.0, 10, dtype=f64)
    gen = torch.Generator().manual_seed(0)
    samples = fn(xs.repeat(n, 1), p, gen)  # n independent masks at once
    se = xs * math.sqrt(p / (1 - p)) / math.sqrt(n)
    return float(((samples.mean(0) - xs) / se).abs().max())


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_preserves_the_expectation_and_unscaled_does_not(p) -> None:
    assert _mean_z(lambda xs, q, g: reg.inverted_dropout(xs, q, generator=g), p) < 5
    assert _mean_z(lambda xs, q, g: xs * reg.dropout_mask(xs, q, g), p) > 50  # planted bug: no 1/(1-p)


def test_dropout_scratch_trains_exactly_like_nn_dropout() -> None:
    """The same seed gives the same masks, so two models train to identical weights."""
    data = torch.randn(64, 12), torch.randint(0, 3, (64,))
    weights = []
    for drop in (nn.Dropout(0.5), reg.DropoutScratch(0.5)):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), drop, nn.Linear(16, 3))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(5):
            opt.zero_grad()
            F.cross_entropy(model(data[0]), data[1]).backward()
            opt.step()
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])


# --- label smoothing ------------------------------------------------------------------------------


def test_smoothed_targets() -> None:
    q = reg.smoothed_targets(torch.tensor([2, 0]), 4, 0.2, f64)
    expected = torch.tensor([[0.05, 0.05, 0.85, 0.05], [0.85, 0.05, 0.05, 0.05]], dtype=f64)
    torch.testing.assert_close(q, expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(q.sum(1), torch.ones(2, dtype=f64))


@pytest.mark.parametrize("eps", [0.0, 0.05, 0.1, 0.3, 0.9])
def test_label_smoothing_loss_and_grad_equal_pytorch(eps) -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(50, 7, generator=gen, dtype=f64) * 4
    y = torch.randint(0, 7, (50,), generator=gen)
    assert rel_error(reg.label_smoothing_loss(logits, y, eps), F.cross_entropy(logits, y, label_smoothing=eps)) < 1e-12
    leaf = logits.clone().requires_grad_(True)
    F.cross_entropy(leaf, y, label_smoothing=eps).backward()
    assert rel_error(reg.label_smoothing_grad(logits, y, eps), leaf.grad) < 1e-12


def test_the_other_smoothing_convention_fails_the_check() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(50, 10, generator=gen, dtype=f64) * 3
    y = torch.randint(0, 10, (50,), generator=gen)
    q = torch.full_like(logits, 0.1 / 9).scatter(1, y[:, None], 0.9)  # eps/(K-1) on the wrong classes only
    other = -(q * F.log_softmax(logits, 1)).sum(1).mean()
    assert rel_error(other, F.cross_entropy(logits, y, label_smoothing=0.1)) > 1e-4


@pytest.mark.parametrize("k, eps", [(10, 0.1), (5, 0.3), (100, 0.05)])
def test_label_smoothing_optimum_is_the_predicted_logit_gap(k, eps) -> None:
    z = torch.zeros(1, k, dtype=f64, requires_grad=True)
    y = torch.tensor([0])
    opt = torch.optim.LBFGS([z], lr=1, max_iter=200, tolerance_grad=1e-14, tolerance_change=0,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = reg.label_smoothing_loss(z, y, eps)
        loss.backward()
        return loss

    opt.step(closure)
    gap = reg.logit_gaps(z.detach(), y).item()
    assert gap == pytest.approx(reg.smoothing_logit_gap(k, eps), rel=1e-6)
    assert reg.smoothing_logit_gap(k, 0.0) == math.inf


def test_logit_gaps() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 0.0, 6.0]])
    torch.testing.assert_close(reg.logit_gaps(logits, torch.tensor([0, 2])), torch.tensor([1.5, 6.0]))


# --- batch normalisation --------------------------------------------------------------------------


def test_batchnorm_reference_equals_nn_batchnorm1d_in_both_modes() -> None:
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(5, momentum=0.2, eps=1e-3).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    gamma, beta = bn.weight.detach(), bn.bias.detach()
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    for n in (2, 3, 17, 64):
        x = torch.randn(n, 5, dtype=f64) * 2 + 1
        y, mean, var = reg.batchnorm1d_reference(x, mean, var, gamma, beta, True, momentum=0.2, eps=1e-3)
        assert rel_error(y, bn.train()(x)) < 1e-12
        assert rel_error(mean, bn.running_mean) < 1e-12 and rel_error(var, bn.running_var) < 1e-12
    x = torch.randn(9, 5, dtype=f64)
    y, m2, v2 = reg.batchnorm1d_reference(x, mean, var, gamma, beta, False, momentum=0.2, eps=1e-3)
    assert rel_error(y, bn.eval()(x)) < 1e-12 and m2 is mean and v2 is var


def test_biased_variance_in_the_running_average_would_fail() -> None:
    """Planted bug: the running variance must use the unbiased batch variance (B / (B - 1))."""
    bn = nn.BatchNorm1d(3).double().train()
    x = torch.randn(4, 3, dtype=f64)
    bn(x)
    biased = 0.9 * torch.ones(3, dtype=f64) + 0.1 * x.var(0, unbiased=False)
    assert rel_error(biased, bn.running_var) > 1e-3


def test_batch_of_one_cannot_be_normalised_in_training_mode() -> None:
    bn = nn.BatchNorm1d(3)
    with pytest.raises(ValueError):
        bn.train()(torch.randn(1, 3))
    with pytest.raises(ValueError):
        reg.batchnorm1d_reference(torch.randn(1, 3), torch.zeros(3), torch.ones(3), torch.ones(3), torch.zeros(3), True)


# --- early stopping -------------------------------------------------------------------------------


def test_early_stopping_picks_freezes_and_restores_the_best_epoch() -> None:
    model = nn.Linear(1, 1, bias=False)
    stopper = reg.EarlyStopping(patience=3)
    values = [1.0, 0.8, 0.6, 0.65, 0.61, 0.7, 0.5, 0.4]  # best 0.6 at epoch 3, stop at epoch 6
    decisions = []
    for epoch, value in enumerate(values, start=1):
        with torch.no_grad():
            model.weight.fill_(float(epoch))  # the weights "of epoch e" are e
        decisions.append(stopper.step(value, model, epoch))
    assert decisions == [False] * 5 + [True] * 3
    assert (stopper.best_epoch, stopper.stopped_epoch, stopper.best) == (3, 6, 0.6)  # later 0.5, 0.4 ignored
    stopper.restore(model)
    assert model.weight.item() == 3.0


def test_early_stopping_min_delta() -> None:
    model = nn.Linear(1, 1)
    stopper = reg.EarlyStopping(patience=2, min_delta=0.05)
    for epoch, value in enumerate([1.0, 0.97, 0.96], start=1):  # improvements smaller than min_delta
        stopped = stopper.step(value, model, epoch)
    assert stopped and stopper.best_epoch == 1


def test_restore_before_any_epoch_fails() -> None:
    with pytest.raises(RuntimeError):
        reg.EarlyStopping().restore(nn.Linear(1, 1))


# --- measuring ------------------------------------------------------------------------------------


def test_weight_norm_counts_weight_matrices_only() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[2].weight.fill_(2.0)
    assert reg.weight_norm(model) == pytest.approx(math.sqrt(4 * 1 + 2 * 4))


def test_measure_on_a_known_model() -> None:
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[10.0, 0.0], [0.0, 10.0]]))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.2, 0.1]])
    y = torch.tensor([0, 1, 1, 0])
    out = reg.measure(model, (x, y))
    probs = torch.softmax(model(x), 1)
    assert out["acc"] == pytest.approx(0.75)
    assert out["confidence"] == pytest.approx(probs.max(1).values.mean().item())
    assert out["loss"] == pytest.approx(F.cross_entropy(model(x), y).item())
    assert 0 <= out["ece"] <= 1


def test_train_epochs_is_reproducible_and_records_what_it_promises() -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 10, generator=gen), torch.randint(0, 3, (200,), generator=gen)
    train, val = (x[:150], y[:150]), (x[150:], y[150:])
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), reg.DropoutScratch(0.3), nn.Linear(16, 3))
        stopper = reg.EarlyStopping(patience=1)
        curve = reg.train_epochs(model, train, val, torch.optim.Adam(model.parameters(), 1e-2), epochs=3,
                                 batch_size=50, early_stopping=stopper, device=torch.device("cpu"), progress=False)
        runs.append(curve)
    assert runs[0] == runs[1], "same seed, same data: the records must be identical"
    assert [r["epoch"] for r in runs[0]] == [1, 2, 3]
    assert "train_acc" in runs[0][-1] and "train_acc" not in runs[0][0]
    for key in ("running_loss", "val_loss", "val_acc", "val_confidence", "val_ece", "weight_norm"):
        assert all(np.isfinite(r[key]) for r in runs[0]), key
    assert runs[0][-1]["running_loss"] < runs[0][0]["running_loss"]
