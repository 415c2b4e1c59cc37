"""From a trained model to a deployed one: int8 arithmetic, size and latency, ONNX, exact resume.

The lesson is chapters/optimization/deployment.ipynb; its equations are referenced by label:

* ``eq-deploy-quantize``: q = clamp(round(x / s) + z, q_min, q_max), an integer code for x.
* ``eq-deploy-dequantize``: x_hat = s (q - z), the real number the code stands for.
* ``eq-deploy-affine``: s = (beta - alpha) / (q_max - q_min), z = q_min - round(alpha / s) with
  alpha = min(x_min, 0), beta = max(x_max, 0): the range [alpha, beta] mapped onto the codes.
* ``eq-deploy-symmetric``: s = max(abs(x)) / ((q_max - q_min) / 2), z = 0: the weights' scheme.
* ``eq-deploy-error-bound``: abs(x - x_hat) <= s / 2 for every x in [alpha, beta].
* ``eq-deploy-int8-linear``: y_ij = s_i^x s_j^w sum_k q_ik^x q_jk^w + b_j, an integer dot product
  (accumulated in int32) rescaled once per output.

Checkpoints: :func:`atomic_save` writes a temporary file and renames it over the old one, and
:class:`ResumableTrainer` saves and restores everything a training run depends on (model,
optimizer, scheduler, every random generator, the data order and the step counters), so that an
interrupted run continues exactly as if it had never stopped.
"""

from __future__ import annotations

import io
import os
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

INT8_MIN, INT8_MAX = -128, 127


# --- int8 arithmetic ---------------------------------------------------------------------------------


def affine_qparams(x_min: Tensor, x_max: Tensor, qmin: int = INT8_MIN, qmax: int = INT8_MAX) -> tuple[Tensor, Tensor]:
    """Scale and zero point mapping [min(x_min, 0), max(x_max, 0)] onto [qmin, qmax] (eq-deploy-affine).

    The range is widened to contain 0 so that 0 (padding, ReLU outputs) is represented exactly:
    x = 0 has the code q = z.
    """
    alpha = torch.clamp(x_min, max=0.0)
    beta = torch.clamp(x_max, min=0.0)
    scale = torch.clamp((beta - alpha) / float(qmax - qmin), min=torch.finfo(torch.float32).tiny)
    zero_point = torch.clamp(qmin - torch.round(alpha / scale), qmin, qmax).to(torch.int32)
    return scale, zero_point


def symmetric_qparams(x: Tensor, dim: int | None = -1, qmin: int = INT8_MIN, qmax: int = INT8_MAX) -> Tensor:
    """Scale max|x| / ((qmax - qmin) / 2) with zero point 0 (eq-deploy-symmetric).

    ``dim=-1`` gives one scale per row (per output channel of a weight matrix, per example of an
    activation batch), kept as a column (rows, 1); ``dim=None`` one scale for the whole tensor.
    The denominator 127.5 for int8 is torchao's choice: the largest |x| lands on +-127.5, which
    rounds and clamps to a code within half a step.
    """
    amax = x.abs().amax() if dim is None else x.abs().amax(dim=dim, keepdim=True)
    return torch.clamp(amax / ((qmax - qmin) / 2), min=torch.finfo(x.dtype).smallest_normal)


def quantize(x: Tensor, scale: Tensor, zero_point: Tensor | int = 0, qmin: int = INT8_MIN, qmax: int = INT8_MAX,
             dtype: torch.dtype = torch.int8) -> Tensor:
    """q = clamp(round(x / s) + z, qmin, qmax) (eq-deploy-quantize), stored as ``dtype``.

    x / s is computed as x * (1 / s), as torchao does, so that the codes agree bit for bit.
    ``torch.round`` rounds halves to even; any rounding to the nearest code keeps eq-deploy-error-bound.
    """
    return torch.clamp(torch.round(x * (1.0 / scale)) + zero_point, qmin, qmax).to(dtype)


def dequantize(q: Tensor, scale: Tensor, zero_point: Tensor | int = 0) -> Tensor:
    """x_hat = s (q - z) (eq-deploy-dequantize)."""
    return (q.to(torch.int32) - zero_point).to(scale.dtype) * scale


