"""Fusion lesson: image captioning with attention (chapters/fusion/image-captioning.ipynb).

The data generator is dlbook/data/captions.py (MNIST digits in a row, a small caption grammar);
the model is dlbook/models/captioning.py: additive attention with a hand-derived backward pass
(checked against autograd and finite differences in float64, with planted bugs that must be caught),
the CNN + LSTM show-attend-and-tell decoder, greedy decoding and beam search.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import dlbook.models.captioning as cap
from dlbook.data.captions import CaptionVocab, make_captions, mentioned_slots, reference_captions
from dlbook.gradients import compare

f64 = torch.float64


# --------------------------------------------------------------------------- data


def _coded_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """Ten 28 x 28 'digits': digit d is a solid square of intensity (d + 1) / 10, so the ink says the label."""
    labels = torch.arange(10)
    return ((labels + 1) / 10).view(10, 1, 1).expand(10, 28, 28).clone(), labels


def test_same_arguments_give_the_same_data_and_seed_changes_it() -> None:
    digits, labels = _coded_digits()
    a = make_captions(digits, labels, 40, seed=3)
    b = make_captions(digits, labels, 40, seed=3)
    c = make_captions(digits, labels, 40, seed=4)
    for name in ("images", "digits", "counts", "positions", "ids", "lengths"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.captions == b.captions and a.references == b.references
    assert not torch.equal(a.images, c.images)


def test_shapes_dtypes_and_layout() -> None:
    digits, labels = _coded_digits()
    data = make_captions(digits, labels, 64, height=32, width=96, min_step=22, seed=1)
    assert data.images.shape == (64, 1, 32, 96) and data.images.dtype == torch.float32
    assert data.digits.shape == (64, 3) and data.digits.dtype == torch.int64
    assert data.positions.shape == (64, 3, 2) and data.ids.dtype == torch.int64
    assert set(data.counts.tolist()) <= {2, 3} and len(set(data.counts.tolist())) == 2
    assert data.ids.shape == (64, int(data.lengths.max()))
    for row in range(64):
        k = int(data.counts[row])
        assert (data.digits[row, :k] >= 0).all() and (data.digits[row, k:] == -1).all()
        x, y = data.positions[row, :k, 0], data.positions[row, :k, 1]
        assert (x >= 0).all() and (x + 28 <= 96).all() and (y >= 0).all() and (y + 28 <= 32).all()
        assert ((x[1:] - x[:-1]) >= 22).all(), "left edges must increase by at least min_step"


def test_labels_and_captions_describe_the_pixels() -> None:
    """With solid squares as digits and no overlap, the pixel at each digit's centre says its label,
    and the digits are listed left to right in every reference caption."""
    digits, labels = _coded_digits()
    data = make_captions(digits, labels, 50, width=28 * 3 + 10, min_step=28, min_digits=1, seed=2)
    for row in range(50):
        k = int(data.counts[row])
        found = []
        for j in range(k):
            x, y = data.positions[row, j].tolist()
            found.append(round(float(data.images[row, 0, y + 14, x + 14]) * 10) - 1)
        assert found == data.digits[row, :k].tolist()
        assert data.references[row] == reference_captions(found)
        assert data.captions[row] in data.references[row]
        assert data.vocab.decode(data.ids[row]) == data.captions[row]
        assert int(data.lengths[row]) == len(data.captions[row]) + 2


def test_grammar() -> None:
    assert reference_captions([4, 1, 9]) == [["three", "digits", ":", "4", "1", "9"],
                                             ["a", "1", "between", "a", "4", "and", "a", "9"]]
    two = [" ".join(c) for c in reference_captions([7, 2])]
    assert two == ["two digits : 7 2", "a 7 left of a 2", "a 2 right of a 7"]
    assert [" ".join(c) for c in reference_captions([5])] == ["one digit : 5", "a 5"]


def test_vocab_round_trip_and_specials() -> None:
    vocab = CaptionVocab()
    assert vocab.itos[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"] and len(vocab) == 4 + 10 + 12
    ids = vocab.encode(["a", "7", "left", "of", "a", "2"])
    assert ids[0] == vocab.bos_id and ids[-1] == vocab.eos_id
    assert vocab.decode(ids + [vocab.pad_id, 5]) == ["a", "7", "left", "of", "a", "2"]  # stops at <eos>
    assert vocab.encode(["zebra"], wrap=False) == [vocab.unk_id]
    padded, lengths = vocab.pad([["a", "1"], ["two", "digits", ":", "1", "2"]])
    assert padded.shape == (2, 7) and lengths.tolist() == [4, 7] and (padded[0, 4:] == 0).all()


@pytest.mark.parametrize("kwargs, match", [
    ({"min_digits": 0}, "min_digits"),
    ({"max_digits": 4}, "max_digits"),
    ({"height": 20}, "height"),
    ({"width": 60}, "width"),
    ({"min_step": 0}, "min_step"),
    ({"n": 0}, "n must be positive"),
])
def test_bad_arguments_raise(kwargs, match) -> None:
    digits, labels = _coded_digits()
    args = {"n": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        make_captions(digits, labels, **args)


def test_bad_inputs_raise() -> None:
    digits, labels = _coded_digits()
    with pytest.raises(ValueError, match="labels"):
        make_captions(digits, labels[:5], 4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        make_captions(digits * 3, labels, 4)
    for bad in ([], [1, 2, 3, 4], [12]):
        with pytest.raises(ValueError):
            reference_captions(bad)


# --------------------------------------------------------------------------- the hand-derived backward


@pytest.mark.parametrize("sizes", [
    {"batch": 3, "positions": 5, "dim": 4, "hidden": 3, "attn_dim": 6},
    {"batch": 1, "positions": 1, "dim": 2, "hidden": 2, "attn_dim": 2},
    {"batch": 4, "positions": 48, "dim": 16, "hidden": 8, "attn_dim": 8, "seed": 5},
], ids=["small", "one-region", "grid-sized"])
def test_backward_matches_autograd(sizes) -> None:
    report = cap.check_additive_attention_backward(**sizes)
    assert set(report.errors) == {f"dL/d{k}" for k in cap.ATTENTION_INPUTS}
    report.assert_ok()


def test_backward_passes_gradcheck() -> None:
    assert cap.gradcheck_additive_attention(seed=0)
    assert cap.gradcheck_additive_attention(seed=1)


def _without_score_path(d_context, A, h, W_a, U_a, b, v):
    """Planted bug 1: da_i = alpha_i g only; the path through a_i's own score is dropped."""
    grads = cap.additive_attention_backward(d_context, A, h, W_a, U_a, b, v)
    alpha = cap.additive_attention(A, h, W_a, U_a, b, v)[1]
    return {**grads, "A": alpha.unsqueeze(-1) * d_context.unsqueeze(1)}


