"""Spoken digit strings: Free Spoken Digit Dataset recordings joined into utterances of 1-5 digits.

The audio counterpart of :mod:`dlbook.data.digit_strings` (chapters/fusion/spoken-digit-strings.ipynb):
a string of ``min_len`` to ``max_len`` digits is said by *one* speaker, drawn at random from the
speakers given; each digit is one of that speaker's recordings of it, scaled by a random gain of
``gain_db`` decibels (so the loudness varies from digit to digit, as in real speech), and the
recordings are joined with random silences of ``gap_s`` seconds between them and ``edge_s`` seconds
before the first and after the last. Nothing says where one digit ends and the next begins: the
labels are what a CTC model needs.

* ``waves``: list of N float32 numpy arrays (variable length, ``sample_rate`` Hz);
* ``targets`` int64 (N, max_len): the CTC class of each digit, ``digit + 1``, padded with the blank
  0 (:data:`dlbook.data.digit_strings.BLANK`), exactly as for the handwritten strips;
* ``lengths`` int64 (N,): the number of digits; ``speakers``: the speaker of each string;
* ``spans`` int64 (N, max_len, 2): first and one-past-last sample of each recording (-1 where
  there is no digit), only for drawing: training never sees it.

The generator takes the recordings as arrays (``waves``, ``digits``, ``speakers``), not the loader,
so the tests run on fake recordings and the held-out strings can be built from other speakers:
:func:`make_spoken_string_split` gives training and held-out strings whose speakers are disjoint.
Everything is drawn from one seeded ``numpy.random.Generator``: the same arguments give the same
strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .digit_strings import BLANK, labels_to_text

Tensor = torch.Tensor


@dataclass
class SpokenStrings:
    """``waves`` N float32 arrays; ``targets`` int64 (N, max_len) digit + 1 padded with 0 (blank);
    ``lengths`` int64 (N,); ``speakers`` N names; ``spans`` int64 (N, max_len, 2) sample ranges
    [start, end) of the digits, -1 where there is none; ``sample_rate`` in Hz."""

    waves: list[np.ndarray]
    targets: Tensor
    lengths: Tensor
    speakers: list[str]
    spans: Tensor
    sample_rate: int

    def __len__(self) -> int:
        return len(self.waves)

    def text(self, i: int) -> str:
        """The digit string of utterance ``i``, e.g. ``"3141"``."""
        return labels_to_text(self.targets[i, : int(self.lengths[i])].tolist())

    @property
    def texts(self) -> list[str]:
        """The digit string of every utterance."""
        return [self.text(i) for i in range(len(self))]

    @property
    def durations(self) -> np.ndarray:
        """Length of each utterance in seconds."""
        return np.array([len(w) for w in self.waves]) / self.sample_rate

    def select(self, index: Sequence[int] | slice) -> SpokenStrings:
        """The utterances at ``index`` (a slice or a list of positions), as a new SpokenStrings."""
        rows = list(range(len(self)))[index] if isinstance(index, slice) else [int(i) for i in index]
        return SpokenStrings([self.waves[i] for i in rows], self.targets[rows], self.lengths[rows],
                             [self.speakers[i] for i in rows], self.spans[rows], self.sample_rate)


def make_spoken_strings(
    waves: Sequence[np.ndarray],
    digits: Sequence[int] | np.ndarray,
    speakers: Sequence[str],
    n: int,
    *,
    sample_rate: int = 8000,
    min_len: int = 1,
    max_len: int = 5,
    gap_s: tuple[float, float] = (0.05, 0.3),
    edge_s: tuple[float, float] = (0.0, 0.2),
    gain_db: tuple[float, float] = (-6.0, 6.0),
    seed: int = 0,
) -> SpokenStrings:
    """``n`` utterances of ``min_len``..``max_len`` digits from the recordings ``waves`` (1-D float
    arrays at ``sample_rate``) with their ``digits`` (0..9) and ``speakers``; see the module docstring.
    ``gap_s`` and ``edge_s`` are uniform ranges in seconds, ``gain_db`` a uniform range in decibels
    (a gain of g dB multiplies the samples by 10^(g/20)).

    Raises ``ValueError`` on inconsistent inputs, bad ranges, or a speaker lacking some digit.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")
    for name, (lo, hi) in {"gap_s": gap_s, "edge_s": edge_s}.items():
        if not 0 <= lo <= hi:
            raise ValueError(f"{name} must be a range 0 <= low <= high seconds, got {(lo, hi)}")
    if gain_db[0] > gain_db[1]:
        raise ValueError(f"gain_db must be a range low <= high, got {gain_db}")
    digits = np.asarray(digits, dtype=np.int64)
    if not len(waves) == len(digits) == len(speakers):
        raise ValueError(f"{len(waves)} waves, {len(digits)} digits and {len(speakers)} speakers: "
                         "need one digit and one speaker per recording")
    if len(waves) == 0:
        raise ValueError("need at least one recording")
    if digits.min() < 0 or digits.max() > 9:
        raise ValueError("digits must be 0..9")
    names = sorted(set(speakers))
    speaker_arr = np.asarray(speakers)
    # pool[s][d]: indices of speaker s's recordings of digit d
    pool = [[np.flatnonzero((speaker_arr == s) & (digits == d)) for d in range(10)] for s in names]
    for s, per_digit in zip(names, pool):
        missing = [d for d in range(10) if len(per_digit[d]) == 0]
        if missing:
            raise ValueError(f"speaker {s!r} has no recording of digit(s) {missing}: every speaker "
                             "must say every digit (drop the speaker or add recordings)")

    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, n)
    who = rng.integers(0, len(names), n)
    said = rng.integers(0, 10, (n, max_len))
    pick = rng.random((n, max_len))  # which recording of the digit, as a fraction of the pool
    gaps = rng.uniform(*gap_s, (n, max_len + 1))  # [0]: before the first, [j]: after digit j - 1
    gaps[:, 0] = rng.uniform(*edge_s, n)
    tail = rng.uniform(*edge_s, n)
    gains = 10.0 ** (rng.uniform(*gain_db, (n, max_len)) / 20.0)

    out_waves: list[np.ndarray] = []
    spans = np.full((n, max_len, 2), -1, dtype=np.int64)
    for i in range(n):
        parts, pos = [], 0
        for j in range(int(lengths[i])):
            silence = round(gaps[i, j] * sample_rate)
            candidates = pool[who[i]][said[i, j]]
            clip = np.asarray(waves[candidates[int(pick[i, j] * len(candidates))]], dtype=np.float32)
            parts += [np.zeros(silence, np.float32), clip * np.float32(gains[i, j])]
            spans[i, j] = pos + silence, pos + silence + len(clip)
            pos += silence + len(clip)
        parts.append(np.zeros(round(tail[i] * sample_rate), np.float32))
        out_waves.append(np.concatenate(parts))
    active = np.arange(max_len) < lengths[:, None]
    targets = np.where(active, said + 1, BLANK)
    return SpokenStrings(out_waves, torch.from_numpy(targets), torch.from_numpy(lengths.astype(np.int64)),
                         [names[w] for w in who], torch.from_numpy(spans), sample_rate)


