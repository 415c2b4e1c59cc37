"""Fusion lesson: the Transformer decoder (chapters/fusion/transformer-decoder.ipynb).

The code is dlbook/scratch/decoder.py (the decoder layer with cross-attention, LayerNorm's
hand-derived backward pass) and dlbook/models/decoder.py (a decoder-only character model, the
key-value cache and generation). Each proof runs in float64 against PyTorch or autograd, and each
has a planted bug that the same comparison must reject: a mask that lets a position see the future,
a cache that forgets to append, a LayerNorm backward without the mean term.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlbook.gradients import gradcheck64, rel_error
from dlbook.models.char_lm import CharLSTM
from dlbook.models.decoder import (
    CharDecoder,
    KVCache,
    causal_mask_offset,
    count_parameters,
    generate,
    lm_step,
    lstm_hidden_for_budget,
    lstm_parameters,
    windowed_bpc,
)
from dlbook.scratch.attention import random_attention_problem, scaled_dot_product_attention
from dlbook.scratch.decoder import (
    DecoderLayer,
    LayerNormFunction,
    check_layer_norm_backward,
    layer_norm_backward,
    random_layer_norm_problem,
)

f64 = torch.float64


# --------------------------------------------------------------------------- causal attention


def test_causal_mask_equals_is_causal() -> None:
    q, k, v, _, _ = random_attention_problem("none", n_queries=6, n_keys=6, seed=1)
    ours, weights = scaled_dot_product_attention(q, k, v, attn_mask=causal_mask_offset(6, 6))
    assert rel_error(ours, F.scaled_dot_product_attention(q, k, v, is_causal=True)) < 1e-12
    assert (weights[..., 0, 1:] == 0).all()


def test_offset_mask_gives_the_last_rows() -> None:
    q, k, v, _, _ = random_attention_problem("none", n_queries=6, n_keys=6, seed=2)
    full = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    for new in (1, 2, 5):
        tail, _ = scaled_dot_product_attention(q[..., -new:, :], k, v, attn_mask=causal_mask_offset(new, 6))
        assert rel_error(tail, full[..., -new:, :]) < 1e-12
    assert causal_mask_offset(1, 4).all()


def test_planted_bug_leaky_mask_is_caught() -> None:
    q, k, v, _, _ = random_attention_problem("none", n_queries=6, n_keys=6, seed=1)
    leaky = torch.ones(6, 6, dtype=torch.bool).tril(1)  # each position also sees the next one
    ours, _ = scaled_dot_product_attention(q, k, v, attn_mask=leaky)
    assert rel_error(ours, F.scaled_dot_product_attention(q, k, v, is_causal=True)) > 1e-3


def _future_leak(model: nn.Module, vocab: int = 11, T: int = 9) -> float:
    """Largest change of the logits at positions < T-1 when the last input id changes."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, T), generator=gen)
    changed = ids.clone()
    changed[:, -1] = (ids[:, -1] + 1) % vocab
    with torch.no_grad():
        return (model(ids)[:, :-1] - model(changed)[:, :-1]).abs().max().item()


def test_model_does_not_see_the_future() -> None:
    torch.manual_seed(0)
    model = CharDecoder(11, 16, 2, 2, 32, max_len=32).double().eval()
    assert _future_leak(model) == 0.0


def test_planted_bug_model_with_leaky_mask_sees_the_future(monkeypatch) -> None:
    import dlbook.models.decoder as dec

    torch.manual_seed(0)
    model = CharDecoder(11, 16, 2, 2, 32, max_len=32).double().eval()
    monkeypatch.setattr(dec, "causal_mask_offset",
                        lambda n, s, device=None: torch.ones(n, s, dtype=torch.bool, device=device).tril(s - n + 1))
    assert _future_leak(model) > 1e-6


