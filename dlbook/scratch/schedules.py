"""Learning-rate schedules written from their formulas, and Smith's learning-rate range test.

Used by ``chapters/optimization/learning-rates.ipynb`` and ``tests/test_opt_schedules.py``. Every
schedule is a plain function of the step ``t`` (the learning rate used by the ``t``-th optimizer
step, counted from 0), named after the equation it implements:

* :func:`step_decay`            eq-lr-step        (``torch.optim.lr_scheduler.StepLR``)
* :func:`exponential_decay`     eq-lr-exp         (``ExponentialLR``)
* :func:`cosine_annealing`      eq-lr-cosine      (``CosineAnnealingLR``)
* :func:`cosine_warm_restarts`  eq-lr-sgdr        (``CosineAnnealingWarmRestarts``)
* :func:`warmup_cosine`         eq-lr-warmup      (``LinearLR`` then ``CosineAnnealingLR`` in ``SequentialLR``)
* :func:`one_cycle`             eq-lr-onecycle    (``OneCycleLR``, learning rate and momentum)
* :func:`warmup_multistep`      eq-lr-goyal       (any formula through ``LambdaLR``, eq-lr-lambda)
* :class:`PlateauScratch`       eq-lr-plateau     (``ReduceLROnPlateau``)

:func:`torch_lrs` runs a ``torch.optim.lr_scheduler`` and records the learning rate of every step,
so a notebook or a test can compare it with the formula step by step. :func:`lr_range_test`
is the range test of eq-lr-range with a bias-corrected smoothed loss (eq-lr-smooth).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

Schedule = Callable[[int], float]
SchedulerFactory = Callable[[torch.optim.Optimizer], object]


# --- the formulas ---------------------------------------------------------------------------------


def step_decay(t: int, base_lr: float, step_size: int, gamma: float = 0.1) -> float:
    """eq-lr-step: ``base_lr * gamma ** floor(t / step_size)``."""
    return base_lr * gamma ** (t // step_size)


def exponential_decay(t: int, base_lr: float, gamma: float) -> float:
    """eq-lr-exp: ``base_lr * gamma ** t``."""
    return base_lr * gamma**t


def cosine_annealing(t: int, base_lr: float, total: int, eta_min: float = 0.0) -> float:
    """eq-lr-cosine: half a cosine from ``base_lr`` at ``t = 0`` to ``eta_min`` at ``t = total``."""
    return eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * t / total)) / 2


def cosine_warm_restarts(t: int, base_lr: float, t_0: int, t_mult: int = 1, eta_min: float = 0.0) -> float:
    """eq-lr-sgdr: cosine annealing restarted every cycle; cycle ``i`` lasts ``t_0 * t_mult**i`` steps."""
    t_cur, t_i = t, t_0
    while t_cur >= t_i:  # walk past the finished cycles
        t_cur -= t_i
        t_i *= t_mult
    return eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2


def linear_warmup(t: int, base_lr: float, warmup: int, start_factor: float) -> float:
    """The first half of eq-lr-warmup: from ``start_factor * base_lr`` to ``base_lr`` in ``warmup`` steps."""
    return base_lr * (start_factor + (1 - start_factor) * min(t, warmup) / warmup)


def warmup_cosine(
    t: int, base_lr: float, warmup: int, total: int, start_factor: float = 0.01, eta_min: float = 0.0
) -> float:
    """eq-lr-warmup: linear warm-up for ``warmup`` steps, then cosine annealing over the rest."""
    if t < warmup:
        return linear_warmup(t, base_lr, warmup, start_factor)
    return cosine_annealing(t - warmup, base_lr, total - warmup, eta_min)


def _cos_anneal(start: float, end: float, pct: float) -> float:
    # from start (pct = 0) to end (pct = 1) along half a cosine
    return end + (start - end) * (1 + math.cos(math.pi * pct)) / 2


def one_cycle(
    t: int,
    max_lr: float,
    total: int,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    momentum: tuple[float, float] | None = None,
) -> float | tuple[float, float]:
    """eq-lr-onecycle: up from ``max_lr / div_factor`` to ``max_lr``, then down to ``max_lr / (div * final_div)``.

    Both phases are half cosines. Phase 1 ends at step ``pct_start * total - 1``, the last step is
    ``total - 1``. With ``momentum=(base, max)`` the momentum runs the mirror image (max -> base -> max)
    and ``(lr, momentum)`` is returned.
    """
    initial = max_lr / div_factor
    final = initial / final_div_factor
    t_peak = pct_start * total - 1  # a float, as in OneCycleLR
    if t <= t_peak:
        pct, lr_ends, mom_ends = t / t_peak, (initial, max_lr), (1, 0)
    else:
        pct, lr_ends, mom_ends = (t - t_peak) / (total - 1 - t_peak), (max_lr, final), (0, 1)
    lr = _cos_anneal(*lr_ends, pct)
    if momentum is None:
        return lr
    return lr, _cos_anneal(momentum[mom_ends[0]], momentum[mom_ends[1]], pct)


def warmup_multistep(
    t: int, base_lr: float, warmup: int, milestones: Sequence[int], gamma: float = 0.1, start_factor: float = 0.1
) -> float:
    """eq-lr-goyal: gradual linear warm-up, then divide by ``1/gamma`` at each milestone (Goyal et al.)."""
    if t < warmup:
        return linear_warmup(t, base_lr, warmup, start_factor)
    return base_lr * gamma ** sum(t >= m for m in milestones)


@dataclass
class PlateauScratch:
    """eq-lr-plateau: cut the learning rate by ``factor`` when the metric stops improving.

    A value counts as an improvement when it beats the best so far by more than the relative
    ``threshold`` (mode ``min``: ``value < best * (1 - threshold)``). After more than ``patience``
    epochs without improvement the rate becomes ``max(lr * factor, min_lr)``, the bad-epoch
    count restarts, and for ``cooldown`` epochs bad epochs are not counted.
    """

    lr: float
    factor: float = 0.1
    patience: int = 10
    threshold: float = 1e-4
    cooldown: int = 0
    min_lr: float = 0.0
    eps: float = 1e-8
    best: float = math.inf
    bad_epochs: int = 0
    cooldown_left: int = 0

    def step(self, value: float) -> float:
        """Record one epoch's metric; return the learning rate for the next epoch."""
        if value < self.best * (1 - self.threshold):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        if self.cooldown_left > 0:  # just after a cut: give the new rate time before judging it
            self.cooldown_left -= 1
            self.bad_epochs = 0
        if self.bad_epochs > self.patience:
            new_lr = max(self.lr * self.factor, self.min_lr)
            if self.lr - new_lr > self.eps:  # a cut smaller than eps is ignored, as in PyTorch
                self.lr = new_lr
            self.cooldown_left, self.bad_epochs = self.cooldown, 0
        return self.lr


