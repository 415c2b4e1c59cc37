"""Fusion lesson: self-attention and the Transformer encoder (chapters/fusion/self-attention.ipynb).

The code is dlbook/scratch/attention.py: scaled dot-product attention with masks, its hand-derived
backward pass (against autograd and finite differences in float64, with planted bugs that must be
caught), multi-head attention and the encoder layer loaded from PyTorch's modules and shown equal,
the sinusoidal encoding's shift property and the permutation equivariance of position-free attention.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dlbook.scratch.attention as att
from dlbook.gradients import gradcheck64

f64 = torch.float64
MASKS = ["none", "padding", "causal", "padding+causal"]


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("mask", MASKS)
def test_sdpa_equals_torch(mask: str) -> None:
    q, k, v, attn_mask, is_causal = att.random_attention_problem(mask, n_queries=6, n_keys=6)
    out, weights = att.scaled_dot_product_attention(q, k, v, attn_mask, is_causal)
    if attn_mask is not None and is_causal:  # torch forbids both at once: fold the causal mask in
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask & att.causal_mask(6))
    else:
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
    assert (out - ref).abs().max() < 1e-12
    assert torch.allclose(weights.sum(-1), torch.ones((), dtype=f64))
    if attn_mask is not None:
        assert (weights.masked_select(~attn_mask.expand_as(weights)) == 0).all(), "masked keys need weight 0.0"


def test_float_mask_and_rectangular_causal() -> None:
    q, k, v, _, _ = att.random_attention_problem("none", n_queries=4, n_keys=7)
    bias = torch.randn(4, 7, dtype=f64, generator=torch.Generator().manual_seed(3))
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    assert (att.scaled_dot_product_attention(q, k, v, bias)[0] - ref).abs().max() < 1e-12
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # top-left aligned for L != S
    assert (att.scaled_dot_product_attention(q, k, v, is_causal=True)[0] - ref).abs().max() < 1e-12
    assert torch.equal(att.causal_mask(2, 3), torch.tensor([[True, False, False], [True, True, False]]))


def test_scale_argument() -> None:
    q, k, v, _, _ = att.random_attention_problem("none")
    mine = att.scaled_dot_product_attention(q, k, v, scale=0.3)[0]
    assert (mine - F.scaled_dot_product_attention(q, k, v, scale=0.3)).abs().max() < 1e-12
    default = att.scaled_dot_product_attention(q, k, v)[0]
    assert (default - att.scaled_dot_product_attention(q, k, v, scale=1 / math.sqrt(q.shape[-1]))[0]).abs().max() == 0


# --------------------------------------------------------------------------- backward


@pytest.mark.parametrize("mask", MASKS)
def test_sdpa_backward_matches_autograd(mask: str) -> None:
    report = att.check_sdpa_backward(mask=mask, seed=4)
    assert set(report.errors) == {"dL/dQ", "dL/dK", "dL/dV"}
    report.assert_ok()


@pytest.mark.parametrize("mask", ["none", "padding+causal"])
def test_sdpa_backward_gradcheck(mask: str) -> None:
    q, k, v, attn_mask, is_causal = att.random_attention_problem(mask, batch=2, n_queries=4, n_keys=5, seed=1)
    assert gradcheck64(lambda q_, k_, v_: att.SDPAFunction.apply(q_, k_, v_, attn_mask, is_causal), [q, k, v])


def test_score_gradient_rows_sum_to_zero_and_vanish_where_masked() -> None:
    q, k, v, attn_mask, _ = att.random_attention_problem("padding", seed=2)
    G = torch.randn(q.shape[:-1] + v.shape[-1:], dtype=f64, generator=torch.Generator().manual_seed(0))
    P = att.attention_weights(q, k, attn_mask)
    d_p = G @ v.transpose(-2, -1)
    d_s = P * (d_p - (P * d_p).sum(-1, keepdim=True))
    assert d_s.sum(-1).abs().max() < 1e-12
    assert (d_s.masked_select(~attn_mask.expand_as(d_s)) == 0).all()
    grads = att.sdpa_backward(G, q, k, v, attn_mask)
    assert (grads["K"].masked_select(~attn_mask[:, :, 0, :, None].expand_as(k)) == 0).all(), "padded keys got gradient"


def _backward_without_scale_in_dk(d_out, q, k, v, attn_mask=None, is_causal=False):
    """Planted bug 1: dK = dS^T Q, the 1/sqrt(d_k) forgotten."""
    grads = att.sdpa_backward(d_out, q, k, v, attn_mask, is_causal)
    return {**grads, "K": grads["K"] * math.sqrt(q.shape[-1])}


def _backward_diagonal_jacobian(d_out, q, k, v, attn_mask=None, is_causal=False):
    """Planted bug 2: dS = P * dP, the softmax Jacobian's -p p^T part forgotten."""
    scale = 1 / math.sqrt(q.shape[-1])
    P = att.attention_weights(q, k, attn_mask, is_causal)
    d_s = P * (d_out @ v.transpose(-2, -1))
    return {"Q": scale * d_s @ k, "K": scale * d_s.transpose(-2, -1) @ q, "V": P.transpose(-2, -1) @ d_out}


