"""The one training loop every chapter uses: :func:`fit` and :func:`evaluate`.

Design choices, each measured in the optimization chapter:

* Small datasets (every tensor dataset under ``device_budget`` bytes) are moved to the device
  **once** and batched by indexing there, instead of a ``DataLoader`` copying every batch.
* On CUDA, mixed precision is on by default: bfloat16 autocast where supported, else float16
  with a ``GradScaler``.
* Metrics are ``torchmetrics`` objects, so accuracy, F1 or BLEU plug in the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from .runtime import device as default_device

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batches = Callable[[], Iterator[tuple[torch.Tensor, ...]]]


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


def loader_batches(
    data: Dataset, batch_size: int, device: torch.device, shuffle: bool, generator: torch.Generator | None = None, **loader_kwargs: Any
) -> Batches:
    """A ``DataLoader`` for data that does not fit (or should not live) on the device."""
    pin = device.type == "cuda"
    loader = DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator, pin_memory=pin, **loader_kwargs)

    def batches() -> Iterator[tuple[torch.Tensor, ...]]:
        for batch in loader:
            yield tuple(t.to(device, non_blocking=pin) for t in batch)

    return batches


def _nbytes(data: TensorDataset | tuple[torch.Tensor, ...]) -> int:
    tensors = data.tensors if isinstance(data, TensorDataset) else data
    return sum(t.numel() * t.element_size() for t in tensors)


def make_batches(
    data: Dataset | tuple[torch.Tensor, ...],
    batch_size: int,
    device: torch.device,
    shuffle: bool,
    generator: torch.Generator | None = None,
    device_budget: int = 2 << 30,
) -> Batches:
    """Device-resident batches for tensor data under ``device_budget`` bytes, else a DataLoader."""
    if isinstance(data, (TensorDataset, tuple)) and _nbytes(data) <= device_budget:
        return device_batches(data, batch_size, device, shuffle, generator)
    if isinstance(data, tuple):
        data = TensorDataset(*data)
    return loader_batches(data, batch_size, device, shuffle, generator)


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


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Dataset | tuple[torch.Tensor, ...],
    *,
    loss_fn: LossFn = nn.functional.cross_entropy,
    metrics: Mapping[str, Any] | None = None,
    batch_size: int = 1024,
    device: torch.device | None = None,
    amp: bool | None = None,
) -> dict[str, float]:
    """Mean loss and each metric over ``data`` with the model in eval mode."""
    device = device or default_device()
    metrics = metrics or {}
    dtype = amp_dtype(device, amp)
    was_training = model.training
    model.eval()
    _reset(metrics, device)
    total, count = torch.zeros((), device=device), 0
    for x, y in make_batches(data, batch_size, device, shuffle=False)():
        with _autocast(device, dtype):
            out = model(x)
        out = out.float()
        total += loss_fn(out, y) * len(y)  # stays on the device: no sync per batch
        count += len(y)
        for m in metrics.values():
            m.update(out, y)
    model.train(was_training)
    result = {"loss": (total / max(count, 1)).item()}
    result.update({name: float(m.compute()) for name, m in metrics.items()})
    return result


def fit(
    model: nn.Module,
    train_data: Dataset | tuple[torch.Tensor, ...],
    *,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    val_data: Dataset | tuple[torch.Tensor, ...] | None = None,
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
) -> History:
    """Train ``model`` for ``epochs`` and return a :class:`History`.

    * ``metrics``: name -> torchmetrics metric, computed on train (running) and val each epoch.
    * ``scheduler``: stepped each epoch (or each batch with ``scheduler_step="batch"``);
      ``ReduceLROnPlateau`` is stepped with the validation loss.
    * ``amp``: ``None`` = mixed precision on CUDA only; ``True``/``False`` force it.
    * ``stop_at=("val_acc", 0.99)``: stop as soon as a recorded value reaches the target
      (time-to-accuracy measurements).
    """
    if scheduler_step not in ("epoch", "batch"):
        raise ValueError(f"scheduler_step must be 'epoch' or 'batch', not {scheduler_step!r}")
    device = device or default_device()
    metrics = dict(metrics or {})
    model.to(device)
    dtype = amp_dtype(device, amp)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    generator = torch.Generator().manual_seed(seed)
    train_batches = make_batches(train_data, batch_size, device, shuffle=True, generator=generator)
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    history = History()
    elapsed = 0.0

    bar = tqdm(range(epochs), desc="epochs", disable=not progress)
    for epoch in bar:
        model.train()
        _reset(metrics, device)
        start = time.perf_counter()
        total, count = torch.zeros((), device=device), 0
        for x, y in train_batches():
            with _autocast(device, dtype):
                out = model(x)
                loss = loss_fn(out.float(), y)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)  # clip true gradients, not scaled ones
            else:
                loss.backward()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if scheduler is not None and scheduler_step == "batch" and not plateau:
                scheduler.step()
            total += loss.detach() * len(y)
            count += len(y)
            with torch.no_grad():
                for m in metrics.values():
                    m.update(out.detach().float(), y)
        if device.type == "cuda":
            torch.cuda.synchronize()  # honest timings: wait for queued kernels
        elapsed += time.perf_counter() - start

        record: dict[str, float] = {"epoch": epoch + 1, "train_loss": (total / max(count, 1)).item()}
        record.update({f"train_{k}": float(m.compute()) for k, m in metrics.items()})
        if val_data is not None:
            val = evaluate(model, val_data, loss_fn=loss_fn, metrics=metrics, device=device, amp=amp)
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
        if stop_at is not None and record.get(stop_at[0], float("-inf")) >= stop_at[1]:
            break
    return history
