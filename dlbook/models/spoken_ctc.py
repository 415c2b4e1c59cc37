"""Reading spoken digit strings with CTC: features, length-bucketed batches, decoding and the metric.

The pieces around :class:`dlbook.models.crnn.CRNN` that speech needs and text lines did not
(chapters/fusion/spoken-digit-strings.ipynb):

* :func:`utterance_features` computes the log-mel spectrogram of every utterance with the steps of
  :mod:`dlbook.audio` (the speech-features lesson) and normalises it band by band (cepstral mean and
  variance normalisation, :func:`cmvn`), which removes the constant offset a voice or a microphone
  adds to every frame;
* utterances have different lengths, so :class:`UtteranceBatches` groups utterances of similar
  length into padded batches and hands ``fit`` the number of valid frames of each;
* :func:`decode` reads the model's output greedily or with prefix beam search
  (:mod:`dlbook.models.ctc_beam`), and :func:`digit_error_rate` is the edit distance over the
  number of true digits (the character error rate of ``torchmetrics`` on digit strings).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .. import audio
from ..data.digit_strings import labels_to_text
from ..data.spoken_strings import SpokenStrings
from .crnn import greedy_decode
from .ctc_beam import beam_decode

Tensor = torch.Tensor
def cmvn(features: Tensor) -> Tensor:
    """Per-utterance mean and variance normalisation of each band over time: (M, T) -> (M, T)."""
    mean = features.mean(1, keepdim=True)
    std = features.std(1, keepdim=True) if features.shape[1] > 1 else torch.ones_like(mean)
    return (features - mean) / (std + 1e-3)


def utterance_features(data: SpokenStrings, n_fft: int = 256, hop: int = 160, n_mels: int = 32) -> list[Tensor]:
    """Normalised log-mel features of every utterance: a list of (n_mels, T_i) float32 tensors,
    T_i = 1 + samples // hop. The steps of :mod:`dlbook.audio` (|STFT|^2 of Hann-windowed frames of
    ``n_fft`` samples every ``hop``, Slaney mel filterbank, dB with an 80 dB floor below each
    utterance's peak), then :func:`cmvn`; the filterbank is built once for all utterances."""
    bank = audio.mel_filterbank(data.sample_rate, n_fft, n_mels).float()
    window = audio.hann_window(n_fft, dtype=torch.float32)
    out = []
    for wave in data.waves:
        power = audio.power_spectrogram(torch.from_numpy(wave), n_fft, hop, window=window)
        out.append(cmvn(audio.power_to_db(bank @ power)))
    return out


def pad_features(features: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Stack (M, T_i) features as (N, 1, M, max T) images, zero padded at the end (after CMVN, zero
    is the utterance's mean), with the lengths T_i (N,)."""
    lengths = torch.tensor([f.shape[1] for f in features])
    out = torch.zeros(len(features), 1, features[0].shape[0], int(lengths.max()))
    for i, f in enumerate(features):
        out[i, 0, :, : f.shape[1]] = f
    return out, lengths


class UtteranceBatches:
    """Batches for ``fit`` (called once per epoch): utterances sorted by length are cut into batches
    of ``batch_size`` neighbours, so little padding is wasted, and the batches are visited in a
    seeded random order that changes every epoch. Each batch is ``(features (B, 1, M, T), targets
    (B, L), target lengths (B,), frame lengths (B,))``."""

    def __init__(self, features: list[Tensor], targets: Tensor, lengths: Tensor, batch_size: int,
                 seed: int = 0) -> None:
        if len(features) != len(targets) or len(features) != len(lengths):
            raise ValueError(f"{len(features)} utterances, {len(targets)} targets, {len(lengths)} lengths")
        self.features, self.targets, self.lengths = features, targets, lengths
        order = np.argsort([f.shape[1] for f in features], kind="stable")
        self.groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.groups)

    def __call__(self) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
        batches = []
        for g in self.rng.permutation(len(self.groups)):
            idx = self.groups[g]
            x, frames = pad_features([self.features[i] for i in idx])
            batches.append((x, self.targets[idx], self.lengths[idx], frames))
        return batches


@torch.no_grad()
def predict_log_probs(model: nn.Module, features: list[Tensor], device: torch.device | str = "cpu",
                      batch_size: int = 64) -> list[Tensor]:
    """The model's (T_i', C) log-probabilities for every utterance, its valid output frames only
    (T_i' = T_i // downsample), on the CPU, in eval mode; batches of similar length."""
    model.eval()
    order = np.argsort([f.shape[1] for f in features], kind="stable")
    out: list[Tensor | None] = [None] * len(features)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        x, frames = pad_features([features[i] for i in idx])
        log_probs = model(x.to(device)).cpu()  # (T', B, C)
        for k, i in enumerate(idx):
            out[i] = log_probs[: int(frames[k]) // model.downsample, k]
    return out  # type: ignore[return-value]


def decode(log_probs: list[Tensor], beam: int | None = None) -> list[str]:
    """Digit strings read from per-utterance (T_i, C) log-probabilities: greedy (best path) when
    ``beam`` is None, else prefix beam search with that width."""
    if beam is None:
        return [labels_to_text(greedy_decode(lp[:, None])[0]) for lp in log_probs]
    return [labels_to_text(beam_decode(lp[:, None], beam)[0]) for lp in log_probs]


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: the fewest substitutions, deletions and insertions turning a into b."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row = row, [i]
        for j, cb in enumerate(b, 1):
            row.append(min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (ca != cb)))
    return row[-1]


def digit_error_rate(predicted: list[str], truth: list[str]) -> float:
    """Sum of the edit distances over the total number of true digits (eq-spoken-der); may exceed 1
    when the model inserts digits."""
    if len(predicted) != len(truth) or not truth:
        raise ValueError(f"need equally many predictions and truths, at least one: {len(predicted)}, {len(truth)}")
    total = sum(len(t) for t in truth)
    if total == 0:
        raise ValueError("the truths hold no digit")
    return sum(edit_distance(p, t) for p, t in zip(predicted, truth)) / total


def string_accuracy(predicted: list[str], truth: list[str]) -> float:
    """Fraction of utterances read exactly."""
    return sum(p == t for p, t in zip(predicted, truth)) / len(truth)


def frames_needed(text: str) -> int:
    """Fewest CTC frames that can hold ``text``: one per digit plus a blank between equal neighbours."""
    return len(text) + sum(a == b for a, b in zip(text, text[1:]))


def seconds_per_frame(hop: int, sample_rate: int, downsample: int) -> float:
    """Duration of one output frame of the model."""
    return hop * downsample / sample_rate


__all__ = ["UtteranceBatches", "cmvn", "decode", "digit_error_rate", "edit_distance", "frames_needed",
           "pad_features", "predict_log_probs", "seconds_per_frame",
           "string_accuracy", "utterance_features"]
