"""Text and series loaders: real data from the mirror, deterministic splits, clear errors."""

from __future__ import annotations

import pytest
import torch

from dlbook.data import (
    MissingDataError,
    Vocab,
    char_windows,
    load_polarity,
    load_shakespeare,
    load_sunspots,
    make_windows,
    pad_batch,
    tokenize,
)


def test_shakespeare_quick_is_contiguous_and_round_trips(mirror):
    corpus = load_shakespeare("quick")
    assert len(corpus.vocab) == 65
    assert len(corpus.train) + len(corpus.val) + len(corpus.test) == 300_000
    assert corpus.decode(corpus.train[:14]) == "First Citizen:"
    text = "To be, or not to be"
    assert corpus.decode(corpus.encode(text)) == text
    with pytest.raises(KeyError, match="not in the 65-character vocabulary"):
        corpus.encode("ü")


def test_char_windows_targets_are_inputs_shifted_by_one():
    ids = torch.arange(23)
    x, y = char_windows(ids, seq_len=5)
    assert x.shape == y.shape == (4, 5)
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(x[1], torch.arange(5, 10))
    x2, _ = char_windows(ids, seq_len=5, stride=2)
    assert x2[1, 0] == 2
    with pytest.raises(ValueError, match="too short"):
        char_windows(torch.arange(3), seq_len=5)


def test_tokenize_and_vocab():
    assert tokenize("It's GREAT -- truly!") == ["it's", "great", "-", "-", "truly", "!"]
    vocab = Vocab.build([["b", "a", "b"], ["c", "a", "b"]], min_freq=2)
    assert vocab.itos == ["<pad>", "<unk>", "b", "a"]  # most frequent first; c dropped (seen once)
    assert vocab.encode(["a", "zzz"]) == [3, 1] and vocab.decode([2, 3]) == ["b", "a"]


def test_pad_batch_pads_right_and_keeps_lengths():
    x, lengths = pad_batch([[5, 6, 7], [8]])
    assert x.tolist() == [[5, 6, 7], [8, 0, 0]] and lengths.tolist() == [3, 1]
    with pytest.raises(ValueError):
        pad_batch([])


def test_polarity_splits_are_disjoint_balanced_and_seeded(mirror):
    data = load_polarity("quick")
    assert len(data.sentences) == 10_662 and int(data.labels.sum()) == 5_331
    parts = [set(data.split(s).tolist()) for s in ("train", "val", "test")]
    assert sum(map(len, parts)) == 10_662 and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert torch.equal(load_polarity("quick").train_idx, data.train_idx)
    x, lengths, y = data.encode(data.split("val")[:8], max_len=10)
    assert x.shape[0] == 8 and x.shape[1] == int(lengths.max()) <= 10 and y.shape == (8,)
    # the vocabulary is built from training sentences only
    train_words = {t for i in data.train_idx.tolist() for t in data.tokens[i]}
    assert set(data.vocab.itos[2:]) <= train_words
    with pytest.raises(ValueError, match="split must be"):
        data.split("dev")


def test_missing_text_data_says_what_to_do(isolated_data, monkeypatch):
    monkeypatch.setattr("dlbook.data.download._download", _offline)
    with pytest.raises(MissingDataError, match="DLBOOK_DATA_MIRROR"):
        load_shakespeare("quick")
    with pytest.raises(MissingDataError, match="rt-polarity"):
        load_polarity("quick")


def _offline(url, target, timeout):
    raise OSError("network is unreachable")


def test_sunspots_and_windows():
    series = load_sunspots()
    assert len(series) == 309 and series.years[0] == 1700 and series.years[-1] == 2008
    x, y = make_windows(series.values, window=11, horizon=2)
    assert x.shape == (297, 11, 1) and y.shape == (297, 2)
    assert torch.equal(x[3, :, 0], series.values[3:14]) and torch.equal(y[3], series.values[14:16])
    with pytest.raises(ValueError, match="too short"):
        make_windows(series.values[:5], window=5)