def test_planted_bugs_are_caught() -> None:
    no_scale = att.check_sdpa_backward(_backward_without_scale_in_dk)
    assert not no_scale.ok and no_scale.errors["dL/dK"] > 0.4 and no_scale.errors["dL/dQ"] < 1e-8
    diagonal = att.check_sdpa_backward(_backward_diagonal_jacobian, mask="causal")
    assert diagonal.errors["dL/dQ"] > 1e-2 and diagonal.errors["dL/dK"] > 1e-2 and diagonal.errors["dL/dV"] < 1e-8


# --------------------------------------------------------------------------- multi-head attention


@pytest.fixture
def mha() -> nn.MultiheadAttention:
    torch.manual_seed(0)
    return nn.MultiheadAttention(12, 3, batch_first=True).double().eval()


def _lengths_mask(lengths: list[int], steps: int) -> torch.Tensor:
    return torch.arange(steps) >= torch.tensor(lengths)[:, None]  # True at padding, nn.MultiheadAttention style


def test_multihead_equals_torch_self_and_cross(mha) -> None:
    mine = att.MultiHeadAttention.from_torch(mha)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, 12, dtype=f64, generator=gen)
    memory = torch.randn(3, 7, 12, dtype=f64, generator=gen)
    for query, kv, kpm in ((x, x, _lengths_mask([5, 2, 4], 5)), (x, memory, _lengths_mask([7, 3, 1], 7))):
        ref, ref_w = mha(query, kv, kv, key_padding_mask=kpm, average_attn_weights=False)
        out, weights = mine(query, kv, kv, key_padding_mask=kpm)
        assert weights.shape == (3, 3, 5, kv.shape[1])
        assert (out - ref).abs().max() < 1e-12 and (weights - ref_w).abs().max() < 1e-12
        assert (weights.masked_select(kpm[:, None, None, :].expand_as(weights)) == 0).all()
    causal_hidden = torch.ones(5, 5, dtype=torch.bool).triu(1)  # True = hidden, the module convention
    ref, ref_w = mha(x, x, x, attn_mask=causal_hidden, average_attn_weights=False)
    out, weights = mine(x, x, x, attn_mask=causal_hidden)
    assert (out - ref).abs().max() < 1e-12 and (weights - ref_w).abs().max() < 1e-12
    assert (mine(x, x, x, is_causal=True)[0] - ref).abs().max() < 1e-12


def test_head_split_and_merge_are_inverse() -> None:
    x = torch.arange(2 * 3 * 8, dtype=f64).view(2, 3, 8)
    heads = att.split_heads(x, 4)
    assert heads.shape == (2, 4, 3, 2) and torch.equal(heads[0, 1, 0], x[0, 0, 2:4])
    assert torch.equal(att.merge_heads(heads), x)
    with pytest.raises(ValueError, match="divisible"):
        att.MultiHeadAttention(10, 3)


