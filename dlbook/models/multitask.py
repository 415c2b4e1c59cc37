"""Multi-task learning with a shared LSTM encoder (``chapters/rnn/multi-task-rnn.ipynb``).

One embedding and one LSTM (the *shared* parameters theta_s) read a sentence; each task k has its
own small head (theta_k). Training minimises the weighted sum of the task losses

* ``L = sum_k w_k L_k(theta_s, theta_k)``                       (eq-mtl-total)

so, because the gradient is linear, the shared parameters receive the weighted sum of the task
gradients and each head only its own task's gradient:

* ``grad_{theta_s} L = sum_k w_k grad_{theta_s} L_k``          (eq-mtl-grad-shared)
* ``grad_{theta_k} L = w_k grad_{theta_k} L_k``                (eq-mtl-grad-head)

The lesson's tasks all come from the sentence-polarity text: the sentiment label, a negation flag
derived by a rule (:func:`negation_labels`) and next-word prediction (:func:`lm_targets`). A head
reads the encoder in one of three ways (:class:`TaskSpec`): the state after the last real word
(``"last"``), the mean over the real words (``"mean"``) or every position (``"token"``). A
``causal`` token head (the language model) reads only the forward direction of a bidirectional
encoder: the backward direction at position t has already read word t + 1 (:func:`future_influence`).

:func:`train_multitask` is one small loop for single-task and multi-task models alike, so both get
the same optimiser, the same minibatches and the same number of steps: a matched budget.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from tqdm.auto import tqdm

from ..gradients import GradientReport, compare
from ..scratch.bidirectional import bucketed_batches

if TYPE_CHECKING:
    from ..data.text import PolarityData

Tensor = torch.Tensor
Pool = Literal["last", "mean", "token"]
IGNORE = -100  # F.cross_entropy's default ignore_index: the padding positions of token targets
EOS = 0  # the language model's "end of sentence" class reuses the pad id, never a real next word

#: Negation cues for the rule-derived task: these words, and every contraction ending in n't.
NEGATION_WORDS = frozenset(
    {"not", "no", "never", "nothing", "nobody", "none", "neither", "nor", "cannot", "nowhere", "without"}
)


# --- tasks derived from the text --------------------------------------------------------------


def is_negation(token: str) -> bool:
    """True for a negation cue: ``not``, ``never``, ``without``, ... or a contraction like ``doesn't``."""
    return token in NEGATION_WORDS or token.endswith("n't")


def negation_labels(tokens: Iterable[Sequence[str]], max_len: int | None = None) -> Tensor:
    """1 where a sentence, cut to the ``max_len`` tokens the model reads, contains a negation cue."""
    return torch.tensor(
        [int(any(is_negation(t) for t in (s[:max_len] if max_len else s))) for s in tokens], dtype=torch.long
    )


def lm_targets(ids: Tensor, lengths: Tensor, keep: int, max_len: int) -> Tensor:
    """Next-word classes (N, max_len) for the inputs ``ids[:, :max_len]``.

    ``ids`` (N, >= max_len + 1) and ``lengths`` are encoded with one token more than the model
    reads, so the last input position of a truncated sentence still has its true next word.
    Classes: vocabulary ids below ``keep`` (ids are ranked by frequency; 1 = ``<unk>``), rarer
    words -> 1, the end of the sentence -> :data:`EOS`; positions past the end -> :data:`IGNORE`.
    """
    if ids.shape[1] < max_len + 1:
        raise ValueError(f"ids need max_len + 1 = {max_len + 1} columns, got {ids.shape[1]}")
    nxt = ids[:, 1 : max_len + 1].clone()
    nxt[nxt >= keep] = 1  # rare words share the <unk> class
    position = torch.arange(max_len)
    nxt[position[None, :] >= lengths.clamp(max=max_len)[:, None]] = IGNORE
    ends = (lengths <= max_len).nonzero().squeeze(1)  # sentences that end inside the window ...
    nxt[ends, lengths[ends] - 1] = EOS  # ... predict "end" after their last word
    return nxt


