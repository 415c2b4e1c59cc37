"""Sequence to sequence with attention: a GRU encoder-decoder that translates numbers.

Lesson: chapters/fusion/seq2seq-translation.ipynb. Reuses the additive attention of
:mod:`dlbook.models.captioning` and the searches of :mod:`dlbook.models.decoding` (image captioning
is the same decoder with an image as the source sentence).

* :func:`dot_attention` is Luong's "dot" score ``e_i = s_i^T h`` (eq-s2s-dot), masked over the
  padding of a batch of source sentences; :func:`dot_attention_backward` is its backward by hand
  (eq-s2s-dot-grad), checked in float64 against autograd; the forward equals
  ``F.scaled_dot_product_attention`` with ``scale=1``.
* :class:`Seq2Seq`: an embedding and a bidirectional GRU over the packed source (so padding never
  enters a state), ``h_0`` from the mean of the encoder states, and a ``GRUCell`` decoder fed
  ``[embedding(y_{t-1}) ; z_t]`` with additive (Bahdanau) or dot-product (Luong) attention.
  ``forward(..., feed="teacher")`` is teacher forcing; ``feed="own"`` feeds the decoder its own
  previous argmax (free running) while still scoring the true words: the gap between the two
  losses is the **exposure bias**.
* :meth:`Seq2Seq.translate` decodes with :func:`dlbook.models.decoding.greedy_decode` or
  :func:`dlbook.models.decoding.beam_search`, the captioning model's searches: any model with a
  ``step(words, state, *memory) -> (logits, state, alpha)`` uses them.
"""

from __future__ import annotations

import math
from collections import Counter

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .captioning import AdditiveAttention
from .decoding import Decoded, State, beam_search, greedy_decode

# --------------------------------------------------------------------------- dot-product attention


