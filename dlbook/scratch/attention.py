"""Self-attention and the Transformer encoder layer from their equations.

Lesson: chapters/fusion/self-attention.ipynb; derivation: chapters/fusion/self-attention-derivation.md
(equation labels ``eq-sad-*``). Everything here runs on plain tensors and is proven equal to PyTorch:

* :func:`scaled_dot_product_attention` - ``softmax(Q K^T / sqrt(d_k) + mask) V`` (eq-sad-scores to
  eq-sad-output) with boolean or additive masks; :func:`causal_mask`, :func:`padding_mask` build them.
  Equal to ``F.scaled_dot_product_attention``.
* :func:`sdpa_backward` - dQ, dK, dV given dO through the row softmax, no autograd (eq-sad-grad-v to
  eq-sad-grad-k); :func:`check_sdpa_backward` compares it with autograd in float64 and
  :class:`SDPAFunction` lets ``gradcheck`` compare it with finite differences.
* :class:`MultiHeadAttention` - projections, split heads, attention per head, concatenation, output
  projection; loads an ``nn.MultiheadAttention``'s weights (:meth:`MultiHeadAttention.from_torch`).

Equations ``eq-sa-*`` are the lesson's (multi-head attention, positions, the encoder layer).

* :func:`sinusoidal_positional_encoding`, :func:`pe_shift_matrix` (PE(p + k) = R_k PE(p)),
  :class:`PositionalEncoding` (sinusoidal, learned or none).
* :func:`layer_norm`, :class:`EncoderLayer` - the post-norm or pre-norm encoder layer; loads an
  ``nn.TransformerEncoderLayer`` (:meth:`EncoderLayer.from_torch`).
* :class:`TokenTagger` - embedding + positional encoding + ``nn.TransformerEncoder`` + a linear head,
  one prediction per input token (the copy task of the lesson).

Mask conventions differ between PyTorch APIs, so this module states them everywhere: for
:func:`scaled_dot_product_attention` (as for ``F.scaled_dot_product_attention``) a boolean
``attn_mask`` is True where a query MAY attend; for :class:`MultiHeadAttention` and
:class:`EncoderLayer` (as for ``nn.MultiheadAttention``) ``key_padding_mask`` is True at PADDING.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..gradients import GradientReport, compare

# --------------------------------------------------------------------------- masks


def causal_mask(n_queries: int, n_keys: int | None = None, device: torch.device | str | None = None) -> Tensor:
    """(L, S) boolean mask, True where query ``i`` may attend key ``j <= i`` (eq-sad-mask).

    Aligned at the top-left corner, as ``is_causal=True`` of ``F.scaled_dot_product_attention``.
    """
    n_keys = n_queries if n_keys is None else n_keys
    return torch.ones(n_queries, n_keys, dtype=torch.bool, device=device).tril()


def padding_mask(lengths: Tensor, n_keys: int) -> Tensor:
    """(B, 1, 1, S) boolean mask, True at the valid keys ``j < lengths[b]`` of a right-padded batch.

    The two singleton axes broadcast over heads and queries: a padded key is hidden from every query.
    """
    valid = torch.arange(n_keys, device=lengths.device) < lengths.view(-1, 1)
    return valid[:, None, None, :]


def additive_mask(mask: Tensor | None, dtype: torch.dtype = torch.float64) -> Tensor | None:
    """A boolean "may attend" mask as the additive bias of eq-sad-mask: 0 where True, -inf where False.

    A float mask is returned unchanged (it is already additive), ``None`` stays ``None``.
    """
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


# --------------------------------------------------------------------------- scaled dot-product attention


def _bias(attn_mask: Tensor | None, is_causal: bool, n_q: int, n_k: int, like: Tensor) -> Tensor | None:
    """The additive bias M of eq-sad-scores from a boolean/float mask and/or the causal flag."""
    bias = additive_mask(attn_mask, like.dtype)
    if is_causal:
        causal = additive_mask(causal_mask(n_q, n_k, device=like.device), like.dtype)
        bias = causal if bias is None else bias + causal
    return bias


def attention_weights(
    q: Tensor, k: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False, scale: float | None = None
) -> Tensor:
    """``P = softmax(Q K^T * scale + M)`` over the keys (eq-sad-scores, eq-sad-softmax).

    ``q`` (..., L, d_k), ``k`` (..., S, d_k) -> (..., L, S); ``scale`` defaults to ``1 / sqrt(d_k)``.
    Every query row needs at least one key it may see: an all ``-inf`` row gives ``nan`` (no guard
    here, so a violated precondition shows); the guarded version, whose fully masked rows are zero,
    is exercise 3 of the fusion lab (see the derivation page, "A query with no allowed key").
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-2, -1) * scale  # (..., L, S)
    bias = _bias(attn_mask, is_causal, q.shape[-2], k.shape[-2], scores)
    if bias is not None:
        scores = scores + bias  # -inf before the softmax: exp(-inf) = 0 exactly
    return scores.softmax(dim=-1)


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """``O = softmax(Q K^T / sqrt(d_k) + M) V`` (eq-sad-scores to eq-sad-output); returns ``(O, P)``.

    ``q`` (..., L, d_k), ``k`` (..., S, d_k), ``v`` (..., S, d_v) -> ``O`` (..., L, d_v) and the
    attention weights ``P`` (..., L, S). ``attn_mask`` follows ``F.scaled_dot_product_attention``:
    boolean True = may attend, or a float mask that is added to the scores; it broadcasts to
    (..., L, S). ``is_causal`` adds the top-left causal mask.
    """
    weights = attention_weights(q, k, attn_mask, is_causal, scale)
    return weights @ v, weights


