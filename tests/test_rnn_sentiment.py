"""RNN lesson: attention pooling for sentiment (chapters/rnn/sentiment-attention.ipynb).

The code is dlbook/models/text_classifiers.py: the masked softmax, additive attention pooling, its
hand-derived backward pass (checked against autograd in float64, with planted bugs that must be
caught) and the BiLSTM + attention classifier's padding guarantees.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dlbook.models.text_classifiers as tc
from dlbook.gradients import compare

f64 = torch.float64


@pytest.mark.parametrize("lengths", [(6, 3, 1, 5), (4, 4), (1,)], ids=["ragged", "full", "single-word"])
def test_attention_pool_backward_matches_autograd(lengths: tuple[int, ...]) -> None:
    report = tc.check_attention_pool_backward(lengths=lengths, steps=6)
    assert set(report.errors) == {"dL/dH", "dL/dW", "dL/db", "dL/dv"}
    report.assert_ok()


def _without_coupling(d_context, H, mask, W, b, v):
    """Planted bug 1: de_t = alpha_t a_t (the softmax Jacobian's off-diagonal part forgotten)."""
    U = torch.tanh(H @ W.T + b)
    alpha = tc.masked_softmax(U @ v, mask)
    d_e = alpha * (H @ d_context.unsqueeze(-1)).squeeze(-1)
    d_z = d_e.unsqueeze(-1) * v * (1 - U**2)
    return {"H": alpha.unsqueeze(-1) * d_context.unsqueeze(1) + d_z @ W,
            "W": torch.einsum("bta,btd->ad", d_z, H), "b": d_z.sum(dim=(0, 1)),
            "v": torch.einsum("bt,bta->a", d_e, U)}


def _without_direct_path(d_context, H, mask, W, b, v):
    """Planted bug 2: dh_t misses alpha_t g, the path through the weighted sum itself."""
    grads = tc.attention_pool_backward(d_context, H, mask, W, b, v)
    alpha = tc.attention_pool(H, mask, W, b, v)[1]
    return {**grads, "H": grads["H"] - alpha.unsqueeze(-1) * d_context.unsqueeze(1)}


def test_planted_bugs_are_caught() -> None:
    no_coupling = tc.check_attention_pool_backward(backward=_without_coupling)
    assert not no_coupling.ok and min(no_coupling.errors.values()) > 1e-3
    no_direct = tc.check_attention_pool_backward(backward=_without_direct_path)
    assert no_direct.errors["dL/dH"] > 1e-2 and no_direct.errors["dL/dW"] < 1e-8


def test_masked_softmax_gives_padding_exactly_zero() -> None:
    scores = torch.randn(3, 5, dtype=f64, requires_grad=True)
    mask = tc.length_mask(torch.tensor([5, 2, 1]), 5)
    alpha = tc.masked_softmax(scores, mask)
    assert (alpha[~mask] == 0).all() and torch.allclose(alpha.sum(1), torch.ones(3, dtype=f64))
    assert alpha[2, 0].item() == 1.0
    (alpha * torch.randn(3, 5, dtype=f64)).sum().backward()
    assert (scores.grad[~mask] == 0).all(), "padded scores must get no gradient"
    # the same as a plain softmax over the valid prefix
    assert torch.allclose(alpha[1, :2], scores[1, :2].softmax(0))


@pytest.fixture
def model() -> tc.BiLSTMAttentionClassifier:
    torch.manual_seed(0)
    return tc.BiLSTMAttentionClassifier(50, 6, 5, num_classes=3).double().eval()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    lengths = torch.tensor([7, 3, 1, 5])
    ids = torch.randint(2, 50, (4, 7), generator=gen)
    ids[torch.arange(7) >= lengths[:, None]] = 0
    return ids, lengths


def test_model_shapes_and_zero_weight_on_padding(model) -> None:
    ids, lengths = _batch()
    logits, alpha = model(ids, lengths)
    assert logits.shape == (4, 3) and alpha.shape == (4, 7)
    mask = tc.length_mask(lengths, 7)
    assert (alpha[~mask] == 0).all()
    assert torch.allclose(alpha.sum(1), torch.ones(4, dtype=f64))


def test_appending_padding_changes_nothing(model) -> None:
    ids, lengths = _batch()
    with torch.no_grad():
        logits, alpha = model(ids, lengths)
        more, alpha_more = model(torch.cat([ids, torch.zeros(4, 6, dtype=torch.long)], dim=1), lengths)
    assert (logits - more).abs().max() < 1e-12
    assert torch.equal(alpha_more[:, 7:], torch.zeros(4, 6, dtype=f64))
    assert (alpha - alpha_more[:, :7]).abs().max() < 1e-12
    # what a pad token would do without the mask and packing: a different input, different logits
    with torch.no_grad():
        unmasked, _ = model(ids, torch.full((4,), 7))
    assert (unmasked - logits).abs().max() > 1e-6


def test_module_gradients_equal_hand_backward(model) -> None:
    """The trained model's pooling, through autograd, equals attention_pool_backward."""
    ids, lengths = _batch()
    labels = torch.tensor([0, 2, 1, 2])
    H = model.encode(ids, lengths).detach().requires_grad_(True)
    mask = tc.length_mask(lengths, ids.shape[1])
    pool = model.attention
    context, _ = pool(H, mask)
    logits = model.classifier(context)
    loss = F.cross_entropy(logits, labels)
    auto = dict(zip("HWbv", torch.autograd.grad(loss, [H, pool.proj.weight, pool.proj.bias, pool.v])))
    with torch.no_grad():
        g = (F.softmax(logits, -1) - F.one_hot(labels, 3).double()) / 4 @ model.classifier.weight
        manual = tc.attention_pool_backward(g, H, mask, pool.proj.weight, pool.proj.bias, pool.v)
    compare(manual, auto).assert_ok()
    assert (manual["H"][~mask] == 0).all()
