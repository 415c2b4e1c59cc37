"""Measuring training speed: honest timers, FLOPs by hand and by counter, model-FLOP utilisation.

Used by ``chapters/optimization/speed.ipynb``; the equation labels below are that lesson's.

* :func:`timed` / :class:`Timing` - wall-clock *and* process CPU time of a call, with the CUDA
  queue drained before and after (a GPU call returns before its kernels finish)
* :func:`median_seconds` - the course's one repeated-call timer (median wall-clock seconds, the
  device waited for before and after every call); ``deploy.latency``, ``scratch.conv.time_call``
  and ``models.sequence_classifiers.measure_latency`` are this timer with their lesson's defaults
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
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from torch.utils.flop_counter import FlopCounterMode

from .scratch.conv import IntPair, _pair

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


# --- cost by hand (eq-arch-params, eq-arch-macs of the CNN chapter) ------------------------------------------------------------------------------


def conv2d_params(c_in: int, c_out: int, k: IntPair, groups: int = 1, bias: bool = True) -> int:
    """Learned parameters of ``Conv2d(c_in, c_out, k, groups=groups)``: c_out (c_in/g k_h k_w + 1) (eq-arch-params)."""
    if c_in % groups or c_out % groups:
        raise ValueError(f"groups={groups} must divide c_in={c_in} and c_out={c_out}")
    kh, kw = _pair(k)
    return c_out * (c_in // groups) * kh * kw + (c_out if bias else 0)


def conv2d_macs(
    c_in: int, c_out: int, k: IntPair, h_out: int, w_out: int, groups: int = 1, bias: bool = False
) -> int:
    """Multiply-accumulates for one image: c_out h_out w_out (c_in/g) k_h k_w (eq-arch-macs).

    Every output value is a dot product of length ``c_in/g * k_h * k_w``. ``bias=True`` adds one
    more per output value (the bias add), which is how ``torchinfo`` counts "mult-adds".
    """
    if c_in % groups or c_out % groups:
        raise ValueError(f"groups={groups} must divide c_in={c_in} and c_out={c_out}")
    kh, kw = _pair(k)
    return c_out * h_out * w_out * ((c_in // groups) * kh * kw + int(bias))


def linear_params(d_in: int, d_out: int, bias: bool = True) -> int:
    """(d_in + 1) d_out: a fully connected layer is a 1x1 convolution on a 1x1 map (eq-arch-params)."""
    return d_out * d_in + (d_out if bias else 0)


def linear_macs(d_in: int, d_out: int, bias: bool = False) -> int:
    """d_in d_out multiply-accumulates per input vector (plus d_out bias adds with ``bias=True``)."""
    return d_out * (d_in + int(bias))


def layer_macs(model: nn.Module, input_size: Sequence[int], bias: bool = False) -> dict[str, int]:
    """MACs of every ``Conv2d``/``Linear`` (by module name) in one forward pass of ``zeros(input_size)``.

    ``input_size`` includes the batch dimension, as in ``torchinfo.summary`` (use 1 for a per-image
    cost). The hooks apply :func:`conv2d_macs` and :func:`linear_macs` to the shapes the layers
    actually see, so strides, padding and pooling are accounted for without tracing by hand. The
    model runs in eval mode under ``no_grad`` on its own device (``meta`` works: no arithmetic at all).
    """
    macs: dict[str, int] = {}

    def hook(name: str):
        def count(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if isinstance(module, nn.Conv2d):
                n, _, h, w = output.shape
                use_bias = bias and module.bias is not None
                cost = n * conv2d_macs(module.in_channels, module.out_channels, module.kernel_size, h, w,
                                       module.groups, use_bias)
            else:  # nn.Linear: one dot product per output vector
                positions = output.numel() // module.out_features
                cost = positions * linear_macs(module.in_features, module.out_features, bias and module.bias is not None)
            macs[name] = macs.get(name, 0) + cost

        return count

    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    first = next(model.parameters(), None)
    device, dtype = (first.device, first.dtype) if first is not None else (torch.device("cpu"), torch.float32)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(tuple(input_size), device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return macs


def count_macs(model: nn.Module, input_size: Sequence[int], bias: bool = False) -> int:
    """Total multiply-accumulates of ``Conv2d`` and ``Linear`` layers for a batch of ``input_size``.

    The sum of :func:`layer_macs`, i.e. of the hand formulas eq-arch-macs. Pooling, activations and
    normalisation are not counted (they are a few operations per value, not per weight).
    """
    return sum(layer_macs(model, input_size, bias).values())


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


def median_seconds(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1,
                   device: torch.device | str | None = None) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls, after ``warmup`` untimed calls.

    The warm-up pays for allocations, kernel selection and lazy initialisation. Every timed call is
    bracketed by :func:`synchronize` (a GPU call returns before its kernels finish; ``device=None``
    waits for the current CUDA device whenever CUDA is in use). The median, not the mean: on a
    shared machine a few calls are delayed by other processes, and the median ignores them.
    """
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    if device is None:
        device = torch.device("cuda") if torch.cuda.is_available() and torch.cuda.is_initialized() else "cpu"
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


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
    """Raw uint8 images (MNIST, Fashion-MNIST) served one at a time, as ``torchvision.datasets.MNIST`` does.

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
