"""Four sentence classifiers with matched parameter budgets: MLP, 1-D CNN, LSTM and Transformer.

Lesson: chapters/fusion/architecture-comparison.ipynb (equation labels ``eq-cmp-*``).

Every model reads right-padded token ids ``(B, T)`` (pad id 0, as :class:`dlbook.data.text.Vocab`
makes them), finds the true lengths from the ids itself, and returns logits ``(B, K)``. So each one
works with ``dlbook.train.fit`` (which calls ``model(x)``) and none of them may look at padding:
appending more pad tokens must not change a logit (the tests check it).

* :class:`BagOfEmbeddingsMLP` - masked mean of the word vectors, then an MLP (eq-cmp-params-mlp)
* :class:`TextCNN` - convolutions of widths 3, 4, 5 over time, masked max over time (eq-cmp-params-cnn)
* :class:`LSTMClassifier` - LSTM, the state after the last valid word (packed when bidirectional)
* :class:`TransformerClassifier` - sinusoidal positions, ``nn.TransformerEncoder`` with a key
  padding mask, masked mean pooling (eq-cmp-params-transformer)

and the tools of the comparison: :func:`encoder_parameters` (everything but the shared embedding),
the hand formulas :func:`param_formula` and :func:`forward_macs` (eq-cmp-flops-*),
:func:`width_for_budget` / :func:`build_matched` (one width per model for one parameter budget) and
:func:`counted_forward_flops` (the same count from ``FlopCounterMode``), :func:`measure_latency`
(warm-up, repeats, ``torch.inference_mode``, CUDA synchronised) and :func:`as_markdown`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from ..perf import median_seconds
from .text_classifiers import length_mask

MODEL_NAMES: tuple[str, ...] = ("MLP", "CNN", "LSTM", "Transformer")


def lengths_from_ids(ids: Tensor, pad_id: int = 0) -> Tensor:
    """True lengths (B,) of right-padded ids: the number of non-pad tokens (at least 1)."""
    return (ids != pad_id).sum(dim=1).clamp(min=1)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` (B, T, D) over the valid steps of ``mask`` (B, T): padding counts for nothing."""
    # masked_fill, not a product: a NaN or inf at a padded step must not leak into the sum
    total = x.masked_fill(~mask.unsqueeze(-1), 0.0).sum(dim=1)
    return total / mask.sum(dim=1, keepdim=True).clamp(min=1).to(x.dtype)


class _Embedded(nn.Module):
    """The part every model shares: an embedding table (pad row fixed at zero) and the mask."""

    def __init__(self, vocab_size: int, embed_dim: int, padding_idx: int = 0):
        super().__init__()
        self.padding_idx = padding_idx
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=padding_idx)

    def embed(self, ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Word vectors (B, T, E) zeroed at padding, the mask (B, T) and the lengths (B,)."""
        lengths = lengths_from_ids(ids, self.padding_idx)
        mask = length_mask(lengths, ids.shape[1])
        return self.embedding(ids).masked_fill(~mask.unsqueeze(-1), 0.0), mask, lengths


class BagOfEmbeddingsMLP(_Embedded):
    """Mean of the word vectors over the valid words, then ``E -> h -> h -> K`` with ReLU.

    A "deep averaging network": word order is thrown away, so no weight is tied to a position and
    the model is cheap; it is the fully connected (ANN) column of the comparison.
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, num_classes: int = 2):
        super().__init__(vocab_size, embed_dim)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))

    def forward(self, ids: Tensor) -> Tensor:
        x, mask, _ = self.embed(ids)
        return self.mlp(masked_mean(x, mask))


