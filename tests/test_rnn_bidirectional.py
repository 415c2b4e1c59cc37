"""RNN lesson: bidirectional LSTMs and variable-length batches (chapters/rnn/bidirectional-and-packing.ipynb).

The code is dlbook/scratch/bidirectional.py. Each equality the notebook shows is repeated here,
plus planted bugs (a whole-row flip, shared weights) that the checks must catch.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import dlbook.scratch.bidirectional as bd
from dlbook.models.text_classifiers import BiLSTMClassifier


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("lengths", [None, [7, 3, 5], [1, 7, 2]], ids=["unpadded", "padded-a", "padded-b"])
def test_manual_bilstm_equals_library(dtype: torch.dtype, lengths: list[int] | None) -> None:
    report = bd.check_manual_bilstm(dtype, lengths)
    assert report.tolerance == (1e-6 if dtype == torch.float32 else 1e-10)
    assert len(report.errors) == 3 + 1 + 8  # output, h_n, c_n, d input, eight weight gradients
    report.assert_ok()


def test_planted_whole_row_flip_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reversing the padded row (as the source article's torch.flip does) must fail the check."""
    monkeypatch.setattr(bd, "reverse_padded", lambda x, lengths: x.flip(1))
    report = bd.check_manual_bilstm(torch.float64, [7, 3, 5])
    assert not report.ok and report.errors["output"] > 1e-3
    # without padding the flip *is* the right reversal, so the same code passes
    bd.check_manual_bilstm(torch.float64, None).assert_ok()


def test_planted_shared_weights_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Using the forward weights for the backward direction (ignoring *_reverse) must fail."""
    real_split = bd.split_bidirectional

    def forward_twice(bi: nn.LSTM) -> tuple[nn.LSTM, nn.LSTM]:
        fwd, _ = real_split(bi)
        return fwd, real_split(bi)[0]

    monkeypatch.setattr(bd, "split_bidirectional", forward_twice)
    report = bd.check_manual_bilstm(torch.float64, None)
    assert not report.ok and report.errors["output"] > 1e-3


def test_reverse_padded() -> None:
    x = torch.tensor([[11, 12, 13, 14, 15], [21, 22, 23, 0, 0], [31, 0, 0, 0, 0]])
    L = torch.tensor([5, 3, 1])
    r = bd.reverse_padded(x, L)
    assert r.tolist() == [[15, 14, 13, 12, 11], [23, 22, 21, 0, 0], [31, 0, 0, 0, 0]]
    assert torch.equal(bd.reverse_padded(r, L), x)
    x3 = torch.randn(3, 5, 4)
    r3 = bd.reverse_padded(x3, L)
    assert torch.equal(r3[1, :3], x3[1, :3].flip(0)) and torch.equal(r3[1, 3:], x3[1, 3:])
    assert torch.equal(bd.reverse_padded(x3, torch.tensor([5, 5, 5])), x3.flip(1))


def test_split_bidirectional_copies_reverse_weights() -> None:
    bi = nn.LSTM(3, 2, batch_first=True, bidirectional=True)
    fwd, bwd = bd.split_bidirectional(bi)
    assert torch.equal(fwd.weight_hh_l0, bi.weight_hh_l0) and torch.equal(bwd.weight_hh_l0, bi.weight_hh_l0_reverse)
    assert not fwd.bidirectional and not bwd.bidirectional
    with pytest.raises(ValueError):
        bd.split_bidirectional(nn.LSTM(3, 2))
    with pytest.raises(ValueError):
        bd.split_bidirectional(nn.LSTM(3, 2, num_layers=2, bidirectional=True))


def test_run_lstm_masked_matches_each_sequence_alone() -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 3, batch_first=True).double()
    x = torch.randn(3, 6, 4, dtype=torch.float64)
    L = torch.tensor([6, 2, 4])
    out, (h, c) = bd.run_lstm_masked(lstm, x, L)
    for b, n in enumerate(L.tolist()):
        alone, (h1, c1) = lstm(x[b : b + 1, :n])
        assert (out[b, :n] - alone[0]).abs().max() < 1e-12
        assert (out[b, n:] == 0).all(), "outputs at padding are zero, as pad_packed_sequence gives"
        assert (h[0, b] - h1[0, 0]).abs().max() < 1e-12 and (c[0, b] - c1[0, 0]).abs().max() < 1e-12


@functools.lru_cache(maxsize=1)
def _polarity():
    from dlbook.data import load_polarity

    return load_polarity("quick")


@pytest.fixture
def polarity(mirror):
    return _polarity()


def test_packed_batch_equals_sentences_alone(polarity) -> None:
    torch.manual_seed(0)
    embed = nn.Embedding(len(polarity.vocab), 8, padding_idx=0)
    lstm = nn.LSTM(8, 6, batch_first=True, bidirectional=True)
    ids, L, _ = polarity.encode(polarity.split("test")[:12])
    assert int(L.min()) < int(L.max()), "the batch must actually be padded"
    with torch.no_grad():
        x = embed(ids)
    packed = bd.compare_with_alone(lstm, x, L, packed=True)
    naive = bd.compare_with_alone(lstm, x, L, packed=False)
    assert max(float(v.max()) for v in packed.values()) < 1e-6
    assert float(naive["forward output"].max()) < 1e-6, "padding comes after: forward outputs are unaffected"
    assert float(naive["backward output"].max()) > 1e-3, "the unpacked backward direction must read the padding"
    assert float(naive["h_n forward"].max()) > 1e-3
    longest = int(L.argmax())
    assert float(naive["backward output"][longest]) < 1e-6, "the longest sentence has no padding"


def test_bilstm_classifier_ignores_extra_padding(polarity) -> None:
    torch.manual_seed(0)
    model = BiLSTMClassifier(len(polarity.vocab), 8, 6, num_classes=3).eval()
    ids, L, _ = polarity.encode(polarity.split("val")[:5])
    with torch.no_grad():
        a = model(ids, L)
        b = model(torch.cat([ids, torch.zeros(5, 4, dtype=torch.long)], 1), L)
    assert a.shape == (5, 3)
    assert (a - b).abs().max() < 1e-6


def test_batching_strategies_cover_everything_once() -> None:
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 60, (1000,), generator=gen)
    strategies = {
        "random": bd.random_batches(1000, 32, gen),
        "bucketed": bd.bucketed_batches(lengths, 32, gen, bucket=10),
        "sorted": bd.sorted_batches(lengths, 32),
    }
    for batches in strategies.values():
        assert sorted(torch.cat(batches).tolist()) == list(range(1000))
        assert max(len(b) for b in batches) == 32
    waste = {k: float(bd.padding_fraction(lengths, v).mean()) for k, v in strategies.items()}
    assert waste["sorted"] <= waste["bucketed"] < 0.5 * waste["random"]
    one = bd.padding_fraction(torch.tensor([2, 4, 4]), [torch.tensor([0, 1, 2])])
    assert one.tolist() == pytest.approx([1 - 10 / 12])
