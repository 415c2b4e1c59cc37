"""Sentence classifiers: a bidirectional LSTM with additive attention pooling over time.

Lesson: chapters/rnn/sentiment-attention.ipynb. The pooling is the additive ("Bahdanau") score
``e_t = v^T tanh(W h_t + b)`` (eq-attnpool-score), a softmax over the *valid* steps only, so
padding gets exactly zero weight (eq-attnpool-softmax), and the weighted sum of the hidden states
(eq-attnpool-context). The functional form :func:`attention_pool` is what the module runs, and
:func:`attention_pool_backward` is its hand-derived backward pass (eq-attnpool-grad-alpha to
eq-attnpool-grad-params), checked against autograd by :func:`check_attention_pool_backward`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..gradients import GradientReport, compare

# --------------------------------------------------------------------------- attention pooling


def length_mask(lengths: Tensor, steps: int) -> Tensor:
    """(B, T) boolean mask, True at the valid steps ``t < lengths[b]`` of a right-padded batch."""
    return torch.arange(steps, device=lengths.device) < lengths.view(-1, 1)


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last axis of ``scores`` restricted to ``mask`` (eq-attnpool-softmax).

    Masked scores become ``-inf``, whose exponential is exactly 0: padding gets weight 0.0, not a
    small number, and the valid weights of each row sum to 1. Every row needs one valid entry.
    """
    return scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)


def attention_pool(H: Tensor, mask: Tensor, W: Tensor, b: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Additive attention pooling of hidden states ``H`` (B, T, D) over time.

    ``u_t = tanh(W h_t + b)`` (A,), ``e_t = v^T u_t`` (eq-attnpool-score), ``alpha = masked softmax(e)``
    (eq-attnpool-softmax), ``context = sum_t alpha_t h_t`` (eq-attnpool-context). ``W`` is (A, D),
    ``b`` and ``v`` are (A,). Returns ``context`` (B, D) and ``alpha`` (B, T).
    """
    U = torch.tanh(H @ W.T + b)  # (B, T, A)
    alpha = masked_softmax(U @ v, mask)  # (B, T)
    context = (alpha.unsqueeze(-1) * H).sum(dim=1)  # (B, D)
    return context, alpha


def attention_pool_backward(
    d_context: Tensor, H: Tensor, mask: Tensor, W: Tensor, b: Tensor, v: Tensor
) -> dict[str, Tensor]:
    """Hand-derived gradients of :func:`attention_pool`, given ``d_context = dL/dcontext`` (B, D).

    * eq-attnpool-grad-alpha: ``dalpha_t = h_t . g``
    * eq-attnpool-grad-e: ``de_t = alpha_t (dalpha_t - sum_s alpha_s dalpha_s)`` (softmax Jacobian;
      0 at padding because ``alpha_t`` is)
    * eq-attnpool-grad-h: ``dh_t = alpha_t g + W^T [(1 - u_t^2) * v de_t]`` (the direct path through
      the weighted sum plus the path through the score)
    * eq-attnpool-grad-params: ``dW = sum dz_t h_t^T``, ``db = sum dz_t``, ``dv = sum de_t u_t``.
    No autograd: every line is one of the equations.
    """
    U = torch.tanh(H @ W.T + b)  # recompute the forward quantities the backward needs
    alpha = masked_softmax(U @ v, mask)
    d_alpha = (H @ d_context.unsqueeze(-1)).squeeze(-1)  # (B, T)
    d_e = alpha * (d_alpha - (alpha * d_alpha).sum(dim=1, keepdim=True))  # (B, T)
    d_z = d_e.unsqueeze(-1) * v * (1 - U**2)  # (B, T, A): through v^T u_t, then tanh' = 1 - u^2
    d_H = alpha.unsqueeze(-1) * d_context.unsqueeze(1) + d_z @ W  # (B, T, D)
    return {
        "H": d_H,
        "W": torch.einsum("bta,btd->ad", d_z, H),
        "b": d_z.sum(dim=(0, 1)),
        "v": torch.einsum("bt,bta->a", d_e, U),
    }


def check_attention_pool_backward(
    lengths: Sequence[int] = (6, 3, 1, 5), steps: int = 6, dim: int = 5, attn_dim: int = 4, seed: int = 0,
    backward=attention_pool_backward,
) -> GradientReport:
    """Float64 check of :func:`attention_pool_backward` against ``torch.autograd``.

    The loss is the cross-entropy of a linear classifier on the context vector, so ``dL/dcontext``
    is computed by hand too: ``g = (softmax(logits) - onehot(y)) / B @ W_out``. Padded rows of ``H``
    hold random values, which must receive zero gradient. ``backward`` is swappable so a test can
    plant a wrong derivation.
    """
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    B = len(lengths)
    L = torch.as_tensor(list(lengths))
    mask = length_mask(L, steps)
    params = {
        "H": torch.randn(B, steps, dim, generator=gen, dtype=f64),
        "W": torch.randn(attn_dim, dim, generator=gen, dtype=f64),
        "b": torch.randn(attn_dim, generator=gen, dtype=f64),
        "v": torch.randn(attn_dim, generator=gen, dtype=f64),
    }
    W_out = torch.randn(2, dim, generator=gen, dtype=f64)
    y = torch.randint(0, 2, (B,), generator=gen)

    def loss_fn(H: Tensor, W: Tensor, b: Tensor, v: Tensor) -> Tensor:
        context, _ = attention_pool(H, mask, W, b, v)
        return F.cross_entropy(context @ W_out.T, y)

    leaves = {k: t.clone().requires_grad_(True) for k, t in params.items()}
    auto = dict(zip(leaves, torch.autograd.grad(loss_fn(**leaves), list(leaves.values()))))
    with torch.no_grad():
        context, _ = attention_pool(params["H"], mask, params["W"], params["b"], params["v"])
        d_logits = (F.softmax(context @ W_out.T, dim=-1) - F.one_hot(y, 2).to(f64)) / B
        manual = backward(d_logits @ W_out, params["H"], mask, params["W"], params["b"], params["v"])
    return compare({f"dL/d{k}": manual[k] for k in params}, {f"dL/d{k}": auto[k] for k in params})


class AdditiveAttentionPool(nn.Module):
    """``context, alpha = pool(H, mask)`` with learned ``W`` (A, D), ``b`` (A,) and ``v`` (A,);
    runs :func:`attention_pool`."""

    def __init__(self, dim: int, attn_dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, attn_dim)  # W, b
        self.v = nn.Parameter(torch.empty(attn_dim).uniform_(-attn_dim**-0.5, attn_dim**-0.5))

    def forward(self, H: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        return attention_pool(H, mask, self.proj.weight, self.proj.bias, self.v)


# --------------------------------------------------------------------------- the classifiers


class BiLSTMClassifier(nn.Module):
    """The source article's ``BiLSTM``, corrected: classify from the final states ``[h_fwd_L ; h_bwd_1]``.

    The original used an undefined ``num_classes``, ran two LSTMs on ``torch.flip``-ped padded input
    and read ``combined[:, -1, :]``, where the backward direction has seen one word (or only
    padding). Here one packed ``nn.LSTM(bidirectional=True)`` gives ``h_n`` (2, B, H): the forward
    state after each sentence's last word and the backward state after its first (eq-birnn-final).
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, num_classes: int = 2, padding_idx: int = 0):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=padding_idx)
        self.lstm = nn.LSTM(embed_dim, hidden, batch_first=True, bidirectional=True)
        self.classifier = nn.Linear(2 * hidden, num_classes)

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        packed = pack_padded_sequence(self.embedding(ids), lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)
        return self.classifier(torch.cat([h_n[0], h_n[1]], dim=-1))


