"""The one training loop every chapter uses: :func:`fit` and :func:`evaluate`.

Design choices, each measured in the optimization chapter:

* Small datasets (every tensor dataset under ``device_budget`` bytes) are moved to the device
  **once** and batched by indexing there, instead of a ``DataLoader`` copying every batch.
* On CUDA, mixed precision is on by default: bfloat16 autocast where supported, else float16
  with a ``GradScaler``.
* Metrics are ``torchmetrics`` objects, so accuracy, F1 or BLEU plug in the same way.

One loop for every lesson, however its batches look:

* A batch is a tuple of tensors; a **step** ``step(model, batch)`` turns it into what the loss
  needs. The default, :func:`default_step`, calls ``model(*batch[:-1])`` and returns
  ``(output, batch[-1])``, so ``(x, y)``, ``(ids, lengths, y)`` or ``(image, question, y)``
  need no step of their own. A lesson whose model returns several things, or whose batches need
  trimming, writes a step that returns ``(output, target)``; the loss is then
  ``loss_fn(output, target)`` and the metrics are updated with the same pair. A step may instead
  return **a ready loss** (a scalar tensor), for losses that need more than an output and a
  target (CTC's lengths, a masked sequence loss); ``loss_fn`` is then not called and no metric
  can be computed.
* ``train_data`` may also be a function returning an iterable of batches (called once per epoch):
  bucketed batches of similar lengths, or an endless stream of freshly generated problems
  stopped by ``max_steps``.
* ``callbacks`` run after every epoch with ``(record, model)`` and stop training by returning
  ``True`` (:class:`EarlyStopping`, :class:`Checkpoint`); a callback with an ``on_step`` method
  also sees every optimizer step (:class:`StepLog`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from .runtime import device as default_device

if TYPE_CHECKING:  # torchmetrics is imported when a metric is made: it costs seconds at kernel start
    from torchmetrics.classification import MulticlassAccuracy

LossFn = Callable[[Any, Any], torch.Tensor]
Batches = Callable[[], Iterator[tuple[torch.Tensor, ...]]]
Step = Callable[[nn.Module, tuple[Any, ...]], Any]
Data = Dataset | tuple[torch.Tensor, ...] | Callable[[], Iterable[tuple[Any, ...]]]
Callback = Callable[[dict[str, float], nn.Module], bool | None]


@dataclass
class History:
    """Per-epoch records from :func:`fit`: ``history["val_acc"]`` is a list over epochs."""

    records: list[dict[str, float]] = field(default_factory=list)

    def __getitem__(self, key: str) -> list[float]:
        return [r[key] for r in self.records if key in r]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def last(self) -> dict[str, float]:
        return self.records[-1] if self.records else {}

    def keys(self) -> list[str]:
        seen: dict[str, None] = {}
        for r in self.records:
            seen.update(dict.fromkeys(r))
        return list(seen)


def accuracy(num_classes: int) -> dict[str, MulticlassAccuracy]:
    """The metrics argument for plain accuracy: ``{"acc": MulticlassAccuracy(num_classes, average="micro")}``.

    ``average="micro"`` is the fraction of examples classified correctly (torchmetrics' default,
    ``"macro"``, would average the per-class accuracies instead).
    """
    from torchmetrics.classification import MulticlassAccuracy

    return {"acc": MulticlassAccuracy(num_classes=num_classes, average="micro")}


def default_step(model: nn.Module, batch: Sequence[Any]) -> tuple[Any, Any]:
    """The step :func:`fit` and :func:`evaluate` use by default: ``(model(*batch[:-1]), batch[-1])``."""
    *inputs, target = batch
    return model(*inputs), target


# --- batches ---------------------------------------------------------------------------------------


def device_batches(
    data: TensorDataset | tuple[torch.Tensor, ...],
    batch_size: int,
    device: torch.device,
    shuffle: bool,
    generator: torch.Generator | None = None,
) -> Batches:
    """Move the tensors to ``device`` once; each call yields a fresh (shuffled) pass of batches."""
    tensors = tuple(t.to(device) for t in (data.tensors if isinstance(data, TensorDataset) else data))
    n = len(tensors[0])

    def batches() -> Iterator[tuple[torch.Tensor, ...]]:
        # The permutation is drawn on the CPU with a seeded generator: identical across devices.
        order = torch.randperm(n, generator=generator).to(device) if shuffle else None
        for start in range(0, n, batch_size):
            if order is None:
                yield tuple(t[start : start + batch_size] for t in tensors)
            else:
                idx = order[start : start + batch_size]
                yield tuple(t[idx] for t in tensors)

    return batches


def _to(value: Any, device: torch.device, non_blocking: bool = False) -> Any:
    return value.to(device, non_blocking=non_blocking) if isinstance(value, torch.Tensor) else value


def loader_batches(
    data: Dataset, batch_size: int, device: torch.device, shuffle: bool, generator: torch.Generator | None = None, **loader_kwargs: Any
) -> Batches:
    """A ``DataLoader`` for data that does not fit (or should not live) on the device."""
    pin = device.type == "cuda"
    loader = DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator, pin_memory=pin, **loader_kwargs)

    def batches() -> Iterator[tuple[torch.Tensor, ...]]:
        for batch in loader:
            yield tuple(_to(t, device, non_blocking=pin) for t in batch)

    return batches


def _nbytes(data: TensorDataset | tuple[torch.Tensor, ...]) -> int:
    tensors = data.tensors if isinstance(data, TensorDataset) else data
    return sum(t.numel() * t.element_size() for t in tensors)


def make_batches(
    data: Data,
    batch_size: int,
    device: torch.device,
    shuffle: bool,
    generator: torch.Generator | None = None,
    device_budget: int = 2 << 30,
) -> Batches:
    """Device-resident batches for tensor data under ``device_budget`` bytes, else a DataLoader.

    A tuple or ``TensorDataset`` may hold any number of tensors (inputs, lengths, masks, target).
    ``data`` may also be a function returning an iterable of batches: it is called once per pass
    and each batch's tensors are moved to ``device`` (``batch_size`` and ``shuffle`` are then the
    function's business).
    """
    if callable(data) and not isinstance(data, Dataset):
        source = data

        def batches() -> Iterator[tuple[Any, ...]]:
            for batch in source():
                yield tuple(_to(t, device) for t in batch)

        return batches
    if isinstance(data, (TensorDataset, tuple)) and _nbytes(data) <= device_budget:
        return device_batches(data, batch_size, device, shuffle, generator)
    if isinstance(data, tuple):
        data = TensorDataset(*data)
    return loader_batches(data, batch_size, device, shuffle, generator)


# --- precision -------------------------------------------------------------------------------------


def amp_dtype(device: torch.device, amp: bool | None) -> torch.dtype | None:
    """The autocast dtype to use, or ``None`` for full float32. ``amp=None`` means 'on for CUDA'."""
    if amp is False or (amp is None and device.type != "cuda"):
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16  # CPU autocast supports bfloat16 only


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def _reset(metrics: Mapping[str, Any], device: torch.device) -> None:
    for m in metrics.values():
        m.reset()
        m.to(device)


def _step_loss(step: Step, model: nn.Module, batch: tuple[Any, ...], loss_fn: LossFn, need_output: bool):
    """Run ``step``; return ``(loss, output, target)`` (output and target are ``None`` for a ready loss)."""
    result = step(model, batch)
    if isinstance(result, torch.Tensor):
        if result.dim() != 0:
            raise ValueError(f"a step returns (output, target) or a scalar loss, not a tensor of shape {tuple(result.shape)}")
        if need_output:
            raise ValueError("metrics need (output, target): this step returns a ready loss")
        return result.float(), None, None
    output, target = result
    if isinstance(output, torch.Tensor) and output.is_floating_point():
        output = output.float()  # the loss in float32, also under autocast
    return loss_fn(output, target), output, target


def _batch_len(batch: tuple[Any, ...]) -> int:
    return len(batch[0])


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Data,
    *,
    loss_fn: LossFn = nn.functional.cross_entropy,
    metrics: Mapping[str, Any] | None = None,
    batch_size: int = 1024,
    device: torch.device | None = None,
    amp: bool | None = None,
    step: Step = default_step,
) -> dict[str, float]:
    """Mean loss (weighted by batch size) and each metric over ``data`` with the model in eval mode.

    ``step`` is the same batch step as :func:`fit`'s.
    """
    device = device or default_device()
    metrics = metrics or {}
    dtype = amp_dtype(device, amp)
    was_training = model.training
    model.eval()
    _reset(metrics, device)
    total, count = torch.zeros((), device=device), 0
    for batch in make_batches(data, batch_size, device, shuffle=False)():
        with _autocast(device, dtype):
            loss, out, target = _step_loss(step, model, batch, loss_fn, bool(metrics))
        n = _batch_len(batch)
        total += loss.float() * n  # stays on the device: no sync per batch
        count += n
        for m in metrics.values():
            m.update(out.float() if isinstance(out, torch.Tensor) else out, target)
    model.train(was_training)
    result = {"loss": (total / max(count, 1)).item()}
    result.update({name: float(m.compute()) for name, m in metrics.items()})
    return result


# --- callbacks -------------------------------------------------------------------------------------


def _improved(value: float, best: float, mode: str, min_delta: float) -> bool:
    return value < best - min_delta if mode == "min" else value > best + min_delta


def _check_mode(mode: str) -> float:
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
    return math.inf if mode == "min" else -math.inf


def _monitored(record: Mapping[str, float], monitor: str) -> float:
    if monitor not in record:
        raise KeyError(f"{monitor!r} is not in the epoch record (it has {sorted(record)}); pass val_data to monitor val_*")
    return float(record[monitor])


class EarlyStopping:
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    ``mode="min"`` for losses, ``"max"`` for accuracies. The best epoch's weights are kept (a copy
    of the state dict) and, with ``restore_best=True``, loaded back into the model when training
    ends, whether this callback stopped it or not. ``best``, ``best_epoch`` and ``stopped_epoch``
    (``None`` when it did not stop the run) say what happened.
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 5, mode: str = "min", min_delta: float = 0.0,
                 restore_best: bool = True) -> None:
        self.monitor, self.patience, self.mode, self.min_delta, self.restore_best = monitor, patience, mode, min_delta, restore_best
        self.best = _check_mode(mode)
        self.best_epoch: int | None = None
        self.stopped_epoch: int | None = None
        self.bad_epochs = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.epochs_seen = 0

    def __call__(self, record: Mapping[str, float], model: nn.Module) -> bool:
        value = _monitored(record, self.monitor)
        self.epochs_seen += 1
        epoch = int(record.get("epoch", self.epochs_seen))
        if _improved(value, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return False
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            self.stopped_epoch = epoch
            return True
        return False

    def on_train_end(self, model: nn.Module) -> None:
        if self.restore_best and self.best_state is not None:
            model.load_state_dict(self.best_state)


class Checkpoint:
    """Save the model's ``state_dict`` to ``path`` after each epoch that improves ``monitor``.

    ``monitor=None`` saves after every epoch. Load it back with
    ``model.load_state_dict(torch.load(path))``. ``best`` and ``best_epoch`` record the saved epoch.
    """

    def __init__(self, path: str | Path, monitor: str | None = "val_loss", mode: str = "min") -> None:
        self.path, self.monitor, self.mode = Path(path), monitor, mode
        self.best = _check_mode(mode)
        self.best_epoch: int | None = None

    def __call__(self, record: Mapping[str, float], model: nn.Module) -> bool:
        if self.monitor is not None:
            value = _monitored(record, self.monitor)
            if not _improved(value, self.best, self.mode, 0.0):
                return False
            self.best = value
        self.best_epoch = int(record.get("epoch", 0))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), self.path)
        return False


@dataclass
class StepLog(History):
    """A callback that records every optimizer step: ``log["loss"]`` is the loss of each batch.

    Each record has ``step`` (1, 2, ...), ``epoch``, ``loss``, ``lr`` and, when :func:`fit` clips
    gradients, ``grad_norm`` (the global norm *before* clipping; ``grad_clip=math.inf`` measures it
    without clipping). ``stop_nonfinite=True`` stops training at the first step whose loss is NaN
    or infinite. Logging costs one device sync per step.
    """

    stop_nonfinite: bool = False

    def on_step(self, record: dict[str, float], model: nn.Module) -> bool:
        self.records.append(record)
        return self.stop_nonfinite and not math.isfinite(record["loss"])

    def __call__(self, record: Mapping[str, float], model: nn.Module) -> bool:
        return False


# --- the loop --------------------------------------------------------------------------------------


def fit(
    model: nn.Module,
    train_data: Data,
    *,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    val_data: Data | None = None,
    loss_fn: LossFn = nn.functional.cross_entropy,
    metrics: Mapping[str, Any] | None = None,
    scheduler: Any = None,
    scheduler_step: str = "epoch",
    batch_size: int = 128,
    device: torch.device | None = None,
    amp: bool | None = None,
    grad_clip: float | None = None,
    seed: int = 0,
    progress: bool = True,
    stop_at: tuple[str, float] | None = None,
    step: Step = default_step,
    max_steps: int | None = None,
    callbacks: Sequence[Callback] = (),
) -> History:
    """Train ``model`` for ``epochs`` and return a :class:`History`.

    * ``train_data``/``val_data``: a tuple of tensors or a ``TensorDataset`` (any number of tensors,
      the last being the target for the default step), another ``Dataset`` (a ``DataLoader``), or
      a function returning an iterable of batches, called once per epoch.
    * ``step(model, batch)``: returns ``(output, target)``, scored with ``loss_fn(output, target)``
      and the metrics, or a ready scalar loss; default :func:`default_step`.
    * ``metrics``: name -> torchmetrics metric, computed on train (running) and val each epoch.
    * ``scheduler``: stepped each epoch (or each batch with ``scheduler_step="batch"``);
      ``ReduceLROnPlateau`` is stepped with the validation loss.
    * ``amp``: ``None`` = mixed precision on CUDA only; ``True``/``False`` force it.
    * ``grad_clip``: clip the global gradient norm to this value.
    * ``stop_at=("val_acc", 0.99)``: stop as soon as a recorded value reaches the target
      (time-to-accuracy measurements).
    * ``max_steps``: stop after this many optimizer steps (the last epoch's record covers the
      steps it ran).
    * ``callbacks``: each is called after every epoch with ``(record, model)``; one returning
      ``True`` stops training (all of them still see that epoch). A callback with an
      ``on_step(step_record, model)`` method also sees every optimizer step and may stop
      training there; with an ``on_train_end(model)`` method it is told when training ends.
      The model is put back in training mode after ``on_step``, so it may evaluate. The step
      record carries ``train_seconds`` so far, and the time spent in ``on_step`` is not counted
      in ``train_seconds``: a callback that evaluates every few steps measures, it does not train.
    """
    if scheduler_step not in ("epoch", "batch"):
        raise ValueError(f"scheduler_step must be 'epoch' or 'batch', not {scheduler_step!r}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, not {max_steps}")
    device = device or default_device()
    metrics = dict(metrics or {})
    callbacks = list(callbacks)
    step_hooks = [cb.on_step for cb in callbacks if callable(getattr(cb, "on_step", None))]
    model.to(device)
    dtype = amp_dtype(device, amp)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    generator = torch.Generator().manual_seed(seed)
    train_batches = make_batches(train_data, batch_size, device, shuffle=True, generator=generator)
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    history = History()
    elapsed = 0.0
    steps_done = 0
    stop = False

    bar = tqdm(range(epochs), desc="epochs", disable=not progress)
    for epoch in bar:
        model.train()
        _reset(metrics, device)
        start = time.perf_counter()
        hook_seconds = 0.0  # time in on_step hooks this epoch, left out of train_seconds
        total, count = torch.zeros((), device=device), 0
        for batch in train_batches():
            with _autocast(device, dtype):
                loss, out, target = _step_loss(step, model, batch, loss_fn, bool(metrics))
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)  # clip true gradients, not scaled ones
            else:
                loss.backward()
            grad_norm = None
            if grad_clip is not None:
                grad_norm = nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            steps_done += 1
            if scheduler is not None and scheduler_step == "batch" and not plateau:
                scheduler.step()
            n = _batch_len(batch)
            total += loss.detach() * n
            count += n
            with torch.no_grad():
                for m in metrics.values():
                    m.update(out.detach().float() if isinstance(out, torch.Tensor) else out, target)
            if step_hooks:
                step_record = {"step": steps_done, "epoch": epoch + 1, "loss": loss.item(),
                               "lr": optimizer.param_groups[0]["lr"]}
                if grad_norm is not None:
                    step_record["grad_norm"] = float(grad_norm)
                if device.type == "cuda":
                    torch.cuda.synchronize()  # the clock below must see the step finished
                hook_start = time.perf_counter()
                step_record["train_seconds"] = elapsed + hook_start - start - hook_seconds
                stop = any([bool(hook(dict(step_record), model)) for hook in step_hooks])
                model.train()
                hook_seconds += time.perf_counter() - hook_start
            if stop or (max_steps is not None and steps_done >= max_steps):
                stop = True
                break
        if device.type == "cuda":
            torch.cuda.synchronize()  # honest timings: wait for queued kernels
        elapsed += time.perf_counter() - start - hook_seconds

        record: dict[str, float] = {"epoch": epoch + 1, "train_loss": (total / max(count, 1)).item()}
        record.update({f"train_{k}": float(m.compute()) for k, m in metrics.items()})
        if val_data is not None:
            val = evaluate(model, val_data, loss_fn=loss_fn, metrics=metrics, device=device, amp=amp, step=step)
            record.update({f"val_{k}": v for k, v in val.items()})
        record["lr"] = optimizer.param_groups[0]["lr"]
        record["train_seconds"] = elapsed
        history.records.append(record)

        if scheduler is not None and scheduler_step == "epoch":
            if plateau:
                if "val_loss" not in record:
                    raise ValueError("ReduceLROnPlateau needs val_data to monitor the validation loss")
                scheduler.step(record["val_loss"])
            else:
                scheduler.step()
        bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k not in ("epoch", "train_seconds")})
        if any([bool(cb(dict(record), model)) for cb in callbacks]):  # a list: every callback sees the epoch
            stop = True
        if stop or (stop_at is not None and record.get(stop_at[0], float("-inf")) >= stop_at[1]):
            break
    for cb in callbacks:
        end = getattr(cb, "on_train_end", None)
        if callable(end):
            end(model)
    return history