# --------------------------------------------------------------------------- the decoder layer


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_decoder_layer_equals_torch(norm_first: bool, activation: str) -> None:
    torch.manual_seed(0)
    ref = nn.TransformerDecoderLayer(16, 4, 32, dropout=0.0, activation=activation, batch_first=True,
                                     norm_first=norm_first).double().eval()
    mine = DecoderLayer.from_torch(ref).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 7, 16, generator=gen, dtype=f64)
    memory = torch.randn(3, 5, 16, generator=gen, dtype=f64)
    pad = torch.arange(5) >= torch.tensor([5, 3, 1])[:, None]
    with torch.no_grad():
        expected = ref(x, memory, tgt_mask=nn.Transformer.generate_square_subsequent_mask(7, dtype=f64),
                       tgt_is_causal=True, memory_key_padding_mask=pad)
        out, w_self, w_cross = mine(x, memory, True, pad)
    assert rel_error(out, expected) < 1e-12
    assert (w_cross.masked_select(pad[:, None, None, :]) == 0).all()
    assert (w_self.triu(1) == 0).all()


def test_decoder_layer_without_causal_mask_differs() -> None:
    torch.manual_seed(0)
    ref = nn.TransformerDecoderLayer(16, 4, 32, dropout=0.0, batch_first=True).double().eval()
    mine = DecoderLayer.from_torch(ref).eval()
    x, memory = torch.randn(2, 6, 16, dtype=f64), torch.randn(2, 4, 16, dtype=f64)
    with torch.no_grad():
        expected = ref(x, memory, tgt_mask=nn.Transformer.generate_square_subsequent_mask(6, dtype=f64))
        assert rel_error(mine(x, memory, tgt_is_causal=False)[0], expected) > 1e-3


def test_from_torch_refuses_sequence_first() -> None:
    with pytest.raises(ValueError, match="batch_first"):
        DecoderLayer.from_torch(nn.TransformerDecoderLayer(8, 2, 16))


# --------------------------------------------------------------------------- LayerNorm backward


@pytest.mark.parametrize("shape", [(3, 5, 8), (4, 16), (2, 2, 3, 6)])
def test_layer_norm_backward_equals_autograd(shape) -> None:
    check_layer_norm_backward(shape=shape).assert_ok()


def test_layer_norm_backward_gradcheck_and_sum_zero() -> None:
    x, w, b, G = random_layer_norm_problem((2, 3, 6), seed=1)
    assert gradcheck64(lambda x_, w_, b_: LayerNormFunction.apply(x_, w_, b_, 1e-5), [x, w, b])
    assert layer_norm_backward(G, x, w)["x"].sum(-1).abs().max() < 1e-12  # eq-tdd-sum-zero