def int8_linear(x: Tensor, q_weight: Tensor, w_scale: Tensor, bias: Tensor | None = None) -> Tensor:
    """A dynamically quantized linear layer from scratch (eq-deploy-int8-linear).

    ``x`` (B, K) float is quantized per row at run time (symmetric, eq-deploy-symmetric); the
    int8 weight (N, K) and its per-row scale (N, 1) were quantized once, ahead of time. The dot
    products are exact integer sums (int32: at most K * 128 * 128, far below 2**31 for K < 131,072),
    then each output is rescaled once by s_i^x s_j^w.
    """
    x_scale = symmetric_qparams(x, dim=-1)  # (B, 1)
    q_x = quantize(x, x_scale)
    acc = q_x.to(torch.int32) @ q_weight.to(torch.int32).T  # (B, N), exact
    y = acc.to(x.dtype) * x_scale * w_scale.reshape(1, -1)
    return y if bias is None else y + bias


# --- size and latency ----------------------------------------------------------------------------------


def saved_bytes(model: nn.Module, path: str | Path | None = None) -> int:
    """Bytes of ``torch.save(model.state_dict())``: written to ``path`` (and measured on disk) or
    to memory when ``path`` is None."""
    if path is None:
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        return buffer.getbuffer().nbytes
    path = Path(path)
    torch.save(model.state_dict(), path)
    return path.stat().st_size


def latency(fn: Callable[[], Any], repeats: int = 50, warmup: int = 5) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls, after ``warmup`` calls.

    The course's one timer, :func:`dlbook.perf.median_seconds` (it waits for the GPU before and
    after every call), with deployment's defaults. The median, not the mean: on a shared machine a
    few calls are delayed by other processes. Wrap model calls in ``torch.inference_mode()`` (no
    autograd bookkeeping) and pin the thread count for numbers that compare.
    """
    from .perf import median_seconds

    return median_seconds(fn, repeats=repeats, warmup=warmup)


# --- ONNX ----------------------------------------------------------------------------------------------


def export_onnx(model: nn.Module, example: Tensor, path: str | Path, dynamic_batch: bool = True,
                input_name: str = "input", output_name: str = "output") -> Path:
    """Export ``model`` (in eval mode) to one self-contained ONNX file with ``torch.onnx.export(dynamo=True)``.

    ``dynamic_batch`` marks dimension 0 as symbolic, so the file accepts any batch size, not only
    the example's. ``external_data=False`` keeps the weights inside the file (fine below 2 GB).
    """
    path = Path(path)
    model.eval()  # dropout off and batch-norm on running statistics, in the traced graph too
    dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    torch.onnx.export(model, (example,), str(path), dynamo=True, dynamic_shapes=dynamic_shapes,
                      input_names=[input_name], output_names=[output_name], external_data=False, verbose=False)
    return path


def onnx_session(path: str | Path, threads: int = 1):
    """An ``onnxruntime.InferenceSession`` on the CPU with a fixed thread count."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_run(session: Any, x: Tensor) -> Tensor:
    """Run a single-input session on a CPU tensor and return the first output as a tensor."""
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])


