"""Decoding a sequence model word by word: greedy decoding and beam search, for any decoder.

Used by the captioning model (chapters/fusion/image-captioning.ipynb) and the translation model
(chapters/fusion/seq2seq-translation.ipynb): both expose one decoding step
``step(words, state, *memory) -> (logits, state, alpha)``, with ``words`` (B,) the previous words,
``state`` a tuple of tensors with the batch first (an LSTM's ``(h, c)``, a GRU's ``(h,)``),
``memory`` what the step attends to (annotations and their keys, or the encoder's states), and
``alpha`` (B, L) the attention weights of this step. One implementation of each search serves both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

State = tuple[Tensor, ...]
StepFn = Callable[..., tuple[Tensor, State, Tensor]]


@dataclass
class Decoded:
    """Generated sequences: ``tokens`` int64 (B, T) without ``<bos>``, ending in ``<eos>`` unless
    cut at ``max_len``, ``<pad>`` after it; ``alphas`` float (B, T, L), the attention weights that
    produced each token (zeros after ``<eos>``); ``lengths`` int64 (B,) tokens up to and including
    ``<eos>``; ``scores`` (B,) the summed log-probability of those tokens."""

    tokens: Tensor
    alphas: Tensor
    lengths: Tensor
    scores: Tensor


def sequence_lengths(tokens: Tensor, eos_id: int, pad_id: int) -> Tensor:
    """Tokens up to and including the first ``<eos>`` (all non-pad tokens when there is none)."""
    is_eos = tokens == eos_id
    first = torch.where(is_eos.any(dim=1), is_eos.float().argmax(dim=1) + 1, (tokens != pad_id).sum(dim=1))
    return first.long()



@torch.no_grad()
def greedy_decode(step: StepFn, state: State, memory: tuple[Tensor, ...], bos_id: int, eos_id: int, pad_id: int,
                  max_len: int) -> Decoded:
    """Feed back the most probable word at every step; stop at ``<eos>`` or after ``max_len`` words.
    ``state`` and ``memory`` are tuples of tensors with the batch first."""
    B, dev = len(memory[0]), memory[0].device
    words = torch.full((B,), bos_id, dtype=torch.long, device=dev)
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    scores = torch.zeros(B, dtype=memory[0].dtype, device=dev)
    tokens, alphas = [], []
    for _ in range(max_len):
        logits, state, alpha = step(words, state, *memory)
        logp = logits.log_softmax(dim=-1)
        words = logp.argmax(dim=-1)
        scores += torch.where(done, 0.0, logp.gather(1, words[:, None])[:, 0])
        words = words.masked_fill(done, pad_id)
        tokens.append(words)
        alphas.append(alpha.masked_fill(done[:, None], 0.0))
        done = done | (words == eos_id)
        if done.all():
            break
    tokens_t = torch.stack(tokens, dim=1)
    return Decoded(tokens_t, torch.stack(alphas, dim=1), sequence_lengths(tokens_t, eos_id, pad_id), scores)


@torch.no_grad()
def beam_search(step: StepFn, state: State, memory: tuple[Tensor, ...], bos_id: int, eos_id: int, pad_id: int,
                beam: int = 3, max_len: int = 20, length_penalty: float = 0.0) -> Decoded:
    """Keep the ``beam`` most probable partial sequences of every input (eq-cap-beam, eq-s2s-beam).

    Every live hypothesis is extended by every word and the ``beam`` best sums of log-probabilities
    survive; a hypothesis that wrote ``<eos>`` only grows ``<pad>`` at no cost, so its score is
    frozen while it competes. Stops when all are finished or after ``max_len`` words; returns the
    best ``score / length**length_penalty`` of each sentence. ``beam=1`` is greedy decoding.
    """
    if beam < 1:
        raise ValueError(f"beam must be at least 1, got {beam}")
    B, k, dev = len(memory[0]), beam, memory[0].device
    # every tensor below is (B * k, ...): hypothesis j of sentence b at row b * k + j
    memory = tuple(m.repeat_interleave(k, dim=0) for m in memory)
    state = tuple(s.repeat_interleave(k, dim=0) for s in state)
    scores = torch.full((B, k), float("-inf"), dtype=memory[0].dtype, device=dev)
    scores[:, 0] = 0.0  # one live hypothesis at the start, or the k copies would fill the beam
    words = torch.full((B * k,), bos_id, dtype=torch.long, device=dev)
    done = torch.zeros(B, k, dtype=torch.bool, device=dev)
    tokens = torch.zeros(B * k, 0, dtype=torch.long, device=dev)
    alphas: Tensor | None = None
    offset = (torch.arange(B, device=dev) * k)[:, None]
    for _ in range(max_len):
        logits, state, alpha = step(words, state, *memory)
        logp = logits.log_softmax(dim=-1).view(B, k, -1)
        V = logp.shape[-1]
        frozen = torch.full_like(logp[0, 0], float("-inf"))
        frozen[pad_id] = 0.0
        logp = torch.where(done[..., None], frozen, logp)  # a finished hypothesis only grows <pad>
        best, index = (scores[..., None] + logp).view(B, k * V).topk(k, dim=1)  # (B, k)
        parent, words = index // V, index % V
        rows = (offset + parent).view(-1)  # which hypothesis each survivor extends
        state = tuple(s[rows] for s in state)
        tokens = torch.cat([tokens[rows], words.view(-1, 1)], dim=1)
        alpha = alpha.masked_fill(done.view(-1, 1), 0.0)[rows, None]
        alphas = alpha if alphas is None else torch.cat([alphas[rows], alpha], dim=1)
        done = done.view(-1)[rows].view(B, k) | (words == eos_id)
        scores, words = best, words.view(-1)
        if done.all():
            break
    assert alphas is not None, "max_len must be at least 1"
    lengths = sequence_lengths(tokens, eos_id, pad_id).view(B, k)
    pick = (scores / lengths.clamp_min(1).to(scores.dtype) ** length_penalty).argmax(dim=1)
    rows = torch.arange(B, device=dev) * k + pick
    return Decoded(tokens[rows], alphas[rows], lengths.view(-1)[rows], scores.view(-1)[rows])
