"""Real text for the sequence chapters: tiny Shakespeare (characters) and sentence polarity (words).

Both come through the checksummed registry (mirror first, then cache, then the URL), so a
missing file gives :class:`~dlbook.data.download.MissingDataError` saying how to fix it.
There is no torchtext here (it is retired): tokenising, the vocabulary and padding are a few
lines of plain Python and :func:`torch.nn.utils.rnn.pad_sequence`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from ..runtime import Profile
from ..runtime import profile as current_profile
from .download import fetch

# --------------------------------------------------------------------------- characters

#: characters of tiny Shakespeare used per profile (the text is 1,115,394 characters).
SHAKESPEARE_CHARS = {"quick": 300_000, "full": None}


@dataclass
class CharCorpus:
    """A character corpus: the vocabulary and contiguous train/val/test id streams."""

    vocab: tuple[str, ...]
    train: Tensor
    val: Tensor
    test: Tensor
    profile: Profile

    @property
    def stoi(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.vocab)}

    def encode(self, text: str) -> Tensor:
        """int64 ids of ``text``; a character outside the vocabulary is a ``KeyError`` naming it."""
        table = self.stoi
        try:
            return torch.tensor([table[c] for c in text], dtype=torch.long)
        except KeyError as exc:
            raise KeyError(f"character {exc.args[0]!r} is not in the {len(self.vocab)}-character vocabulary") from None

    def decode(self, ids: Iterable[int] | Tensor) -> str:
        values = ids.tolist() if isinstance(ids, Tensor) else ids
        return "".join(self.vocab[int(i)] for i in values)

    def describe(self) -> str:
        return (f"tiny Shakespeare ({self.profile}): {len(self.vocab)} characters in the vocabulary; "
                f"train {len(self.train):,}, val {len(self.val):,}, test {len(self.test):,} characters")


def read_shakespeare() -> str:
    """The whole of tiny Shakespeare as one string."""
    return fetch("tinyshakespeare/input.txt").read_text(encoding="utf-8")


def load_shakespeare(which: Profile | None = None, *, fractions: tuple[float, float] = (0.9, 0.05)) -> CharCorpus:
    """Tiny Shakespeare as id streams: contiguous 90/5/5 % train/val/test slices.

    The vocabulary always comes from the whole text (65 characters), so ids mean the same in
    both profiles; ``quick`` keeps the first 300,000 characters. Contiguous slices, not shuffled
    lines: a language model must be tested on text it has not read.
    """
    which = which or current_profile()
    text = read_shakespeare()
    vocab = tuple(sorted(set(text)))
    limit = SHAKESPEARE_CHARS[which]
    if limit is not None:
        text = text[:limit]
    table = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([table[c] for c in text], dtype=torch.long)
    n_train = int(len(ids) * fractions[0])
    n_val = int(len(ids) * fractions[1])
    return CharCorpus(vocab, ids[:n_train], ids[n_train:n_train + n_val], ids[n_train + n_val:], which)


def char_windows(ids: Tensor, seq_len: int, stride: int | None = None) -> tuple[Tensor, Tensor]:
    """Inputs and next-character targets, both (N, seq_len), cut from one id stream.

    Window ``i`` starts at ``i * stride`` (default ``seq_len``: non-overlapping); the target is
    the input shifted by one character.
    """
    stride = stride or seq_len
    if len(ids) < seq_len + 1:
        raise ValueError(f"a stream of {len(ids)} ids is too short for windows of {seq_len} + 1")
    starts = torch.arange(0, len(ids) - seq_len, stride)
    offsets = torch.arange(seq_len)
    x = ids[starts[:, None] + offsets]
    y = ids[starts[:, None] + offsets + 1]
    return x, y


# --------------------------------------------------------------------------- words

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def tokenize(sentence: str) -> list[str]:
    """Lower-case word and punctuation tokens: ``"It's great!" -> ["it's", "great", "!"]``."""
    return _TOKEN.findall(sentence.lower())


class Vocab:
    """Token <-> id table with ``<pad>`` = 0 and ``<unk>`` = 1, built from training text only."""

    PAD, UNK = "<pad>", "<unk>"

    def __init__(self, tokens: Sequence[str]):
        self.itos: list[str] = [self.PAD, self.UNK, *[t for t in tokens if t not in (self.PAD, self.UNK)]]
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos)}

    @classmethod
    def build(cls, texts: Iterable[Sequence[str]], min_freq: int = 1, max_size: int | None = None) -> Vocab:
        """Most frequent first, ties broken alphabetically (so the table is deterministic)."""
        counts = Counter(t for text in texts for t in text)
        ranked = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
        return cls(ranked[:max_size] if max_size else ranked)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def unk_id(self) -> int:
        return 1

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        return [self.stoi.get(t, 1) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[int(i)] for i in ids]


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Right-padded (B, T_max) int64 ids and the (B,) true lengths (kept on the CPU, as
    :func:`~torch.nn.utils.rnn.pack_padded_sequence` wants them)."""
    if not sequences:
        raise ValueError("pad_batch needs at least one sequence")
    tensors = [torch.as_tensor(list(s) or [pad_id], dtype=torch.long) for s in sequences]
    lengths = torch.tensor([max(len(s), 1) for s in sequences], dtype=torch.long)
    return pad_sequence(tensors, batch_first=True, padding_value=pad_id), lengths


