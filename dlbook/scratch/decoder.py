"""The Transformer decoder layer and LayerNorm's backward pass, from their equations.

Lesson: chapters/fusion/transformer-decoder.ipynb; derivation:
chapters/fusion/transformer-decoder-derivation.md (equation labels ``eq-tdd-*``).

* :class:`DecoderLayer` - masked (causal) self-attention, cross-attention to an encoder's
  "memory", a feed-forward block, each in a residual connection with LayerNorm, post-norm or
  pre-norm, exactly as ``nn.TransformerDecoderLayer(batch_first=True)`` computes it; it loads that
  module's weights (:meth:`DecoderLayer.from_torch`). Attention is
  :class:`dlbook.scratch.attention.MultiHeadAttention`, proven equal to ``nn.MultiheadAttention``
  in the self-attention lesson.
* :func:`layer_norm_backward` - dL/dx, dL/dgamma, dL/dbeta of LayerNorm given dL/dy, no autograd
  (eq-tdd-grad-gamma to eq-tdd-grad-x); :func:`check_layer_norm_backward` compares a backward
  function with autograd in float64 (swappable, so a test can plant a wrong derivation) and
  :class:`LayerNormFunction` lets ``gradcheck`` compare it with finite differences.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..gradients import GradientReport, compare
from .attention import MultiHeadAttention, copy_feedforward_and_norms, layer_norm, torch_layer_settings

# --------------------------------------------------------------------------- LayerNorm backward


def layer_norm_backward(d_y: Tensor, x: Tensor, weight: Tensor, eps: float = 1e-5) -> dict[str, Tensor]:
    """Hand-derived gradients of ``y = weight * (x - mean) / sqrt(var + eps) + bias`` over the last axis.

    With ``x_hat = (x - mean) / s``, ``s = sqrt(var + eps)`` and ``g = d_y * weight`` (eq-tdd-grad-xhat):

    * eq-tdd-grad-gamma: ``d_weight = sum over rows of d_y * x_hat``; eq-tdd-grad-beta: ``d_bias = sum of d_y``
    * eq-tdd-grad-x: ``d_x = (g - mean(g) - x_hat * mean(g * x_hat)) / s``, means over the last axis:
      the two subtracted terms are the paths through the mean and through the variance.
    """
    mean = x.mean(dim=-1, keepdim=True)
    s = torch.sqrt(((x - mean) ** 2).mean(dim=-1, keepdim=True) + eps)
    x_hat = (x - mean) / s
    g = d_y * weight  # dL/dx_hat
    d_x = (g - g.mean(dim=-1, keepdim=True) - x_hat * (g * x_hat).mean(dim=-1, keepdim=True)) / s
    rows = tuple(range(x.dim() - 1))  # gamma and beta are shared by every row (position, batch)
    return {"x": d_x, "weight": (d_y * x_hat).sum(dim=rows), "bias": d_y.sum(dim=rows)}


LayerNormBackward = Callable[[Tensor, Tensor, Tensor, float], dict[str, Tensor]]


class LayerNormFunction(torch.autograd.Function):
    """LayerNorm whose backward is :func:`layer_norm_backward`, for ``gradcheck`` against finite differences."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5):
        ctx.save_for_backward(x, weight)
        ctx.eps = eps
        return layer_norm(x, weight, bias, eps)

    @staticmethod
    def backward(ctx, d_y: Tensor):
        x, weight = ctx.saved_tensors
        grads = layer_norm_backward(d_y, x, weight, ctx.eps)
        return grads["x"], grads["weight"], grads["bias"], None