class TextCNN(_Embedded):
    """Kim's CNN for sentences: for each width k, C filters over time, ReLU, max over time, concat, linear.

    Each filter's window starts at a word and runs k words to the right; windows past the end of
    the sentence see zero vectors (the right zero padding of k - 1 steps). Outputs at padded start
    positions are set to -inf before the max, so padding can never win it: without that mask a
    filter whose ReLU(bias) beats every real window would "see" the padding of a longer batch.
    """

    def __init__(self, vocab_size: int, embed_dim: int, channels: int, num_classes: int = 2,
                 kernel_sizes: Sequence[int] = (3, 4, 5)):
        super().__init__(vocab_size, embed_dim)
        self.kernel_sizes = tuple(kernel_sizes)
        self.convs = nn.ModuleList(nn.Conv1d(embed_dim, channels, k) for k in self.kernel_sizes)
        self.classifier = nn.Linear(channels * len(self.kernel_sizes), num_classes)

    def features(self, ids: Tensor) -> Tensor:
        """Max-over-time features (B, C * len(kernel_sizes))."""
        x, mask, _ = self.embed(ids)
        x = x.transpose(1, 2)  # (B, E, T): Conv1d slides over the last axis, time
        pooled = []
        for k, conv in zip(self.kernel_sizes, self.convs):
            h = F.relu(conv(F.pad(x, (0, k - 1))))  # (B, C, T): window t covers words t .. t+k-1
            pooled.append(h.masked_fill(~mask.unsqueeze(1), float("-inf")).amax(dim=2))
        return torch.cat(pooled, dim=1)

    def forward(self, ids: Tensor) -> Tensor:
        return self.classifier(self.features(ids))


