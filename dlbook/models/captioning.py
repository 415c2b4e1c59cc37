"""Show, attend and tell: a CNN encoder, additive attention and an LSTM decoder that writes captions.

Lesson: chapters/fusion/image-captioning.ipynb; derivation: chapters/fusion/additive-attention-derivation.md.

* :class:`CaptionEncoder` turns an image into a grid of ``L`` **annotation vectors** ``a_i`` (B, L, D):
  a small CNN plus a one-hot code of each grid cell's column and row (a convolution does not know
  *where* a feature is, and a caption such as "a 7 left of a 2" depends on it).
* :func:`additive_attention` is Bahdanau's score ``e_i = v^T tanh(W_a a_i + U_a h_{t-1} + b)``
  (eq-att-score), ``alpha = softmax(e)`` (eq-att-softmax) and ``z = sum_i alpha_i a_i`` (eq-att-context).
  :func:`additive_attention_backward` is its backward pass by hand (eq-att-grad-alpha to eq-att-grad-a),
  checked against autograd by :func:`check_additive_attention_backward` and against finite differences
  by :func:`gradcheck_additive_attention`.
* :class:`ShowAttendTell` is the decoder of Xu et al. (2015): ``h_0, c_0`` from the mean annotation,
  then per word an ``nn.LSTMCell`` fed ``[embedding(y_{t-1}) ; z_t]`` (so it is built for
  ``embed + feature`` inputs) and a word distribution from ``[h_t ; z_t]``. ``forward`` is teacher
  forcing; :meth:`ShowAttendTell.greedy` and :meth:`ShowAttendTell.beam_search` generate captions and
  return the attention weights of every generated word (the searches of :mod:`dlbook.models.decoding`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..gradients import GradientReport, compare, gradcheck64
from .decoding import Decoded, beam_search, greedy_decode

# --------------------------------------------------------------------------- additive attention


def additive_attention(
    A: Tensor, h: Tensor, W_a: Tensor, U_a: Tensor, b: Tensor, v: Tensor, keys: Tensor | None = None,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Bahdanau attention of one query ``h`` (B, H) over annotations ``A`` (B, L, D).

    ``s_i = W_a a_i + U_a h + b`` (A',), ``e_i = v^T tanh(s_i)`` (eq-att-score),
    ``alpha = softmax(e)`` over the L positions (eq-att-softmax), ``z = sum_i alpha_i a_i``
    (eq-att-context). ``W_a`` is (A', D), ``U_a`` (A', H), ``b`` and ``v`` (A',). ``keys = A W_a^T + b``
    may be passed precomputed: it does not depend on the decoding step, so a decoder computes it
    once per image. ``mask`` (B, L) bool, True where a position is real, gives padded positions
    (a batch of sentences of different lengths) a score of minus infinity, so weight 0.
    Returns the context ``z`` (B, D) and the weights ``alpha`` (B, L).
    """
    if keys is None:
        keys = A @ W_a.T + b  # (B, L, A')
    u = torch.tanh(keys + (h @ U_a.T).unsqueeze(1))  # (B, L, A'): the query is added to every position
    scores = u @ v  # (B, L)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    alpha = scores.softmax(dim=-1)  # (B, L)
    context = (alpha.unsqueeze(1) @ A).squeeze(1)  # (B, 1, L) @ (B, L, D): sum_i alpha_i a_i, (B, D)
    return context, alpha


