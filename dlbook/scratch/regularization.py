"""Regularisers written from their formulas, and the small training harness that measures them.

Used by ``chapters/optimization/regularization.ipynb`` and ``tests/test_opt_regularization.py``:

* :func:`inverted_dropout`, :func:`dropout_backward`, :class:`DropoutScratch`   eq-reg-dropout, eq-reg-dropout-grad
* :func:`smoothed_targets`, :func:`label_smoothing_loss`, :func:`label_smoothing_grad`
  eq-reg-ls-target, eq-reg-ls-loss, eq-reg-ls-grad; :func:`smoothing_logit_gap` eq-reg-ls-gap
* :func:`batchnorm1d_reference`                                                  eq-reg-bn-train, eq-reg-bn-running, eq-reg-bn-eval
* :class:`EarlyStopping`                                                          patience-based, restores the best weights
* :func:`train_epochs`                                                            one ``dlbook.train.fit`` call,
  with a clean evaluation of train and validation sets after every epoch (an epoch-end callback)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..train import fit

Tensor = torch.Tensor
Data = tuple[Tensor, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


# --- inverted dropout -----------------------------------------------------------------------------


def dropout_mask(x: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Keep-mask ``m ~ Bernoulli(1 - p)`` of ``x``'s shape and dtype (1 = kept, 0 = dropped).

    Drawn exactly as PyTorch's CPU dropout draws it (``empty_like(x).bernoulli_(1 - p)``), so with
    the same generator state the mask is the same one ``F.dropout`` would use.
    """
    return torch.empty_like(x).bernoulli_(1 - p, generator=generator)


