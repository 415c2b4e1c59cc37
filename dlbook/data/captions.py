"""Image captioning data from real MNIST digits: a row of two or three digits and its captions.

Each image is a ``height`` x ``width`` strip (32 x 96 by default) with ``min_digits`` to
``max_digits`` real MNIST digits pasted left to right at random horizontal gaps (consecutive left
edges at least ``min_step`` pixels apart, so the 28-pixel frames may overlap a little but the ink
rarely touches) and a random vertical offset. A small grammar describes the digits ``d1 .. dk``
(read left to right); every sentence it can produce is a correct **reference caption**:

=====  ==========================================================================================
k      reference captions
=====  ==========================================================================================
1      ``one digit : d1`` | ``a d1``
2      ``two digits : d1 d2`` | ``a d1 left of a d2`` | ``a d2 right of a d1``
3      ``three digits : d1 d2 d3`` | ``a d2 between a d1 and a d3``
=====  ==========================================================================================

e.g. ``three digits : 4 1 9``, ``a 7 left of a 2``. One reference per image, drawn at random, is
the **training caption**; all of them are kept for BLEU and for exact-match accuracy.

Tensors of a :class:`CaptionData` (``N`` images, ``T`` the longest caption plus 2):

* ``images`` float32 (N, 1, height, width), the digits' intensities in [0, 1] (pixel-wise maximum
  where frames overlap) plus Gaussian noise of ``noise_std`` (0 by default);
* ``digits`` int64 (N, 3), the labels left to right, -1 for absent slots; ``counts`` int64 (N,);
* ``positions`` int64 (N, 3, 2), the (x, y) top-left corner of each digit's 28 x 28 frame, -1 if absent;
* ``ids`` int64 (N, T): ``<bos>`` training caption ``<eos>``, right-padded with ``<pad>`` = 0;
  ``lengths`` int64 (N,) counts ``<bos>`` and ``<eos>``.

Everything is drawn from one seeded ``torch.Generator``: the same arguments give the same tensors
on every machine. The digits are passed in, so training and held-out images can be built from
disjoint digits (:func:`load_captions` uses the train and validation splits of ``load_mnist``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..runtime import Profile
from .canvases import DIGIT, _as_unit_float
from .mnist import load_mnist

NUMBER_WORDS = ("one", "two", "three")
MAX_DIGITS = len(NUMBER_WORDS)
GRAMMAR_WORDS = ("a", "digit", "digits", ":", "left", "right", "of", "between", "and", *NUMBER_WORDS)


def reference_captions(digits: Sequence[int]) -> list[list[str]]:
    """Every caption the grammar (module docstring) gives for ``digits`` read left to right."""
    d = [str(int(x)) for x in digits]
    if not 1 <= len(d) <= MAX_DIGITS or any(not 0 <= int(x) <= 9 for x in d):
        raise ValueError(f"need 1 to {MAX_DIGITS} digits in 0..9, got {list(digits)}")
    listing = [NUMBER_WORDS[len(d) - 1], "digit" if len(d) == 1 else "digits", ":", *d]
    if len(d) == 1:
        return [listing, ["a", d[0]]]
    if len(d) == 2:
        return [listing, ["a", d[0], "left", "of", "a", d[1]], ["a", d[1], "right", "of", "a", d[0]]]
    return [listing, ["a", d[1], "between", "a", d[0], "and", "a", d[2]]]


def mentioned_slots(caption: Sequence[str]) -> list[int | None]:
    """For each word of a grammatical caption, which digit of the image it names (0 = leftmost), or
    None for the other words: ``a 2 right of a 7`` -> ``[None, 1, None, None, None, 0]``.

    This is how attention maps are scored: the word naming the digit in slot ``j`` should be
    produced while looking at that digit. Raises ValueError for a caption the grammar cannot produce.
    """
    words = list(caption)
    is_digit = [w.isdigit() for w in words]
    digits = [int(w) for w, d in zip(words, is_digit) if d]
    order = {"left": [0, 1], "right": [1, 0], "between": [1, 0, 2]}
    slots = next((order[w] for w in words if w in order), list(range(len(digits))))
    if len(slots) != len(digits) or not 1 <= len(digits) <= MAX_DIGITS:
        raise ValueError(f"not a caption of the grammar: {' '.join(words)!r}")
    by_slot = [None] * len(slots)
    for slot, digit in zip(slots, digits):
        by_slot[slot] = digit
    if words not in reference_captions(by_slot):
        raise ValueError(f"not a caption of the grammar: {' '.join(words)!r}")
    mentioned = iter(slots)
    return [next(mentioned) if d else None for d in is_digit]


class CaptionVocab:
    """Word <-> id table for the caption grammar: ``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2,
    ``<unk>`` = 3, then the ten digits and the grammar words, in a fixed order (so training and
    held-out data share one table without building it from text)."""

    PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"

    def __init__(self, words: Iterable[str] = (*map(str, range(10)), *GRAMMAR_WORDS)):
        specials = (self.PAD, self.BOS, self.EOS, self.UNK)
        self.itos: list[str] = [*specials, *[w for w in dict.fromkeys(words) if w not in specials]]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, words: Sequence[str], wrap: bool = True) -> list[int]:
        """Ids of ``words``, wrapped in ``<bos>`` ... ``<eos>`` unless ``wrap`` is False."""
        ids = [self.stoi.get(w, self.unk_id) for w in words]
        return [self.bos_id, *ids, self.eos_id] if wrap else ids

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words up to (not including) the first ``<eos>``; ``<bos>`` and ``<pad>`` are skipped."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i not in (self.pad_id, self.bos_id):
                words.append(self.itos[i])
        return words

    def pad(self, captions: Sequence[Sequence[str]]) -> tuple[Tensor, Tensor]:
        """Encode and right-pad: ids (N, T_max) int64 and lengths (N,) including ``<bos>``/``<eos>``."""
        if not captions:
            raise ValueError("pad needs at least one caption")
        encoded = [self.encode(c) for c in captions]
        longest = max(len(e) for e in encoded)
        ids = torch.tensor([e + [self.pad_id] * (longest - len(e)) for e in encoded], dtype=torch.int64)
        return ids, torch.tensor([len(e) for e in encoded], dtype=torch.int64)


@dataclass
class CaptionData:
    """Images, their digits and captions; see the module docstring for shapes and dtypes."""

    images: Tensor
    digits: Tensor
    counts: Tensor
    positions: Tensor
    captions: list[list[str]]
    references: list[list[list[str]]]
    ids: Tensor
    lengths: Tensor
    vocab: CaptionVocab

    def __len__(self) -> int:
        return len(self.images)

    def describe(self) -> str:
        n = len(self)
        per_count = ", ".join(f"{int((self.counts == k).sum()):,} with {k}" for k in range(1, MAX_DIGITS + 1)
                              if (self.counts == k).any())
        refs = sum(len(r) for r in self.references) / max(n, 1)
        return (f"{n:,} images {tuple(self.images.shape[2:])} ({per_count} digits), vocabulary of "
                f"{len(self.vocab)} words, {refs:.1f} reference captions per image, longest caption "
                f"{self.ids.shape[1]} tokens with <bos>/<eos>")


def make_captions(
    digits: Tensor,
    labels: Tensor,
    n: int,
    *,
    height: int = 32,
    width: int = 96,
    min_digits: int = 2,
    max_digits: int = 3,
    min_step: int = 22,
    noise_std: float = 0.0,
    seed: int = 0,
    vocab: CaptionVocab | None = None,
) -> CaptionData:
    """``n`` captioned strips built from ``digits`` (uint8 or [0, 1] float MNIST, (M,28,28) or
    (M,1,28,28)) and their ``labels``; see the module docstring.

    Horizontal layout: with ``k`` digits the slack ``width - 28 - (k - 1) * min_step`` is split into
    ``k + 1`` random gaps (before, between and after the digits), so any arrangement that fits is
    possible, and the left edges increase by at least ``min_step``.
    """
    if not 1 <= min_digits <= max_digits <= MAX_DIGITS:
        raise ValueError(f"need 1 <= min_digits <= max_digits <= {MAX_DIGITS}, got {min_digits}, {max_digits}")
    if height < DIGIT:
        raise ValueError(f"height must be at least {DIGIT}, got {height}")
    if min_step < 1:
        raise ValueError(f"min_step must be positive, got {min_step}")
    if width < DIGIT + (max_digits - 1) * min_step:
        raise ValueError(f"width {width} cannot hold {max_digits} digits {min_step} pixels apart: "
                         f"need at least {DIGIT + (max_digits - 1) * min_step}")
    if len(digits) != len(labels):
        raise ValueError(f"{len(digits)} digits but {len(labels)} labels")
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    src = _as_unit_float(digits)
    labels = torch.as_tensor(labels, dtype=torch.int64)
    vocab = vocab or CaptionVocab()
    gen = torch.Generator().manual_seed(seed)

    counts = torch.randint(min_digits, max_digits + 1, (n,), generator=gen)
    picks = torch.randint(0, len(src), (n, MAX_DIGITS), generator=gen)
    # k + 1 gaps proportional to uniform draws (unused slots get weight 0), scaled to the slack
    slot = torch.arange(MAX_DIGITS + 1)
    weights = torch.rand(n, MAX_DIGITS + 1, generator=gen) * (slot <= counts[:, None])
    slack = width - DIGIT - (counts - 1) * min_step
    gaps = (weights / weights.sum(1, keepdim=True) * slack[:, None]).floor().long()
    xs = gaps[:, :MAX_DIGITS].cumsum(1) + slot[:MAX_DIGITS] * min_step  # left edge of slot j
    ys = torch.randint(0, height - DIGIT + 1, (n, MAX_DIGITS), generator=gen)
    present = slot[:MAX_DIGITS] < counts[:, None]  # (n, 3)

    canvas = torch.zeros(n, height * width)
    ar = torch.arange(DIGIT)
    for j in range(MAX_DIGITS):  # paste slot j of every image at once
        x, y = xs[:, j], ys[:, j]
        flat = ((y[:, None, None] + ar[None, :, None]) * width + x[:, None, None] + ar[None, None, :]).flatten(1)
        flat = flat.clamp(0, height * width - 1)  # absent slots may point outside; their ink is 0
        ink = src[picks[:, j]].flatten(1) * present[:, j, None]
        canvas.scatter_reduce_(1, flat, ink, reduce="amax")
    images = canvas.view(n, 1, height, width)
    if noise_std > 0:
        images = images + noise_std * torch.randn(images.shape, generator=gen)

    out_digits = torch.where(present, labels[picks], -1)
    positions = torch.where(present[..., None], torch.stack([xs, ys], -1), -1)
    cache: dict[tuple[int, ...], list[list[str]]] = {}  # at most 1,110 distinct digit tuples
    references = []
    for row in out_digits.tolist():
        key = tuple(d for d in row if d >= 0)
        if key not in cache:
            cache[key] = reference_captions(key)
        references.append([list(c) for c in cache[key]])
    choice = torch.rand(n, generator=gen)  # which reference is the training caption
    captions = [refs[int(u * len(refs))] for refs, u in zip(references, choice.tolist())]
    ids, lengths = vocab.pad(captions)
    return CaptionData(images, out_digits, counts, positions, captions, references, ids, lengths, vocab)


def load_captions(
    n_train: int,
    n_val: int,
    which: Profile | None = None,
    seed: int = 0,
    **kwargs,
) -> tuple[CaptionData, CaptionData]:
    """Training and held-out captioned strips built from the disjoint train and validation digits
    of :func:`dlbook.data.load_mnist` (unnormalised); ``kwargs`` go to :func:`make_captions`."""
    splits = load_mnist(which, normalize=False)
    train_x, train_y = splits.train.tensors
    val_x, val_y = splits.val.tensors
    vocab = kwargs.pop("vocab", None) or CaptionVocab()
    train = make_captions(train_x, train_y, n_train, seed=seed, vocab=vocab, **kwargs)
    val = make_captions(val_x, val_y, n_val, seed=seed + 1, vocab=vocab, **kwargs)
    return train, val