def _without_softmax_coupling(d_context, A, h, W_a, U_a, b, v):
    """Planted bug 2: de_i = alpha_i dalpha_i (only the diagonal of the softmax Jacobian)."""
    u = torch.tanh(A @ W_a.T + b + (h @ U_a.T).unsqueeze(1))
    alpha = (u @ v).softmax(-1)
    d_e = alpha * (A @ d_context.unsqueeze(-1)).squeeze(-1)
    d_s = d_e.unsqueeze(-1) * v * (1 - u**2)
    return {"A": alpha.unsqueeze(-1) * d_context.unsqueeze(1) + d_s @ W_a, "h": d_s.sum(1) @ U_a,
            "W_a": torch.einsum("bla,bld->ad", d_s, A), "U_a": d_s.sum(1).T @ h, "b": d_s.sum((0, 1)),
            "v": torch.einsum("bl,bla->a", d_e, u)}


def test_planted_bugs_are_caught() -> None:
    no_score_path = cap.check_additive_attention_backward(backward=_without_score_path)
    assert no_score_path.errors["dL/dA"] > 1e-2, no_score_path
    assert max(e for k, e in no_score_path.errors.items() if k != "dL/dA") < 1e-8  # only dA is wrong
    no_coupling = cap.check_additive_attention_backward(backward=_without_softmax_coupling)
    assert min(no_coupling.errors.values()) > 1e-3, no_coupling


def test_linear_score_gives_the_query_no_gradient() -> None:
    """Without the tanh, the query adds the same number to every score; softmax ignores it (the derivation's remark)."""
    p = {k: t.requires_grad_(True) for k, t in cap.random_attention_problem(seed=3).items()}
    scores = (p["A"] @ p["W_a"].T + p["b"] + (p["h"] @ p["U_a"].T).unsqueeze(1)) @ p["v"]
    context = (scores.softmax(-1).unsqueeze(-1) * p["A"]).sum(1)
    d_h, d_b = torch.autograd.grad((context**2).sum(), [p["h"], p["b"]])
    assert d_h.abs().max() < 1e-12 and d_b.abs().max() < 1e-12
    with_tanh = cap.check_additive_attention_backward(seed=3)
    with_tanh.assert_ok()


# --------------------------------------------------------------------------- the model


@pytest.fixture
def model() -> cap.ShowAttendTell:
    torch.manual_seed(0)
    return cap.ShowAttendTell(26, embed_dim=8, hidden=16, attn_dim=8, channels=(8, 8, 8)).double().eval()


def _images(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 1, 32, 96, generator=torch.Generator().manual_seed(1), dtype=f64)


def test_model_shapes_and_lstm_input_size(model) -> None:
    D = model.encoder.feature_dim
    assert D == 8 + 12 + 4
    assert model.lstm.input_size == 8 + D, "the LSTM cell reads [embedding ; context]"
    captions = torch.randint(3, 26, (3, 7), generator=torch.Generator().manual_seed(2))
    logits, alphas = model(_images(), captions)
    assert logits.shape == (3, 7, 26) and alphas.shape == (3, 7, 48)
    assert torch.allclose(alphas.sum(-1), torch.ones(3, 7, dtype=f64))
    with pytest.raises(ValueError, match="grid"):
        model.encoder(torch.rand(1, 1, 32, 64, dtype=f64))


