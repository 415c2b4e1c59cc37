"""RNN lesson: the character-level language model (chapters/rnn/char-language-model.ipynb).

The code is dlbook/models/char_lm.py. Each check the notebook runs is repeated here (uniform model =
log2 V, the unigram formula, stateful evaluation = one long unroll, the temperature limits and
entropy derivative, sampling frequencies), plus planted bugs that the checks must catch.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chisquare

from dlbook.gradients import compare, rel_error
from dlbook.models.char_lm import (
    CharLSTM,
    bits_per_char,
    chi_square_test,
    entropy_bits,
    known_word_fraction,
    sample,
    stream_chunks,
    stream_rows,
    temperature_entropy,
    temperature_entropy_grad,
    temperature_probs,
    train_char_lm,
    unigram_bpc,
    unigram_probs,
)

f64 = torch.float64


def random_stream(n: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


# --- the model and the stream bookkeeping ------------------------------------------------------


@pytest.mark.parametrize("layers", [1, 2])
def test_char_lstm_shapes_and_state(layers: int) -> None:
    torch.manual_seed(0)
    model = CharLSTM(vocab_size=11, embed_dim=5, hidden=7, layers=layers, dropout=0.1).eval()
    x = torch.randint(0, 11, (3, 9))
    logits, (h, c) = model(x)
    assert logits.shape == (3, 9, 11)
    assert h.shape == c.shape == (layers, 3, 7)
    # Reading in two chunks with the state carried equals reading at once.
    first, state = model(x[:, :4])
    second, _ = model(x[:, 4:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), logits, rtol=1e-5, atol=1e-6)


def test_stream_rows_and_chunks_score_every_target_once() -> None:
    ids = torch.arange(103)
    rows = stream_rows(ids, 4)
    assert rows.shape == (4, 25) and torch.equal(rows[1], torch.arange(25, 50))
    xs, ys = zip(*stream_chunks(rows, 7))
    x, y = torch.cat(xs, dim=1), torch.cat(ys, dim=1)
    assert torch.equal(x, rows[:, :-1]) and torch.equal(y, rows[:, 1:])
    assert [c.shape[1] for c in xs] == [7, 7, 7, 3]
    with pytest.raises(ValueError):
        stream_rows(torch.arange(5), 4)


def test_uniform_model_scores_log2_vocab() -> None:
    model = CharLSTM(vocab_size=65, embed_dim=8, hidden=8).double()
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    bpc = bits_per_char(model, random_stream(500, 65), seq_len=33, batch=3)
    assert abs(bpc - math.log2(65)) < 1e-12
    # Planted bug: reporting nats instead of bits is off by a factor ln 2.
    assert abs(bpc * math.log(2) - math.log2(65)) > 1.0


@pytest.mark.parametrize("seq_len", [1, 13, 64, 1000])
def test_stateful_evaluation_equals_one_long_unroll(seq_len: int) -> None:
    torch.manual_seed(1)
    model = CharLSTM(vocab_size=20, embed_dim=6, hidden=10, layers=2).double()
    text = random_stream(401, 20, seed=2)
    with torch.no_grad():
        logits, _ = model(text[None, :-1])
        expected = F.cross_entropy(logits[0], text[1:]).item() / math.log(2)
    assert rel_error(torch.tensor(bits_per_char(model, text, seq_len=seq_len)), torch.tensor(expected)) < 1e-12


def test_stateful_rows_equal_per_row_unrolls_and_reset_is_a_bug() -> None:
    torch.manual_seed(3)
    model = CharLSTM(vocab_size=15, embed_dim=4, hidden=9).double()
    text = random_stream(600, 15, seed=4)
    rows = stream_rows(text, 3)
    with torch.no_grad():
        logits, _ = model(rows[:, :-1])
        expected = F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten()).item() / math.log(2)
        # Planted bug: a zero state at every chunk (independent windows) loses the context.
        reset = sum(F.cross_entropy(model(x)[0].flatten(0, 1), y.flatten(), reduction="sum").item()
                    for x, y in stream_chunks(rows, 16)) / rows[:, 1:].numel() / math.log(2)
    assert abs(bits_per_char(model, text, seq_len=16, batch=3) - expected) < 1e-12
    assert rel_error(torch.tensor(reset), torch.tensor(expected)) > 1e-6


# --- the unigram baseline ----------------------------------------------------------------------


def test_unigram_bpc_by_hand() -> None:
    train = torch.tensor([0, 0, 0, 1])  # counts 3, 1, 0 -> add-one 4, 2, 1 over 7
    val = torch.tensor([0, 2])
    p = unigram_probs(train, 3)
    torch.testing.assert_close(p, torch.tensor([4 / 7, 2 / 7, 1 / 7], dtype=f64), rtol=0, atol=1e-15)
    expected = -(math.log2(4 / 7) + math.log2(1 / 7)) / 2
    assert abs(unigram_bpc(train, val, 3) - expected) < 1e-12
    # Without smoothing an unseen character costs infinitely many bits.
    assert math.isinf(unigram_bpc(train, val, 3, smoothing=0.0))


def test_unigram_bpc_is_entropy_plus_kl() -> None:
    train, val = random_stream(5000, 30, seed=5) % 17, random_stream(800, 30, seed=6)
    p = unigram_probs(train, 30)
    q = torch.bincount(val, minlength=30).double() / len(val)
    kl = (q[q > 0] * (q[q > 0] / p[q > 0]).log2()).sum().item()
    assert abs(unigram_bpc(train, val, 30) - (entropy_bits(q) + kl)) < 1e-12
    # Evaluated on its own unsmoothed training text, the unigram model scores its entropy exactly.
    assert abs(unigram_bpc(train, train, 30, smoothing=0.0) - entropy_bits(unigram_probs(train, 30, 0.0))) < 1e-12
    library = torch.distributions.Categorical(probs=p).entropy().item() / math.log(2)
    assert abs(entropy_bits(p) - library) < 1e-12


# --- temperature --------------------------------------------------------------------------------


def test_temperature_limits() -> None:
    z = torch.randn(5, 40, dtype=f64, generator=torch.Generator().manual_seed(7)) * 3
    one_hot = F.one_hot(z.argmax(-1), 40).double()
    assert (temperature_probs(z, 1e-3) - one_hot).abs().max() < 1e-12
    assert (temperature_probs(z, 1e6) - 1 / 40).abs().max() < 1e-6
    torch.testing.assert_close(temperature_probs(z, 1.0), torch.softmax(z, -1))
    entropies = [temperature_entropy(z, t).mean().item() for t in (0.1, 0.5, 1.0, 2.0, 10.0)]
    assert entropies == sorted(entropies) and entropies[-1] < math.log(40)
    with pytest.raises(ValueError):
        temperature_probs(z, 0.0)


def test_entropy_temperature_derivative_matches_autograd() -> None:
    z = torch.randn(40, dtype=f64, generator=torch.Generator().manual_seed(8)) * 2
    taus = torch.tensor([0.2, 0.6, 1.0, 1.7, 4.0], dtype=f64, requires_grad=True)
    (autograd_dh,) = torch.autograd.grad(temperature_entropy(z, taus[:, None]).sum(), taus)
    ours = torch.stack([temperature_entropy_grad(z, t.item()) for t in taus])
    compare({"dH/dtau": ours}, {"dH/dtau": autograd_dh}).assert_ok()
    assert (ours >= 0).all()
    planted = torch.stack([temperature_entropy_grad(z, t.item()) * t.item() for t in taus])  # Var / tau^2
    assert rel_error(planted, autograd_dh) > 0.1


def test_sampling_frequencies_match_probabilities() -> None:
    p = temperature_probs(torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0], dtype=f64), 0.7)
    draws = torch.multinomial(p.expand(30_000, -1), 1, generator=torch.Generator().manual_seed(9)).flatten()
    observed = torch.bincount(draws, minlength=5).double()
    stat, p_value = chi_square_test(observed, p)
    library = chisquare(observed.numpy(), (p * 30_000).numpy())
    assert stat == pytest.approx(library.statistic, rel=1e-12) and p_value == pytest.approx(library.pvalue, rel=1e-9)
    assert p_value > 0.001
    # Planted bug: frequencies compared with the tau = 1 distribution must be rejected.
    wrong = temperature_probs(torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0], dtype=f64), 1.0)
    assert chi_square_test(observed, wrong)[1] < 1e-6


def test_sample_shape_reproducible_and_greedy_limit() -> None:
    torch.manual_seed(10)
    model = CharLSTM(vocab_size=12, embed_dim=4, hidden=8)
    prime = torch.tensor([1, 2, 3])
    a = sample(model, prime, 20, temperature=1.0, generator=torch.Generator().manual_seed(0), num_samples=4)
    b = sample(model, prime, 20, temperature=1.0, generator=torch.Generator().manual_seed(0), num_samples=4)
    assert a.shape == (4, 20) and a.dtype == torch.long and torch.equal(a, b)
    assert int(a.max()) < 12 and int(a.min()) >= 0
    # tau -> 0: sampling is greedy decoding, the same for every generator.
    greedy = sample(model, prime, 15, temperature=1e-4, generator=torch.Generator().manual_seed(1))[0]
    ids = prime.clone()
    with torch.no_grad():
        for _ in range(15):
            ids = torch.cat([ids, model(ids[None])[0][0, -1].argmax()[None]])
    assert torch.equal(greedy, ids[3:])


# --- training and the sample measure -------------------------------------------------------------


def test_training_learns_a_repeating_text() -> None:
    torch.manual_seed(11)
    text = torch.tensor([0, 1, 2, 3, 1, 2, 0, 3] * 300)
    model = CharLSTM(vocab_size=4, embed_dim=4, hidden=16)
    before = bits_per_char(model, text[:400])
    records = train_char_lm(model, text, steps=30, seq_len=16, batch=8, lr=2e-2, val_ids=text[:400],
                            eval_every=15, progress=False)
    assert before > 1.5 and records[-1]["val_bpc"] < 0.5, (before, records)
    assert [r["step"] for r in records] == [15, 30]


def test_known_word_fraction_skips_edge_words() -> None:
    known = {"to", "be", "or", "not"}
    assert known_word_fraction("xto be or nox tobe", known) == pytest.approx(2 / 3)
    assert known_word_fraction(["a to b", "c zz d"], known) == pytest.approx(1 / 2)
    assert math.isnan(known_word_fraction("one", known))
