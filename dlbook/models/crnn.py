"""Reading digit strings without segmenting them: a CRNN trained with CTC.

Two halves (chapters/fusion/crnn-ctc.ipynb, derivation in chapters/fusion/ctc-derivation.md):

* **CTC from scratch**, float64, one sequence at a time, for the proofs: the collapsing map
  :func:`ctc_collapse` (B, eq-ctc-collapse), the blank-extended label :func:`extend_with_blanks`
  (l', eq-ctc-extended), the forward (alpha) recursion :func:`ctc_alpha` (eq-ctc-alpha) with its skip
  rule :func:`allowed_skips`, the backward (beta) recursion :func:`ctc_beta` (eq-ctc-beta), the loss
  :func:`ctc_nll` (eq-ctc-loss) and its gradient w.r.t. the logits :func:`ctc_grad_logits`
  (eq-ctc-grad). :func:`ctc_brute_force` sums over every path explicitly (eq-ctc-sum-paths), and
  :func:`check_ctc` compares all of it with ``F.ctc_loss`` and autograd.
* **The model**: :class:`CRNN` (CNN -> one feature vector per column -> BiLSTM -> 11 classes, as
  log-probabilities (T, N, C) for ``nn.CTCLoss``), greedy (best-path) decoding
  :func:`greedy_decode` and the string metrics :func:`evaluate_strings` (sequence accuracy, and the
  character error rate of ``torchmetrics``).

Classes: 0 is the blank, digit d is class d + 1 (see :mod:`dlbook.data.digit_strings`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..data.digit_strings import BLANK, NUM_CLASSES, DigitStrings, labels_to_text
from ..gradients import GradientReport, rel_error

Tensor = torch.Tensor
SkipRule = Callable[[Tensor, int], Tensor]


# ---------------------------------------------------------------------------------------------
# CTC from scratch
# ---------------------------------------------------------------------------------------------

def ctc_collapse(path: list[int] | Tensor, blank: int = BLANK) -> list[int]:
    """The many-to-one map B of eq-ctc-collapse: merge runs of equal classes, then drop blanks.

    ``[1, 1, 0, 1, 2, 2, 0]`` -> ``[1, 1, 2]``: the blank between the two 1s keeps them apart.
    """
    path = path.tolist() if isinstance(path, Tensor) else list(path)
    merged = [c for i, c in enumerate(path) if i == 0 or c != path[i - 1]]
    return [c for c in merged if c != blank]


def extend_with_blanks(target: Tensor, blank: int = BLANK) -> Tensor:
    """The blank-extended label l' of eq-ctc-extended: (L,) -> (2L+1,), a blank before, between and
    after the labels: ``[a, b]`` -> ``[-, a, -, b, -]``."""
    ext = torch.full((2 * len(target) + 1,), blank, dtype=torch.long)
    ext[1::2] = target
    return ext


def allowed_skips(extended: Tensor, blank: int = BLANK) -> Tensor:
    """(S,) bool: may state s be entered from s - 2, skipping the blank between (the third case
    of eq-ctc-alpha)? Only when l'_s is a label *and* differs from l'_{s-2}: skipping the blank
    between two equal labels would merge them into one under B."""
    skip = torch.zeros(len(extended), dtype=torch.bool)
    skip[2:] = (extended[2:] != blank) & (extended[2:] != extended[:-2])
    return skip


def logsumexp0(x: Tensor) -> Tensor:
    """``logsumexp`` over dim 0 that is -inf (with zero gradient, not NaN) where every entry is -inf.

    Plain ``torch.logsumexp`` returns -inf there too, but its backward computes exp(-inf - -inf) =
    NaN, which would poison autograd through the recursion for unreachable states.
    """
    dead = torch.isneginf(x).all(0)
    out = torch.logsumexp(torch.where(dead, 0.0, x), 0)
    return torch.where(dead, float("-inf"), out)


def _shift(x: Tensor, k: int) -> Tensor:
    """x moved k places to the right along the last dim, -inf shifted in (state s sees s - k)."""
    if k >= len(x):
        return torch.full_like(x, float("-inf"))
    return torch.cat([x.new_full((k,), float("-inf")), x[:-k]])


def ctc_alpha(log_probs: Tensor, target: Tensor, blank: int = BLANK,
              skip_rule: SkipRule = allowed_skips) -> Tensor:
    """Forward variables in log space, eq-ctc-alpha-init and eq-ctc-alpha: (T, C), (L,) -> (T, 2L+1).

    ``log alpha[t, s]`` is the log of the total probability of all path prefixes pi_1..pi_t that end
    in state s of l' and collapse to the first labels of l'_1..l'_s. ``skip_rule`` decides which
    states may be entered by skipping a blank (:func:`allowed_skips`; a test plants a wrong rule).
    """
    ext = extend_with_blanks(target, blank)
    lp = log_probs[:, ext]  # (T, S): log y_t(l'_s)
    skip = skip_rule(ext, blank)
    S = len(ext)
    # eq-ctc-alpha-init: a path starts in the leading blank or in the first label
    first = torch.cat([lp[0, :2], lp.new_full((S - min(S, 2),), float("-inf"))])
    rows = [first]
    for t in range(1, len(log_probs)):
        prev = rows[-1]
        jump = torch.where(skip, _shift(prev, 2), float("-inf"))  # from s - 2, where allowed
        rows.append(lp[t] + logsumexp0(torch.stack([prev, _shift(prev, 1), jump])))  # stay, step, skip
    return torch.stack(rows)


def ctc_beta(log_probs: Tensor, target: Tensor, blank: int = BLANK,
             skip_rule: SkipRule = allowed_skips) -> Tensor:
    """Backward variables in log space, eq-ctc-beta: (T, C), (L,) -> (T, 2L+1).

    ``log beta[t, s]``: total probability of the path suffixes pi_t..pi_T that start in state s
    (``y_t(l'_s)`` included, as in alpha) and finish the label. The mirror image of
    :func:`ctc_alpha`: run it on the time-reversed frames and the reversed extended label.
    """
    reversed_alpha = ctc_alpha(log_probs.flip(0), target.flip(0), blank, skip_rule)
    return reversed_alpha.flip(0, 1)


def ctc_nll(log_probs: Tensor, target: Tensor, blank: int = BLANK,
            skip_rule: SkipRule = allowed_skips) -> Tensor:
    """CTC loss of one sequence, eq-ctc-loss: -log p(l|x) = -log(alpha_T(S) + alpha_T(S-1)), a path
    may end in the last label or the trailing blank. Inf when no path fits (T too short)."""
    alpha = ctc_alpha(log_probs, target, blank, skip_rule)
    return -torch.logsumexp(alpha[-1, -2:], 0)


def ctc_loss_scratch(log_probs: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor,
                     blank: int = BLANK, skip_rule: SkipRule = allowed_skips) -> Tensor:
    """Batched :func:`ctc_nll` with ``F.ctc_loss``'s arguments and ``reduction="none"``:
    (T, N, C), (N, S_max), (N,), (N,) -> (N,) negative log-likelihoods (a loop; for the proofs)."""
    return torch.stack([
        ctc_nll(log_probs[: int(input_lengths[n]), n], targets[n, : int(target_lengths[n])], blank, skip_rule)
        for n in range(log_probs.shape[1])
    ])


def ctc_grad_logits(log_probs: Tensor, target: Tensor, blank: int = BLANK,
                    skip_rule: SkipRule = allowed_skips) -> Tensor:
    """Gradient of :func:`ctc_nll` w.r.t. the logits u (log_probs = log_softmax(u)), eq-ctc-grad:
    dL/du_{t,k} = y_{t,k} - gamma_{t,k}, gamma_{t,k} = sum_{s: l'_s = k} alpha_t(s) beta_t(s)
    / (y_t(k) p(l|x)), the posterior probability that a path emits k at frame t. (T, C) -> (T, C).
    """
    ext = extend_with_blanks(target, blank)
    alpha = ctc_alpha(log_probs, target, blank, skip_rule)
    beta = ctc_beta(log_probs, target, blank, skip_rule)
    log_p = torch.logsumexp(alpha[-1, -2:], 0)
    # alpha and beta both contain y_t(l'_s): divide it out once (eq-ctc-occupancy)
    occupancy = (alpha + beta - log_probs[:, ext] - log_p).exp()  # (T, S), posterior of state s at t
    gamma = torch.zeros_like(log_probs).index_add_(1, ext, occupancy)  # states of the same class add up
    return log_probs.exp() - gamma


def ctc_brute_force(probs: Tensor, target: list[int],
                    blank: int = BLANK) -> tuple[float, list[tuple[int, ...]]]:
    """eq-ctc-sum-paths by enumeration: p(l|x) = sum over all C^T paths pi with B(pi) = l of
    prod_t y_t(pi_t). Returns the probability and the paths, in lexicographic order. (T, C) probs;
    only for tiny T and C (C^T paths)."""
    T, C = probs.shape
    if C**T > 2_000_000:
        raise ValueError(f"{C}^{T} paths is too many to enumerate")
    total, paths = 0.0, []
    for path in itertools.product(range(C), repeat=T):
        if ctc_collapse(path, blank) == list(target):
            paths.append(path)
            total += float(torch.prod(probs[torch.arange(T), list(path)]))
    return total, paths


def random_ctc_problem(T: int = 12, N: int = 4, C: int = 5, seed: int = 0,
                       targets: list[list[int]] | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Float64 logits (T, N, C), padded targets (N, L_max), input lengths (N,) and target lengths (N,).

    Default targets include repeated labels (``[1, 1]``, ``[2, 2, 2]``) and a sequence whose input
    length is the shortest that fits its label (T_n = L + repeats), where every path is forced.
    """
    gen = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(T, N, C, generator=gen, dtype=torch.float64)
    if targets is None:
        pool = [[1, 1], [2, 2, 2], [1, 2, 3, 1], [3], [4, 4, 1], [2, 3]]
        targets = [pool[i % len(pool)] for i in range(N)]
    if len(targets) != N:
        raise ValueError(f"need {N} targets, got {len(targets)}")
    target_lengths = torch.tensor([len(t) for t in targets])
    padded = torch.zeros(N, int(target_lengths.max()), dtype=torch.long)
    for n, t in enumerate(targets):
        padded[n, : len(t)] = torch.tensor(t)
    input_lengths = torch.full((N,), T)
    if N > 1:  # the second sequence gets the shortest input that can still hold its label
        t1 = targets[1]
        input_lengths[1] = len(t1) + sum(a == b for a, b in itertools.pairwise(t1))
    return logits, padded, input_lengths, target_lengths


def check_ctc(T: int = 12, N: int = 4, C: int = 5, seed: int = 0, targets: list[list[int]] | None = None,
              skip_rule: SkipRule = allowed_skips) -> GradientReport:
    """Float64 proof of the recursions against ``F.ctc_loss`` (reduction ``"none"``):

    * ``loss``: :func:`ctc_loss_scratch` vs ``F.ctc_loss``;
    * ``dL/dlogits (alpha-beta)``: :func:`ctc_grad_logits` (eq-ctc-grad) vs autograd of
      ``F.ctc_loss(log_softmax(logits))`` (summed over the batch) w.r.t. the logits;
    * ``dL/dlogits (autograd through alpha)``: autograd through our own recursion, same reference.

    ``skip_rule`` replaces :func:`allowed_skips` everywhere (to plant a bug).
    """
    logits, targets_t, input_lengths, target_lengths = random_ctc_problem(T, N, C, seed, targets)
    leaf = logits.clone().requires_grad_(True)
    reference_losses = F.ctc_loss(leaf.log_softmax(-1), targets_t, input_lengths, target_lengths,
                                  blank=BLANK, reduction="none")
    (reference_grad,) = torch.autograd.grad(reference_losses.sum(), leaf)

    mine_leaf = logits.clone().requires_grad_(True)
    mine_losses = ctc_loss_scratch(mine_leaf.log_softmax(-1), targets_t, input_lengths, target_lengths,
                                   skip_rule=skip_rule)
    (through_recursion,) = torch.autograd.grad(mine_losses.sum(), mine_leaf)

    hand = torch.zeros_like(logits)  # frames past an input's length get no gradient
    log_probs = logits.log_softmax(-1)
    for n in range(N):
        Tn, Ln = int(input_lengths[n]), int(target_lengths[n])
        hand[:Tn, n] = ctc_grad_logits(log_probs[:Tn, n], targets_t[n, :Ln], skip_rule=skip_rule)
    return GradientReport({
        "loss (alpha recursion)": rel_error(mine_losses, reference_losses),
        "dL/dlogits (alpha-beta)": rel_error(hand, reference_grad),
        "dL/dlogits (autograd through alpha)": rel_error(through_recursion, reference_grad),
    })


# ---------------------------------------------------------------------------------------------
# The model, decoding and metrics
# ---------------------------------------------------------------------------------------------

class CRNN(nn.Module):
    """Convolutional recurrent network for text lines: (N, 1, H, W) -> log-probabilities (T, N, C).

    The CNN (``len(channels)`` blocks of 3x3 conv, 2x2 max-pool, BatchNorm, ReLU) shrinks the strip
    to (N, c, H / 2^k, W / 2^k); each of its W / 2^k columns, flattened over channels and rows,
    becomes one frame of a sequence (eq-crnn-frames), a BiLSTM reads the frames in both directions
    and a linear layer scores the 11 classes per frame. ``log_softmax`` comes last because
    ``nn.CTCLoss`` wants log-probabilities, time first (T, N, C).
    """

    def __init__(self, height: int = 28, channels: tuple[int, ...] = (16, 32), hidden: int = 64,
                 num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c_out in channels:
            # pool right after the conv: BatchNorm and ReLU then touch a quarter of the values
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.MaxPool2d(2), nn.BatchNorm2d(c_out), nn.ReLU()]
            c_in = c_out
        self.cnn = nn.Sequential(*layers)
        self.downsample = 2 ** len(channels)
        features = c_in * (height // self.downsample)
        self.rnn = nn.LSTM(features, hidden, bidirectional=True)
        self.head = nn.Linear(2 * hidden, num_classes)

    def frames(self, width: int) -> int:
        """T, the number of frames (columns after the CNN) for a strip ``width`` pixels wide."""
        return width // self.downsample

    def forward(self, images: Tensor) -> Tensor:
        maps = self.cnn(images)  # (N, c, H', T)
        columns = maps.permute(3, 0, 1, 2).flatten(2)  # (T, N, c * H'): one feature vector per column
        states, _ = self.rnn(columns)  # (T, N, 2 * hidden)
        return self.head(states).log_softmax(-1)  # (T, N, C)


def greedy_decode(log_probs: Tensor, input_lengths: Tensor | None = None,
                  blank: int = BLANK) -> list[list[int]]:
    """Best-path decoding: the most likely class per frame, then B (eq-ctc-collapse).
    (T, N, C) -> N lists of classes. Not the most likely *label* (that sums over paths), but close
    to it when the per-frame distributions are peaked, as a trained CTC model's are."""
    best = log_probs.argmax(-1).T.cpu()  # (N, T)
    T = best.shape[1]
    lengths = [T] * len(best) if input_lengths is None else input_lengths.tolist()
    return [ctc_collapse(best[n, : lengths[n]], blank) for n in range(len(best))]


@torch.no_grad()
def predict_texts(model: nn.Module, images: Tensor, device: torch.device | str = "cpu",
                  batch_size: int = 64) -> list[str]:
    """Greedy-decoded digit strings for (N, 1, H, W) images, in batches, in eval mode."""
    model.eval()
    texts: list[str] = []
    for start in range(0, len(images), batch_size):
        log_probs = model(images[start : start + batch_size].to(device))
        texts += [labels_to_text(c) for c in greedy_decode(log_probs)]
    return texts


def sequence_accuracy(predicted: list[str], truth: list[str]) -> float:
    """Fraction of strings read exactly right (every digit, no digit missing or extra)."""
    if len(predicted) != len(truth) or not truth:
        raise ValueError(f"need equally many predictions and truths, at least one: got {len(predicted)}, "
                         f"{len(truth)}")
    return sum(p == t for p, t in zip(predicted, truth)) / len(truth)


def evaluate_strings(model: nn.Module, data: DigitStrings, device: torch.device | str = "cpu") -> dict:
    """Sequence accuracy and character error rate (total edit distance / total reference length,
    ``torchmetrics``) of greedy decoding on ``data``, with the predicted strings."""
    from torchmetrics.functional.text import char_error_rate  # seconds to import: only when scoring

    predicted = predict_texts(model, data.images, device)
    truth = data.texts
    return {"seq_acc": sequence_accuracy(predicted, truth),
            "cer": float(char_error_rate(predicted, truth)), "predicted": predicted}