class LSTMClassifier(_Embedded):
    """An LSTM; the logits come from the state after the last *valid* word, ``h_L`` (eq-cmp-lstm).

    One direction: the LSTM runs over the padded batch and ``h_L`` is read at position ``L - 1``.
    That is exact, because the recurrence never looks ahead, so the pad steps after word L cannot
    reach ``h_L``; and it is faster on a CPU than packing, whose backward pass in PyTorch zero-fills
    a (total words x 4H) buffer once per time step. With ``bidirectional=True`` the batch is packed
    (``enforce_sorted=False``), because there the backward direction must start at each sentence's
    last word, not in its padding; the logits come from ``[h_fwd_L ; h_bwd_1]``.
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, num_classes: int = 2,
                 bidirectional: bool = False):
        super().__init__(vocab_size, embed_dim)
        self.bidirectional = bidirectional
        self.lstm = nn.LSTM(embed_dim, hidden, batch_first=True, bidirectional=bidirectional)
        self.classifier = nn.Linear(hidden * (2 if bidirectional else 1), num_classes)

    def forward(self, ids: Tensor) -> Tensor:
        x, _, lengths = self.embed(ids)
        if self.bidirectional:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            _, (h_n, _) = self.lstm(packed)  # h_n: (2, B, H), each direction's state after its last step
            return self.classifier(torch.cat([h_n[0], h_n[1]], dim=-1))
        out, _ = self.lstm(x)  # (B, T, H)
        last = out[torch.arange(len(ids), device=ids.device), lengths - 1]  # h_L, the last valid state
        return self.classifier(last)


def sinusoidal_positions(steps: int, dim: int) -> Tensor:
    """The fixed positional encoding of Vaswani et al. (eq-cmp-positions): (steps, dim), no parameters."""
    pos = torch.arange(steps, dtype=torch.float64).unsqueeze(1)
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    pe = torch.zeros(steps, dim, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return pe.float()


class TransformerClassifier(_Embedded):
    """Word vectors + sinusoidal positions -> pre-LN ``nn.TransformerEncoder`` -> masked mean -> linear.

    ``src_key_padding_mask`` gives padded keys weight exactly 0 in every softmax, and the mean runs
    over the valid positions only, so padding changes nothing. ``d_model`` is the embedding size;
    the width that matches the budget is the feed-forward size ``d_ff``.
    """

    def __init__(self, vocab_size: int, embed_dim: int, d_ff: int, num_classes: int = 2, layers: int = 2,
                 heads: int = 4, dropout: float = 0.0, max_len: int = 2048):
        super().__init__(vocab_size, embed_dim)
        layer = nn.TransformerEncoderLayer(embed_dim, heads, d_ff, dropout=dropout, batch_first=True, norm_first=True)
        # Pre-LN needs a final LayerNorm; nested tensors are off because pre-LN cannot use them anyway.
        self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(embed_dim), enable_nested_tensor=False)
        self.register_buffer("positions", sinusoidal_positions(max_len, embed_dim), persistent=False)
        self.classifier = nn.Linear(embed_dim, num_classes)

    def forward(self, ids: Tensor) -> Tensor:
        x, mask, _ = self.embed(ids)
        if ids.shape[1] > len(self.positions):
            raise ValueError(f"sequences of {ids.shape[1]} steps exceed max_len={len(self.positions)}")
        x = x + self.positions[: ids.shape[1]].to(x.dtype)
        h = self.encoder(x, src_key_padding_mask=~mask)  # True = ignore this key
        return self.classifier(masked_mean(h, mask))


# --------------------------------------------------------------------------- parameter budgets


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def encoder_parameters(model: nn.Module) -> int:
    """Trainable parameters outside the embedding table: the part in which the architectures differ."""
    embedding = sum(p.numel() for p in model.embedding.parameters()) if hasattr(model, "embedding") else 0
    return count_parameters(model) - embedding


def param_formula(name: str, embed_dim: int, width: int, num_classes: int = 2, *, kernel_sizes: Sequence[int] = (3, 4, 5),
                  layers: int = 2, bidirectional: bool = False) -> int:
    """Encoder parameters by hand, eq-cmp-params-mlp to eq-cmp-params-transformer.

    ``width`` is h (MLP hidden units), C (filters per kernel width), H (LSTM units per direction)
    or d_ff (Transformer feed-forward size); ``embed_dim`` is E, which is also the Transformer's d.
    """
    E, w, K = embed_dim, width, num_classes
    if name == "MLP":  # E -> h -> h -> K, weights and biases
        return (E * w + w) + (w * w + w) + (w * K + K)
    if name == "CNN":  # per width k: k E C weights + C biases; then a (len(ks) C -> K) classifier
        return sum(k * E * w + w for k in kernel_sizes) + len(kernel_sizes) * w * K + K
    if name == "LSTM":  # per direction four gates: W_ih (4H, E), W_hh (4H, H), two biases (4H) each
        dirs = 2 if bidirectional else 1
        return dirs * (4 * w * (E + w) + 8 * w) + dirs * w * K + K
    if name == "Transformer":  # per layer: attention 4(d^2 + d), FFN 2 d d_ff + d_ff + d, two LayerNorms 4d
        per_layer = 4 * (E * E + E) + (2 * E * w + w + E) + 4 * E
        return layers * per_layer + 2 * E + (E * K + K)  # + the final LayerNorm and the classifier
    raise ValueError(f"unknown model {name!r}; expected one of {MODEL_NAMES}")


def build_model(name: str, vocab_size: int, embed_dim: int, width: int, num_classes: int = 2, **kwargs) -> nn.Module:
    """One of the four models by name, with ``width`` its budget knob (see :func:`param_formula`)."""
    classes: dict[str, type[nn.Module]] = {"MLP": BagOfEmbeddingsMLP, "CNN": TextCNN, "LSTM": LSTMClassifier,
                                           "Transformer": TransformerClassifier}
    if name not in classes:
        raise ValueError(f"unknown model {name!r}; expected one of {MODEL_NAMES}")
    return classes[name](vocab_size, embed_dim, width, num_classes, **kwargs)


def width_for_budget(count: Callable[[int], int], budget: int, lo: int = 1, hi: int = 1 << 14) -> int:
    """The width w in [lo, hi] whose parameter count ``count(w)`` is closest to ``budget``.

    ``count`` must increase with w (it does for all four models); a bisection finds the last w with
    count(w) <= budget, then w or w + 1 is the closer one.
    """
    if budget < count(lo):
        raise ValueError(f"budget {budget:,} is below the smallest model ({count(lo):,} parameters at width {lo})")
    if budget > count(hi):
        raise ValueError(f"budget {budget:,} needs a width above {hi}")
    while lo < hi:  # invariant: count(lo) <= budget
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if count(mid) <= budget else (lo, mid - 1)
    return min((lo, lo + 1), key=lambda w: abs(count(w) - budget))


_SHAPE_ARGS = ("kernel_sizes", "layers", "bidirectional")  # the options that change the parameter count


def shape_args(options: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a model's options that :func:`param_formula` and :func:`forward_macs` need."""
    return {k: v for k, v in options.items() if k in _SHAPE_ARGS}


def matched_widths(embed_dim: int, budget: int, num_classes: int = 2, names: Sequence[str] = MODEL_NAMES,
                   options: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, int]:
    """For each model, the width whose encoder parameters by :func:`param_formula` are closest to ``budget``."""
    options = options or {}
    return {name: width_for_budget(
        lambda w, name=name: param_formula(name, embed_dim, w, num_classes, **shape_args(options.get(name, {}))), budget)
        for name in names}