def _without_mean_term(d_y, x, weight, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    s = torch.sqrt(((x - mean) ** 2).mean(-1, keepdim=True) + eps)
    x_hat = (x - mean) / s
    g = d_y * weight
    grads = layer_norm_backward(d_y, x, weight, eps)
    return {**grads, "x": (g - x_hat * (g * x_hat).mean(-1, keepdim=True)) / s}


def _without_variance_term(d_y, x, weight, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    s = torch.sqrt(((x - mean) ** 2).mean(-1, keepdim=True) + eps)
    g = d_y * weight
    grads = layer_norm_backward(d_y, x, weight, eps)
    return {**grads, "x": (g - g.mean(-1, keepdim=True)) / s}


@pytest.mark.parametrize("bug", [_without_mean_term, _without_variance_term])
def test_planted_bug_layer_norm_backward_is_caught(bug) -> None:
    report = check_layer_norm_backward(bug)
    assert not report.ok
    assert report.errors["dL/dx"] > 1e-3 and report.errors["dL/dgamma"] < 1e-8


# --------------------------------------------------------------------------- the cache


class ForgetfulCache(KVCache):
    """Planted bug: returns the right keys and values but stores nothing after the first call."""

    def append(self, layer, k, v):
        if self.keys[layer] is None:
            self.keys[layer], self.values[layer] = k, v
            return k, v
        return torch.cat([self.keys[layer], k], dim=-2), torch.cat([self.values[layer], v], dim=-2)


def _tiny_decoder() -> CharDecoder:
    torch.manual_seed(0)
    return CharDecoder(13, 16, 2, 2, 32, max_len=64).double()


@pytest.mark.parametrize("temperature", [None, 1.0])
def test_cache_gives_the_same_tokens_and_logits(temperature) -> None:
    model, prime = _tiny_decoder(), torch.tensor([1, 5, 2])
    runs = [generate(model, prime, 25, temperature, torch.Generator().manual_seed(3), num_samples=3, use_cache=c)
            for c in (True, False)]
    assert torch.equal(runs[0][0], runs[1][0])
    assert (runs[0][1] - runs[1][1]).abs().max() < 1e-10
    assert runs[0][0].shape == (3, 25) and runs[0][1].shape == (3, 25, 13)


def test_planted_bug_forgetful_cache_is_caught() -> None:
    model, prime = _tiny_decoder(), torch.tensor([1, 5, 2])
    good = generate(model, prime, 10, None, use_cache=False)
    bad = generate(model, prime, 10, None, use_cache=True, cache_factory=ForgetfulCache)
    assert (bad[1] - good[1]).abs().max() > 1e-3


def test_cache_grows_one_position_per_step() -> None:
    model = _tiny_decoder().eval()
    cache = model.new_cache()
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]), cache)
        assert cache.length == 3
        model(torch.tensor([[4]]), cache)
    assert cache.length == 4
    assert all(k.shape == (1, 2, 4, 8) for k in cache.keys) and all(v.shape == (1, 2, 4, 8) for v in cache.values)


def test_cached_forward_equals_full_forward_on_chunks() -> None:
    model, ids = _tiny_decoder().eval(), torch.randint(0, 13, (2, 10), generator=torch.Generator().manual_seed(0))
    cache = model.new_cache()
    with torch.no_grad():
        pieces = [model(ids[:, :4], cache), model(ids[:, 4:7], cache), model(ids[:, 7:], cache)]
        assert rel_error(torch.cat(pieces, dim=1), model(ids)) < 1e-12


def test_positions_beyond_max_len_are_refused() -> None:
    model = CharDecoder(5, 8, 2, 1, 16, max_len=4)
    with pytest.raises(ValueError, match="max_len"):
        model(torch.zeros(1, 5, dtype=torch.long))


def test_generate_refuses_an_empty_prime() -> None:
    with pytest.raises(ValueError, match="prime"):
        generate(_tiny_decoder(), torch.tensor([], dtype=torch.long), 3)


# --------------------------------------------------------------------------- budget and evaluation


@pytest.mark.parametrize("budget", [20_000, 44_321, 300_000])
def test_lstm_budget_matches(budget: int) -> None:
    hidden = lstm_hidden_for_budget(65, 24, budget)
    assert lstm_parameters(65, 24, hidden) == count_parameters(CharLSTM(65, 24, hidden))
    for other in (hidden - 1, hidden + 1):
        assert abs(lstm_parameters(65, 24, hidden) - budget) <= abs(lstm_parameters(65, 24, other) - budget)


def test_windowed_bpc_of_a_uniform_model_is_log2_vocab() -> None:
    model = CharDecoder(7, 8, 2, 1, 16, max_len=32)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    ids = torch.randint(0, 7, (200,), generator=torch.Generator().manual_seed(0))
    assert abs(windowed_bpc(model, ids, 16) - torch.log2(torch.tensor(7.0)).item()) < 1e-6


def test_lm_step_accepts_both_models() -> None:
    x = torch.randint(0, 9, (2, 5))
    for model in (CharDecoder(9, 8, 2, 1, 16, max_len=8), CharLSTM(9, 4, 6)):
        logits, target = lm_step(model, (x, x))
        assert logits.shape == (10, 9) and target.shape == (10,)