# --- checkpoints -----------------------------------------------------------------------------------------


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` that never leaves a half-written file at ``path``.

    The object is written to a temporary file in the same folder, flushed to the disk
    (``fsync``), then renamed over ``path`` with ``os.replace``, which is atomic on one file
    system: a crash at any moment leaves either the old checkpoint or the new one, never a torn
    mixture. On failure the temporary file is removed and the old checkpoint is untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every random generator a training step may draw from: Python's, NumPy's, torch's global
    CPU (and CUDA) generators, and ``generator`` (the data order), as ``torch.load``-safe values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["data_order"] = generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(_as_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "data_order" in state:
        generator.set_state(state["data_order"])


def _as_tuples(obj: Any) -> Any:
    # random.setstate wants the nested tuples back, whatever a serializer turned them into.
    return tuple(_as_tuples(o) for o in obj) if isinstance(obj, (list, tuple)) else obj


def random_augment(x: Tensor) -> Tensor:
    """A stand-in for a real augmentation pipeline that, like many libraries, draws from Python's
    ``random`` (a shift of -1, 0 or 1 pixel) and NumPy's generator (Gaussian pixel noise): a
    resume that does not restore both generators sees different batches."""
    shift = random.randint(-1, 1)
    noise = torch.from_numpy(np.random.normal(0.0, 0.1, size=tuple(x.shape)).astype(np.float32))
    return torch.roll(x, shifts=shift, dims=-1) + noise


CHECKPOINT_PARTS = ("model", "optimizer", "scheduler", "rng", "data_order", "progress")


class ResumableTrainer:
    """A training loop whose every step can be interrupted and resumed bit for bit.

    Each epoch draws a permutation of the examples from ``generator``; the checkpoint keeps the
    generator's state *from the start of the current epoch* with the position in it, so a resume
    in the middle of an epoch redraws the same permutation and skips the batches already done.
    ``losses`` holds the training loss of every step, as Python floats.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                 data: Sequence[Tensor], *, batch_size: int, generator: torch.Generator,
                 augment: Callable[[Tensor], Tensor] | None = None,
                 loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.x, self.y = data
        self.batch_size, self.generator, self.augment, self.loss_fn = batch_size, generator, augment, loss_fn
        self.step = 0  # optimizer steps done
        self.epoch = 0
        self.batch_in_epoch = 0  # batches of the current epoch done
        self.epoch_start_state = generator.get_state()
        self.losses: list[float] = []

    @property
    def batches_per_epoch(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def _order(self) -> Tensor:
        # Redrawn from the state saved at the epoch's start: the same permutation after a resume.
        self.generator.set_state(self.epoch_start_state)
        return torch.randperm(len(self.x), generator=self.generator)

    def run(self, until_step: int, progress: bool = False) -> list[float]:
        """Train until ``until_step`` optimizer steps are done; return this call's losses."""
        from tqdm.auto import tqdm

        new: list[float] = []
        self.model.train()
        bar = tqdm(total=max(until_step - self.step, 0), desc="steps", disable=not progress)
        order = self._order()
        while self.step < until_step:
            if self.batch_in_epoch == self.batches_per_epoch:  # a new epoch: a new permutation
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                self.epoch_start_state = self.generator.get_state()
                order = self._order()
            idx = order[self.batch_in_epoch * self.batch_size : (self.batch_in_epoch + 1) * self.batch_size]
            x, y = self.x[idx], self.y[idx]
            if self.augment is not None:
                x = self.augment(x)
            loss = self.loss_fn(self.model(x), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            self.step += 1
            self.batch_in_epoch += 1
            new.append(loss.item())
            bar.update()
        bar.close()
        self.losses.extend(new)
        return new

    def state_dict(self) -> dict[str, Any]:
        """Everything the next step depends on."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "rng": rng_state(),
            "data_order": self.epoch_start_state,
            "progress": {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch},
        }

    def load_state_dict(self, state: dict[str, Any], skip: Iterable[str] = ()) -> None:
        """Restore a :meth:`state_dict`; ``skip`` leaves parts out (to show that each is needed)."""
        skip = set(skip)
        unknown = skip - set(CHECKPOINT_PARTS)
        if unknown:
            raise ValueError(f"unknown checkpoint parts {sorted(unknown)}; choose from {CHECKPOINT_PARTS}")
        if "model" not in skip:
            self.model.load_state_dict(state["model"])
        if "optimizer" not in skip:
            self.optimizer.load_state_dict(state["optimizer"])
        if "scheduler" not in skip and self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if "rng" not in skip:
            set_rng_state(state["rng"])
        if "data_order" not in skip:
            self.epoch_start_state = state["data_order"]
        if "progress" not in skip:
            p = state["progress"]
            self.step, self.epoch, self.batch_in_epoch = p["step"], p["epoch"], p["batch_in_epoch"]

    def save(self, path: str | Path) -> Path:
        """Write the checkpoint atomically (:func:`atomic_save`)."""
        return atomic_save(self.state_dict(), path)

    def load(self, path: str | Path, skip: Iterable[str] = ()) -> None:
        """Read a checkpoint with ``weights_only=True``: tensors and plain containers only, no
        arbitrary pickled code (a checkpoint from elsewhere is untrusted input)."""
        self.load_state_dict(torch.load(path, weights_only=True), skip=skip)