def sdpa_backward(
    d_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> dict[str, Tensor]:
    """Hand-derived gradients of :func:`scaled_dot_product_attention` given ``d_out = dL/dO``.

    * eq-sad-grad-v: ``dV = P^T dO``
    * eq-sad-grad-p: ``dP = dO V^T``
    * eq-sad-grad-s: ``dZ = P * (dP - rowsum(P * dP))`` (the row-softmax Jacobian; 0 where masked)
    * eq-sad-grad-q: ``dQ = scale * dZ K``;  eq-sad-grad-k: ``dK = scale * dZ^T Q``

    No autograd: the forward quantities are recomputed and every line is one equation.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    P = attention_weights(q, k, attn_mask, is_causal, scale)  # (..., L, S)
    d_v = P.transpose(-2, -1) @ d_out  # (..., S, d_v)
    d_p = d_out @ v.transpose(-2, -1)  # (..., L, S)
    d_z = P * (d_p - (P * d_p).sum(dim=-1, keepdim=True))  # (..., L, S)
    d_q = scale * d_z @ k  # (..., L, d_k)
    d_k = scale * d_z.transpose(-2, -1) @ q  # (..., S, d_k)
    return {"Q": d_q, "K": d_k, "V": d_v}


class SDPAFunction(torch.autograd.Function):
    """Attention whose backward is :func:`sdpa_backward`, for ``gradcheck`` against finite differences.

    ``SDPAFunction.apply(q, k, v, attn_mask, is_causal)``; the mask gets no gradient.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False):
        ctx.save_for_backward(q, k, v)
        ctx.attn_mask, ctx.is_causal = attn_mask, is_causal
        return scaled_dot_product_attention(q, k, v, attn_mask, is_causal)[0]

    @staticmethod
    def backward(ctx, d_out: Tensor):
        q, k, v = ctx.saved_tensors
        grads = sdpa_backward(d_out, q, k, v, ctx.attn_mask, ctx.is_causal)
        return grads["Q"], grads["K"], grads["V"], None, None


BackwardFn = Callable[..., dict[str, Tensor]]