def additive_attention_backward(
    d_context: Tensor, A: Tensor, h: Tensor, W_a: Tensor, U_a: Tensor, b: Tensor, v: Tensor,
    mask: Tensor | None = None,
) -> dict[str, Tensor]:
    """Hand-derived gradients of :func:`additive_attention` given ``d_context = dL/dz`` (B, D). No autograd.

    * eq-att-grad-alpha: ``dalpha_i = g . a_i``
    * eq-att-grad-e: ``de_i = alpha_i (dalpha_i - sum_j alpha_j dalpha_j)`` (softmax Jacobian)
    * eq-att-grad-s: ``ds_i = (1 - u_i^2) * v de_i`` (through ``v^T`` and ``tanh``)
    * eq-att-grad-params: ``dv = sum de_i u_i``, ``dW_a = sum ds_i a_i^T``, ``db = sum ds_i``,
      ``dU_a = sum_b (sum_i ds_i) h^T``
    * eq-att-grad-h: ``dh = U_a^T sum_i ds_i`` (the query is added to every score)
    * eq-att-grad-a: ``da_i = alpha_i g + W_a^T ds_i`` (through the context and through the score)

    With a ``mask``, a padded position has ``alpha_i = 0``, so every gradient above is 0 there.
    """
    u = torch.tanh(A @ W_a.T + b + (h @ U_a.T).unsqueeze(1))  # recompute what the backward needs
    scores = u @ v
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    alpha = scores.softmax(dim=-1)
    d_alpha = (A @ d_context.unsqueeze(-1)).squeeze(-1)  # (B, L)
    d_e = alpha * (d_alpha - (alpha * d_alpha).sum(dim=1, keepdim=True))  # (B, L)
    d_s = d_e.unsqueeze(-1) * v * (1 - u**2)  # (B, L, A')
    d_s_sum = d_s.sum(dim=1)  # (B, A'): h and U_a reach every position's score
    return {
        "A": alpha.unsqueeze(-1) * d_context.unsqueeze(1) + d_s @ W_a,
        "h": d_s_sum @ U_a,
        "W_a": torch.einsum("bla,bld->ad", d_s, A),
        "U_a": d_s_sum.T @ h,
        "b": d_s_sum.sum(dim=0),
        "v": torch.einsum("bl,bla->a", d_e, u),
    }


ATTENTION_INPUTS = ("A", "h", "W_a", "U_a", "b", "v")