@dataclass
class TaskData:
    """Inputs (N, T) padded with 0, true lengths (N,) on the CPU, and one target tensor per task."""

    x: Tensor
    lengths: Tensor
    targets: dict[str, Tensor]

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Rows ``idx``, trimmed to the longest sentence among them (no all-padding columns)."""
        lengths = self.lengths[idx]
        t = int(lengths.max())
        targets = {k: (v[idx, :t] if v.dim() == 2 else v[idx]) for k, v in self.targets.items()}
        return self.x[idx, :t], lengths, targets


def polarity_tasks(data: PolarityData, split: str, max_len: int, lm_keep: int) -> TaskData:
    """The lesson's three tasks on one split of :func:`dlbook.data.load_polarity`'s sentences.

    ``sentiment``: the real label; ``negation``: :func:`negation_labels`; ``lm``: :func:`lm_targets`
    over the ``lm_keep`` most frequent vocabulary ids. All three use the same sentences.
    """
    index = data.split(split)
    ids, lengths, labels = data.encode(index, max_len=max_len + 1)
    ids = F.pad(ids, (0, max_len + 1 - ids.shape[1]))  # no-op unless every sentence is short
    tokens = [data.tokens[int(i)] for i in index]
    return TaskData(
        x=ids[:, :max_len].contiguous(),
        lengths=lengths.clamp(max=max_len),
        targets={
            "sentiment": labels,
            "negation": negation_labels(tokens, max_len),
            "lm": lm_targets(ids, lengths, lm_keep, max_len),
        },
    )


# --- the model --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSpec:
    """A head with ``num_classes`` outputs that reads the encoder by ``pool``.

    ``causal`` (token heads only): the output at position t may depend on words <= t only, so the
    head reads the forward direction alone.
    """

    num_classes: int
    pool: Pool = "last"
    causal: bool = False

    def __post_init__(self) -> None:
        if self.pool not in ("last", "mean", "token"):
            raise ValueError(f"pool must be 'last', 'mean' or 'token', not {self.pool!r}")
        if self.causal and self.pool != "token":
            raise ValueError("only a token head can be causal")

    @property
    def metric(self) -> str:
        """``accuracy`` for sentence tasks, ``perplexity`` for token tasks."""
        return "perplexity" if self.pool == "token" else "accuracy"


class MultiTaskLSTM(nn.Module):
    """Embedding -> shared (Bi)LSTM -> one linear head per task (hard parameter sharing).

    ``forward(x, lengths)`` returns ``{task: logits}``: (B, C) for sentence heads, (B, T, C) for
    token heads. ``x`` is (B, T) int64 padded with ``pad_id``; ``lengths`` (B,) the true lengths.

    ``pack=True`` runs the LSTM on a packed sequence, which a bidirectional encoder needs (its
    backward direction must start at the last real word, not on the padding). A one-direction
    encoder gives the same outputs at the real positions without packing (position t has only
    read words <= t) and PyTorch's CPU kernel is faster on padded input, so ``pack=False`` is
    allowed there; the final state is then read at position ``length - 1``.
    """

    def __init__(
        self,
        vocab_size: int,
        tasks: Mapping[str, TaskSpec],
        embed_dim: int = 32,
        hidden_size: int = 64,
        bidirectional: bool = False,
        dropout: float = 0.0,
        pad_id: int = 0,
        pack: bool = True,
    ):
        super().__init__()
        if not tasks:
            raise ValueError("a MultiTaskLSTM needs at least one task")
        if bidirectional and not pack:
            raise ValueError("a bidirectional encoder must pack: its backward direction would start on padding")
        self.tasks = dict(tasks)
        self.hidden_size = hidden_size
        self.directions = 2 if bidirectional else 1
        self.pack = pack
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.encoder = nn.LSTM(embed_dim, hidden_size, batch_first=True, bidirectional=bidirectional)
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({
            name: nn.Linear(hidden_size * (1 if spec.causal else self.directions), spec.num_classes)
            for name, spec in self.tasks.items()
        })

    def shared_parameters(self) -> dict[str, nn.Parameter]:
        """theta_s: every parameter outside the heads (the embedding and the LSTM)."""
        return {n: p for n, p in self.named_parameters() if not n.startswith("heads.")}

    def encode(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Per-position states (B, T, D*H) and final states (B, D*H), D = number of directions.

        The final state is the state after each sentence's last real word (forward) and after
        its first word (backward): both have read the whole sentence and no padding.
        """
        emb = self.embedding(x)
        if not self.pack:
            out, _ = self.encoder(emb)  # one direction: out[:, t] has read words <= t only
            return out, out[torch.arange(len(x), device=x.device), lengths.to(x.device) - 1]
        packed = pack_padded_sequence(emb, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, (h_n, _) = self.encoder(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        final = torch.cat([h_n[-2], h_n[-1]], dim=1) if self.directions == 2 else h_n[-1]
        return out, final

    def forward(self, x: Tensor, lengths: Tensor) -> dict[str, Tensor]:
        out, final = self.encode(x, lengths)
        out, final = self.dropout(out), self.dropout(final)
        outputs: dict[str, Tensor] = {}
        for name, spec in self.tasks.items():
            if spec.pool == "last":
                features = final
            elif spec.pool == "mean":
                # Average over the real words only: a plain mean over T would average padding too.
                real = torch.arange(x.shape[1], device=x.device)[None, :] < lengths.to(x.device)[:, None]
                features = (out * real[..., None]).sum(1) / real.sum(1, keepdim=True)
            else:
                features = out[..., : self.hidden_size] if spec.causal else out
            outputs[name] = self.heads[name](features)
        return outputs


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def future_influence(model: MultiTaskLSTM, x: Tensor, lengths: Tensor, task: str, t: int) -> float:
    """max |d logits[:, t] / d embeddings[:, t+1:]| of a token task: 0 when position t cannot
    see the words after it, as a next-word predictor must not."""
    store: dict[str, Tensor] = {}

    def keep_embeddings(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        output.retain_grad()
        store["emb"] = output

    handle = model.embedding.register_forward_hook(keep_embeddings)
    try:
        logits = model(x, lengths)[task]
    finally:
        handle.remove()
    logits[:, t].sum().backward()
    return float(store["emb"].grad[:, t + 1 :].abs().max())


# --- the loss and its gradient ----------------------------------------------------------------


def task_losses(outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Mean cross-entropy L_k per task; a token task averages over real words (``IGNORE`` skipped)."""
    losses = {}
    for name, logits in outputs.items():
        y = targets[name]
        if logits.dim() == 3:
            logits, y = logits.flatten(0, 1), y.flatten()
        losses[name] = F.cross_entropy(logits, y, ignore_index=IGNORE)
    return losses


def weighted_sum(losses: Mapping[str, Tensor], weights: Mapping[str, float]) -> Tensor:
    """sum_k w_k L_k over the tasks in ``losses`` (eq-mtl-total); every task needs a weight."""
    missing = set(losses) - set(weights)
    if missing:
        raise KeyError(f"no weight for task(s) {sorted(missing)}")
    return sum(weights[k] * loss for k, loss in losses.items())


def multitask_loss(
    outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor], weights: Mapping[str, float]
) -> Tensor:
    """The total loss L = sum_k w_k L_k (eq-mtl-total) over the tasks the model has outputs for.

    ``targets`` may hold more tasks than ``outputs`` (one target dict serves every model).
    """
    return weighted_sum(task_losses(outputs, targets), weights)


def uniform_guess_weights(tasks: Mapping[str, TaskSpec]) -> dict[str, float]:
    """w_k = 1 / ln C_k (eq-mtl-uniform-weights): each weighted loss starts near 1, since a model
    that guesses uniformly over C_k classes has cross-entropy ln C_k."""
    return {k: 1.0 / math.log(spec.num_classes) for k, spec in tasks.items()}


def task_gradients(
    model: MultiTaskLSTM, x: Tensor, lengths: Tensor, targets: Mapping[str, Tensor]
) -> dict[str, dict[str, Tensor]]:
    """grad L_k w.r.t. every parameter, for each task: ``{task: {parameter name: gradient}}``.

    The heads of the other tasks get zeros (``materialize_grads``): L_k does not depend on them.
    """
    names, params = zip(*model.named_parameters())
    losses = task_losses(model(x, lengths), targets)
    return {
        k: dict(zip(names, torch.autograd.grad(loss, params, retain_graph=True, materialize_grads=True)))
        for k, loss in losses.items()
    }


def combine_gradients(per_task: Mapping[str, Mapping[str, Tensor]], weights: Mapping[str, float]) -> dict[str, Tensor]:
    """sum_k w_k grad L_k per parameter: the right-hand side of (eq-mtl-grad-shared)."""
    names = next(iter(per_task.values())).keys()
    return {n: sum(weights[k] * g[n] for k, g in per_task.items()) for n in names}


def check_shared_gradient(
    model: MultiTaskLSTM, x: Tensor, lengths: Tensor, targets: Mapping[str, Tensor], weights: Mapping[str, float]
) -> GradientReport:
    """Autograd's gradient of the total loss vs sum_k w_k grad L_k for every parameter, in float64.

    The shared parameters test (eq-mtl-grad-shared), the heads (eq-mtl-grad-head). The model is
    copied to float64 (and to eval mode: no dropout), so only rounding at 1e-16 could differ.
    """
    model64 = copy.deepcopy(model).double().eval()
    combined = combine_gradients(task_gradients(model64, x, lengths, targets), weights)
    model64.zero_grad(set_to_none=True)
    multitask_loss(model64(x, lengths), targets, weights).backward()
    return compare(combined, {n: p.grad for n, p in model64.named_parameters()})


def gradient_geometry(
    per_task: Mapping[str, Mapping[str, Tensor]], params: Iterable[str], weights: Mapping[str, float]
) -> tuple[dict[str, float], dict[tuple[str, str], float]]:
    """Norm of each weighted task gradient w_k grad L_k over ``params``, and the cosine between tasks.

    A task with a much larger weighted gradient steers the shared encoder; a negative cosine
    means two tasks pull the shared parameters in opposing directions.
    """
    params = list(params)
    flat = {k: torch.cat([weights[k] * g[n].flatten() for n in params]) for k, g in per_task.items()}
    norms = {k: float(v.norm()) for k, v in flat.items()}
    tasks = list(flat)
    cosines = {
        (a, b): float(F.cosine_similarity(flat[a], flat[b], dim=0)) for i, a in enumerate(tasks) for b in tasks[i + 1 :]
    }
    return norms, cosines


# --- baselines --------------------------------------------------------------------------------


def majority_accuracy(train_labels: Tensor, eval_labels: Tensor) -> float:
    """Accuracy of always answering the most frequent training class."""
    majority = torch.bincount(train_labels).argmax()
    return float((eval_labels == majority).float().mean())


def unigram_perplexity(train_targets: Tensor, eval_targets: Tensor, num_classes: int) -> float:
    """Perplexity of the word-frequency model p(w) (add-one smoothed), skipping ``IGNORE``.

    The best a next-word predictor can do without reading the sentence.
    """
    counts = torch.bincount(train_targets[train_targets != IGNORE], minlength=num_classes).double() + 1.0
    log_p = (counts / counts.sum()).log()
    return math.exp(-float(log_p[eval_targets[eval_targets != IGNORE]].mean()))


# --- training ---------------------------------------------------------------------------------

@torch.no_grad()
def evaluate_tasks(
    model: MultiTaskLSTM, data: TaskData, batch_size: int = 512, device: torch.device | None = None
) -> dict[str, float]:
    """Accuracy (sentence tasks) or perplexity (token tasks) of each of the model's tasks on ``data``."""
    device = device or next(model.parameters()).device
    from torchmetrics.classification import MulticlassAccuracy  # seconds to import: only when scoring

    was_training = model.training
    model.eval()
    accuracy = {
        name: MulticlassAccuracy(spec.num_classes, average="micro").to(device)
        for name, spec in model.tasks.items() if spec.pool != "token"
    }
    nll = {name: [0.0, 0] for name, spec in model.tasks.items() if spec.pool == "token"}  # nats, words
    for idx in torch.sort(data.lengths, stable=True).indices.split(batch_size):  # order: no effect on metrics
        x, lengths, targets = data.batch(idx)
        for name, out in model(x.to(device), lengths).items():
            y = targets[name].to(device)
            if name in accuracy:
                accuracy[name].update(out.float(), y)
            else:
                nll[name][0] += float(F.cross_entropy(out.float().flatten(0, 1), y.flatten(), reduction="sum"))
                nll[name][1] += int((y != IGNORE).sum())
    model.train(was_training)
    result = {name: float(m.compute()) for name, m in accuracy.items()}
    # perplexity = exp(mean next-word cross-entropy in nats) over the real words
    result.update({name: math.exp(total / max(count, 1)) for name, (total, count) in nll.items()})
    return {name: result[name] for name in model.tasks}


@dataclass
class MultiTaskHistory:
    """Validation metric per task at each evaluation point (``steps``), the mean training loss of
    each task since the previous point, and the training time (evaluations included)."""

    steps: list[int] = field(default_factory=list)
    val: dict[str, list[float]] = field(default_factory=dict)
    train_loss: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def last(self) -> dict[str, float]:
        return {k: v[-1] for k, v in self.val.items()}


def train_multitask(
    model: MultiTaskLSTM,
    train: TaskData,
    val: TaskData,
    *,
    weights: Mapping[str, float] | None = None,
    epochs: int = 2,
    batch_size: int = 64,
    lr: float = 3e-3,
    evals_per_epoch: int = 2,
    grad_clip: float | None = 1.0,
    seed: int = 0,
    device: torch.device | None = None,
    progress: bool = True,
    desc: str = "train",
) -> MultiTaskHistory:
    """Adam on ``multitask_loss`` over the tasks ``model`` has heads for (weights default to 1).

    Batches come from :func:`dlbook.scratch.bidirectional.bucketed_batches` and depend only on
    ``seed`` and ``batch_size``, so a single-task and a
    multi-task model trained with the same arguments see the same sentences in the same order
    for the same number of steps: a matched budget. The validation metrics are recorded before
    training (step 0) and ``evals_per_epoch`` times per epoch.
    """
    device = device or next(model.parameters()).device
    model.to(device)
    weights = dict(weights if weights is not None else dict.fromkeys(model.tasks, 1.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = len(bucketed_batches(train.lengths, batch_size, torch.Generator()))  # same for any seed
    total_steps = epochs * steps_per_epoch
    eval_every = max(1, steps_per_epoch // evals_per_epoch)
    history = MultiTaskHistory(val={k: [] for k in model.tasks}, train_loss={k: [] for k in model.tasks})
    running = dict.fromkeys(model.tasks, 0.0)
    since = 0

    def record(step: int) -> None:
        nonlocal since
        history.steps.append(step)
        for k, v in evaluate_tasks(model, val, device=device).items():
            history.val[k].append(v)
        for k in model.tasks:
            history.train_loss[k].append(running[k] / since if since else float("nan"))
            running[k] = 0.0
        since = 0

    start = time.perf_counter()
    record(0)
    step = 0
    model.train()
    with tqdm(total=total_steps, desc=desc, disable=not progress, leave=False) as bar:
        for _ in range(epochs):
            # similar lengths per batch (little padding), a new random mix every epoch
            for idx in bucketed_batches(train.lengths, batch_size, generator):
                x, lengths, targets = train.batch(idx)
                losses = task_losses(model(x.to(device), lengths), {k: v.to(device) for k, v in targets.items()})
                optimizer.zero_grad(set_to_none=True)
                weighted_sum(losses, weights).backward()
                if grad_clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                optimizer.step()
                for k, v in losses.items():
                    running[k] += float(v.detach())
                since += 1
                step += 1
                bar.update()
                # evaluate every eval_every steps, and at the end (not twice in a row)
                if (step % eval_every == 0 and total_steps - step >= eval_every // 2) or step == total_steps:
                    record(step)
                    bar.set_postfix({k: f"{v[-1]:.3g}" for k, v in history.val.items()})
    history.seconds = time.perf_counter() - start
    return history
