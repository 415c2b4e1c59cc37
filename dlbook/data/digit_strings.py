"""Text-line data from real MNIST digits: horizontal strips holding variable-length digit strings.

Each strip is ``height`` x ``width`` pixels (28 x 128 by default) with a string of ``min_len`` to
``max_len`` real MNIST digits written left to right. Neighbouring 28-pixel digit frames are
placed ``28 + gap`` pixels apart with a random ``gap`` in ``gaps`` (negative: the frames overlap,
and since an MNIST digit's ink is only about 20 pixels wide, strongly negative gaps make the ink
of neighbours touch), the whole string starts at a random column, every digit is shifted up or
down by up to ``jitter`` pixels (rows pushed out of the strip are cut; MNIST digits have a blank
margin of about 4 pixels, so little ink is lost) and Gaussian noise of standard deviation
``noise_std`` is added last (not clipped). Digits are pasted with a pixel-wise maximum, so
overlapping strokes stay visible.

The labels are what a CTC model needs, and nothing about *where* each digit is:

* ``targets`` int64 (N, max_len): the CTC class of each digit, ``digit + 1`` (1..10), padded with
  0. Class 0 is CTC's *blank* (:data:`BLANK`), which never occurs in a label, so padding with it is
  unambiguous; :data:`NUM_CLASSES` = 11 output classes in all.
* ``lengths`` int64 (N,): the number of digits in each strip (1..max_len).

``spans`` int64 (N, max_len, 2) keeps the first and one-past-last column of each digit's 28-pixel
frame (-1 for absent digits); the training never sees it, the lesson uses it only to draw where
the digits are.

Everything is drawn from one seeded ``torch.Generator``: the same arguments give the same strips.
The source digits are passed in, so training and held-out strips can be built from disjoint
digits (:func:`load_digit_strings` uses the train and validation splits of ``load_mnist``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..runtime import Profile
from .canvases import _as_unit_float
from .mnist import load_mnist

Tensor = torch.Tensor
DIGIT = 28  # MNIST digits are 28 x 28
BLANK = 0  # CTC's blank class; digit d is class d + 1
NUM_CLASSES = 11  # blank + 10 digits


@dataclass
class DigitStrings:
    """``images`` float32 (N,1,H,W); ``targets`` int64 (N,max_len), digit + 1 padded with 0 (blank);
    ``lengths`` int64 (N,) in 1..max_len; ``spans`` int64 (N,max_len,2) frame columns [start, end),
    -1 where there is no digit."""

    images: Tensor
    targets: Tensor
    lengths: Tensor
    spans: Tensor

    def __len__(self) -> int:
        return len(self.images)

    def select(self, index: slice | Tensor) -> DigitStrings:
        """The strips at ``index`` (a slice, an index tensor or a boolean mask), as a new DigitStrings."""
        return DigitStrings(self.images[index], self.targets[index], self.lengths[index], self.spans[index])

    def text(self, i: int) -> str:
        """The digit string of strip ``i``, e.g. ``"3141"``."""
        return labels_to_text(self.targets[i, : int(self.lengths[i])].tolist())

    @property
    def texts(self) -> list[str]:
        """The digit string of every strip."""
        return [self.text(i) for i in range(len(self))]


def labels_to_text(classes: list[int]) -> str:
    """CTC classes (1..10, no blanks) -> digit string: class ``c`` is the digit ``c - 1``."""
    if any(not 1 <= c <= 10 for c in classes):
        raise ValueError(f"digit classes must lie in 1..10 (0 is the blank), got {classes}")
    return "".join(str(c - 1) for c in classes)


def text_to_labels(text: str) -> list[int]:
    """Digit string -> CTC classes: ``"301"`` -> ``[4, 1, 2]``."""
    if not text.isdigit() or not text.isascii():
        raise ValueError(f"expected a non-empty string of digits 0-9, got {text!r}")
    return [int(ch) + 1 for ch in text]


def make_digit_strings(
    digits: Tensor,
    labels: Tensor,
    n: int,
    *,
    height: int = DIGIT,
    width: int = 128,
    min_len: int = 1,
    max_len: int = 5,
    gaps: tuple[int, int] = (-10, -4),
    jitter: int = 2,
    noise_std: float = 0.0,
    seed: int = 0,
) -> DigitStrings:
    """``n`` strips of ``height`` x ``width`` holding strings of ``min_len``..``max_len`` digits drawn
    from ``digits`` (uint8 or [0,1] float MNIST images, (M,28,28) or (M,1,28,28)) and ``labels``
    (int64 (M,), 0..9); see the module docstring. ``gaps`` is the inclusive range of the extra space
    between neighbouring 28-pixel frames (negative overlaps them).

    Raises ``ValueError`` when the longest string at the widest spacing does not fit in ``width``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if height < DIGIT:
        raise ValueError(f"height must be at least {DIGIT}, got {height}")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")
    if not -DIGIT < gaps[0] <= gaps[1]:
        raise ValueError(f"need -{DIGIT} < gaps[0] <= gaps[1], got {gaps}")
    if jitter < 0 or noise_std < 0:
        raise ValueError(f"jitter and noise_std must be >= 0, got {jitter}, {noise_std}")
    widest = DIGIT + (max_len - 1) * (DIGIT + gaps[1])
    if widest > width:
        raise ValueError(f"{max_len} digits at gap {gaps[1]} need {widest} px, but width is {width}: "
                         "widen the strip, shorten the strings or tighten the gaps")
    if len(digits) != len(labels):
        raise ValueError(f"{len(digits)} digits but {len(labels)} labels")
    if len(digits) == 0:
        raise ValueError("need at least one source digit")
    if labels.min() < 0 or labels.max() > 9:
        raise ValueError("labels must be digits 0..9")
    src = _as_unit_float(digits)
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=gen)
    picks = torch.randint(0, len(src), (n, max_len), generator=gen)
    gap = torch.randint(gaps[0], gaps[1] + 1, (n, max_len), generator=gen)
    gap[:, -1] = 0  # no neighbour after the last slot
    shifts = torch.randint(-jitter, jitter + 1, (n, max_len), generator=gen)  # vertical, pixels

    # Frame j starts at x0 + sum of the pitches (28 + gap) of the frames before it.
    active = torch.arange(max_len) < lengths[:, None]  # (n, max_len)
    pitch = (DIGIT + gap) * active
    offsets = torch.cumsum(pitch, 1) - pitch  # exclusive prefix sum: start of frame j relative to x0
    string_width = offsets.gather(1, (lengths - 1).clamp_min(0)[:, None])[:, 0] + DIGIT
    room = width - string_width + 1  # x0 is uniform in 0..width - string_width
    x0 = (torch.rand(n, generator=gen) * room).floor().long()
    starts = x0[:, None] + offsets  # (n, max_len)

    # Paste on a canvas padded by `jitter` rows above and below, then cut those rows off.
    tall = height + 2 * jitter
    top = jitter + (height - DIGIT) // 2 + shifts  # row of each digit's top edge on the tall canvas
    ar = torch.arange(DIGIT)
    canvas = torch.zeros(n, tall * width)
    for j in range(max_len):  # slot j of every strip at once
        rows = top[:, j, None, None] + ar[None, :, None]
        cols = starts[:, j, None, None] + ar[None, None, :]
        flat = (rows * width + cols).flatten(1).clamp(0, tall * width - 1)  # inactive slots masked below
        ink = src[picks[:, j]].flatten(1) * active[:, j, None]
        canvas.scatter_reduce_(1, flat, ink, reduce="amax")
    images = canvas.view(n, tall, width)[:, jitter : jitter + height]
    if noise_std > 0:
        images = images + noise_std * torch.randn(n, height, width, generator=gen)

    targets = torch.where(active, labels[picks] + 1, BLANK)
    spans = torch.where(active[..., None], torch.stack([starts, starts + DIGIT], -1), -1)
    return DigitStrings(images[:, None].contiguous(), targets, lengths, spans)


def load_digit_strings(
    n_train: int,
    n_val: int,
    which: Profile | None = None,
    seed: int = 0,
    **kwargs,
) -> tuple[DigitStrings, DigitStrings]:
    """Training strips from the train digits and held-out strips from the disjoint validation digits
    of :func:`dlbook.data.load_mnist` (unnormalised); ``kwargs`` go to :func:`make_digit_strings`."""
    splits = load_mnist(which, normalize=False)
    train_x, train_y = splits.train.tensors
    val_x, val_y = splits.val.tensors
    train = make_digit_strings(train_x, train_y, n_train, seed=seed, **kwargs)
    val = make_digit_strings(val_x, val_y, n_val, seed=seed + 1, **kwargs)
    return train, val
