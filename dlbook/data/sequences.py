"""Synthetic long-range sequence tasks: the adding problem and the copy problem.

Both tasks hide the information the answer needs at the *start* of a long sequence and ask for the
answer at the *end*, so a recurrent network can only solve them if gradient flows back across the
whole sequence. They are generated on the fly from a seed (no files, no download), so a lesson can
draw as many fresh batches as it wants and the tests can check every target exactly.

* :func:`adding_problem` - Hochreiter & Schmidhuber (1997), experiment 4, in the form used by most
  later papers: two marked positions, the target is the sum of the two marked values.
* :func:`copy_problem` - the "copy memory" task: remember a few symbols across a long blank stretch
  and replay them after a delimiter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

ADDING_BASELINE_MSE = 1.0 / 6.0  # Var(U1 + U2) for U ~ U(0, 1): the MSE of always predicting 1.0


def _generator(seed: int | torch.Generator) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(int(seed))


def adding_problem(
    n: int, seq_len: int, seed: int | torch.Generator = 0, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """``n`` sequences of the adding problem, batch-first.

    Each step carries two features: a value drawn from U(0, 1) and a marker in {0, 1}. Exactly two
    markers are 1: one at a uniformly random position in the first half ``[0, seq_len // 2)`` and one
    in the second half ``[seq_len // 2, seq_len)``. The target is the sum of the two marked values,
    so it lies in [0, 2] with mean 1 and variance 2/12 = 1/6: a model that ignores its input and
    predicts 1.0 scores MSE :data:`ADDING_BASELINE_MSE` = 0.1667, the baseline to beat.

    Returns ``x`` of shape ``(n, seq_len, 2)`` and ``y`` of shape ``(n, 1)``. ``seed`` is an int or a
    ``torch.Generator`` (pass one generator to draw successive fresh batches reproducibly).
    """
    if seq_len < 2:
        raise ValueError(f"the adding problem needs seq_len >= 2, got {seq_len}")
    gen = _generator(seed)
    half = seq_len // 2
    values = torch.rand(n, seq_len, generator=gen, dtype=torch.float64)
    first = torch.randint(0, half, (n,), generator=gen)
    second = torch.randint(half, seq_len, (n,), generator=gen)
    markers = torch.zeros(n, seq_len, dtype=torch.float64)
    rows = torch.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = torch.stack([values, markers], dim=-1)
    y = (values[rows, first] + values[rows, second]).unsqueeze(1)
    return x.to(dtype), y.to(dtype)


@dataclass(frozen=True)
class CopySpec:
    """Token ids of the copy problem: 0 is blank, 1..n_symbols are data, n_symbols + 1 is the delimiter."""

    n_symbols: int = 8

    @property
    def blank(self) -> int:
        return 0

    @property
    def delimiter(self) -> int:
        return self.n_symbols + 1

    @property
    def vocab_size(self) -> int:
        return self.n_symbols + 2


def copy_problem(
    n: int, delay: int, copy_len: int = 10, n_symbols: int = 8, seed: int | torch.Generator = 0
) -> tuple[Tensor, Tensor]:
    """``n`` sequences of the copy-memory task (integer token ids, batch-first).

    Input, length ``delay + 2 * copy_len``: ``copy_len`` random symbols from {1, ..., n_symbols},
    then ``delay - 1`` blanks (0), then the delimiter ``n_symbols + 1``, then ``copy_len`` blanks.
    Target, same length: blanks everywhere except the last ``copy_len`` steps, which repeat the
    first ``copy_len`` input symbols. The network must hold the symbols for ``delay + copy_len`` steps.
    Predicting blanks and then uniformly random symbols gives cross-entropy
    ``copy_len * log(n_symbols) / (delay + 2 * copy_len)`` per step, the memoryless baseline.

    Returns ``(x, y)``, both int64 of shape ``(n, delay + 2 * copy_len)``.
    """
    if delay < 1 or copy_len < 1 or n_symbols < 1:
        raise ValueError(f"need delay, copy_len, n_symbols >= 1, got {delay}, {copy_len}, {n_symbols}")
    gen = _generator(seed)
    spec = CopySpec(n_symbols)
    length = delay + 2 * copy_len
    symbols = torch.randint(1, n_symbols + 1, (n, copy_len), generator=gen)
    x = torch.full((n, length), spec.blank, dtype=torch.int64)
    y = torch.full((n, length), spec.blank, dtype=torch.int64)
    x[:, :copy_len] = symbols
    x[:, copy_len + delay - 1] = spec.delimiter
    y[:, -copy_len:] = symbols
    return x, y
