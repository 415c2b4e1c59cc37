"""Training to a target accuracy as fast as possible, one change at a time.

The starting point is the pytorch/examples MNIST recipe (its two-convolution ``Net``, a
``DataLoader`` with batch 64, Adadelta at learning rate 1.0, ``StepLR`` with gamma 0.7), written
plainly in :func:`train_reference`. Every later recipe is the previous one with one change, and
trains with the course's loop, :func:`dlbook.train.fit`:

1. the data resident on the device, batched by indexing (no ``DataLoader``);
2. a network sized for the target (:class:`FastNet`: three 3x3 convolutions with BatchNorm);
3. a larger batch with SGD + Nesterov momentum under a one-cycle schedule sized to the budget;
4. label smoothing;
5. random horizontal flips in training and flip test-time augmentation;
6. channels-last memory format;
7. (CUDA) bfloat16 mixed precision, 8. (CUDA) ``torch.compile``.

:func:`time_to_accuracy` runs one recipe and evaluates the test set every ``eval_every`` epochs
with the same :func:`dlbook.train.evaluate` for every recipe; the evaluation time is not counted
as training time (``fit`` leaves its ``on_step`` hooks out of ``train_seconds``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from .runtime import seed_everything
from .train import accuracy, evaluate, fit

TARGETS = (0.91, 0.93)


def load_split(split: str = "test", n_train: int | None = None,
               n_eval: int | None = None) -> tuple[TensorDataset, TensorDataset, str]:
    """Fashion-MNIST for time-to-accuracy runs: ``(train, held_out, description)``.

    ``"test"``: all 60,000 training images and the official 10,000 test images (the numbers to
    report); ``"val"``: 55,000 training images and the stratified 5,000-image validation slice
    (where the recipes' budgets were chosen). ``n_train``/``n_eval`` keep the first images
    (the quick profile and tests; Fashion-MNIST's files are in no particular class order)."""
    from .data import load_fashion_mnist

    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', not {split!r}")
    splits = load_fashion_mnist("full", train_size=None, seed=0)
    if split == "test":
        train = TensorDataset(*(torch.cat(pair) for pair in zip(splits.train.tensors, splits.val.tensors, strict=True)))
        held_out, what = splits.test, "the official test images"
    else:
        train, held_out, what = splits.train, splits.val, "the stratified validation slice"
    if n_train is not None:
        train = TensorDataset(*(t[:n_train] for t in train.tensors))
    if n_eval is not None:
        held_out = TensorDataset(*(t[:n_eval] for t in held_out.tensors))
    text = f"Fashion-MNIST: train on {len(train):,} training images, evaluate on {len(held_out):,} of {what}"
    return train, held_out, text


class ExampleNet(nn.Module):
    """The ``Net`` of pytorch/examples' ``mnist/main.py``: two 3x3 convolutions (32, 64 channels),
    max-pooling, dropout 0.25, a 9216-128 layer, dropout 0.5, 10 log-probabilities."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = self.dropout1(F.max_pool2d(x, 2))
        x = self.dropout2(F.relu(self.fc1(torch.flatten(x, 1))))
        return F.log_softmax(self.fc2(x), dim=1)


class FastNet(nn.Sequential):
    """Three conv-pool-BatchNorm-ReLU blocks (28x28 -> 14x14 -> 7x7 -> 3x3) and one linear layer:
    about a sixth of :class:`ExampleNet`'s multiply-accumulates per image. Pooling comes straight
    after the convolution, so BatchNorm and ReLU touch a quarter of the values (measured on this
    CPU: 2 epochs in 16 s instead of 20 s, the same validation accuracy within a seed's noise)."""

    def __init__(self, widths: Sequence[int] = (16, 32, 64), num_classes: int = 10) -> None:
        layers: list[nn.Module] = []
        channels = 1
        for width in widths:
            # no conv bias: the BatchNorm after it has one
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.MaxPool2d(2),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            channels = width
        side = 28 // 2 ** len(widths)
        super().__init__(*layers, nn.Flatten(), nn.Linear(channels * side * side, num_classes))


@dataclass(frozen=True)
class Recipe:
    """Everything that decides how fast a model reaches its target (see the module docstring)."""

    name: str
    model: str = "example"  # "example" (ExampleNet) or "fast" (FastNet)
    widths: tuple[int, ...] = (16, 32, 64)  # FastNet's channels
    loader: str = "dataloader"  # "dataloader" (train_reference) or "resident" (fit)
    batch_size: int = 64
    optimizer: str = "adadelta"  # "adadelta" or "sgd" (Nesterov momentum 0.9)
    lr: float = 1.0
    weight_decay: float = 0.0
    schedule: str = "step"  # "step" (StepLR, gamma 0.7 each epoch) or "onecycle" (over `epochs`)
    epochs: float = 6.0  # the budget: the one-cycle schedule's length, or where a run gives up
    label_smoothing: float = 0.0
    flip: bool = False  # random horizontal flips of training images
    tta: bool = False  # evaluate on the mean of the image's and its mirror's logits
    channels_last: bool = False
    amp: bool = False  # bfloat16 autocast (CUDA only: this CPU has no fast bfloat16)
    compile: bool = False  # torch.compile (CUDA only)
    change: str = "the pytorch/examples recipe"  # what this recipe changed, for tables

    def but(self, change: str, **fields: Any) -> Recipe:
        """This recipe with one change (``fields``), described by ``change``."""
        return dataclasses.replace(self, name=change, change=change, **fields)

    def build(self) -> nn.Module:
        model = ExampleNet() if self.model == "example" else FastNet(self.widths)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


REFERENCE = Recipe("reference")


def ladder(device: torch.device) -> list[Recipe]:
    """The reference and each change after it, in the lesson's order; the GPU-only changes are
    added on CUDA. The last recipe is :func:`course_recipe` for 91%."""
    steps = [REFERENCE]
    steps.append(steps[-1].but("data on the device", loader="resident"))
    steps.append(steps[-1].but("a network sized for the target", model="fast"))
    steps.append(steps[-1].but("batch 256, SGD-Nesterov, one-cycle", batch_size=256, optimizer="sgd", lr=0.4,
                               weight_decay=5e-4, schedule="onecycle", epochs=3.0))
    steps.append(steps[-1].but("label smoothing 0.1", label_smoothing=0.1))
    steps.append(steps[-1].but("flips + flip TTA", flip=True, tta=True))
    steps.append(steps[-1].but("channels-last", channels_last=True))
    if device.type == "cuda":
        steps.append(steps[-1].but("bfloat16 autocast", amp=True))
        steps.append(steps[-1].but("torch.compile", compile=True))
    return steps


def course_recipe(target: float, device: torch.device) -> Recipe:
    """The course's recipe for ``target`` (0.91 or 0.93): the last rung of :func:`ladder`, with a
    wider network and a longer schedule for 93%. Budgets were chosen on the validation split."""
    fast = ladder(device)[-1]
    if target <= 0.91:
        return dataclasses.replace(fast, name="course (91%)")
    return dataclasses.replace(fast, name="course (93%)", widths=(32, 64, 128), epochs=10.0)


def make_step(recipe: Recipe) -> Callable[[nn.Module, tuple[Tensor, Tensor]], tuple[Tensor, Tensor]]:
    """fit's step for ``recipe``: flips half of a training batch, averages the logits of the image
    and its mirror in evaluation (TTA), and hands the model channels-last input when asked."""

    def step(model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x, y = batch
        if model.training and recipe.flip:
            mirror = torch.rand(len(x), 1, 1, 1, device=x.device) < 0.5
            x = torch.where(mirror, x.flip(3), x)
        if recipe.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = model(x)
        if not model.training and recipe.tta:
            out = (out + model(x.flip(3))) / 2
        return out, y

    return step


@dataclass
class Run:
    """One recipe's run: the test-accuracy curve and the training seconds to each target."""

    recipe: str
    seed: int
    steps_per_epoch: int
    curve: list[dict[str, float]] = field(default_factory=list)  # epoch, train_seconds, test_acc
    seconds_to: dict[str, float | None] = field(default_factory=dict)  # "0.91" -> seconds or None
    epochs_to: dict[str, float | None] = field(default_factory=dict)

    @property
    def final_acc(self) -> float:
        return self.curve[-1]["test_acc"] if self.curve else float("nan")

    @property
    def seconds_per_epoch(self) -> float:
        last = self.curve[-1] if self.curve else None
        return last["train_seconds"] / last["epoch"] if last and last["epoch"] else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "seed": self.seed, "seconds_to": self.seconds_to, "epochs_to": self.epochs_to,
                "final_test_acc": self.final_acc, "seconds_per_epoch": self.seconds_per_epoch,
                "curve": self.curve}


class TestEvaluator:
    """An ``on_step`` hook: every ``every`` steps (and at ``last_step``) it measures test accuracy,
    records when each target is first reached, and stops training once the highest is reached or
    ``max_seconds`` of training have passed."""

    def __init__(self, run: Run, test: TensorDataset, targets: Sequence[float], every: int, last_step: int,
                 step: Callable, device: torch.device, max_seconds: float | None) -> None:
        self.run, self.test, self.targets = run, test, sorted(targets)
        self.every, self.last_step, self.step, self.device = every, last_step, step, device
        self.max_seconds = max_seconds
        run.seconds_to.update({f"{t:.2f}": None for t in self.targets})
        run.epochs_to.update({f"{t:.2f}": None for t in self.targets})

    def on_step(self, record: dict[str, float], model: nn.Module) -> bool:
        step, seconds = int(record["step"]), float(record["train_seconds"])
        out_of_time = self.max_seconds is not None and seconds >= self.max_seconds
        if step % self.every and step < self.last_step and not out_of_time:
            return False
        # float32 for every recipe: the same evaluation whatever the training precision
        acc = evaluate(model, self.test, metrics=accuracy(10), device=self.device, step=self.step,
                       batch_size=1000, amp=False)["acc"]
        epoch = step / self.run.steps_per_epoch
        self.run.curve.append({"epoch": round(epoch, 4), "train_seconds": seconds, "test_acc": acc})
        for target in self.targets:
            key = f"{target:.2f}"
            if acc >= target and self.run.seconds_to[key] is None:
                self.run.seconds_to[key], self.run.epochs_to[key] = seconds, round(epoch, 4)
        return self.run.seconds_to[f"{self.targets[-1]:.2f}"] is not None or out_of_time

    def __call__(self, record: dict[str, float], model: nn.Module) -> bool:
        return False  # everything happens in on_step


def train_reference(model: nn.Module, recipe: Recipe, train: TensorDataset, device: torch.device,
                    total_steps: int, hook: TestEvaluator, seed: int) -> None:
    """pytorch/examples' ``train()``, written plainly: a shuffling ``DataLoader``, each batch copied
    to the device, ``nll_loss`` on the log-probabilities, Adadelta, ``StepLR`` after each epoch.
    (The example reads PIL images through ``transforms``; here the dataset is already a tensor,
    which only makes the reference faster.) Time in ``hook`` is left out, as in ``fit``."""
    cuda = device.type == "cuda"
    loader = DataLoader(train, batch_size=recipe.batch_size, shuffle=True, num_workers=1 if cuda else 0,
                        pin_memory=cuda, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.Adadelta(model.parameters(), lr=recipe.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    step, elapsed = 0, 0.0
    for _ in range(math.ceil(recipe.epochs)):
        model.train()
        start = time.perf_counter()
        for data, target in loader:
            data, target = data.to(device), target.to(device)
            optimizer.zero_grad()
            loss = F.nll_loss(model(data), target)
            loss.backward()
            optimizer.step()
            step += 1
            if cuda:
                torch.cuda.synchronize()
            now = time.perf_counter()
            elapsed += now - start
            stop = hook.on_step({"step": step, "train_seconds": elapsed}, model) or step >= total_steps
            model.train()
            start = time.perf_counter()
            if stop:
                return
        scheduler.step()


def time_to_accuracy(recipe: Recipe, train: TensorDataset, test: TensorDataset, *,
                     targets: Sequence[float] = TARGETS, seed: int = 0, device: torch.device | None = None,
                     eval_every: float = 0.25, max_seconds: float | None = None,
                     max_steps: int | None = None) -> Run:
    """Train ``recipe`` on ``train`` from ``seed``, evaluating ``test`` every ``eval_every`` epochs;
    return the :class:`Run`. ``max_steps`` cuts the budget (throughput measurements, tests)."""
    device = device or torch.device("cpu")
    # deterministic kernels on the CPU (runs reproduce); on CUDA they would slow the convolutions
    seed_everything(seed, deterministic=device.type != "cuda")
    model = recipe.build().to(device)
    steps_per_epoch = math.ceil(len(train) / recipe.batch_size)
    total_steps = max(1, round(recipe.epochs * steps_per_epoch))
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)
    run = Run(recipe.name, seed, steps_per_epoch)
    step = make_step(recipe)
    hook = TestEvaluator(run, test, targets, every=max(1, round(eval_every * steps_per_epoch)),
                         last_step=total_steps, step=step, device=device, max_seconds=max_seconds)
    if recipe.loader == "dataloader":
        train_reference(model, recipe, train, device, total_steps, hook, seed)
        return run
    trained = torch.compile(model) if recipe.compile else model
    if recipe.optimizer == "adadelta":
        optimizer = torch.optim.Adadelta(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9, nesterov=True,
                                    weight_decay=recipe.weight_decay)
    if recipe.schedule == "onecycle":
        if total_steps < 8:  # OneCycleLR divides by its warm-up length: a quarter of the steps
            raise ValueError(f"a one-cycle schedule needs at least 8 steps, got {total_steps}")
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=total_steps,
                                                        pct_start=0.25)
        scheduler_step = "batch"
    else:
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
        scheduler_step = "epoch"
    fit(trained, train, optimizer=optimizer, epochs=math.ceil(total_steps / steps_per_epoch),
        loss_fn=partial(F.cross_entropy, label_smoothing=recipe.label_smoothing), scheduler=scheduler,
        scheduler_step=scheduler_step, batch_size=recipe.batch_size, device=device, amp=recipe.amp,
        seed=seed, progress=False, step=step, max_steps=total_steps, callbacks=[hook])
    return run


def run_ladder(train: TensorDataset, test: TensorDataset, *, device: torch.device | None = None,
               target: float = 0.91, reference_epochs: float = 6.0, max_steps: int | None = None,
               first: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every recipe of :func:`ladder` from seed 0 to ``target``: a list of :meth:`Run.as_dict` with
    the ``change`` each made. ``first`` is an already measured reference run to reuse."""
    device = device or torch.device("cpu")
    results = []
    for i, recipe in enumerate(ladder(device)):
        if i == 0 and first is not None:
            results.append({**first, "change": recipe.change})
            continue
        if i == 0:
            recipe = dataclasses.replace(recipe, epochs=reference_epochs)
        run = time_to_accuracy(recipe, train, test, targets=(target,), device=device, max_steps=max_steps)
        results.append({**run.as_dict(), "change": recipe.change})
    return results


def ladder_rows(runs: Sequence[dict[str, Any]], target: float = 0.91) -> list[dict[str, Any]]:
    """One row per change: seconds and epochs to ``target``, seconds per epoch, and the speed-up
    over the previous recipe that reached it split into fewer and cheaper epochs (eq-fast-factors);
    ``total`` is the speed-up over the reference. A recipe that missed the target has no factors."""
    from .scratch.fast import time_factors

    key = f"{target:.2f}"
    rows: list[dict[str, Any]] = []
    previous: dict[str, float] | None = None
    first: float | None = None
    for run in runs:
        seconds, epochs = run["seconds_to"].get(key), run["epochs_to"].get(key)
        row: dict[str, Any] = {"change": run["change"], "seconds": seconds, "epochs": epochs,
                               "final_test_acc": run["final_test_acc"], "speedup": None, "fewer_epochs": None,
                               "cheaper_epochs": None, "total": None}
        if seconds is not None and epochs:
            now = {"epochs": epochs, "seconds_per_epoch": seconds / epochs}
            row["seconds_per_epoch"] = now["seconds_per_epoch"]
            if previous is not None:
                row.update(time_factors(previous, now))
            first = first or seconds
            row["total"] = first / seconds
            previous = now
        rows.append(row)
    return rows


def load_result(path: str | os.PathLike) -> dict[str, Any]:
    """A committed ``benchmarks/time_to_accuracy.py`` result, checked for what the lesson reads."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `python benchmarks/time_to_accuracy.py --ladder "
                                f"--out {path}` to measure it on this machine")
    record = json.loads(path.read_text(encoding="utf-8"))
    missing = {"device", "torch", "date", "runs", "summary", "ladder"} - set(record)
    if missing:
        raise ValueError(f"{path} is not a time-to-accuracy result: it lacks {sorted(missing)}")
    return record