# --- running PyTorch's schedulers step by step ----------------------------------------------------


def _probe_optimizer(base_lr: float, **kwargs) -> torch.optim.Optimizer:
    # One parameter without a gradient: optimizer.step() is a no-op, but calling it keeps the
    # scheduler's "step the optimizer before the scheduler" check quiet.
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base_lr, **kwargs)


def torch_lrs(
    make_scheduler: SchedulerFactory, steps: int, base_lr: float, momentum: float = 0.0
) -> tuple[list[float], list[float]]:
    """The learning rate (and momentum) that each of ``steps`` optimizer steps uses under a scheduler."""
    optimizer = _probe_optimizer(base_lr, momentum=momentum)
    scheduler = make_scheduler(optimizer)
    lrs, momenta = [], []
    for _ in range(steps):
        lrs.append(float(optimizer.param_groups[0]["lr"]))
        momenta.append(float(optimizer.param_groups[0]["momentum"]))
        optimizer.step()
        scheduler.step()
    return lrs, momenta


def plateau_lrs(make_scheduler: SchedulerFactory, values: Iterable[float], base_lr: float) -> list[float]:
    """The learning rate after each epoch of a ``ReduceLROnPlateau`` fed the metric ``values``."""
    optimizer = _probe_optimizer(base_lr)
    scheduler = make_scheduler(optimizer)
    lrs = []
    for value in values:
        optimizer.step()
        scheduler.step(value)
        lrs.append(float(optimizer.param_groups[0]["lr"]))
    return lrs