def inverted_dropout(
    x: Tensor, p: float, training: bool = True, mask: Tensor | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """eq-reg-dropout: ``x * m / (1 - p)`` in training (so ``E[output] = x``), ``x`` itself in evaluation."""
    if not 0 <= p < 1:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if not training or p == 0:
        return x
    if mask is None:
        mask = dropout_mask(x, p, generator)
    return x * mask * (1 / (1 - p))  # this order rounds exactly as F.dropout does


def dropout_backward(grad_out: Tensor, mask: Tensor, p: float) -> Tensor:
    """eq-reg-dropout-grad: the gradient flows through kept units only, scaled by ``1 / (1 - p)``."""
    return grad_out * mask * (1 / (1 - p))


class DropoutScratch(nn.Module):
    """``nn.Dropout`` written with :func:`inverted_dropout`; obeys ``model.train()`` / ``model.eval()``."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return inverted_dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


# --- label smoothing ------------------------------------------------------------------------------


def smoothed_targets(y: Tensor, num_classes: int, eps: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """eq-reg-ls-target: ``q = (1 - eps) * onehot(y) + eps / K``, shape (B, K); rows sum to 1."""
    return (1 - eps) * F.one_hot(y, num_classes).to(dtype) + eps / num_classes


def label_smoothing_loss(logits: Tensor, y: Tensor, eps: float) -> Tensor:
    """eq-reg-ls-loss: the mean cross-entropy ``-sum_k q_k log softmax(z)_k`` against the smoothed targets."""
    q = smoothed_targets(y, logits.shape[-1], eps, logits.dtype)
    return -(q * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def label_smoothing_grad(logits: Tensor, y: Tensor, eps: float) -> Tensor:
    """eq-reg-ls-grad: ``d loss / d z = (softmax(z) - q) / B`` for the mean over a batch of B."""
    q = smoothed_targets(y, logits.shape[-1], eps, logits.dtype)
    return (torch.softmax(logits, dim=-1) - q) / logits.shape[0]


def smoothing_logit_gap(num_classes: int, eps: float) -> float:
    """eq-reg-ls-gap: the logit gap ``z_y - z_k`` at which the smoothed loss is minimal (inf for eps = 0)."""
    return math.inf if eps == 0 else math.log(1 + num_classes * (1 - eps) / eps)


def logit_gaps(logits: Tensor, y: Tensor) -> Tensor:
    """Per example: the true class's logit minus the mean logit of the other classes."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = (logits.sum(1) - true) / (logits.shape[1] - 1)
    return true - others


# --- batch normalisation, train and eval mode ---------------------------------------------------------


def batchnorm1d_reference(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor,
    bias: Tensor,
    training: bool,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> tuple[Tensor, Tensor, Tensor]:
    """What ``nn.BatchNorm1d`` computes on x (B, C); returns ``(y, new_running_mean, new_running_var)``.

    * training (eq-reg-bn-train): normalise with the batch mean and *biased* variance, and update
      the running averages (eq-reg-bn-running) with the *unbiased* variance ``B / (B - 1) * var``;
    * evaluation (eq-reg-bn-eval): normalise with the running averages, which stay unchanged.
    """
    if training:
        n = x.shape[0]
        if n < 2:
            raise ValueError("batch statistics need at least 2 values per channel (got a batch of 1)")
        mean, var = x.mean(0), x.var(0, unbiased=False)
        running_mean = (1 - momentum) * running_mean + momentum * mean
        running_var = (1 - momentum) * running_var + momentum * var * n / (n - 1)
    else:
        mean, var = running_mean, running_var
    return (x - mean) / torch.sqrt(var + eps) * weight + bias, running_mean, running_var


# --- early stopping -------------------------------------------------------------------------------


@dataclass
class EarlyStopping:
    """Stop when the monitored value (lower is better) has not improved by ``min_delta`` for ``patience`` epochs.

    :meth:`step` keeps a copy of the weights of the best epoch; :meth:`restore` loads them back.
    Once triggered the stopper is frozen, so training on past the stop (to see what stopping
    saved) does not change its decision.
    """

    patience: int = 5
    min_delta: float = 0.0
    best: float = math.inf
    best_epoch: int = 0
    stopped_epoch: int | None = None
    bad_epochs: int = 0
    best_state: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def step(self, value: float, model: nn.Module, epoch: int) -> bool:
        """Record epoch ``epoch``'s value; return True when training should stop."""
        if self.stopped_epoch is not None:
            return True
        if value < self.best - self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            self.best_state = copy.deepcopy(model.state_dict())
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.patience:
                self.stopped_epoch = epoch
        return self.stopped_epoch is not None

    def restore(self, model: nn.Module) -> nn.Module:
        """Load the best epoch's weights into ``model``."""
        if not self.best_state:
            raise RuntimeError("nothing to restore: step() has not seen an epoch yet")
        model.load_state_dict(self.best_state)
        return model


# --- measuring a run ------------------------------------------------------------------------------


def weight_norm(model: nn.Module) -> float:
    """Euclidean norm of all weight matrices (biases and normalisation parameters excluded)."""
    return math.sqrt(sum(float((p.detach() ** 2).sum()) for p in model.parameters() if p.dim() > 1))


@torch.no_grad()
def measure(model: nn.Module, data: Data, batch_size: int = 2048) -> dict[str, float]:
    """Loss (plain cross-entropy), accuracy, mean top probability and calibration error, in eval mode."""
    was_training, dev = model.training, next(model.parameters()).device
    model.eval()
    logits = torch.cat([model(xb.to(dev)) for xb in data[0].split(batch_size)]).float().cpu()
    model.train(was_training)
    y = data[1].cpu()
    probs = torch.softmax(logits, dim=1)
    from torchmetrics.classification import MulticlassCalibrationError  # seconds to import: only here

    ece = MulticlassCalibrationError(num_classes=logits.shape[1], n_bins=15, norm="l1")
    return {
        "loss": float(F.cross_entropy(logits, y)),
        "acc": float((logits.argmax(1) == y).float().mean()),
        "confidence": float(probs.max(1).values.mean()),  # mean probability of the predicted class
        "ece": float(ece(probs, y)),
    }


def train_epochs(
    model: nn.Module,
    train: Data,
    val: Data,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    batch_size: int = 100,
    loss_fn: LossFn = F.cross_entropy,
    early_stopping: EarlyStopping | None = None,
    device: torch.device | None = None,
    progress: bool | str = True,
) -> list[dict[str, float]]:
    """Train with one ``dlbook.train.fit`` call and measure the validation set after each epoch.

    Returns one record per epoch: ``running_loss`` (the training loss ``fit`` averaged during the
    epoch, in training mode, with ``loss_fn``), ``val_loss``/``val_acc``/``val_confidence``/``val_ece``
    (eval mode, plain cross-entropy) and ``weight_norm``; the last record also has the same
    measurements on the training set (``train_loss``, ``train_acc``, ...), taken once to save time.
    The measuring is an epoch-end callback of ``fit``. The shuffling seed is fixed (``fit``'s
    ``seed=0``), so two runs see the same mini-batches in the same order.
    An ``early_stopping`` object watches the validation loss but does not end the run.
    ``progress`` shows a bar over the epochs (a string is used as its label).
    """
    curve: list[dict[str, float]] = []
    bar = tqdm(total=epochs, desc=progress if isinstance(progress, str) else "epochs", disable=not progress, leave=False)

    def measure_epoch(fit_record: dict[str, float], model: nn.Module) -> bool:
        epoch = int(fit_record["epoch"])
        record = {"epoch": epoch, "running_loss": fit_record["train_loss"]}
        if epoch == epochs:
            record.update({f"train_{k}": v for k, v in measure(model, train).items()})
        record.update({f"val_{k}": v for k, v in measure(model, val).items()})
        record["weight_norm"] = weight_norm(model)
        curve.append(record)
        if early_stopping is not None:
            early_stopping.step(record["val_loss"], model, epoch)
        bar.update()
        return False  # the stopper only watches: the run goes on, to show what stopping would save

    fit(model, train, optimizer=optimizer, epochs=epochs, batch_size=batch_size, loss_fn=loss_fn, seed=0,
        progress=False, amp=False, device=device, callbacks=[measure_epoch])
    bar.close()
    return curve
