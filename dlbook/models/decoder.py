"""A character-level decoder-only Transformer, generation with a key-value cache, and the matched
LSTM it is compared with.

Lesson: chapters/fusion/transformer-decoder.ipynb (equations ``eq-td-*``).

* :class:`KVCache` - the cache as an explicit data structure: per layer, the keys and values of
  every position read so far, (B, heads, t, d_head). :meth:`KVCache.append` adds the new
  positions' keys and values and returns all of them (eq-td-cache).
* :class:`CausalSelfAttention`, :class:`Block`, :class:`CharDecoder` - a pre-norm decoder-only
  Transformer (no cross-attention: there is no encoder) with sinusoidal positions. ``forward(ids,
  cache=None)``: without a cache it reads the whole sequence under the causal mask; with one it
  reads only the new ids, at positions ``cache.length ..``, attending to the cached keys too.
* :func:`generate` - sampling (or greedy decoding) with or without the cache; both give the same
  tokens and logits, the cached one reads each token once instead of re-reading the prefix.
* :func:`lm_step`, :func:`windowed_bpc` - the step for ``dlbook.train.fit`` and the evaluation in
  bits per character, for this model and for ``CharLSTM`` alike; :func:`lstm_hidden_for_budget`
  sizes an LSTM to a parameter budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.text import char_windows
from ..scratch.attention import merge_heads, sinusoidal_positional_encoding, split_heads
from .char_lm import temperature_probs

LN2 = math.log(2.0)


@dataclass
class KVCache:
    """Keys and values of the positions a decoder has read, one entry per layer.

    ``keys[l]`` and ``values[l]`` are (B, heads, t, d_head) after ``t`` positions, or ``None``
    before the first. Generating one token then costs one position's projections per layer plus
    one attention row over the ``t`` cached keys, instead of re-reading the whole prefix.
    """

    layers: int
    keys: list[Tensor | None] = field(default_factory=list)
    values: list[Tensor | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.keys = self.keys or [None] * self.layers
        self.values = self.values or [None] * self.layers

    @property
    def length(self) -> int:
        """Positions cached so far (those of layer 0; all layers hold the same number)."""
        return 0 if self.keys[0] is None else self.keys[0].shape[-2]

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store the new positions' ``k``, ``v`` (B, h, n, d) after the cached ones; return all of them."""
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=-2)
            v = torch.cat([self.values[layer], v], dim=-2)
        self.keys[layer], self.values[layer] = k, v
        return k, v


