"""CTC decoding by beam search over label prefixes, from scratch, with the references that prove it.

Greedy (best-path) decoding (:func:`dlbook.models.crnn.greedy_decode`) reads the most likely *path*;
the most likely *label* sums over all paths that collapse to it (eq-ctc-sum-paths), and the two can
differ. :func:`ctc_prefix_beam_search` keeps the ``beam`` most probable label prefixes frame by
frame, each with two probabilities: of the paths so far that end in a blank (``p_b``) and of those
that end in the prefix's last label (``p_nb``). The split is what lets paths that collapse to the
same prefix be merged exactly: a repeated label extends a prefix only from ``p_b`` (``1 - 1`` reads
``11``, ``1 1`` reads ``1``). Used in chapters/fusion/spoken-digit-strings.ipynb.

The proofs (tests/test_fusion_spoken.py):

* with no pruning (``beam=None``) every label's score is its exact probability, equal to the alpha
  recursion (:func:`dlbook.models.crnn.ctc_nll`) and ``F.ctc_loss``, and the best is the most likely
  label found by enumerating every path (:func:`ctc_label_probs_brute_force`);
* :func:`ctc_path_beam_search`, a beam over *paths* that never merges, is exactly greedy decoding at
  width 1 (a path's probability is a product over frames, so the best path takes the best class of
  every frame); the prefix beam at width 1 is not, and the lesson shows a case where it finds a
  more probable label than greedy.

Everything runs in float64 log space in plain Python, one sequence at a time: fine for the tens of
frames and eleven classes of the lesson, not for a large vocabulary.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch

from ..data.digit_strings import BLANK
from .crnn import ctc_collapse

Tensor = torch.Tensor
Prefix = tuple[int, ...]
Beams = dict[Prefix, tuple[float, float]]  # prefix -> (log p_b, log p_nb)
NEG_INF = float("-inf")


def logaddexp(a: float, b: float) -> float:
    """log(e^a + e^b) for Python floats, exact at -inf (no NaN from -inf - -inf)."""
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    m = max(a, b)
    return m + math.log1p(math.exp(-abs(a - b)))


def prefix_step(beams: Beams, log_y: list[float], blank: int = BLANK) -> Beams:
    """One frame of prefix beam search, before pruning: every prefix in ``beams`` extended by every
    class, with the paths that collapse to the same prefix merged.

    For a prefix l with (p_b, p_nb) and frame probabilities y:

    * blank: l stays, its paths now end in a blank: p_b(l) += (p_b + p_nb) y(blank);
    * c equal to l's last label: repeating it in the same run keeps l, p_nb(l) += p_nb y(c); after
      a blank it starts a new label, p_nb(l + c) += p_b y(c);
    * any other c: p_nb(l + c) += (p_b + p_nb) y(c).
    """
    out: dict[Prefix, list[float]] = {}

    def add(prefix: Prefix, which: int, value: float) -> None:
        if value == NEG_INF:  # no path reaches it (e.g. a repeat with no blank yet): not a label
            return
        entry = out.setdefault(prefix, [NEG_INF, NEG_INF])
        entry[which] = logaddexp(entry[which], value)

    for prefix, (pb, pnb) in beams.items():
        total = logaddexp(pb, pnb)
        last = prefix[-1] if prefix else None
        for c, lp in enumerate(log_y):
            if c == blank:
                add(prefix, 0, total + lp)
            elif c == last:
                add(prefix, 1, pnb + lp)  # the same run goes on: still l
                add(prefix + (c,), 1, pb + lp)  # a blank separated them: a new label
            else:
                add(prefix + (c,), 1, total + lp)
    return {p: (b, nb) for p, (b, nb) in out.items()}


Step = Callable[[Beams, list[float], int], Beams]


def ctc_prefix_beam_search(log_probs: Tensor, beam: int | None = 8, blank: int = BLANK,
                           step: Step = prefix_step) -> list[tuple[Prefix, float]]:
    """Prefix beam search over (T, C) log-probabilities: the kept labels, most probable first, each
    with its log-probability (summed over the paths the beam kept; exact when ``beam`` is None,
    which never prunes and so scores every label of length <= T: exponential, for proofs only).

    ``step`` is :func:`prefix_step` (a test plants a wrong one).
    """
    if beam is not None and beam < 1:
        raise ValueError(f"beam must be >= 1 or None, got {beam}")
    rows = log_probs.detach().to("cpu", torch.float64).tolist()
    beams: Beams = {(): (0.0, NEG_INF)}  # before the first frame: the empty prefix, probability 1
    for log_y in rows:
        beams = step(beams, log_y, blank)
        if beam is not None and len(beams) > beam:
            best = sorted(beams.items(), key=lambda kv: logaddexp(*kv[1]), reverse=True)[:beam]
            beams = dict(best)
    scored = [(prefix, logaddexp(pb, pnb)) for prefix, (pb, pnb) in beams.items()]
    return sorted(scored, key=lambda kv: kv[1], reverse=True)


def ctc_path_beam_search(log_probs: Tensor, beam: int = 1, blank: int = BLANK) -> list[tuple[Prefix, float]]:
    """Beam search over *paths*, without merging: the ``beam`` most probable paths, extended by every
    class at every frame; returns their collapsed labels (B of eq-ctc-collapse) with the path
    log-probabilities, best first. At width 1 this is exactly greedy (best-path) decoding."""
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    rows = log_probs.detach().to("cpu", torch.float64).tolist()
    paths: list[tuple[Prefix, float]] = [((), 0.0)]
    for log_y in rows:
        grown = [(path + (c,), score + lp) for path, score in paths for c, lp in enumerate(log_y)]
        paths = sorted(grown, key=lambda kv: kv[1], reverse=True)[:beam]
    return [(tuple(ctc_collapse(path, blank)), score) for path, score in paths]


def ctc_label_probs_brute_force(probs: Tensor, blank: int = BLANK) -> dict[Prefix, float]:
    """p(l | x) of every label l, by enumerating all C^T paths (eq-ctc-sum-paths) and adding each
    path's probability to the label it collapses to. (T, C) probabilities; tiny T and C only."""
    T, C = probs.shape
    if C**T > 2_000_000:
        raise ValueError(f"{C}^{T} paths is too many to enumerate")
    table = probs.to(torch.float64).tolist()
    labels: dict[Prefix, float] = {}
    for path in itertools.product(range(C), repeat=T):
        p = math.prod(table[t][c] for t, c in enumerate(path))
        key = tuple(ctc_collapse(path, blank))
        labels[key] = labels.get(key, 0.0) + p
    return labels


def beam_decode(log_probs: Tensor, beam: int = 8, input_lengths: Tensor | None = None,
                blank: int = BLANK) -> list[list[int]]:
    """Prefix beam search of a batch, the counterpart of ``greedy_decode``: (T, N, C) -> N lists of
    classes (the best label of each sequence)."""
    T, N = log_probs.shape[:2]
    lengths = [T] * N if input_lengths is None else input_lengths.tolist()
    lp = log_probs.detach().to("cpu", torch.float64)
    return [list(ctc_prefix_beam_search(lp[: lengths[n], n], beam, blank)[0][0]) for n in range(N)]