def build_matched(vocab_size: int, embed_dim: int, budget: int, num_classes: int = 2,
                  names: Sequence[str] = MODEL_NAMES, seed: int = 0,
                  options: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, nn.Module]:
    """Each model at its :func:`matched_widths` width, so their encoder parameters all match ``budget``.

    Every model is initialised from the same seed, so all four start from the same embedding table.
    ``options[name]`` passes extra arguments to one model, e.g. ``{"Transformer": {"layers": 1}}``.
    """
    options = options or {}
    widths = matched_widths(embed_dim, budget, num_classes, names, options)
    models = {}
    for name in names:
        torch.manual_seed(seed)
        models[name] = build_model(name, vocab_size, embed_dim, widths[name], num_classes, **options.get(name, {}))
    return models


# --------------------------------------------------------------------------- compute and latency


def forward_macs(name: str, n: int, embed_dim: int, width: int, num_classes: int = 2, *,
                 kernel_sizes: Sequence[int] = (3, 4, 5), layers: int = 2, bidirectional: bool = False) -> int:
    """Multiply-accumulates of the matrix products and convolutions of one forward pass over one
    sentence of n tokens (eq-cmp-flops-mlp to eq-cmp-flops-transformer). Elementwise work (ReLU, the
    gates' sigmoids, softmax, LayerNorm, pooling) is O(n d) and left out, as FLOP counters do.

    n is the number of steps a model computes: the padded length, except for the packed
    (bidirectional) LSTM, which computes only the real words."""
    E, w, K = embed_dim, width, num_classes
    if name == "MLP":
        return E * w + w * w + w * K  # after pooling, the MLP sees one vector, whatever n is
    if name == "CNN":
        return sum(k * E * w * n for k in kernel_sizes) + len(kernel_sizes) * w * K
    if name == "LSTM":
        dirs = 2 if bidirectional else 1
        return dirs * n * 4 * w * (E + w) + dirs * w * K
    if name == "Transformer":
        d = E  # projections Q, K, V, O: 4 n d^2; scores Q K^T and weights @ V: 2 n^2 d; FFN: 2 n d d_ff
        return layers * (4 * n * d * d + 2 * n * n * d + 2 * n * d * w) + d * K
    raise ValueError(f"unknown model {name!r}; expected one of {MODEL_NAMES}")


def counted_forward_flops(model: nn.Module, ids: Tensor) -> int:
    """FLOPs of ``model(ids)`` as ``torch.utils.flop_counter.FlopCounterMode`` counts them (2 per MAC).

    Two fused CPU kernels hide their matrix products from the counter, so they are switched off
    for the count: oneDNN's LSTM (the reference LSTM runs one ``addmm`` per step instead) and the
    fused CPU attention kernel (the "math" attention runs two ``bmm``). Autograd stays on, because
    without it ``nn.TransformerEncoderLayer`` in eval mode takes its fused "fast path" as well. The
    result is the same arithmetic, made visible.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ..perf import counted_flops

    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the oneDNN switch warns about TF32 settings on some versions
        with torch.backends.mkldnn.flags(enabled=False), sdpa_kernel(SDPBackend.MATH):
            return counted_flops(lambda: model(ids))[0]


def as_markdown(table: Any, floatfmt: str = ".4g") -> str:
    """A pandas DataFrame as a Markdown table: ``DataFrame.to_markdown`` (it needs ``tabulate``), or
    the same layout by hand where ``tabulate`` is not installed."""
    try:
        return table.to_markdown(floatfmt=floatfmt)
    except ImportError:
        def cell(v: Any) -> str:
            return format(v, floatfmt) if isinstance(v, float) else str(v)

        header = [str(table.index.name or "")] + [str(c) for c in table.columns]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join([str(i)] + [cell(v) for v in row]) + " |" for i, row in zip(table.index, table.values.tolist())]
        return "\n".join(lines)


@torch.inference_mode()
def measure_latency(model: nn.Module, ids: Tensor, device: torch.device | str, *, warmup: int = 2,
                    repeats: int = 5) -> float:
    """Median wall-clock seconds of one forward pass on the batch ``ids``.

    The model is put in eval mode on ``device``; then the course's one timer,
    :func:`dlbook.perf.median_seconds`: ``warmup`` untimed calls first (allocations, kernel
    selection, lazy initialisation), the CUDA queue drained before and after every timed call
    (a GPU call returns before its kernels finish), the median of ``repeats``.
    """
    device = torch.device(device)
    model.eval().to(device)
    ids = ids.to(device)
    return median_seconds(lambda: model(ids), repeats=repeats, warmup=warmup, device=device)