def random_attention_problem(
    mask: Literal["none", "padding", "causal", "padding+causal"] = "padding",
    batch: int = 3,
    heads: int = 2,
    n_queries: int = 5,
    n_keys: int = 6,
    d_k: int = 4,
    d_v: int = 3,
    seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, bool]:
    """Float64 ``(q, k, v, attn_mask, is_causal)`` for the checks; padding keeps key lengths >= 1."""
    if mask not in ("none", "padding", "causal", "padding+causal"):
        raise ValueError(f"mask must be none, padding, causal or padding+causal, not {mask!r}")
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    q = torch.randn(batch, heads, n_queries, d_k, generator=gen, dtype=f64)
    k = torch.randn(batch, heads, n_keys, d_k, generator=gen, dtype=f64)
    v = torch.randn(batch, heads, n_keys, d_v, generator=gen, dtype=f64)
    attn_mask = None
    if "padding" in mask:
        lengths = torch.randint(1, n_keys + 1, (batch,), generator=gen)
        lengths[0] = n_keys // 2  # at least one batch row is really padded
        attn_mask = padding_mask(lengths, n_keys)
    return q, k, v, attn_mask, "causal" in mask


def check_sdpa_backward(
    backward: BackwardFn = sdpa_backward,
    mask: Literal["none", "padding", "causal", "padding+causal"] = "padding",
    seed: int = 0,
    **sizes: int,
) -> GradientReport:
    """Float64 check of ``backward`` (default :func:`sdpa_backward`) against ``torch.autograd``.

    The loss is ``sum(O * G)`` for a fixed random ``G``, so ``dL/dO = G`` exactly; autograd
    differentiates :func:`scaled_dot_product_attention`. ``backward`` is swappable so a test can
    plant a wrong derivation.
    """
    q, k, v, attn_mask, is_causal = random_attention_problem(mask, seed=seed, **sizes)
    gen = torch.Generator().manual_seed(seed + 1)
    G = torch.randn(q.shape[:-1] + v.shape[-1:], generator=gen, dtype=q.dtype)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out, _ = scaled_dot_product_attention(*leaves, attn_mask=attn_mask, is_causal=is_causal)
    auto = dict(zip("QKV", torch.autograd.grad((out * G).sum(), leaves)))
    with torch.no_grad():
        manual = backward(G, q, k, v, attn_mask, is_causal)
    return compare({f"dL/d{n}": manual[n] for n in "QKV"}, {f"dL/d{n}": auto[n] for n in "QKV"})


# --------------------------------------------------------------------------- multi-head attention


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, T, h * d) -> (B, h, T, d): head ``i`` owns features ``i*d .. (i+1)*d - 1`` (eq-sa-heads)."""
    B, T, D = x.shape
    return x.view(B, T, heads, D // heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, h, T, d) -> (B, T, h * d): the concatenation of the heads' outputs (eq-sa-mha)."""
    B, h, T, d = x.shape
    return x.transpose(1, 2).reshape(B, T, h * d)


def _hidden_to_additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """PyTorch module convention (boolean True = hidden, or float = added) -> additive bias."""
    return additive_mask(~mask, dtype) if mask.dtype == torch.bool else mask.to(dtype)