def random_layer_norm_problem(shape: tuple[int, ...] = (3, 5, 8), seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Float64 ``(x, weight, bias, G)``: input, affine parameters and a fixed upstream gradient G.

    ``x`` has a per-row offset and scale, so the mean and variance terms matter.
    """
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    x = torch.randn(shape, generator=gen, dtype=f64) * 3 + torch.randn(shape[:-1] + (1,), generator=gen, dtype=f64)
    weight = 1 + 0.5 * torch.randn(shape[-1], generator=gen, dtype=f64)
    bias = 0.5 * torch.randn(shape[-1], generator=gen, dtype=f64)
    G = torch.randn(shape, generator=gen, dtype=f64)
    return x, weight, bias, G


def check_layer_norm_backward(
    backward: LayerNormBackward = layer_norm_backward, shape: tuple[int, ...] = (3, 5, 8), seed: int = 0,
    eps: float = 1e-5,
) -> GradientReport:
    """Float64 check of ``backward`` against ``torch.autograd`` through ``F.layer_norm``.

    The loss is ``sum(y * G)`` for a fixed random ``G``, so ``dL/dy = G`` exactly.
    """
    x, weight, bias, G = random_layer_norm_problem(shape, seed)
    leaves = [t.clone().requires_grad_(True) for t in (x, weight, bias)]
    y = F.layer_norm(leaves[0], (shape[-1],), leaves[1], leaves[2], eps)
    auto = dict(zip(("x", "weight", "bias"), torch.autograd.grad((y * G).sum(), leaves)))
    with torch.no_grad():
        manual = backward(G, x, weight, eps)
    names = {"x": "dL/dx", "weight": "dL/dgamma", "bias": "dL/dbeta"}
    return compare({names[k]: manual[k] for k in names}, {names[k]: auto[k] for k in names})


# --------------------------------------------------------------------------- the decoder layer


class DecoderLayer(nn.Module):
    """One Transformer decoder layer, as ``nn.TransformerDecoderLayer(batch_first=True)`` computes it.

    Post-norm (``norm_first=False``, eq-td-postnorm): ``x = LN1(x + SelfAttn(x, causal));
    x = LN2(x + CrossAttn(x, memory)); x = LN3(x + FFN(x))``. Pre-norm (``norm_first=True``):
    ``x = x + SelfAttn(LN1(x)); x = x + CrossAttn(LN2(x), memory); x = x + FFN(LN3(x))``.
    ``forward(x, memory, tgt_is_causal=True, memory_key_padding_mask=None)`` returns the output
    (B, T, d_model), the self-attention weights (B, h, T, T) and the cross-attention weights
    (B, h, T, S). Queries of the cross-attention come from the decoder, keys and values from memory.
    """

    def __init__(self, d_model: int, heads: int, dim_feedforward: int, dropout: float = 0.0,
                 activation: Literal["relu", "gelu"] = "relu", norm_first: bool = False, eps: float = 1e-5):
        super().__init__()
        if activation not in ("relu", "gelu"):
            raise ValueError(f"activation must be relu or gelu, not {activation!r}")
        self.self_attn = MultiHeadAttention(d_model, heads, dropout)
        self.cross_attn = MultiHeadAttention(d_model, heads, dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        for i in (1, 2, 3):
            self.register_parameter(f"norm{i}_weight", nn.Parameter(torch.ones(d_model)))
            self.register_parameter(f"norm{i}_bias", nn.Parameter(torch.zeros(d_model)))
        self.activation, self.norm_first, self.eps, self.dropout = activation, norm_first, eps, dropout

    @classmethod
    def from_torch(cls, layer: nn.TransformerDecoderLayer) -> DecoderLayer:
        """A copy of ``layer``'s weights and settings (``batch_first``, relu or gelu)."""
        new = cls(*torch_layer_settings(layer))
        new = new.to(dtype=layer.linear1.weight.dtype, device=layer.linear1.weight.device)
        new.self_attn = MultiHeadAttention.from_torch(layer.self_attn)
        new.cross_attn = MultiHeadAttention.from_torch(layer.multihead_attn)
        copy_feedforward_and_norms(new, layer, norms=3)
        return new

    def _norm(self, x: Tensor, i: int) -> Tensor:
        return layer_norm(x, getattr(self, f"norm{i}_weight"), getattr(self, f"norm{i}_bias"), self.eps)

    def _feedforward(self, x: Tensor) -> Tensor:
        act = F.relu if self.activation == "relu" else F.gelu
        hidden = F.dropout(act(self.linear1(x)), self.dropout, self.training)
        return F.dropout(self.linear2(hidden), self.dropout, self.training)

    def _self(self, x: Tensor, causal: bool) -> tuple[Tensor, Tensor]:
        out, weights = self.self_attn(x, x, x, is_causal=causal)
        return F.dropout(out, self.dropout, self.training), weights

    def _cross(self, x: Tensor, memory: Tensor, kpm: Tensor | None) -> tuple[Tensor, Tensor]:
        out, weights = self.cross_attn(x, memory, memory, key_padding_mask=kpm)
        return F.dropout(out, self.dropout, self.training), weights

    def forward(self, x: Tensor, memory: Tensor, tgt_is_causal: bool = True,
                memory_key_padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        if self.norm_first:
            attended, w_self = self._self(self._norm(x, 1), tgt_is_causal)
            x = x + attended
            crossed, w_cross = self._cross(self._norm(x, 2), memory, memory_key_padding_mask)
            x = x + crossed
            return x + self._feedforward(self._norm(x, 3)), w_self, w_cross
        attended, w_self = self._self(x, tgt_is_causal)
        x = self._norm(x + attended, 1)
        crossed, w_cross = self._cross(x, memory, memory_key_padding_mask)
        x = self._norm(x + crossed, 2)
        return self._norm(x + self._feedforward(x), 3), w_self, w_cross