# --------------------------------------------------------------------------- encoder layer


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_layer_equals_torch(norm_first: bool, activation: str) -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(12, 4, 24, dropout=0.1, activation=activation, batch_first=True,
                                       norm_first=norm_first).double().eval()
    mine = att.EncoderLayer.from_torch(layer).eval()
    assert mine.norm_first == norm_first and mine.activation == activation
    x = torch.randn(3, 6, 12, dtype=f64, generator=torch.Generator().manual_seed(2))
    kpm = _lengths_mask([6, 4, 1], 6)
    with torch.no_grad():
        out, weights = mine(x, key_padding_mask=kpm)
        fast = layer(x, src_key_padding_mask=kpm)  # eval + no_grad: PyTorch's fused fast path
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            slow = layer(x, src_key_padding_mask=kpm)
        finally:
            torch.backends.mha.set_fastpath_enabled(True)
    assert (out - slow).abs().max() < 1e-12 and (out - fast).abs().max() < 1e-12
    assert weights.shape == (3, 4, 6, 6)


def test_layer_norm_equals_torch() -> None:
    x = torch.randn(4, 9, dtype=f64)
    w, b = torch.randn(9, dtype=f64), torch.randn(9, dtype=f64)
    assert (att.layer_norm(x, w, b) - F.layer_norm(x, (9,), w, b)).abs().max() < 1e-12


# --------------------------------------------------------------------------- positions


def test_sinusoidal_values_and_shift_rotation() -> None:
    pe = att.sinusoidal_positional_encoding(50, 16, dtype=f64)
    assert pe.shape == (50, 16)
    assert torch.equal(pe[0, 0::2], torch.zeros(8, dtype=f64)) and torch.equal(pe[0, 1::2], torch.ones(8, dtype=f64))
    assert abs(pe[3, 2].item() - math.sin(3 / 10000 ** (2 / 16))) < 1e-15
    for shift in (1, 5, 17):
        R = att.pe_shift_matrix(shift, 16)
        assert (pe[shift:] - pe[:-shift] @ R.T).abs().max() < 1e-12, f"PE(p+{shift}) != R PE(p)"
        assert (R @ R.T - torch.eye(16, dtype=f64)).abs().max() < 1e-12  # a rotation
    with pytest.raises(ValueError, match="even"):
        att.sinusoidal_positional_encoding(4, 5)


def test_positional_encoding_module_kinds() -> None:
    x = torch.zeros(2, 5, 8)
    assert torch.equal(att.PositionalEncoding(8, 10, "none")(x), x)
    assert torch.allclose(att.PositionalEncoding(8, 10)(x)[1], att.sinusoidal_positional_encoding(5, 8))
    learned = att.PositionalEncoding(8, 10, "learned")
    assert sum(p.numel() for p in learned.parameters()) == 80
    with pytest.raises(ValueError, match="longer than max_len"):
        learned(torch.zeros(1, 11, 8))
    with pytest.raises(ValueError, match="kind"):
        att.PositionalEncoding(8, 10, "rotary")


def test_permutation_equivariance_without_positions_only() -> None:
    torch.manual_seed(0)
    layer = att.EncoderLayer.from_torch(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True).double())
    x = torch.randn(2, 7, 8, dtype=f64, generator=torch.Generator().manual_seed(5))
    perm = torch.tensor([3, 0, 6, 1, 5, 2, 4])
    with torch.no_grad():
        out, weights = layer(x)
        out_p, weights_p = layer(x[:, perm])
        assert (out_p - out[:, perm]).abs().max() < 1e-12, "attention without positions must be equivariant"
        assert (weights_p - weights[:, :, perm][:, :, :, perm]).abs().max() < 1e-12
        pe = att.sinusoidal_positional_encoding(7, 8, dtype=f64)
        with_pe = layer(x + pe)[0]
        assert (layer(x[:, perm] + pe)[0] - with_pe[:, perm]).abs().max() > 1e-2, "positions must break it"


def test_token_tagger_shapes_and_order_blindness() -> None:
    torch.manual_seed(0)
    ids = torch.randint(0, 6, (2, 9), generator=torch.Generator().manual_seed(0))
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    for kind, equivariant in (("none", True), ("sinusoidal", False), ("learned", False)):
        model = att.TokenTagger(6, 16, 2, 1, 32, max_len=12, positions=kind).eval()
        with torch.no_grad():
            logits, logits_p = model(ids), model(ids[:, perm])
        assert logits.shape == (2, 9, 6)
        assert ((logits_p - logits[:, perm]).abs().max() < 1e-5) == equivariant, kind