def causal_mask_offset(n_new: int, n_keys: int, device: torch.device | str | None = None) -> Tensor:
    """(n_new, n_keys) boolean, True where new query ``i`` (position ``n_keys - n_new + i``) may see key ``j``.

    Aligned at the bottom-right: the new queries are the last ``n_new`` positions. With no cache
    (``n_new == n_keys``) it is the usual lower triangle; for one new query it is all True.
    """
    return torch.ones(n_new, n_keys, dtype=torch.bool, device=device).tril(diagonal=n_keys - n_new)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with an optional :class:`KVCache` (eq-td-causal, eq-td-cache)."""

    def __init__(self, d_model: int, heads: int):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model = {d_model} is not divisible by heads = {heads}")
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))  # (B, h, n, d)
        if cache is not None:
            k, v = cache.append(layer, k, v)  # (B, h, t + n, d): the past and the new positions
        n, s = q.shape[-2], k.shape[-2]
        mask = None if n == 1 else causal_mask_offset(n, s, x.device)
        return self.proj(merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)))


class Block(nn.Module):
    """Pre-norm decoder block without cross-attention: ``x + Attn(LN(x))``, then ``x + FFN(LN(x))``."""

    def __init__(self, d_model: int, heads: int, dim_feedforward: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, dim_feedforward), nn.GELU(), nn.Linear(dim_feedforward, d_model))

    def forward(self, x: Tensor, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        x = x + self.attn(self.ln1(x), cache, layer)
        return x + self.ffn(self.ln2(x))


class CharDecoder(nn.Module):
    """Ids (B, T) -> logits (B, T, vocab): ``Embedding * sqrt(d)`` + sinusoidal positions -> blocks
    -> LayerNorm -> linear read-out. Logit ``t`` predicts id ``t + 1`` from ids ``0..t`` only."""

    def __init__(self, vocab_size: int, d_model: int = 64, heads: int = 4, layers: int = 2,
                 dim_feedforward: int = 256, max_len: int = 1024):
        super().__init__()
        self.d_model, self.max_len, self.n_layers = d_model, max_len, layers
        self.embedding = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.embedding.weight, std=d_model**-0.5)
        self.register_buffer("pe", sinusoidal_positional_encoding(max_len, d_model), persistent=False)
        self.blocks = nn.ModuleList(Block(d_model, heads, dim_feedforward) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def new_cache(self) -> KVCache:
        return KVCache(self.n_layers)

    def forward(self, ids: Tensor, cache: KVCache | None = None) -> Tensor:
        start = 0 if cache is None else cache.length  # the new ids sit after the cached ones
        end = start + ids.shape[1]
        if end > self.max_len:
            raise ValueError(f"position {end - 1} is beyond max_len = {self.max_len}")
        x = self.embedding(ids) * math.sqrt(self.d_model) + self.pe[start:end].to(self.embedding.weight.dtype)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        return self.head(self.ln_f(x))


@torch.no_grad()
def generate(
    model: CharDecoder,
    prime: Tensor,
    length: int,
    temperature: float | None = 1.0,
    generator: torch.Generator | None = None,
    num_samples: int = 1,
    use_cache: bool = True,
    cache_factory: Callable[[int], KVCache] = KVCache,
) -> tuple[Tensor, Tensor]:
    """``length`` new ids after ``prime`` (1-D), and the logits each was drawn from.

    Returns ``(ids (num_samples, length), logits (num_samples, length, vocab))``. ``temperature``
    ``None`` is greedy (argmax); otherwise draws from softmax(z / tau) with ``torch.multinomial``
    and ``generator``, as ``char_lm.sample`` does. ``use_cache=False`` re-reads the whole sequence
    for every new id (T forward passes over 1, 2, ..., T positions); ``use_cache=True`` reads the
    prime once and then one id per step. ``cache_factory(layers)`` builds the cache (a test plants
    a broken one here).
    """
    if prime.dim() != 1 or len(prime) == 0:
        raise ValueError("prime must be a non-empty 1-D tensor of ids")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    seq = prime.to(device).expand(num_samples, -1)
    cache = cache_factory(model.n_layers) if use_cache else None
    logits = model(seq, cache)[:, -1]
    out, all_logits = [], []
    for t in range(length):
        all_logits.append(logits)
        if temperature is None:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            probs = temperature_probs(logits.double().cpu(), temperature)
            nxt = torch.multinomial(probs, 1, generator=generator).to(device)
        out.append(nxt)
        if t == length - 1:
            break
        if use_cache:
            logits = model(nxt, cache)[:, -1]  # only the new id is read
        else:
            seq = torch.cat([seq, nxt], dim=1)
            logits = model(seq)[:, -1]  # the whole prefix, again
    model.train(was_training)
    return torch.cat(out, dim=1).cpu(), torch.stack(all_logits, dim=1).cpu()


def lm_step(model: nn.Module, batch: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """``fit``'s step for a next-character model: (logits (B*T, V), targets (B*T,)).

    Works for :class:`CharDecoder` (logits) and ``CharLSTM`` ((logits, state), from a zero state).
    """
    x, y = batch
    out = model(x)
    logits = out[0] if isinstance(out, tuple) else out
    return logits.flatten(0, 1), y.flatten()


@torch.no_grad()
def windowed_bpc(model: nn.Module, ids: Tensor, seq_len: int, batch: int = 256) -> float:
    """Bits per character of ``ids`` read as non-overlapping windows of ``seq_len`` (``char_windows``).

    Every window starts with no context (a zero LSTM state, an empty attention window), so both
    kinds of model see exactly the same context for every scored character: the fair comparison.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x, y = char_windows(ids, seq_len)
    total, count = 0.0, 0
    for i in range(0, len(x), batch):
        logits, target = lm_step(model, (x[i:i + batch].to(device), y[i:i + batch].to(device)))
        total += F.cross_entropy(logits.double(), target, reduction="sum").item()
        count += target.numel()
    model.train(was_training)
    return total / count / LN2


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (buffers such as the sinusoidal table are not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lstm_parameters(vocab_size: int, embed_dim: int, hidden: int) -> int:
    """Parameters of a one-layer ``CharLSTM``: embedding, 4 gates (two biases each), read-out."""
    return vocab_size * embed_dim + 4 * (embed_dim * hidden + hidden * hidden + 2 * hidden) + hidden * vocab_size + vocab_size


def lstm_hidden_for_budget(vocab_size: int, embed_dim: int, budget: int) -> int:
    """The one-layer LSTM hidden size whose parameter count is closest to ``budget``."""
    # 4 h^2 + (4 e + 8 + V) h + (V e + V) = budget: the positive root, then the nearest integer
    a, b, c = 4, 4 * embed_dim + 8 + vocab_size, vocab_size * embed_dim + vocab_size - budget
    root = (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
    candidates = [max(1, math.floor(root)), math.ceil(root)]
    return min(candidates, key=lambda h: abs(lstm_parameters(vocab_size, embed_dim, h) - budget))
