"""Spoken-digit classifiers of the spoken-digits lesson: a recurrent network over MFCC frames
(packed, so padding changes nothing), a small CNN on the log-mel image, and a frame-averaging
baseline that ignores the order of the frames."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence


def _valid(x: Tensor, lengths: Tensor) -> Tensor:
    """A (B, T, 1) mask, 1 at the first ``lengths[b]`` frames of each recording."""
    steps = torch.arange(x.shape[1], device=x.device)
    return (steps[None, :] < lengths.to(x.device)[:, None]).unsqueeze(-1).to(x.dtype)


class RNNSpeechClassifier(nn.Module):
    """A one-layer GRU or LSTM over the feature frames; the final state after each recording's last
    *real* frame (a packed sequence) goes to a linear layer. ``forward(x (B, T, F), lengths (B,))``."""

    def __init__(self, n_features: int, hidden: int, *, cell: str = "gru", num_classes: int = 10):
        super().__init__()
        if cell not in ("gru", "lstm"):
            raise ValueError(f"cell must be 'gru' or 'lstm', got {cell!r}")
        self.rnn = (nn.GRU if cell == "gru" else nn.LSTM)(n_features, hidden, batch_first=True)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        x = x[:, : int(lengths.max())]  # the batch's own longest recording, not the data set's
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, state = self.rnn(packed)
        h_n = state[0] if isinstance(state, tuple) else state  # LSTM returns (h_n, c_n)
        return self.classifier(h_n[-1])


class MeanFeatureClassifier(nn.Module):
    """The frame-averaging baseline: the mean and standard deviation of each feature over a
    recording's valid frames (order thrown away), then logistic regression (``hidden=None``) or a
    one-hidden-layer MLP. ``forward(x (B, T, F), lengths (B,))``."""

    def __init__(self, n_features: int, *, hidden: int | None = None, num_classes: int = 10):
        super().__init__()
        d = 2 * n_features
        self.head = (nn.Linear(d, num_classes) if hidden is None
                     else nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)))

    @staticmethod
    def pool(x: Tensor, lengths: Tensor) -> Tensor:
        mask = _valid(x, lengths)
        n = mask.sum(1).clamp_min(1)
        mean = (x * mask).sum(1) / n
        var = (((x - mean[:, None]) * mask) ** 2).sum(1) / n
        return torch.cat([mean, var.sqrt()], dim=-1)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        return self.head(self.pool(x, lengths))


class LogMelCNN(nn.Module):
    """A small CNN on the log-mel image ``(B, n_mels, T)`` (T fixed by cropping/padding): two 3x3
    convolutions (batch-normalised) with max pooling, a third, global max pooling (where in time and frequency a
    pattern occurs matters less than whether it occurs), a linear layer. ``forward(image)``."""

    def __init__(self, channels: int = 16, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.BatchNorm2d(2 * channels), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * channels, 2 * channels, 3, padding=1), nn.BatchNorm2d(2 * channels), nn.ReLU(),
            nn.AdaptiveMaxPool2d(1),
        )
        self.classifier = nn.Linear(2 * channels, num_classes)

    def forward(self, image: Tensor) -> Tensor:
        return self.classifier(self.features(image.unsqueeze(1)).flatten(1))


__all__ = ["LogMelCNN", "MeanFeatureClassifier", "RNNSpeechClassifier"]