def test_model_attention_equals_hand_backward(model) -> None:
    """The module's attention, through autograd, equals additive_attention_backward on real annotations."""
    A = model.encoder(_images()).detach().requires_grad_(True)
    h = torch.randn(3, 16, dtype=f64, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    att = model.attention
    context, _ = att(A, h)
    g = torch.randn_like(context)
    leaves = [A, h, att.W_a.weight, att.U_a.weight, att.W_a.bias, att.v]
    auto = dict(zip(cap.ATTENTION_INPUTS, torch.autograd.grad((context * g).sum(), leaves)))
    with torch.no_grad():
        manual = cap.additive_attention_backward(g, A, h, att.W_a.weight, att.U_a.weight, att.W_a.bias, att.v)
    compare(manual, auto).assert_ok()


def test_teacher_forcing_equals_stepwise_decoding(model) -> None:
    captions = torch.tensor([[1, 14, 5, 19, 20, 14, 4]])
    logits, alphas = model(_images(1), captions)
    A = model.encoder(_images(1))
    keys, state = model.attention.keys(A), model.init_state(A)
    for t in range(captions.shape[1]):
        step_logits, state, alpha = model.step(captions[:, t], state, A, keys)
        assert torch.allclose(step_logits, logits[:, t]) and torch.allclose(alpha, alphas[:, t])


def test_beam_of_one_is_greedy_and_decoding_stops_at_eos(model) -> None:
    images = _images(4)
    greedy = model.greedy(images, max_len=9)
    beam1 = model.beam_search(images, beam=1, max_len=9)
    assert torch.equal(greedy.tokens, beam1.tokens)
    assert torch.allclose(greedy.scores, beam1.scores) and torch.allclose(greedy.alphas, beam1.alphas)
    for decoded in (greedy, model.beam_search(images, beam=3, max_len=9)):
        for row, length in enumerate(decoded.lengths.tolist()):
            tokens = decoded.tokens[row]
            if length < tokens.shape[0] or tokens[length - 1] == model.eos_id:
                assert tokens[length - 1] == model.eos_id and (tokens[:length - 1] != model.eos_id).all()
            assert (tokens[length:] == model.pad_id).all() and (decoded.alphas[row, length:] == 0).all()
            assert torch.allclose(decoded.alphas[row, :length].sum(-1), torch.ones(length, dtype=f64))
    with pytest.raises(ValueError):
        model.beam_search(images, beam=0)


def test_wide_beam_is_exhaustive_search() -> None:
    """With beam >= V^(max_len - 1) nothing is ever pruned: beam search returns the most probable
    caption of at most max_len words, found here by scoring every one of them."""
    torch.manual_seed(4)
    V, max_len = 5, 3  # <pad>, <bos>, <eos> and two words
    m = cap.ShowAttendTell(V, embed_dim=4, hidden=6, attn_dim=4, channels=(4, 4, 4)).double().eval()
    with torch.no_grad():
        m.out.weight.mul_(8)  # sharpen the distributions so the best caption is not the greedy one by luck
    images = _images(3)
    best = m.beam_search(images, beam=V ** (max_len - 1), max_len=max_len)
    for row in range(3):
        candidates = []
        for n in range(1, max_len + 1):
            for seq in itertools.product(range(V), repeat=n):
                if m.eos_id in seq[:-1] or (n < max_len and seq[-1] != m.eos_id):
                    continue
                with torch.no_grad():
                    logits, _ = m(images[row : row + 1], torch.tensor([[m.bos_id, *seq[:-1]]]))
                logp = logits.log_softmax(-1)[0, torch.arange(n), torch.tensor(seq)].sum()
                candidates.append((float(logp), seq))
        score, seq = max(candidates)
        assert abs(float(best.scores[row]) - score) < 1e-10
        assert best.tokens[row, : len(seq)].tolist() == list(seq)


def test_caption_loss_ignores_padding() -> None:
    logits = torch.randn(2, 4, 7, dtype=f64)
    targets = torch.tensor([[3, 4, 2, 0], [5, 6, 6, 2]])
    manual = torch.cat([-logits[0, :3].log_softmax(-1)[torch.arange(3), targets[0, :3]],
                        -logits[1].log_softmax(-1)[torch.arange(4), targets[1]]]).mean()
    assert torch.allclose(cap.caption_loss(logits, targets), manual)


def test_mentioned_slots_follow_the_grammar() -> None:
    assert mentioned_slots("a 2 right of a 7".split()) == [None, 1, None, None, None, 0]
    assert mentioned_slots("a 1 between a 4 and a 9".split()) == [None, 1, None, None, 0, None, None, 2]
    assert mentioned_slots("three digits : 4 1 9".split()) == [None, None, None, 0, 1, 2]
    for digits in ([3], [7, 2], [4, 1, 9]):
        for caption in reference_captions(digits):
            slots = mentioned_slots(caption)
            assert [int(w) for w, s in zip(caption, slots) if s is not None] == [digits[s] for s in slots if s is not None]
    for bad in ("a 2 right of", "three digits : 4 1", "a 2 left a 7", "x", "two digits : 1 2 3 4"):
        with pytest.raises(ValueError):
            mentioned_slots(bad.split())