class MultiHeadAttention(nn.Module):
    """``MHA(Xq, Xkv) = Concat(head_1, ..., head_h) W_O^T + b_O``, ``head_i = Attention(Xq W_Q^i, Xkv W_K^i,
    Xkv W_V^i)`` (eq-sa-heads, eq-sa-mha), batch-first, embed dim ``d_model`` for queries, keys, values.

    ``forward(query, key, value, key_padding_mask=None, attn_mask=None, is_causal=False)`` returns the
    output (B, L, d_model) and the per-head weights (B, h, L, S). Masks follow ``nn.MultiheadAttention``:
    ``key_padding_mask`` (B, S) is True at PADDING, a boolean ``attn_mask`` (L, S) is True where a query
    may NOT attend (a float one is added). Dropout (on the weights, in training only) as in PyTorch.
    """

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model = {d_model} is not divisible by heads = {heads}")
        self.d_model, self.heads, self.dropout = d_model, heads, dropout
        self.w_q = nn.Linear(d_model, d_model, bias=bias)
        self.w_k = nn.Linear(d_model, d_model, bias=bias)
        self.w_v = nn.Linear(d_model, d_model, bias=bias)
        self.w_o = nn.Linear(d_model, d_model, bias=bias)

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention) -> MultiHeadAttention:
        """A copy of ``mha``'s weights: ``in_proj_weight`` stacks W_Q, W_K, W_V (3 d_model rows)."""
        if not mha._qkv_same_embed_dim:
            raise ValueError("only nn.MultiheadAttention with kdim = vdim = embed_dim is supported")
        has_bias = mha.in_proj_bias is not None
        new = cls(mha.embed_dim, mha.num_heads, mha.dropout, bias=has_bias)
        new = new.to(dtype=mha.in_proj_weight.dtype, device=mha.in_proj_weight.device)
        with torch.no_grad():
            for i, lin in enumerate((new.w_q, new.w_k, new.w_v)):
                rows = slice(i * mha.embed_dim, (i + 1) * mha.embed_dim)
                lin.weight.copy_(mha.in_proj_weight[rows])
                if has_bias:
                    lin.bias.copy_(mha.in_proj_bias[rows])
            new.w_o.weight.copy_(mha.out_proj.weight)
            if has_bias:
                new.w_o.bias.copy_(mha.out_proj.bias)
        return new

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor]:
        q = split_heads(self.w_q(query), self.heads)  # (B, h, L, d_k)
        k = split_heads(self.w_k(key), self.heads)  # (B, h, S, d_k)
        v = split_heads(self.w_v(value), self.heads)  # (B, h, S, d_k)
        # PyTorch's "True = hidden" masks -> one additive bias (eq-sad-mask), broadcast to (B, h, L, S)
        bias = torch.zeros((), dtype=q.dtype, device=q.device)
        if attn_mask is not None:
            bias = bias + _hidden_to_additive(attn_mask, q.dtype)
        if key_padding_mask is not None:
            bias = bias + _hidden_to_additive(key_padding_mask, q.dtype)[:, None, None, :]
        weights = attention_weights(q, k, bias, is_causal)  # (B, h, L, S)
        dropped = F.dropout(weights, self.dropout, self.training)
        return self.w_o(merge_heads(dropped @ v)), weights


# --------------------------------------------------------------------------- positional encodings


def sinusoidal_positional_encoding(
    length: int, d_model: int, base: float = 10000.0, dtype: torch.dtype = torch.float32
) -> Tensor:
    """(length, d_model) table ``PE[p, 2i] = sin(p w_i)``, ``PE[p, 2i+1] = cos(p w_i)``,
    ``w_i = base^(-2i / d_model)`` (eq-sa-pe): wavelengths from 2 pi to about ``2 pi base``."""
    if d_model % 2:
        raise ValueError(f"the sinusoidal encoding pairs sin and cos, so d_model must be even, got {d_model}")
    pos = torch.arange(length, dtype=torch.float64)[:, None]  # float64: exact angles for long tables
    freqs = base ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)  # (d_model / 2,)
    pe = torch.empty(length, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos * freqs)
    pe[:, 1::2] = torch.cos(pos * freqs)
    return pe.to(dtype)


def pe_shift_matrix(shift: int, d_model: int, base: float = 10000.0) -> Tensor:
    """(d_model, d_model) float64 ``R_k`` with ``PE(p + k) = R_k PE(p)`` for every p (eq-sa-pe-shift).

    Block diagonal: each (sin, cos) pair is rotated by the angle ``k w_i``; ``R_k`` does not depend on p.
    """
    freqs = base ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    c, s = torch.cos(shift * freqs), torch.sin(shift * freqs)
    R = torch.zeros(d_model, d_model, dtype=torch.float64)
    i = torch.arange(0, d_model, 2)
    R[i, i], R[i, i + 1] = c, s  # sin(a + b) = sin a cos b + cos a sin b
    R[i + 1, i], R[i + 1, i + 1] = -s, c  # cos(a + b) = cos a cos b - sin a sin b
    return R