@dataclass
class PolarityData:
    """Sentence polarity: tokenised sentences, labels (1 = positive), seeded splits, a vocabulary."""

    sentences: list[str]
    tokens: list[list[str]]
    labels: Tensor
    train_idx: Tensor
    val_idx: Tensor
    test_idx: Tensor
    vocab: Vocab
    profile: Profile

    def split(self, name: str) -> Tensor:
        """Indices of ``"train"``, ``"val"`` or ``"test"``."""
        try:
            return {"train": self.train_idx, "val": self.val_idx, "test": self.test_idx}[name]
        except KeyError:
            raise ValueError(f"split must be train, val or test, not {name!r}") from None

    def encode(self, index: Tensor | Sequence[int], max_len: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Padded ids (B, T), lengths (B,) and labels (B,) for the given sentence indices;
        ``max_len`` truncates long sentences."""
        rows = [int(i) for i in index]
        ids = [self.vocab.encode(self.tokens[i][:max_len] if max_len else self.tokens[i]) for i in rows]
        x, lengths = pad_batch(ids, self.vocab.pad_id)
        return x, lengths, self.labels[torch.tensor(rows, dtype=torch.long)]

    def describe(self) -> str:
        return (f"sentence polarity ({self.profile}): {len(self.sentences):,} sentences, vocabulary "
                f"{len(self.vocab):,}; train {len(self.train_idx):,}, val {len(self.val_idx):,}, "
                f"test {len(self.test_idx):,}")


def read_polarity() -> tuple[list[str], list[int]]:
    """All 10,662 sentences (positive first) and their labels. The files are Latin-1 encoded."""
    sentences: list[str] = []
    labels: list[int] = []
    for key, label in (("rt-polarity/rt-polarity.pos", 1), ("rt-polarity/rt-polarity.neg", 0)):
        lines = [line.strip() for line in fetch(key).read_text(encoding="latin-1").splitlines()]
        lines = [line for line in lines if line]
        sentences += lines
        labels += [label] * len(lines)
    return sentences, labels


def load_polarity(
    which: Profile | None = None,
    *,
    seed: int = 0,
    fractions: tuple[float, float] = (0.8, 0.1),
    min_freq: int = 2,
) -> PolarityData:
    """Sentence polarity with a seeded 80/10/10 split; the vocabulary comes from the training
    split only (words seen at least ``min_freq`` times), so test words can be unknown.

    The data set is small (10,662 sentences), so both profiles use all of it; the profile only
    changes model sizes and epochs in the lessons.
    """
    which = which or current_profile()
    sentences, labels = read_polarity()
    tokens = [tokenize(s) for s in sentences]
    order = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(seed))
    n_train = int(len(order) * fractions[0])
    n_val = int(len(order) * fractions[1])
    train_idx, val_idx, test_idx = order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]
    vocab = Vocab.build((tokens[int(i)] for i in train_idx), min_freq=min_freq)
    return PolarityData(sentences, tokens, torch.tensor(labels, dtype=torch.long),
                        train_idx, val_idx, test_idx, vocab, which)
