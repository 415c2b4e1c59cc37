"""Measuring training speed: honest timers, FLOPs by hand and by counter, model-FLOP utilisation.

Used by ``chapters/optimization/speed.ipynb``; the equation labels below are that lesson's.

* :func:`timed` / :class:`Timing` - wall-clock *and* process CPU time of a call, with the CUDA
  queue drained before and after (a GPU call returns before its kernels finish)
* :class:`SpeedrunCNN` - the small CNN of the public "99% on MNIST in under a second" study
* :class:`PerSampleMNIST` - the tutorial input pipeline: a ``Dataset`` that converts and normalises
  one image at a time, for a ``DataLoader`` to collate and copy to the device batch by batch
* :func:`measure_throughput` - images per second of the training step under one configuration
* :func:`train_step_flops` - FLOPs of one training step from the hand MAC formulas (eq-speed-train-flops),
  :func:`counted_flops` - the same from ``torch.utils.flop_counter.FlopCounterMode``
* :data:`PEAK_TFLOPS`, :func:`peak_flops`, :func:`matmul_flops_per_second`, :func:`mfu` - the
  denominator and the ratio of eq-speed-mfu
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from torch.utils.flop_counter import FlopCounterMode

from .models.cnn import layer_macs

Tensor = torch.Tensor
Batches = Callable[[], Iterator[tuple[Tensor, ...]]]

# Dense (no structured sparsity) peak throughput in TFLOP/s from the vendors' data sheets, by the
# format the multiplications run in. "tf32" is float32 storage on tensor cores; "fp32" the plain cores.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H100 SXM": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.2},
    "H200": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L4": {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3},
    "V100": {"fp16": 125.0, "fp32": 15.7},
    "T4": {"fp16": 65.0, "fp32": 8.1},
}
_FORMAT = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


# --- timing --------------------------------------------------------------------------------------


def synchronize(device: torch.device | str) -> None:
    """Wait for every queued kernel on ``device`` (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Wall-clock and CPU seconds of one measured call.

    On a GPU the wall clock is the truth (the CPU mostly waits). On a CPU shared with other jobs
    the wall clock also counts time the job was not running; the process CPU time does not, so
    comparisons between CPU runs use ``cpu_s`` (:attr:`seconds` picks the right one).
    """

    wall_s: float
    cpu_s: float
    device_type: str

    @property
    def seconds(self) -> float:
        return self.wall_s if self.device_type != "cpu" else self.cpu_s


def timed(fn: Callable[[], Any], device: torch.device | str = "cpu") -> tuple[Any, Timing]:
    """Run ``fn()`` once and return (its result, :class:`Timing`), draining the CUDA queue around it."""
    device = torch.device(device)
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    synchronize(device)
    return result, Timing(time.perf_counter() - wall, time.process_time() - cpu, device.type)


# --- the model and the two input pipelines -------------------------------------------------------


class SpeedrunCNN(nn.Module):
    """The final network of the "train MNIST to 99% in under a second" study (tuomaso/train_mnist_fast).

    Conv(1->24, 5x5) - max-pool 2 - ReLU - Conv(24->32, 3x3) - max-pool 2 - ReLU - FC(800->256) - ReLU -
    FC(256->10), no padding: 28 -> 24 -> 12 -> 10 -> 5. Pooling *before* the ReLU gives the same result
    as after (both are monotone) on a quarter of the values. ``channels_last=True`` converts the input
    to NHWC inside ``forward``, so any training loop (``dlbook.train.fit`` included) feeds the
    convolutions in that layout; convert the weights with ``model.to(memory_format=torch.channels_last)``.
    """

    def __init__(self, num_classes: int = 10, channels_last: bool = False) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.conv1 = nn.Conv2d(1, 24, 5)
        self.conv2 = nn.Conv2d(24, 32, 3)
        self.fc1 = nn.Linear(32 * 5 * 5, 256)
        self.fc2 = nn.Linear(256, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class PerSampleMNIST(Dataset):
    """Raw uint8 digits served one at a time, as ``torchvision.datasets.MNIST`` with the usual transform.

    Each ``__getitem__`` wraps the image in a PIL image, converts it with ``ToTensor`` (float in
    [0, 1]) and standardises it with ``Normalize``: the pipeline of PyTorch's MNIST example, which
    a ``DataLoader`` then collates into batches that are copied to the device one by one.
    """

    def __init__(self, images: Tensor, labels: Tensor, mean: float = 0.1307, std: float = 0.3081) -> None:
        from torchvision import transforms  # imported here: only this pipeline needs torchvision

        if images.dtype != torch.uint8 or images.dim() != 3:
            raise ValueError("images must be uint8 of shape (N, H, W), as read from the IDX file")
        self.images, self.labels = images, labels
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((mean,), (std,))])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        from PIL import Image

        img = Image.fromarray(self.images[i].numpy(), mode="L")
        return self.transform(img), self.labels[i]


def to_uint8(x: Tensor, mean: float = 0.1307, std: float = 0.3081) -> Tensor:
    """Undo ``load_mnist``'s standardisation: float (N, 1, 28, 28) -> the uint8 (N, 28, 28) pixels."""
    return (x.squeeze(1) * std + mean).mul(255).round().clamp(0, 255).to(torch.uint8)


# --- throughput ----------------------------------------------------------------------------------


@dataclass
class Throughput:
    """Images per second of the training step, measured over ``images`` after a warm-up."""

    images: int
    timing: Timing

    @property
    def images_per_s(self) -> float:
        return self.images / self.timing.seconds

    def epoch_seconds(self, n: int) -> float:
        """Time for one epoch of ``n`` images at this rate."""
        return n / self.images_per_s


def measure_throughput(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    device: torch.device,
    *,
    steps: int,
    warmup: int = 1,
    amp_dtype: torch.dtype | None = None,
) -> Throughput:
    """Time ``steps`` training steps (after ``warmup`` untimed ones) on batches from ``batches()``.

    The step is ``dlbook.train.fit``'s (autocast forward, loss in float32, backward, optimizer
    step) without metrics, so the clock sees only training. Getting the batch (and, for a
    ``DataLoader``, preparing and copying it) is inside the clock: it is part of the cost of a step.
    ``batches`` is called again whenever it runs out.
    """
    model.train()

    def stream() -> Iterator[tuple[Tensor, ...]]:
        while True:
            yield from batches()

    source = stream()

    def run(n: int) -> int:
        images = 0
        for _ in range(n):
            x, y = next(source)
            with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext():
                loss = F.cross_entropy(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            images += len(y)
        return images

    run(warmup)
    images, timing = timed(lambda: run(steps), device)
    return Throughput(images, timing)


# --- FLOPs and utilisation -----------------------------------------------------------------------


def train_step_flops(model: nn.Module, input_size: tuple[int, ...]) -> dict[str, int]:
    """FLOPs of one training step by hand (eq-speed-train-flops), per part.

    With M_l the multiply-accumulates of layer l (eq-arch-macs, via :func:`dlbook.models.layer_macs`):
    forward 2 M_l; backward 2 M_l for the weight gradient and 2 M_l for the input gradient, except
    for the first layer, whose input is the data and needs no gradient. Only convolutions and
    matrix products are counted (they are what ``FlopCounterMode`` counts; pooling, activations,
    the loss and the optimizer are a few FLOPs per value, not per weight).
    """
    macs = layer_macs(model, input_size)
    first = next(iter(macs))
    forward = 2 * sum(macs.values())
    weight_grads = 2 * sum(macs.values())
    input_grads = 2 * sum(m for name, m in macs.items() if name != first)
    return {"forward": forward, "backward (weights)": weight_grads, "backward (inputs)": input_grads,
            "total": forward + weight_grads + input_grads}


def counted_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """Total FLOPs ``FlopCounterMode`` counts while ``fn()`` runs, and the counts per operator."""
    with FlopCounterMode(display=False) as counter:
        fn()
    per_op = {str(op).split(".")[-1]: int(n) for op, n in counter.get_flop_counts()["Global"].items()}
    return int(counter.get_total_flops()), per_op


def gpu_model(name: str) -> str | None:
    """The :data:`PEAK_TFLOPS` row for a ``torch.cuda.get_device_name`` string, or ``None``."""
    tokens = name.upper().replace("-", " ").split()  # "NVIDIA A100-SXM4-80GB" -> [..., "A100", "SXM4", ...]
    if "H100" in tokens:
        if "NVL" in tokens:
            return None  # a different part with its own peaks: not in the table
        return "H100 PCIe" if "PCIE" in tokens else "H100 SXM"
    return next((key for key in ("H200", "A100", "L4", "V100", "T4") if key in tokens), None)


def peak_flops(device: torch.device | str, dtype: torch.dtype = torch.bfloat16, tf32: bool = False) -> float | None:
    """The data-sheet peak in FLOP/s for ``dtype`` on this GPU, or ``None`` (CPU, or a GPU not in the table).

    ``tf32=True`` asks for the TF32 tensor-core peak of float32 work.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    row = gpu_model(torch.cuda.get_device_name(device))
    key = "tf32" if (dtype == torch.float32 and tf32) else _FORMAT.get(dtype)
    if row is None or key not in PEAK_TFLOPS[row]:
        return None
    return PEAK_TFLOPS[row][key] * 1e12


def matmul_flops_per_second(device: torch.device | str = "cpu", n: int = 1024, repeats: int = 5,
                            dtype: torch.dtype = torch.float32) -> float:
    """Measured FLOP/s of an n x n matrix product (2 n^3 FLOPs), the best of ``repeats``.

    A practical ceiling for a device without a data-sheet peak: the best case the library's own
    matrix multiply reaches, not the hardware's theoretical peak.
    """
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device, dtype)
    b = torch.randn(n, n, generator=gen).to(device, dtype)
    a @ b  # warm-up: first-call allocation and library initialisation
    best = min(timed(lambda: a @ b, device)[1].seconds for _ in range(repeats))
    return 2 * n**3 / best


def mfu(flops_per_step: float, seconds_per_step: float, peak: float) -> float:
    """Model-FLOP utilisation (eq-speed-mfu): achieved model FLOP/s divided by the peak FLOP/s."""
    return flops_per_step / seconds_per_step / peak


def speedups(values: list[float]) -> np.ndarray:
    """Each throughput divided by the one before it (1.0 for the first)."""
    v = np.asarray(values, dtype=float)
    return np.concatenate([[1.0], v[1:] / v[:-1]])