def max_rel_gap(ours: Sequence[float], theirs: Sequence[float]) -> float:
    """Largest ``|ours - theirs| / |theirs|`` over the steps (both sequences must be equally long)."""
    if len(ours) != len(theirs):
        raise ValueError(f"{len(ours)} steps vs {len(theirs)} steps")
    a, b = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


# --- the learning-rate range test -----------------------------------------------------------------


@dataclass
class RangeTest:
    """The record of :func:`lr_range_test`: learning rates, raw and smoothed losses per step."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    stopped_early: bool = False

    def lr_at_min(self) -> float:
        """The learning rate with the lowest smoothed loss."""
        return self.lrs[int(np.argmin(self.smoothed))]

    def steepest(self, skip_start: int = 10) -> float:
        """The learning rate where the smoothed loss falls fastest per decade of learning rate.

        Only points before the minimum count (after it the loss is blowing up), and the first
        ``skip_start`` are skipped because the smoothing has barely started there.
        """
        end = int(np.argmin(self.smoothed)) + 1
        if end - skip_start < 3:
            raise ValueError("too few points before the minimum to find the steepest descent")
        log_lr = np.log10(self.lrs[skip_start:end])
        slope = np.gradient(np.asarray(self.smoothed[skip_start:end]), log_lr)
        return self.lrs[skip_start + int(np.argmin(slope))]

    def suggestion(self, rule: str = "min/10") -> float:
        """``"min/10"``: a tenth of the learning rate at the minimum; ``"steepest"``: see :meth:`steepest`."""
        if rule == "min/10":
            return self.lr_at_min() / 10
        if rule == "steepest":
            return self.steepest()
        raise ValueError(f"unknown rule {rule!r}: use 'min/10' or 'steepest'")


def range_test_lr(t: int, lr_min: float, lr_max: float, steps: int) -> float:
    """eq-lr-range: geometric growth from ``lr_min`` (step 0) to ``lr_max`` (step ``steps - 1``)."""
    return lr_min * (lr_max / lr_min) ** (t / (steps - 1))


def lr_range_test(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    make_optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy,
    lr_min: float = 1e-5,
    lr_max: float = 10.0,
    steps: int = 100,
    beta: float = 0.98,
    diverge: float = 4.0,
    progress: bool = True,
) -> RangeTest:
    """Smith's range test: one mini-batch per step at a geometrically growing learning rate.

    Trains a *copy* of ``model`` (the caller's weights are untouched), smooths the loss with a
    bias-corrected exponential average (eq-lr-smooth) and stops once the smoothed loss exceeds
    ``diverge`` times its minimum, or is not finite.
    """
    model = copy.deepcopy(model)
    model.train()
    optimizer = make_optimizer(model.parameters())
    record, average = RangeTest(), 0.0
    batch_iter = iter(batches)
    for t in tqdm(range(steps), desc="range test", disable=not progress):
        try:
            x, y = next(batch_iter)
        except StopIteration as exc:
            raise ValueError(f"the range test needs {steps} batches") from exc
        lr = range_test_lr(t, lr_min, lr_max, steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = loss.item()
        average = beta * average + (1 - beta) * value
        smooth = average / (1 - beta ** (t + 1))  # undo the pull towards the zero start
        record.lrs.append(lr)
        record.losses.append(value)
        record.smoothed.append(smooth)
        if not math.isfinite(smooth) or smooth > diverge * min(record.smoothed):
            record.stopped_early = True
            break
    return record
