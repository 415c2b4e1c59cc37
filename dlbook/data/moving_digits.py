"""Moving digits: short clips of one real MNIST digit sliding across a blank frame.

In the spirit of Moving MNIST (Srivastava et al., 2015), but built for a *classification* task
whose answer lives in the **order** of the frames, not in the frames themselves:

* each clip shows one MNIST digit (shrunk to ``digit_size`` x ``digit_size``, 14 x 14 by default,
  by area averaging) moving in a straight line at a constant integer velocity ``(v_x, v_y)``
  pixels per frame, with ``v_x != 0``, staying fully inside a ``size`` x ``size`` frame;
* the label says which way it moves horizontally: ``1`` = **right** (``v_x > 0``), ``0`` = **left**;
* clips come in **pairs**: clip ``i`` and clip ``partner[i]`` hold exactly the same frames in
  reverse order, and therefore opposite labels. As an unordered *set* of frames a clip carries no
  information about its label, so any model that only sees the set (for example one that averages
  per-frame features over time) is right on exactly one clip of every pair: 50 % accuracy,
  whatever its weights.

Shapes and dtypes (``N`` clips of ``T`` frames):

* ``frames``    float32 (N, T, 1, size, size) in [0, 1], background 0;
* ``labels``    int64 (N,): 1 = moves right, 0 = moves left; exactly N/2 of each;
* ``positions`` int64 (N, T, 2): top-left corner (x, y) of the digit in each frame, in pixels;
* ``digits``    int64 (N,): the MNIST class of the digit shown (0-9), *not* the task label;
* ``partner``   int64 (N,): the index of the clip with the same frames reversed
  (clips ``0 .. N/2-1`` are drawn forward, clip ``i + N/2`` is clip ``i`` played backwards).

Everything comes from one seeded ``torch.Generator``: the same arguments give the same clips on
every machine. The source digits are passed in, so training and held-out clips can be built from
disjoint digits (:func:`load_moving_digits` uses the train and validation splits of ``load_mnist``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from ..runtime import Profile
from .canvases import _as_unit_float
from .mnist import load_mnist

Tensor = torch.Tensor
CLASSES = ("left", "right")  # label 0 and label 1


@dataclass
class MovingDigits:
    """Clips and their labels; see the module docstring for every field's shape and meaning."""

    frames: Tensor
    labels: Tensor
    positions: Tensor
    digits: Tensor
    partner: Tensor

    def __len__(self) -> int:
        return len(self.frames)

    def dataset(self) -> TensorDataset:
        """(clip, label) pairs for :func:`dlbook.train.fit`: clips (T,1,H,W), labels int64."""
        return TensorDataset(self.frames, self.labels)


def _shrink(src: Tensor, digit_size: int) -> Tensor:
    """(M,28,28) in [0,1] -> (M,d,d) by area averaging (28 -> 14 is an exact 2x2 mean)."""
    if digit_size == src.shape[-1]:
        return src
    return F.interpolate(src[:, None], size=(digit_size, digit_size), mode="area")[:, 0]


def _track(start: Tensor, velocity: Tensor, steps: Tensor) -> Tensor:
    """Positions start + t * velocity for t in ``steps``: (K,) and (K,) -> (K, T)."""
    return start[:, None] + steps[None, :] * velocity[:, None]