class BiLSTMAttentionClassifier(nn.Module):
    """Embedding -> packed BiLSTM -> additive attention pooling -> linear (eq-attnpool-logits).

    ``forward(ids, lengths)`` takes right-padded ids (B, T) and the true lengths (B,) and returns the
    logits (B, num_classes) and the attention weights (B, T), exactly 0 at padding. The LSTM reads
    a ``PackedSequence`` (``enforce_sorted=False``), so the backward direction starts at each
    sentence's last word, not at its padding, and extra padding changes nothing.
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        hidden: int,
        num_classes: int = 2,
        attn_dim: int | None = None,
        dropout: float = 0.0,
        padding_idx: int = 0,
    ):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=padding_idx)
        self.lstm = nn.LSTM(embed_dim, hidden, batch_first=True, bidirectional=True)
        self.attention = AdditiveAttentionPool(2 * hidden, attn_dim or hidden)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(2 * hidden, num_classes)

    def encode(self, ids: Tensor, lengths: Tensor) -> Tensor:
        """BiLSTM hidden states ``[h_fwd_t ; h_bwd_t]`` (B, T, 2H), zeros at padding (eq-birnn-concat)."""
        x = self.dropout(self.embedding(ids))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        return out

    def forward(self, ids: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        H = self.encode(ids, lengths)
        context, alpha = self.attention(H, length_mask(lengths.to(ids.device), ids.shape[1]))
        return self.classifier(self.dropout(context)), alpha
