"""Segmentation data from real MNIST digits: "canvases" with 1-3 digits, noise and clutter.

Each canvas is a larger image (40 x 40 by default) with one to three real MNIST digits pasted at
random positions, a few random line segments as clutter (stroke-like, so a brightness threshold
cannot tell them from digits) and additive Gaussian noise. The targets are

* ``masks``: a pixel belongs to a digit when a pasted digit's own intensity there exceeds
  ``threshold`` (the digit's ink, not the clutter or the noise);
* ``classes``: the same pixels labelled ``digit + 1`` (0 is background), for multi-class
  segmentation; where digits overlap, the one pasted last wins.

Everything is drawn from one seeded ``torch.Generator``: the same arguments give the same canvases
on every machine. The source digits are passed in, so training and held-out canvases can be built
from disjoint digits (``load_canvases`` uses the train and validation splits of ``load_mnist``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import TensorDataset

from ..runtime import Profile
from .mnist import load_mnist

Tensor = torch.Tensor
DIGIT = 28  # MNIST digits are 28 x 28


@dataclass
class Canvases:
    """``images`` float32 (N,1,H,W); ``masks`` bool (N,1,H,W); ``classes`` int64 (N,1,H,W) in 0..10;
    ``boxes`` float32 (N,3,4) as (x1, y1, x2, y2) pixel corners of each digit's ink, NaN rows for
    absent digits; ``labels`` int64 (N,3), -1 for absent digits."""

    images: Tensor
    masks: Tensor
    classes: Tensor
    boxes: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.images)

    def dataset(self, target: str = "mask") -> TensorDataset:
        """(image, target) pairs for :func:`dlbook.train.fit`: ``mask`` as float (for BCE-with-logits)
        or ``classes`` as (N,H,W) int64 (for cross-entropy)."""
        if target == "mask":
            return TensorDataset(self.images, self.masks.float())
        if target == "classes":
            return TensorDataset(self.images, self.classes[:, 0])
        raise ValueError(f"target must be 'mask' or 'classes', not {target!r}")


def _as_unit_float(digits: Tensor) -> Tensor:
    """(M,28,28) or (M,1,28,28), uint8 in 0..255 or float in [0,1] -> float32 (M,28,28) in [0,1]."""
    if digits.dim() == 4:
        digits = digits[:, 0]
    if digits.dim() != 3 or digits.shape[1:] != (DIGIT, DIGIT):
        raise ValueError(f"digits must be (M,28,28) or (M,1,28,28), got {tuple(digits.shape)}")
    if digits.dtype == torch.uint8:
        return digits.float() / 255.0
    digits = digits.float()
    if digits.min() < -1e-6 or digits.max() > 1 + 1e-6:
        raise ValueError("float digits must lie in [0, 1]: load them with normalize=False")
    return digits


def draw_segments(n: int, size: int, count: int, gen: torch.Generator, width: int = 2,
                  length: tuple[float, float] = (6.0, 16.0)) -> Tensor:
    """``count`` random straight strokes per image, ``width`` pixels thick: float (n,size,size) in [0,1].

    Each stroke has a random centre, angle, length in ``length`` and brightness in [0.4, 1.0];
    overlapping strokes keep the brighter value.
    """
    canvas = torch.zeros(n, size * size)
    if count == 0 or n == 0:
        return canvas.view(n, size, size)
    centre = torch.rand(n, count, 2, generator=gen) * (size - 1)
    angle = torch.rand(n, count, generator=gen) * torch.pi
    half = (length[0] + torch.rand(n, count, generator=gen) * (length[1] - length[0])) / 2
    value = 0.4 + 0.6 * torch.rand(n, count, generator=gen)
    t = torch.linspace(-1.0, 1.0, 4 * int(length[1]))  # sample points along each stroke
    direction = torch.stack([torch.cos(angle), torch.sin(angle)], -1)  # (n,count,2) as (x, y)
    points = centre[:, :, None] + (half[:, :, None, None] * t[None, None, :, None]) * direction[:, :, None]
    normal = torch.stack([-direction[..., 1], direction[..., 0]], -1)  # thickness across the stroke
    values = value[:, :, None].expand(-1, -1, len(t))
    for offset in range(width):
        shifted = points + (offset - (width - 1) / 2) * normal[:, :, None]
        xy = shifted.round().long()
        inside = ((xy >= 0) & (xy < size)).all(-1)
        flat = (xy[..., 1] * size + xy[..., 0]).clamp(0, size * size - 1)
        canvas.scatter_reduce_(1, flat.flatten(1), (values * inside).flatten(1), reduce="amax")
    return canvas.view(n, size, size)


def ink_boxes(on: Tensor) -> Tensor:
    """Tight boxes (x1, y1, x2, y2) around the True pixels of each (M,H,W) mask, x2/y2 exclusive;
    rows of an all-False mask are (0, 0, 0, 0)."""
    rows, cols = on.any(2), on.any(1)  # (M,H), (M,W)

    def first(m: Tensor) -> Tensor:
        return torch.where(m.any(1), m.float().argmax(1), 0)

    def end(m: Tensor) -> Tensor:
        return torch.where(m.any(1), m.shape[1] - m.flip(1).float().argmax(1), 0)

    return torch.stack([first(cols), first(rows), end(cols), end(rows)], 1).float()


def make_canvases(
    digits: Tensor,
    labels: Tensor,
    n: int,
    *,
    size: int = 40,
    max_digits: int = 3,
    min_digits: int = 1,
    noise_std: float = 0.15,
    clutter: int = 3,
    threshold: float = 0.5,
    seed: int = 0,
) -> Canvases:
    """``n`` canvases of ``size`` x ``size`` with ``min_digits``..``max_digits`` digits drawn from
    ``digits`` (uint8 or [0,1] float MNIST images) and ``labels``; see the module docstring.

    A digit is pasted by taking the pixel-wise maximum with what is there; ``clutter`` strokes are
    added the same way, then Gaussian noise of standard deviation ``noise_std`` (images are not
    clipped: the noise is part of the input the network must cope with).
    """
    if size < DIGIT:
        raise ValueError(f"size must be at least {DIGIT}, got {size}")
    if not 0 <= min_digits <= max_digits:
        raise ValueError(f"need 0 <= min_digits <= max_digits, got {min_digits}, {max_digits}")
    if len(digits) != len(labels):
        raise ValueError(f"{len(digits)} digits but {len(labels)} labels")
    src = _as_unit_float(digits)
    gen = torch.Generator().manual_seed(seed)
    counts = torch.randint(min_digits, max_digits + 1, (n,), generator=gen)
    picks = torch.randint(0, len(src), (n, max_digits), generator=gen)
    corners = torch.randint(0, size - DIGIT + 1, (n, max_digits, 2), generator=gen)  # (x, y) top-left

    on_src = src > threshold
    src_boxes = ink_boxes(on_src)  # each digit's box inside its own frame, computed once
    ar = torch.arange(DIGIT)

    ink = torch.zeros(n, size * size)
    classes = torch.zeros(n, size * size, dtype=torch.int64)
    boxes = torch.full((n, max_digits, 4), float("nan"))
    out_labels = torch.full((n, max_digits), -1, dtype=torch.int64)
    for j in range(max_digits):  # paste slot j of every canvas at once; later slots win overlaps
        active = j < counts  # (n,)
        x, y = corners[:, j, 0], corners[:, j, 1]
        flat = ((y[:, None, None] + ar[None, :, None]) * size + x[:, None, None] + ar[None, None, :]).flatten(1)
        digit = src[picks[:, j]].flatten(1) * active[:, None]
        ink.scatter_reduce_(1, flat, digit, reduce="amax")
        slot_on = torch.zeros(n, size * size, dtype=torch.bool).scatter_(1, flat, digit > threshold)
        classes = torch.where(slot_on, (labels[picks[:, j]] + 1)[:, None], classes)
        has_ink = active & on_src[picks[:, j]].flatten(1).any(1)
        offset = torch.stack([x, y, x, y], 1).float()
        boxes[has_ink, j] = (src_boxes[picks[:, j]] + offset)[has_ink]
        out_labels[active, j] = labels[picks[active, j]]
    ink, classes = ink.view(n, size, size), classes.view(n, size, size)
    strokes = draw_segments(n, size, clutter, gen)
    noise = noise_std * torch.randn(n, size, size, generator=gen)
    images = torch.maximum(ink, strokes) + noise
    masks = classes > 0
    return Canvases(images[:, None], masks[:, None], classes[:, None], boxes, out_labels)


def load_canvases(
    n_train: int,
    n_val: int,
    which: Profile | None = None,
    seed: int = 0,
    **kwargs,
) -> tuple[Canvases, Canvases]:
    """Training and held-out canvases built from the disjoint train and validation digits of
    :func:`dlbook.data.load_mnist` (unnormalised); ``kwargs`` go to :func:`make_canvases`."""
    splits = load_mnist(which, normalize=False)
    train_x, train_y = splits.train.tensors
    val_x, val_y = splits.val.tensors
    train = make_canvases(train_x, train_y, n_train, seed=seed, **kwargs)
    val = make_canvases(val_x, val_y, n_val, seed=seed + 1, **kwargs)
    return train, val
