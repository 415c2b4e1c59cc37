"""A character-level LSTM language model: the model, stateful training and evaluation in bits per
character, temperature sampling, and the unigram baseline it must beat.

The lesson is chapters/rnn/char-language-model.ipynb; its equations are referenced by label:

* ``eq-charlm-factorisation``: p(x_1..x_T) = prod_t p(x_t | x_<t), one softmax per position.
* ``eq-charlm-bpc``: bits per character = mean cross-entropy in nats / ln 2.
* ``eq-charlm-unigram``: the unigram baseline, add-one smoothed character frequencies.
* ``eq-charlm-temperature``: sampling with p_i proportional to exp(z_i / tau).
* ``eq-charlm-entropy-grad``: dH/dtau = Var_p(z) / tau^3 >= 0, so hotter sampling is never less random.

A stream of ``n`` ids is cut into ``batch`` contiguous rows (:func:`stream_rows`); chunk ``k`` of
every row is read in turn and the LSTM state is carried from chunk ``k`` to chunk ``k + 1``
(detached from the graph while training: truncated backpropagation through time). Every character
after the first is predicted exactly once, with all the context of its row before it.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

State = tuple[Tensor, Tensor]

LN2 = math.log(2.0)


class CharLSTM(nn.Module):
    """Embedding -> LSTM -> dropout -> linear read-out to one logit per character.

    ``forward(x, state)`` takes ids (B, T) and an optional LSTM state ((L, B, H), (L, B, H)) and
    returns logits (B, T, V) -- the z of eq-charlm-temperature at every position -- and the new
    state, so a long text can be read in consecutive chunks.
    """

    def __init__(self, vocab_size: int, embed_dim: int = 32, hidden: int = 128, layers: int = 1,
                 dropout: float = 0.0):
        super().__init__()
        self.vocab_size, self.hidden, self.layers = vocab_size, hidden, layers
        self.embed = nn.Embedding(vocab_size, embed_dim)
        # nn.LSTM applies its own dropout only *between* layers (and warns for one layer).
        self.lstm = nn.LSTM(embed_dim, hidden, num_layers=layers, batch_first=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        out, state = self.lstm(self.embed(x), state)
        return self.head(self.drop(out)), state


def detach_state(state: State | None) -> State | None:
    """Cut the graph at a chunk boundary (truncated BPTT) but keep the values."""
    return None if state is None else (state[0].detach(), state[1].detach())


def stream_rows(ids: Tensor, batch: int) -> Tensor:
    """Cut a 1-D stream into ``batch`` contiguous rows of equal length, (batch, n // batch).

    Row ``b`` holds ``ids[b * L : (b + 1) * L]``; the last ``n mod batch`` ids are dropped.
    """
    length = len(ids) // batch
    if length < 2:
        raise ValueError(f"a stream of {len(ids)} ids is too short for {batch} rows")
    return ids[: batch * length].view(batch, length)


def stream_chunks(rows: Tensor, seq_len: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Consecutive (inputs, targets) chunks of ``rows``, both (batch, <= seq_len); targets are the
    inputs shifted by one character, so chunk ``k + 1`` continues exactly where chunk ``k`` ended."""
    n = rows.shape[1] - 1  # the last id of a row is only ever a target
    for start in range(0, n, seq_len):
        end = min(start + seq_len, n)
        yield rows[:, start:end], rows[:, start + 1 : end + 1]


@torch.no_grad()
def bits_per_char(model: nn.Module, ids: Tensor, seq_len: int = 256, batch: int = 1,
                  device: torch.device | str | None = None) -> float:
    """Mean negative log2-likelihood of a stream (eq-charlm-bpc), read statefully.

    The stream is cut into ``batch`` rows (:func:`stream_rows`) read ``seq_len`` characters at a
    time, carrying the LSTM state across chunks: the result equals one unroll over each whole row,
    whatever ``seq_len`` is. Each row's first character has no context and is not scored.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows = stream_rows(ids, batch).to(device)
    state, total, count = None, torch.zeros((), dtype=torch.float64, device=device), 0
    for x, y in stream_chunks(rows, seq_len):
        logits, state = model(x, state)
        total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").double()
        count += y.numel()
    model.train(was_training)
    return total.item() / count / LN2


def train_char_lm(
    model: nn.Module,
    train_ids: Tensor,
    *,
    steps: int,
    seq_len: int,
    batch: int,
    lr: float = 3e-3,
    grad_clip: float = 1.0,
    val_ids: Tensor | None = None,
    eval_every: int = 50,
    val_batch: int = 1,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Stateful truncated-BPTT training with Adam and gradient-norm clipping.

    Each step reads the next (batch, seq_len) chunk of the rows of ``train_ids`` with the state
    left by the previous chunk (detached); at the end of the rows it starts again with a zero
    state (a new epoch). Returns one record per ``eval_every`` steps: the step, the mean training
    bpc over those steps, the validation bpc (if ``val_ids``, read as ``val_batch`` rows) and the
    seconds of training so far.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    rows = stream_rows(train_ids, batch).to(device)
    chunks = iter(())
    state: State | None = None
    records: list[dict[str, float]] = []
    running, seen, elapsed = 0.0, 0, 0.0
    bar = tqdm(range(1, steps + 1), desc="steps", disable=not progress)
    for step in bar:
        start = time.perf_counter()
        try:
            x, y = next(chunks)
        except StopIteration:  # end of the rows: a new epoch from a zero state
            chunks, state = stream_chunks(rows, seq_len), None
            x, y = next(chunks)
        logits, state = model(x, state)
        state = detach_state(state)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)  # one long sentence must not blow up a step
        optimizer.step()
        elapsed += time.perf_counter() - start
        running += loss.item()
        seen += 1
        if step % eval_every == 0 or step == steps:
            record = {"step": step, "train_bpc": running / seen / LN2, "train_seconds": elapsed}
            if val_ids is not None:
                record["val_bpc"] = bits_per_char(model, val_ids, seq_len=256, batch=val_batch, device=device)
            records.append(record)
            bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k.endswith("bpc")})
            running, seen = 0.0, 0
    model.eval()
    return records


def temperature_probs(logits: Tensor, temperature: float) -> Tensor:
    """softmax(z / tau) over the last dimension (eq-charlm-temperature)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, not {temperature}")
    return torch.softmax(logits / temperature, dim=-1)


def temperature_entropy(logits: Tensor, temperature: float | Tensor) -> Tensor:
    """Entropy in nats of softmax(z / tau) over the last dimension."""
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def temperature_entropy_grad(logits: Tensor, temperature: float) -> Tensor:
    """dH/dtau = Var_p(z) / tau^3 (eq-charlm-entropy-grad), the variance of the logits under
    p = softmax(z / tau): never negative, so raising the temperature never lowers the entropy."""
    p = temperature_probs(logits, temperature)
    mean = (p * logits).sum(-1, keepdim=True)
    return (p * (logits - mean) ** 2).sum(-1) / temperature**3


def chi_square_test(observed: Tensor, probs: Tensor) -> tuple[float, float]:
    """Pearson's goodness-of-fit test of category counts against probabilities.

    Returns the statistic X^2 = sum_i (O_i - E_i)^2 / E_i with E_i = n p_i, and its p-value under
    the chi-square distribution with (categories - 1) degrees of freedom, the regularised upper
    incomplete gamma function Q(k/2, X^2/2). Same numbers as ``scipy.stats.chisquare``.
    """
    observed, probs = observed.double(), probs.double()
    expected = observed.sum() * probs
    stat = ((observed - expected) ** 2 / expected).sum()
    dof = torch.tensor((len(observed) - 1) / 2, dtype=torch.float64)
    return stat.item(), torch.special.gammaincc(dof, stat / 2).item()


@torch.no_grad()
def sample(
    model: nn.Module,
    prime: Tensor,
    length: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    num_samples: int = 1,
) -> Tensor:
    """Generate ``length`` ids after the ``prime`` ids, (num_samples, length).

    The model reads the prime once to set its state, then each new character is drawn from
    softmax(z / tau) (eq-charlm-temperature) with ``torch.multinomial`` and fed back in. The
    draws use ``generator`` (a seeded CPU ``torch.Generator``), so a sample reproduces exactly.
    """
    if prime.dim() != 1 or len(prime) == 0:
        raise ValueError("prime must be a non-empty 1-D tensor of ids")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    logits, state = model(prime.to(device).expand(num_samples, -1), None)
    out = torch.empty(num_samples, length, dtype=torch.long)
    for t in range(length):
        probs = temperature_probs(logits[:, -1].double().cpu(), temperature)
        nxt = torch.multinomial(probs, 1, generator=generator)  # (num_samples, 1), on the CPU
        out[:, t] = nxt[:, 0]
        logits, state = model(nxt.to(device), state)
    model.train(was_training)
    return out


def unigram_probs(train_ids: Tensor, vocab_size: int, smoothing: float = 1.0) -> Tensor:
    """Add-``smoothing`` character frequencies of the training stream, float64 (V,) (eq-charlm-unigram)."""
    counts = torch.bincount(train_ids, minlength=vocab_size).double() + smoothing
    return counts / counts.sum()


def unigram_bpc(train_ids: Tensor, eval_ids: Tensor, vocab_size: int, smoothing: float = 1.0) -> float:
    """Bits per character of ``eval_ids`` under the smoothed unigram model of ``train_ids``.

    The context-free baseline: every character gets the same distribution. Add-one smoothing keeps
    a character unseen in training from costing infinitely many bits.
    """
    p = unigram_probs(train_ids, vocab_size, smoothing)
    return -p.log2()[eval_ids].mean().item()


def entropy_bits(p: Tensor) -> float:
    """H(p) = -sum_i p_i log2 p_i, in bits (0 log 0 = 0)."""
    p = p.double()
    return -(p[p > 0] * p[p > 0].log2()).sum().item()


_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    """Lower-case words of a text (letters and inner apostrophes)."""
    return _WORD.findall(text.lower())


def known_word_fraction(texts: str | Iterable[str], known: set[str]) -> float:
    """Fraction of the words in ``texts`` that occur in ``known`` (e.g. the training text's words).

    A sample's first and last words may be cut mid-word, so each text's edge words are skipped.
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    hits = total = 0
    for text in texts:
        inner = words(text)[1:-1]
        hits += sum(w in known for w in inner)
        total += len(inner)
    return hits / total if total else float("nan")