def make_moving_digits(
    digits: Tensor,
    labels: Tensor,
    n: int,
    *,
    frames: int = 8,
    size: int = 32,
    digit_size: int = 14,
    max_speed: int = 2,
    seed: int = 0,
) -> MovingDigits:
    """``n`` clips (``n`` even) of ``frames`` frames, ``size`` x ``size`` pixels, from ``digits``
    (uint8 or [0,1] float MNIST images, (M,28,28) or (M,1,28,28)) and their class ``labels``.

    Each of the ``n/2`` trajectories draws a digit, a horizontal speed ``|v_x|`` in 1..max_speed with
    a random sign, a vertical speed ``v_y`` in -max_speed..max_speed and a start that keeps the
    digit inside the frame for all ``frames`` frames; it is rendered forward (clip ``i``) and
    backward (clip ``i + n/2``). Raises ``ValueError`` when the motion cannot fit in the frame.
    """
    if n <= 0 or n % 2:
        raise ValueError(f"n must be a positive even number (clips come in forward/backward pairs), got {n}")
    if frames < 2:
        raise ValueError(f"a clip needs at least 2 frames to show motion, got frames={frames}")
    if not 1 <= digit_size <= 28:
        raise ValueError(f"digit_size must be in 1..28, got {digit_size}")
    if max_speed < 1:
        raise ValueError(f"max_speed must be at least 1 pixel per frame, got {max_speed}")
    room = size - digit_size  # how far the corner can move and keep the digit inside
    if (frames - 1) * max_speed > room:
        raise ValueError(f"{frames} frames at up to {max_speed} px/frame need {(frames - 1) * max_speed} px of room, "
                         f"but a {digit_size}-px digit in a {size}-px frame has {room}: lower max_speed or frames")
    if len(digits) != len(labels):
        raise ValueError(f"{len(digits)} digits but {len(labels)} labels")
    src = _shrink(_as_unit_float(digits), digit_size)
    gen = torch.Generator().manual_seed(seed)
    half = n // 2

    picks = torch.randint(0, len(src), (half,), generator=gen)
    sign = torch.randint(0, 2, (half,), generator=gen) * 2 - 1
    vx = sign * torch.randint(1, max_speed + 1, (half,), generator=gen)
    vy = torch.randint(-max_speed, max_speed + 1, (half,), generator=gen)
    steps = torch.arange(frames)

    def start(v: Tensor) -> Tensor:
        # The path spans (frames-1)|v| pixels; its lowest corner is uniform over the slack left.
        travel = (frames - 1) * v.abs()
        lowest = (torch.rand(half, generator=gen) * (room - travel + 1)).floor().long()
        return torch.where(v >= 0, lowest, lowest + travel)

    pos = torch.stack([_track(start(vx), vx, steps), _track(start(vy), vy, steps)], -1)  # (half, T, 2) as (x, y)

    # Paste every frame of every clip at once: flat pixel indices of the digit's square in the frame.
    ar = torch.arange(digit_size)
    x, y = pos[..., 0].reshape(-1), pos[..., 1].reshape(-1)  # (half*T,)
    flat = ((y[:, None, None] + ar[None, :, None]) * size + x[:, None, None] + ar[None, None, :]).flatten(1)
    ink = src[picks].repeat_interleave(frames, 0).flatten(1)  # the same digit in every frame of a clip
    forward = torch.zeros(half * frames, size * size).scatter_(1, flat, ink).view(half, frames, 1, size, size)

    # The second half: the same frames played backwards. flip() reorders, it changes no pixel.
    clips = torch.cat([forward, forward.flip(1)])
    moves_right = (vx > 0).long()
    out_labels = torch.cat([moves_right, 1 - moves_right])
    positions = torch.cat([pos, pos.flip(1)])
    partner = (torch.arange(n) + half) % n
    return MovingDigits(clips, out_labels, positions, labels[picks].repeat(2).long(), partner)


def load_moving_digits(
    n_train: int,
    n_val: int,
    which: Profile | None = None,
    seed: int = 0,
    **kwargs,
) -> tuple[MovingDigits, MovingDigits]:
    """Training and held-out clips built from the disjoint train and validation digits of
    :func:`dlbook.data.load_mnist` (unnormalised); ``kwargs`` go to :func:`make_moving_digits`."""
    splits = load_mnist(which, normalize=False)
    train_x, train_y = splits.train.tensors
    val_x, val_y = splits.val.tensors
    train = make_moving_digits(train_x, train_y, n_train, seed=seed, **kwargs)
    val = make_moving_digits(val_x, val_y, n_val, seed=seed + 1, **kwargs)
    return train, val
