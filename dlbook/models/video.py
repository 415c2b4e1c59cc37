"""Video classifiers from a per-frame CNN: one shared encoder, then either an LSTM or a time average.

Used by ``chapters/fusion/video-cnn-lstm.ipynb``; the equation labels below are that lesson's.

A clip is a tensor (B, T, C, H, W). Every model here starts the same way (eq-vid-encoder): one CNN
:class:`FrameEncoder` with **the same weights for every frame**, applied by folding time into the
batch, (B, T, C, H, W) -> (B*T, C, H, W) -> encoder -> (B*T, D) -> (B, T, D). What comes next decides
what the model can see:

* :class:`CNNLSTMClassifier` runs an ``nn.LSTM`` over the T feature vectors in order and classifies
  its last hidden state (eq-vid-lstm, eq-vid-lstm-head): it can tell which frame came first.
* :class:`FrameAverageClassifier` averages the T feature vectors and classifies the mean with a small
  MLP (eq-vid-average). A mean does not depend on the order of its terms (eq-vid-permutation), so
  this model gives the same output for a clip and for any shuffle of its frames.

The encoder keeps *where* things are: it flattens its last feature map instead of pooling it
globally, because a motion task needs the position of the digit in every frame.
"""

from __future__ import annotations

import torch
from torch import nn

from ..scratch.gates import LSTMScratch, copy_from_torch, lstm_param_count

Tensor = torch.Tensor


def fold_time(clips: Tensor) -> Tensor:
    """(B, T, C, H, W) -> (B*T, C, H, W): frames of all clips become one batch of images."""
    if clips.dim() != 5:
        raise ValueError(f"clips must be (B, T, C, H, W), got shape {tuple(clips.shape)}")
    return clips.flatten(0, 1)


def unfold_time(features: Tensor, batch: int) -> Tensor:
    """(B*T, D) -> (B, T, D): undo :func:`fold_time` on the encoder's output."""
    return features.unflatten(0, (batch, -1))


def encode_clips(encoder: nn.Module, clips: Tensor) -> Tensor:
    """e_t = phi(x_t) for every frame of every clip, one encoder call (eq-vid-encoder): (B, T, D)."""
    return unfold_time(encoder(fold_time(clips)), len(clips))


def encode_clips_looped(encoder: nn.Module, clips: Tensor) -> Tensor:
    """The same as :func:`encode_clips`, one encoder call per time step (T calls; for checking)."""
    return torch.stack([encoder(clips[:, t]) for t in range(clips.shape[1])], dim=1)


def shuffle_frames(clips: Tensor, generator: torch.Generator) -> Tensor:
    """Each clip's frames in its own random order (permutations drawn on the CPU from ``generator``)."""
    order = torch.rand(clips.shape[:2], generator=generator).argsort(dim=1).to(clips.device)  # (B, T)
    return torch.gather(clips, 1, order.view(*order.shape, 1, 1, 1).expand_as(clips))


class FrameEncoder(nn.Module):
    """phi: one frame (C, S, S) -> a feature vector (dim,).

    Two stride-2 convolutions (5x5 then 3x3, each + ReLU) shrink S to S/4, then the map is
    flattened (keeping the position of what was seen) and projected to ``dim`` with a ReLU.
    """

    def __init__(self, in_channels: int = 1, size: int = 32, channels: tuple[int, int] = (8, 16), dim: int = 32):
        super().__init__()
        if size % 4:
            raise ValueError(f"size must be a multiple of 4 (two stride-2 convolutions), got {size}")
        c1, c2 = channels
        self.dim = dim
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, stride=2, padding=2), nn.ReLU(),  # S -> S/2
            nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.ReLU(),  # S/2 -> S/4
            nn.Flatten(), nn.Linear(c2 * (size // 4) ** 2, dim), nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class CNNLSTMClassifier(nn.Module):
    """Shared per-frame CNN -> LSTM over time -> linear on the last hidden state (eq-vid-lstm-head)."""

    def __init__(self, encoder: FrameEncoder, hidden: int = 32, num_classes: int = 2):
        super().__init__()
        self.encoder = encoder
        self.lstm = nn.LSTM(encoder.dim, hidden, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, clips: Tensor) -> Tensor:
        features = encode_clips(self.encoder, clips)  # (B, T, D), eq-vid-encoder
        _, (h_last, _) = self.lstm(features)  # h_last (1, B, hidden): the state after frame T
        return self.head(h_last[0])  # (B, num_classes)


class FrameAverageClassifier(nn.Module):
    """Shared per-frame CNN -> mean over time -> MLP (eq-vid-average); blind to the order of frames."""

    def __init__(self, encoder: FrameEncoder, hidden: int = 64, num_classes: int = 2):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Sequential(nn.Linear(encoder.dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, clips: Tensor) -> Tensor:
        pooled = encode_clips(self.encoder, clips).mean(dim=1)  # (B, D): the order of frames is gone here
        return self.head(pooled)


def count_parameters(model: nn.Module) -> int:
    """Number of learned (trainable) scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def matched_average_hidden(dim: int, lstm_hidden: int, num_classes: int = 2) -> int:
    """Width of the averaging model's MLP so that its head has about as many parameters as the
    LSTM plus its linear head: (dim + 1) h + (h + 1) K = 4(H(dim + H) + 2H) + (H + 1) K."""
    target = lstm_param_count(dim, lstm_hidden) + (lstm_hidden + 1) * num_classes
    return max(1, round((target - num_classes) / (dim + 1 + num_classes)))


def scratch_lstm_logits(model: CNNLSTMClassifier, clips: Tensor, **cell_kwargs) -> Tensor:
    """``model(clips)`` recomputed with the from-scratch LSTM of :mod:`dlbook.scratch.gates`
    (a Python loop over eqs. eq-gates-lstm-preact to eq-gates-lstm-h with ``model.lstm``'s weights).

    ``cell_kwargs`` go to the scratch cell (``gate_order="figo"`` reads the weights wrongly: the
    planted bug of the tests)."""
    lstm = model.lstm
    scratch = copy_from_torch(LSTMScratch(lstm.input_size, lstm.hidden_size, batch_first=True, **cell_kwargs), lstm)
    output, _ = scratch(encode_clips(model.encoder, clips))
    return model.head(output[:, -1])