class PositionalEncoding(nn.Module):
    """Adds position information to token vectors (B, T, d_model): ``kind`` = ``"sinusoidal"`` (a fixed
    buffer, eq-sa-pe), ``"learned"`` (an ``nn.Embedding(max_len, d_model)`` trained with the model, as
    in BERT) or ``"none"`` (the identity: the model is then blind to order)."""

    def __init__(self, d_model: int, max_len: int, kind: Literal["sinusoidal", "learned", "none"] = "sinusoidal"):
        super().__init__()
        if kind not in ("sinusoidal", "learned", "none"):
            raise ValueError(f"kind must be sinusoidal, learned or none, not {kind!r}")
        self.kind, self.max_len = kind, max_len
        if kind == "sinusoidal":
            self.register_buffer("pe", sinusoidal_positional_encoding(max_len, d_model))
        elif kind == "learned":
            self.embedding = nn.Embedding(max_len, d_model)
            nn.init.normal_(self.embedding.weight, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        T = x.shape[1]
        if T > self.max_len:
            raise ValueError(f"sequence of {T} steps is longer than max_len = {self.max_len}")
        if self.kind == "sinusoidal":
            return x + self.pe[:T].to(x.dtype)
        if self.kind == "learned":
            return x + self.embedding.weight[:T].to(x.dtype)
        return x


# --------------------------------------------------------------------------- the encoder layer


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """``(x - mean) / sqrt(var + eps) * weight + bias`` over the last axis, biased variance (eq-sa-ln)."""
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def torch_layer_settings(layer: nn.Module) -> tuple[int, int, int, float, str, bool, float]:
    """``(d_model, heads, dim_feedforward, dropout, activation, norm_first, eps)`` of an
    ``nn.TransformerEncoderLayer`` or ``nn.TransformerDecoderLayer``, in the order the scratch
    layers take them; refuses what they do not implement (not batch-first, another activation)."""
    if not layer.self_attn.batch_first:
        raise ValueError("the scratch layer is batch-first: build the nn layer with batch_first=True")
    act = layer.activation
    name = {F.relu: "relu", F.gelu: "gelu"}.get(act) or type(act).__name__.lower()
    if name not in ("relu", "gelu"):
        raise ValueError(f"unsupported activation {act}")
    return (layer.self_attn.embed_dim, layer.self_attn.num_heads, layer.linear1.out_features, layer.dropout.p, name,
            layer.norm_first, layer.norm1.eps)


def copy_feedforward_and_norms(new: nn.Module, layer: nn.Module, norms: int) -> None:
    """Copy the feed-forward weights and the ``norms`` LayerNorms of ``layer`` into the scratch ``new``."""
    with torch.no_grad():
        for mine, theirs in ((new.linear1, layer.linear1), (new.linear2, layer.linear2)):
            mine.weight.copy_(theirs.weight)
            mine.bias.copy_(theirs.bias)
        for i in range(1, norms + 1):
            norm = getattr(layer, f"norm{i}")
            getattr(new, f"norm{i}_weight").copy_(norm.weight)
            getattr(new, f"norm{i}_bias").copy_(norm.bias)


class EncoderLayer(nn.Module):
    """One Transformer encoder layer, as ``nn.TransformerEncoderLayer(batch_first=True)`` computes it.

    Post-norm (``norm_first=False``, the original Transformer, eq-sa-postnorm):
    ``x = LN1(x + MHA(x)); x = LN2(x + FFN(x))``. Pre-norm (``norm_first=True``, eq-sa-prenorm):
    ``x = x + MHA(LN1(x)); x = x + FFN(LN2(x))``. ``FFN(x) = W_2 act(W_1 x + b_1) + b_2`` (eq-sa-ffn).
    ``forward(x, key_padding_mask=None, attn_mask=None, is_causal=False)`` (masks as
    :class:`MultiHeadAttention`) returns the output (B, T, d_model) and the attention weights (B, h, T, T).
    """

    def __init__(
        self,
        d_model: int,
        heads: int,
        dim_feedforward: int,
        dropout: float = 0.0,
        activation: Literal["relu", "gelu"] = "relu",
        norm_first: bool = False,
        eps: float = 1e-5,
    ):
        super().__init__()
        if activation not in ("relu", "gelu"):
            raise ValueError(f"activation must be relu or gelu, not {activation!r}")
        self.self_attn = MultiHeadAttention(d_model, heads, dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1_weight = nn.Parameter(torch.ones(d_model))
        self.norm1_bias = nn.Parameter(torch.zeros(d_model))
        self.norm2_weight = nn.Parameter(torch.ones(d_model))
        self.norm2_bias = nn.Parameter(torch.zeros(d_model))
        self.activation, self.norm_first, self.eps, self.dropout = activation, norm_first, eps, dropout

    @classmethod
    def from_torch(cls, layer: nn.TransformerEncoderLayer) -> EncoderLayer:
        """A copy of ``layer``'s weights and settings (it must be ``batch_first``, relu or gelu)."""
        new = cls(*torch_layer_settings(layer))
        new = new.to(dtype=layer.linear1.weight.dtype, device=layer.linear1.weight.device)
        new.self_attn = MultiHeadAttention.from_torch(layer.self_attn)
        copy_feedforward_and_norms(new, layer, norms=2)
        return new

    def _norm(self, x: Tensor, i: int) -> Tensor:
        return layer_norm(x, getattr(self, f"norm{i}_weight"), getattr(self, f"norm{i}_bias"), self.eps)

    def _attend(self, x: Tensor, key_padding_mask, attn_mask, is_causal) -> tuple[Tensor, Tensor]:
        out, weights = self.self_attn(x, x, x, key_padding_mask, attn_mask, is_causal)
        return F.dropout(out, self.dropout, self.training), weights

    def _feedforward(self, x: Tensor) -> Tensor:
        act = F.relu if self.activation == "relu" else F.gelu
        hidden = F.dropout(act(self.linear1(x)), self.dropout, self.training)
        return F.dropout(self.linear2(hidden), self.dropout, self.training)

    def forward(
        self, x: Tensor, key_padding_mask: Tensor | None = None, attn_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor]:
        if self.norm_first:  # eq-sa-prenorm: the residual stream itself is never normalised
            attended, weights = self._attend(self._norm(x, 1), key_padding_mask, attn_mask, is_causal)
            x = x + attended
            return x + self._feedforward(self._norm(x, 2)), weights
        attended, weights = self._attend(x, key_padding_mask, attn_mask, is_causal)  # eq-sa-postnorm
        x = self._norm(x + attended, 1)
        return self._norm(x + self._feedforward(x), 2), weights


# --------------------------------------------------------------------------- a small model


class TokenTagger(nn.Module):
    """Token ids (B, T) -> logits (B, T, vocab): ``Embedding * sqrt(d_model)`` + positional encoding
    -> ``nn.TransformerEncoder`` (batch-first, ``layers`` x ``nn.TransformerEncoderLayer``) -> ``Linear``.

    ``positions`` is a :class:`PositionalEncoding` kind; with ``"none"`` the model is permutation
    equivariant (permuting the input tokens permutes the logits), so it cannot solve an order task.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        heads: int,
        layers: int,
        dim_feedforward: int,
        max_len: int,
        positions: Literal["sinusoidal", "learned", "none"] = "sinusoidal",
        dropout: float = 0.0,
        norm_first: bool = False,
    ):
        super().__init__()
        self.d_model = d_model
        self.embedding = nn.Embedding(vocab_size, d_model)
        # std d^-1/2, so the sqrt(d_model)-scaled embeddings have unit-size entries, like the encoding's
        nn.init.normal_(self.embedding.weight, std=d_model**-0.5)
        self.positions = PositionalEncoding(d_model, max_len, positions)
        layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward, dropout, batch_first=True,
                                           norm_first=norm_first)
        # enable_nested_tensor=False: no padding here, and it avoids a warning for norm_first=True
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, vocab_size)

    def embed(self, ids: Tensor) -> Tensor:
        """The encoder's input: scaled token embeddings plus positions (eq-sa-embed), (B, T, d_model)."""
        return self.positions(self.embedding(ids) * math.sqrt(self.d_model))

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(self.encoder(self.embed(ids)))