def make_spoken_string_split(
    waves: Sequence[np.ndarray],
    digits: Sequence[int] | np.ndarray,
    speakers: Sequence[str],
    held_out: Sequence[str],
    n_train: int,
    n_val: int,
    *,
    seed: int = 0,
    **kwargs,
) -> tuple[SpokenStrings, SpokenStrings]:
    """Training utterances from every speaker not in ``held_out`` and held-out utterances from the
    ``held_out`` speakers only: a speaker-independent split, since a random split of strings would
    let the model meet the test voices in training. ``kwargs`` go to :func:`make_spoken_strings`."""
    speaker_arr = np.asarray(speakers)
    unknown = set(held_out) - set(speaker_arr.tolist())
    if unknown or not held_out:
        raise ValueError(f"held_out must name at least one known speaker; unknown: {sorted(unknown)}")
    test_rows = np.isin(speaker_arr, list(held_out))
    if test_rows.all():
        raise ValueError("every speaker is held out: nobody is left to train on")

    def subset(rows: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
        index = np.flatnonzero(rows)
        return [waves[i] for i in index], np.asarray(digits)[index], speaker_arr[index].tolist()

    train = make_spoken_strings(*subset(~test_rows), n_train, seed=seed, **kwargs)
    val = make_spoken_strings(*subset(test_rows), n_val, seed=seed + 1, **kwargs)
    return train, val