def random_attention_problem(
    batch: int = 3, positions: int = 5, dim: int = 4, hidden: int = 3, attn_dim: int = 6, seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> dict[str, Tensor]:
    """Random inputs for :func:`additive_attention`, keyed by :data:`ATTENTION_INPUTS`."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {"A": (batch, positions, dim), "h": (batch, hidden), "W_a": (attn_dim, dim),
              "U_a": (attn_dim, hidden), "b": (attn_dim,), "v": (attn_dim,)}
    return {k: torch.randn(s, generator=gen, dtype=dtype) for k, s in shapes.items()}


def check_additive_attention_backward(
    batch: int = 3, positions: int = 5, dim: int = 4, hidden: int = 3, attn_dim: int = 6, classes: int = 7,
    seed: int = 0, backward=additive_attention_backward,
) -> GradientReport:
    """Float64 check of :func:`additive_attention_backward` against ``torch.autograd``.

    The loss is the cross-entropy of a linear word classifier on the context, as in the decoder, so
    ``g = dL/dz = (softmax(logits) - onehot(y)) / B @ W_out`` is computed by hand too. ``backward``
    is swappable so a test can plant a wrong derivation.
    """
    params = random_attention_problem(batch, positions, dim, hidden, attn_dim, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    W_out = torch.randn(classes, dim, generator=gen, dtype=torch.float64)
    y = torch.randint(0, classes, (batch,), generator=gen)

    def loss_fn(**p: Tensor) -> Tensor:
        context, _ = additive_attention(**p)
        return F.cross_entropy(context @ W_out.T, y)

    leaves = {k: t.clone().requires_grad_(True) for k, t in params.items()}
    auto = dict(zip(leaves, torch.autograd.grad(loss_fn(**leaves), list(leaves.values()))))
    with torch.no_grad():
        context, _ = additive_attention(**params)
        d_logits = (F.softmax(context @ W_out.T, dim=-1) - F.one_hot(y, classes).double()) / batch
        manual = backward(d_logits @ W_out, **params)
    return compare({f"dL/d{k}": manual[k] for k in params}, {f"dL/d{k}": auto[k] for k in params})


class AdditiveAttentionFunction(torch.autograd.Function):
    """``z = AdditiveAttentionFunction.apply(A, h, W_a, U_a, b, v)`` with :func:`additive_attention_backward`
    as its backward, so ``torch.autograd.gradcheck`` can test the hand derivation with finite differences."""

    @staticmethod
    def forward(ctx, A, h, W_a, U_a, b, v):
        ctx.save_for_backward(A, h, W_a, U_a, b, v)
        return additive_attention(A, h, W_a, U_a, b, v)[0]

    @staticmethod
    def backward(ctx, d_context):
        grads = additive_attention_backward(d_context, *ctx.saved_tensors)
        return tuple(grads[k] for k in ATTENTION_INPUTS)


def gradcheck_additive_attention(seed: int = 0) -> bool:
    """Finite-difference check (float64) of the hand-written backward, through :class:`AdditiveAttentionFunction`."""
    params = random_attention_problem(batch=2, positions=4, dim=3, hidden=2, attn_dim=3, seed=seed)
    return gradcheck64(AdditiveAttentionFunction.apply, [params[k] for k in ATTENTION_INPUTS])


class AdditiveAttention(nn.Module):
    """``context, alpha = attention(A, h)`` with learned ``W_a``, ``b`` (``self.W_a``, a Linear D -> A'),
    ``U_a`` (``self.U_a``, a Linear H -> A' without bias) and ``v`` (A',); runs :func:`additive_attention`."""

    def __init__(self, feature_dim: int, hidden: int, attn_dim: int):
        super().__init__()
        self.W_a = nn.Linear(feature_dim, attn_dim)  # weight W_a, bias b
        self.U_a = nn.Linear(hidden, attn_dim, bias=False)
        self.v = nn.Parameter(torch.empty(attn_dim).uniform_(-attn_dim**-0.5, attn_dim**-0.5))

    def keys(self, A: Tensor) -> Tensor:
        """``W_a a_i + b`` for every position (B, L, A'): the part of the score that the query does not change."""
        return self.W_a(A)

    def forward(self, A: Tensor, h: Tensor, keys: Tensor | None = None, mask: Tensor | None = None
                ) -> tuple[Tensor, Tensor]:
        return additive_attention(A, h, self.W_a.weight, self.U_a.weight, self.W_a.bias, self.v, keys, mask)


# --------------------------------------------------------------------------- encoder


class CaptionEncoder(nn.Module):
    """A small CNN that turns an image into a grid of annotation vectors.

    A "patchify" stem (a ``patch`` x ``patch`` convolution with stride ``patch``, as in ConvNeXt)
    followed by 3 x 3 convolutions with the given ``strides``, each with batch norm and ReLU; then
    a position code appended to each grid cell's feature vector: a one-hot vector of its column and
    one of its row (eq-cap-annotations).

    ``forward(images (B, 1, H, W)) -> annotations (B, L, D)`` with ``L = h * w`` cells read row by
    row and ``D = channels[-1] + w + h``. The default turns a 32 x 96 image into a 4 x 12 grid, L = 48,
    each cell seeing a 28 x 28 pixel window: about one digit. (A stride-1 stem with max pooling, the
    textbook design, costs about 3 times more CPU time here.)
    """

    def __init__(
        self, channels: tuple[int, ...] = (32, 32, 32), patch: int = 4, strides: tuple[int, ...] = (2, 1),
        grid: tuple[int, int] = (4, 12),
    ):
        super().__init__()
        if len(strides) != len(channels) - 1:
            raise ValueError(f"{len(channels)} channel counts need {len(channels) - 1} strides, got {len(strides)}")
        layers: list[nn.Module] = [nn.Conv2d(1, channels[0], patch, stride=patch, bias=False)]
        layers += [nn.BatchNorm2d(channels[0]), nn.ReLU()]
        for c_in, c_out, stride in zip(channels, channels[1:], strides):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU()]
        self.cnn = nn.Sequential(*layers)
        self.grid = grid
        # a convolution is translation-equivariant: without a position code, a cell holding a 7 looks
        # the same wherever the 7 is, and neither the attention nor the context could tell left from right
        rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
        where = torch.cat([F.one_hot(cols.flatten(), grid[1]), F.one_hot(rows.flatten(), grid[0])], dim=1)
        self.register_buffer("position", where.float())  # (L, w + h): one-hot column, then one-hot row
        self.feature_dim = channels[-1] + grid[1] + grid[0]

    def forward(self, images: Tensor) -> Tensor:
        features = self.cnn(images)  # (B, D, h, w)
        if tuple(features.shape[2:]) != self.grid:
            raise ValueError(f"images of {tuple(images.shape[2:])} give a {tuple(features.shape[2:])} grid; "
                             f"this encoder was built for {self.grid}")
        features = features.flatten(2).transpose(1, 2)  # (B, L, C), cells row by row
        return torch.cat([features, self.position.expand(len(features), -1, -1)], dim=-1)  # (B, L, D)


# --------------------------------------------------------------------------- decoder


class ShowAttendTell(nn.Module):
    """CNN encoder + additive attention + LSTM decoder (Xu et al., 2015), see the module docstring.

    One decoding step (:meth:`step`), with ``y_{t-1}`` the previous word and ``A`` the annotations:
    ``z_t, alpha_t = attention(A, h_{t-1})`` (eq-cap-attend), ``h_t, c_t = LSTMCell([E y_{t-1} ; z_t],
    (h_{t-1}, c_{t-1}))`` (eq-cap-lstm), ``p(y_t) = softmax(W_o [h_t ; z_t] + b_o)`` (eq-cap-output).
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int = 32,
        hidden: int = 128,
        attn_dim: int = 64,
        channels: tuple[int, ...] = (32, 32, 32),
        patch: int = 4,
        strides: tuple[int, ...] = (2, 1),
        grid: tuple[int, int] = (4, 12),
        dropout: float = 0.0,
        pad_id: int = 0,
        bos_id: int = 1,
        eos_id: int = 2,
    ):
        super().__init__()
        self.encoder = CaptionEncoder(channels, patch, strides, grid)
        D = self.encoder.feature_dim
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.attention = AdditiveAttention(D, hidden, attn_dim)
        self.init_h = nn.Linear(D, hidden)  # h_0 = tanh(W_h mean_i a_i): the decoder starts knowing the image
        self.init_c = nn.Linear(D, hidden)
        self.lstm = nn.LSTMCell(embed_dim + D, hidden)  # input [embedding ; context]: embed + feature sizes
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden + D, vocab_size)
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id

    def init_state(self, A: Tensor) -> tuple[Tensor, Tensor]:
        """``h_0 = tanh(W_h mean(a) + b_h)``, ``c_0 = tanh(W_c mean(a) + b_c)`` (eq-cap-init), each (B, H)."""
        mean = A.mean(dim=1)
        return torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean))

    def step(
        self, words: Tensor, state: tuple[Tensor, Tensor], A: Tensor, keys: Tensor
    ) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor]:
        """One word: ``words`` (B,) are ``y_{t-1}``; returns logits (B, V), the new ``(h, c)`` and ``alpha`` (B, L).

        The query is ``h_{t-1}``, the state *before* this step, as in Bahdanau's and Xu's decoders."""
        h, c = state
        context, alpha = self.attention(A, h, keys)
        h, c = self.lstm(torch.cat([self.embedding(words), context], dim=-1), (h, c))
        logits = self.out(self.dropout(torch.cat([h, context], dim=-1)))
        return logits, (h, c), alpha

    def forward(self, images: Tensor, captions_in: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher forcing: ``captions_in`` (B, T) is ``<bos> y_1 .. y_{T-1}``, the *true* previous words.

        Returns the logits (B, T, V) for ``y_1 .. y_T`` and the attention weights (B, T, L).
        """
        A = self.encoder(images)
        keys = self.attention.keys(A)
        h, c = self.init_state(A)
        embedded = self.embedding(captions_in)  # (B, T, M): every true previous word is known up front
        states, contexts, alphas = [], [], []
        for t in range(captions_in.shape[1]):  # the same computation as step(), with the word
            context, alpha = self.attention(A, h, keys)  # embedding and the output layer hoisted out of the loop
            h, c = self.lstm(torch.cat([embedded[:, t], context], dim=-1), (h, c))
            states.append(h)
            contexts.append(context)
            alphas.append(alpha)
        features = torch.cat([torch.stack(states, dim=1), torch.stack(contexts, dim=1)], dim=-1)  # (B, T, H + D)
        return self.out(self.dropout(features)), torch.stack(alphas, dim=1)

    @torch.no_grad()
    def greedy(self, images: Tensor, max_len: int = 12) -> Decoded:
        """Feed back the most probable word at every step; stop at ``<eos>`` or after ``max_len``
        words (:func:`dlbook.models.decoding.greedy_decode`)."""
        A = self.encoder(images)
        keys = self.attention.keys(A)
        return greedy_decode(self.step, self.init_state(A), (A, keys), self.bos_id, self.eos_id, self.pad_id, max_len)

    @torch.no_grad()
    def beam_search(self, images: Tensor, beam: int = 3, max_len: int = 12, length_penalty: float = 0.0) -> Decoded:
        """The ``beam`` most probable captions of every image (all images at once), ranked by
        ``score / length**length_penalty`` (:func:`dlbook.models.decoding.beam_search`, eq-cap-beam);
        ``beam=1`` is greedy decoding."""
        A = self.encoder(images)
        keys = self.attention.keys(A)
        return beam_search(self.step, self.init_state(A), (A, keys), self.bos_id, self.eos_id, self.pad_id,
                           beam, max_len, length_penalty)


def caption_loss(logits: Tensor, targets: Tensor, pad_id: int = 0) -> Tensor:
    """Mean cross-entropy per real word (``<eos>`` included, ``<pad>`` ignored) (eq-cap-loss).

    ``logits`` (B, T, V) from teacher forcing, ``targets`` (B, T) = the caption shifted left by one."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=pad_id)