def dot_attention(S: Tensor, h: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Luong's dot-product attention of a query ``h`` (B, H) over encoder states ``S`` (B, L, H).

    ``e_i = s_i^T h`` (eq-s2s-dot), ``alpha = softmax(e)`` over the real positions (``mask`` (B, L)
    bool, True where real; a padded position gets score minus infinity), ``z = sum_i alpha_i s_i``.
    No parameters: the query and the states must live in the same space. Returns ``z`` (B, H) and
    ``alpha`` (B, L).
    """
    scores = (S @ h.unsqueeze(-1)).squeeze(-1)  # (B, L)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    alpha = scores.softmax(dim=-1)
    return (alpha.unsqueeze(1) @ S).squeeze(1), alpha


def dot_attention_backward(d_context: Tensor, S: Tensor, h: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
    """Hand-derived gradients of :func:`dot_attention` given ``g = dL/dz`` (B, H). No autograd.

    ``dalpha_i = g . s_i``; ``de_i = alpha_i (dalpha_i - sum_j alpha_j dalpha_j)`` (softmax Jacobian);
    ``dh = sum_i de_i s_i``; ``ds_i = alpha_i g + de_i h``: each state reaches the loss twice, as a
    value in the context and as a key in its own score (eq-s2s-dot-grad).
    """
    _, alpha = dot_attention(S, h, mask)
    d_alpha = (S @ d_context.unsqueeze(-1)).squeeze(-1)  # (B, L)
    d_e = alpha * (d_alpha - (alpha * d_alpha).sum(dim=1, keepdim=True))
    return {"S": alpha.unsqueeze(-1) * d_context.unsqueeze(1) + d_e.unsqueeze(-1) * h.unsqueeze(1),
            "h": (d_e.unsqueeze(1) @ S).squeeze(1)}


class DotAttention(nn.Module):
    """:func:`dot_attention` as a module with the same call as ``AdditiveAttention``: ``(S, h, keys, mask)``."""

    def keys(self, S: Tensor) -> Tensor:
        """The keys are the states themselves."""
        return S

    def forward(self, S: Tensor, h: Tensor, keys: Tensor | None = None, mask: Tensor | None = None
                ) -> tuple[Tensor, Tensor]:
        return dot_attention(S, h, mask)


# --------------------------------------------------------------------------- the model


class Seq2Seq(nn.Module):
    """Bidirectional GRU encoder, attention, GRU decoder (Bahdanau et al. 2015; Luong et al. 2015).

    Encoder: ``s_1 .. s_L = BiGRU(E_src x)`` (eq-s2s-encoder), each ``s_i`` the two directions'
    states concatenated, ``hidden`` features. Decoder: ``h_0 = tanh(W_0 mean_i s_i + b_0)``, then
    per target word ``z_t, alpha_t = attention(S, h_{t-1})``, ``h_t = GRUCell([E_tgt y_{t-1} ; z_t],
    h_{t-1})``, ``p(y_t) = softmax(W_o [h_t ; z_t] + b_o)`` (eq-s2s-decoder).
    """

    def __init__(self, src_vocab: int, tgt_vocab: int, embed: int = 32, hidden: int = 64, attention: str = "additive",
                 attn_dim: int = 32, pad_id: int = 0, bos_id: int = 1, eos_id: int = 2):
        super().__init__()
        if hidden % 2:
            raise ValueError(f"hidden must be even (two directions of hidden // 2), got {hidden}")
        self.src_embedding = nn.Embedding(src_vocab, embed, padding_idx=pad_id)
        self.encoder = nn.GRU(embed, hidden // 2, batch_first=True, bidirectional=True)
        self.init_h = nn.Linear(hidden, hidden)
        self.tgt_embedding = nn.Embedding(tgt_vocab, embed, padding_idx=pad_id)
        if attention == "additive":
            self.attention: nn.Module = AdditiveAttention(hidden, hidden, attn_dim)
        elif attention == "dot":
            self.attention = DotAttention()
        else:
            raise ValueError(f"attention must be 'additive' or 'dot', got {attention!r}")
        self.cell = nn.GRUCell(embed + hidden, hidden)
        self.out = nn.Linear(2 * hidden, tgt_vocab)
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id

    def encode(self, src: Tensor, src_lengths: Tensor) -> tuple[State, tuple[Tensor, Tensor, Tensor]]:
        """Source ids (B, L) and lengths (B,) -> the decoder's first state ``(h_0,)`` and its memory
        ``(S, keys, mask)``: states (B, L, H), the attention's keys and the real-position mask (B, L)."""
        L = src.shape[1]
        packed = pack_padded_sequence(self.src_embedding(src), src_lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)  # the backward direction starts at each real end
        S, _ = pad_packed_sequence(self.encoder(packed)[0], batch_first=True, total_length=L)
        mask = torch.arange(L, device=src.device) < src_lengths.to(src.device)[:, None]
        mean = S.sum(dim=1) / src_lengths.to(S.device, S.dtype)[:, None]  # padded states are zeros
        return (torch.tanh(self.init_h(mean)),), (S, self.attention.keys(S), mask)

    def step(self, words: Tensor, state: State, S: Tensor, keys: Tensor, mask: Tensor) -> tuple[Tensor, State, Tensor]:
        """One target word: ``words`` (B,) are ``y_{t-1}``; returns logits (B, V), ``(h_t,)`` and ``alpha_t`` (B, L).
        The query is ``h_{t-1}``, the state before the step, for both attentions."""
        (h,) = state
        context, alpha = self.attention(S, h, keys, mask)
        h = self.cell(torch.cat([self.tgt_embedding(words), context], dim=-1), h)
        return self.out(torch.cat([h, context], dim=-1)), (h,), alpha

    def forward(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor, feed: str = "teacher") -> tuple[Tensor, Tensor]:
        """Logits (B, T, V) for ``y_1 .. y_T`` and attention weights (B, T, L).

        ``tgt_in`` (B, T) is ``<bos> y_1 .. y_{T-1}``. ``feed="teacher"``: step t reads the true
        ``y_{t-1}`` (teacher forcing). ``feed="own"``: from step 2 on it reads its own previous argmax
        (free running, no gradient through the choice), as it must when translating."""
        if feed not in ("teacher", "own"):
            raise ValueError(f"feed must be 'teacher' or 'own', got {feed!r}")
        state, memory = self.encode(src, src_lengths)
        logits, alphas = [], []
        words = tgt_in[:, 0]
        for t in range(tgt_in.shape[1]):
            if t > 0:
                words = tgt_in[:, t] if feed == "teacher" else logits[-1].argmax(dim=-1)
            out, state, alpha = self.step(words, state, *memory)
            logits.append(out)
            alphas.append(alpha)
        return torch.stack(logits, dim=1), torch.stack(alphas, dim=1)

    @torch.no_grad()
    def translate(self, src: Tensor, src_lengths: Tensor, beam: int = 1, max_len: int = 20,
                  length_penalty: float = 0.0) -> Decoded:
        """Greedy decoding (``beam=1``) or :func:`beam_search` with ``beam`` hypotheses per sentence."""
        state, memory = self.encode(src, src_lengths)
        if beam == 1:
            return greedy_decode(self.step, state, memory, self.bos_id, self.eos_id, self.pad_id, max_len)
        return beam_search(self.step, state, memory, self.bos_id, self.eos_id, self.pad_id, beam, max_len,
                           length_penalty)


# --------------------------------------------------------------------------- exposure bias


def free_running_accuracy(logits: Tensor, targets: Tensor, pad_id: int = 0) -> tuple[float, float]:
    """Token accuracy over real target positions and the fraction of sentences with every token right,
    for logits (B, T, V) from :meth:`Seq2Seq.forward` with either ``feed``."""
    real = targets != pad_id
    right = (logits.argmax(dim=-1) == targets) | ~real
    return float(right[real].float().mean() if real.any() else 1.0), float(right.all(dim=1).float().mean())


def accuracy_after_first_error(teacher_logits: Tensor, own_logits: Tensor, targets: Tensor, pad_id: int = 0
                               ) -> tuple[float, float, int]:
    """Where exposure bias lives: token accuracy *after* each sentence's first wrong token.

    ``teacher_logits`` and ``own_logits`` (B, T, V) come from :meth:`Seq2Seq.forward` with
    ``feed="teacher"`` and ``feed="own"``; until the first wrong token both runs read the same words,
    so they make that first error at the same place. After it, teacher forcing puts the decoder back
    on the true words, free running continues from its own. Sentences without an error are left out.
    Returns (teacher-forced accuracy, free-running accuracy, number of sentences with an error).
    """
    real = targets != pad_id
    wrong = (teacher_logits.argmax(dim=-1) != targets) & real
    has_error = wrong.any(dim=1)
    first = wrong.float().argmax(dim=1)  # position of the first wrong token (0 where there is none)
    after = (torch.arange(targets.shape[1], device=targets.device) > first[:, None]) & real & has_error[:, None]
    if not after.any():
        return 1.0, 1.0, int(has_error.sum())

    def accuracy(logits: Tensor) -> float:
        return float(((logits.argmax(dim=-1) == targets) & after).sum() / after.sum())

    return accuracy(teacher_logits), accuracy(own_logits), int(has_error.sum())


def sequence_loss(logits: Tensor, targets: Tensor, pad_id: int = 0) -> Tensor:
    """Mean cross-entropy per real target token (``<pad>`` ignored), logits (B, T, V), targets (B, T)."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=pad_id)


# --------------------------------------------------------------------------- BLEU


def corpus_bleu(candidates: list[list[str]], references: list[list[list[str]]], n_gram: int = 4) -> float:
    """Corpus BLEU (Papineni et al. 2002) from scratch, as eq-s2s-bleu, for checking ``torchmetrics``.

    ``p_n`` = n-grams of the candidates found in their references (each clipped to its largest count
    in any one reference) over all candidate n-grams, summed over the corpus; the brevity penalty
    compares the total candidate length ``c`` with ``r``, the sum of the reference lengths closest
    to each candidate's (the first of a tie). 0 when some ``p_n`` is 0 (no smoothing).
    """
    matched, total = [0] * n_gram, [0] * n_gram
    c = r = 0
    for cand, refs in zip(candidates, references, strict=True):
        c += len(cand)
        r += min((len(ref) for ref in refs), key=lambda n: abs(n - len(cand)))  # min keeps the first of a tie
        for n in range(1, n_gram + 1):
            grams = Counter(tuple(cand[i : i + n]) for i in range(len(cand) - n + 1))
            most: Counter = Counter()
            for ref in refs:
                most |= Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1))
            matched[n - 1] += sum((grams & most).values())
            total[n - 1] += sum(grams.values())
    if min(matched) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matched, total)) / n_gram
    brevity = 1.0 if c > r else math.exp(1 - r / c)
    return brevity * math.exp(log_precision)
