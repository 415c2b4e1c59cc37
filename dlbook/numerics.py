"""Floating-point formats, loss scaling, gradient accumulation and activation checkpointing.

Used by ``chapters/optimization/numerics.ipynb``; the equation labels below are that lesson's.

* :class:`FloatFormat` - the range and precision of a binary format from its bit counts
  (eq-num-value, eq-num-subnormal, eq-num-range), checked against ``torch.finfo``
* :func:`cast_stats` - what casting real gradients to a format does to them: flushed to zero,
  subnormal, overflowed, and the relative rounding error (eq-num-rounding)
* :class:`DynamicLossScaler` - ``torch.amp.GradScaler``'s rule written out (eq-num-dynamic), and
  :func:`scripted_scaler_run`, which drives any scaler through planted overflows
* :func:`accumulated_grads` - gradient accumulation over micro-batches, weighted so that it equals
  the large batch's mean gradient (eq-num-accum)
* :func:`deep_mlp`, :func:`checkpointed_loss`, :class:`SavedTensorBytes` - activation checkpointing
  (``torch.utils.checkpoint``) and the bytes autograd keeps for the backward pass (eq-num-ckpt-memory)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint_sequential

Tensor = torch.Tensor
LossFn = Callable[[Tensor, Tensor], Tensor]

# (exponent bits, stored mantissa bits) of each IEEE-754-style binary format; the sign takes one more bit.
FORMAT_BITS: dict[torch.dtype, tuple[int, int]] = {
    torch.float16: (5, 10),
    torch.bfloat16: (8, 7),
    torch.float32: (8, 23),
    torch.float64: (11, 52),
}


# --- number formats ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format with ``k`` exponent bits and ``p`` stored mantissa bits.

    A normal number is (-1)^s 2^(E - b) (1 + M / 2^p) with bias b = 2^(k-1) - 1 and stored
    exponent 1 <= E <= 2^k - 2 (eq-num-value); E = 0 encodes zero and the subnormals
    (-1)^s 2^(1 - b) (M / 2^p) (eq-num-subnormal); E = 2^k - 1 encodes inf and nan. Every
    property below is a line of eq-num-range, computed from ``k`` and ``p`` alone.
    """

    name: str
    exponent_bits: int
    mantissa_bits: int

    @property
    def bits(self) -> int:
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def bias(self) -> int:
        return 2 ** (self.exponent_bits - 1) - 1

    @property
    def max(self) -> float:
        """Largest finite value: E = 2^k - 2 (so E - b = b) and all mantissa bits set."""
        return (2.0 - 2.0**-self.mantissa_bits) * 2.0**self.bias

    @property
    def smallest_normal(self) -> float:
        """2^(1 - b): E = 1, M = 0. Below it precision is lost bit by bit (subnormals)."""
        return 2.0 ** (1 - self.bias)

    @property
    def smallest_subnormal(self) -> float:
        """2^(1 - b - p): E = 0, M = 1. Anything below half of it rounds to zero."""
        return 2.0 ** (1 - self.bias - self.mantissa_bits)

    @property
    def eps(self) -> float:
        """Machine epsilon 2^-p: the gap between 1 and the next representable number."""
        return 2.0**-self.mantissa_bits

    @property
    def decimal_digits(self) -> float:
        """Significant decimal digits, (p + 1) log10(2) (the leading 1 is implicit)."""
        return (self.mantissa_bits + 1) * math.log10(2.0)


def float_format(dtype: torch.dtype) -> FloatFormat:
    """The :class:`FloatFormat` of a torch floating dtype, from :data:`FORMAT_BITS`."""
    if dtype not in FORMAT_BITS:
        raise ValueError(f"no bit layout recorded for {dtype}; known: {list(FORMAT_BITS)}")
    k, p = FORMAT_BITS[dtype]
    return FloatFormat(str(dtype).removeprefix("torch."), k, p)


def finfo_mismatches(dtype: torch.dtype) -> dict[str, tuple[float, float]]:
    """Properties where eq-num-range disagrees with ``torch.finfo`` (empty when all agree exactly)."""
    ours, theirs = float_format(dtype), torch.finfo(dtype)
    pairs = {
        "bits": (ours.bits, theirs.bits),
        "max": (ours.max, theirs.max),
        "smallest_normal": (ours.smallest_normal, theirs.smallest_normal),
        "smallest_subnormal": (ours.smallest_subnormal, theirs.smallest_normal * theirs.eps),
        "eps": (ours.eps, theirs.eps),
    }
    return {name: pair for name, pair in pairs.items() if pair[0] != pair[1]}


@dataclass
class CastStats:
    """What a cast did to the nonzero entries of a float32/float64 tensor (fractions in [0, 1])."""

    dtype: torch.dtype
    scale: float
    count: int  # nonzero entries looked at
    flushed: float  # became exactly 0 (underflow)
    subnormal: float  # nonzero but below the smallest normal: fewer than p significant bits left
    overflow: float  # became +-inf
    median_rel_error: float  # over the entries that stayed finite and nonzero

    def as_row(self) -> dict[str, float | str | int]:
        return {"format": str(self.dtype).removeprefix("torch."), "scale S": self.scale, "entries": self.count,
                "flushed to 0": self.flushed, "subnormal": self.subnormal, "overflow (inf)": self.overflow,
                "median relative error": self.median_rel_error}


def cast_stats(values: Tensor, dtype: torch.dtype, scale: float = 1.0) -> CastStats:
    """Cast ``values * scale`` to ``dtype`` and count underflow, subnormals and overflow (eq-num-rounding).

    The relative error is measured after dividing the scale back out in float64, i.e. it is the
    error loss scaling leaves in the unscaled gradient.
    """
    v = values.detach().double().flatten()
    v = v[v != 0]
    if v.numel() == 0:
        raise ValueError("no nonzero values to look at")
    scaled = v * scale
    cast = scaled.to(dtype)
    back = cast.double() / scale
    tiny = torch.finfo(dtype).smallest_normal
    finite_nonzero = torch.isfinite(cast) & (cast != 0)
    rel = ((back - v).abs() / v.abs())[finite_nonzero]
    n = v.numel()
    return CastStats(
        dtype=dtype, scale=scale, count=n,
        flushed=float((cast == 0).sum()) / n,
        subnormal=float((finite_nonzero & (cast.abs() < tiny)).sum()) / n,
        overflow=float(torch.isinf(cast).sum()) / n,
        median_rel_error=float(rel.median()) if rel.numel() else float("nan"),
    )


def largest_safe_scale(values: Tensor, dtype: torch.dtype = torch.float16) -> float:
    """The largest power of two S with max|values| * S still finite in ``dtype`` (no overflow)."""
    peak = values.detach().abs().max().item()
    if peak == 0:
        raise ValueError("all values are zero: any scale is safe")
    return 2.0 ** math.floor(math.log2(torch.finfo(dtype).max / peak))


# --- dynamic loss scaling ------------------------------------------------------------------------


class DynamicLossScaler:
    """Dynamic loss scaling (eq-num-dynamic), the rule ``torch.amp.GradScaler`` implements.

    ``scale(loss)`` multiplies the loss by S, so backward produces S * grad (eq-num-scaled-grad).
    ``step(optimizer)`` divides every gradient by S in place; if any entry is inf or nan, the
    optimizer step is *skipped*. ``update()`` then halves S (``backoff_factor``) after an overflow,
    and doubles it (``growth_factor``) after ``growth_interval`` overflow-free steps in a row.
    """

    def __init__(self, init_scale: float = 2.0**16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000) -> None:
        self.scale_value = float(init_scale)
        self.growth_factor, self.backoff_factor = growth_factor, backoff_factor
        self.growth_interval = growth_interval
        self.good_steps = 0  # overflow-free steps since the last change of S
        self.found_inf = False

    def scale(self, loss: Tensor) -> Tensor:
        return loss * self.scale_value

    def get_scale(self) -> float:
        return self.scale_value

    @torch.no_grad()
    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Unscale the gradients; take the optimizer step only if all are finite. Returns whether it stepped."""
        inv = 1.0 / self.scale_value
        self.found_inf = False
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.mul_(inv)
                    self.found_inf |= not bool(torch.isfinite(p.grad).all())
        if not self.found_inf:
            optimizer.step()
        return not self.found_inf

    def update(self) -> None:
        """Back off after an overflow, grow after ``growth_interval`` clean steps (eq-num-dynamic)."""
        if self.found_inf:
            self.scale_value *= self.backoff_factor
            self.good_steps = 0
        else:
            self.good_steps += 1
            if self.good_steps == self.growth_interval:
                self.scale_value *= self.growth_factor
                self.good_steps = 0


@dataclass
class ScalerRun:
    """The record of :func:`scripted_scaler_run`: S before each step, whether it stepped, final weights."""

    scales: list[float] = field(default_factory=list)
    stepped: list[bool] = field(default_factory=list)
    params: list[Tensor] = field(default_factory=list)


def scripted_scaler_run(
    scaler: DynamicLossScaler | torch.amp.GradScaler,
    steps: int,
    overflow_at: Iterable[int],
    seed: int = 0,
) -> ScalerRun:
    """Train a small float64 linear model with ``scaler``; plant an inf gradient at the given steps.

    Every other step is ordinary least squares on fixed random data, so two scalers that follow the
    same rule produce the same scales and the same weights. Works with our scaler and with
    ``torch.amp.GradScaler("cpu")`` (whose ``step`` and ``update`` have the same meaning).
    """
    gen = torch.Generator().manual_seed(seed)
    model = nn.Linear(4, 2).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    x = torch.randn(16, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(16, 2, generator=gen, dtype=torch.float64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    planted = set(overflow_at)
    run = ScalerRun()
    for step in range(steps):
        before = [p.detach().clone() for p in model.parameters()]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(nn.functional.mse_loss(model(x), y)).backward()
        if step in planted:  # what an fp16 overflow in the backward pass leaves behind
            model.weight.grad[0, 0] = float("inf")
        run.scales.append(float(scaler.get_scale()))
        scaler.step(optimizer)
        scaler.update()
        run.stepped.append(any(not torch.equal(p, b) for p, b in zip(model.parameters(), before)))
    run.params = [p.detach().clone() for p in model.parameters()]
    return run


# --- gradient accumulation -----------------------------------------------------------------------


def batch_grads(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor) -> list[Tensor]:
    """Gradients of the mean loss over the whole batch (the reference for eq-num-accum)."""
    model.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def accumulated_grads(
    model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, micro_batches: int, weighting: str = "size"
) -> list[Tensor]:
    """Accumulate gradients over ``micro_batches`` pieces of (x, y): eq-num-accum.

    ``loss_fn`` takes the mean over its micro-batch, so each micro-batch's loss is multiplied by
    its share n_i / N of the batch before ``backward()`` adds its gradient to ``.grad``. With equal
    pieces that share is 1/k. ``weighting="1/k"`` always uses 1/k (wrong when the pieces differ in
    size) and ``"none"`` forgets the factor (k times too large): the lesson's planted bugs.
    """
    if weighting not in ("size", "1/k", "none"):
        raise ValueError(f"weighting must be 'size', '1/k' or 'none', not {weighting!r}")
    model.zero_grad(set_to_none=True)
    n, pieces = len(x), list(zip(x.tensor_split(micro_batches), y.tensor_split(micro_batches)))
    for xb, yb in pieces:
        share = {"size": len(xb) / n, "1/k": 1.0 / len(pieces), "none": 1.0}[weighting]
        (loss_fn(model(xb), yb) * share).backward()  # backward adds into .grad: the accumulation
    return [p.grad.detach().clone() for p in model.parameters()]


# --- activation checkpointing --------------------------------------------------------------------


def deep_mlp(depth: int, width: int, in_features: int = 784, num_classes: int = 10, seed: int = 0,
             dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """An input layer, ``depth`` hidden Linear+ReLU blocks of ``width`` units, and a linear head.

    Built as a flat ``nn.Sequential`` of ``depth + 2`` modules so ``checkpoint_sequential`` can cut
    it into segments anywhere.
    """
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Sequential(nn.Linear(in_features, width), nn.ReLU())]
    layers += [nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(depth)]
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers).to(dtype)


def checkpointed_loss(
    model: nn.Sequential, x: Tensor, y: Tensor, segments: int | None, use_reentrant: bool = False
) -> Tensor:
    """Cross-entropy of ``model(x)``; with ``segments``, through ``checkpoint_sequential`` (eq-num-ckpt-memory).

    The sequence is cut into ``segments`` pieces; all but the last keep only their input for
    backward and recompute their activations when backward reaches them. ``use_reentrant=True`` is
    the old implementation, kept here only for the lesson's planted bug: when ``x`` does not require
    grad, the checkpointed segments' parameters silently get no gradient.
    """
    if segments is None:
        out = model(x)
    else:
        out = checkpoint_sequential(model, segments, x, use_reentrant=use_reentrant)
    return nn.functional.cross_entropy(out, y)


class SavedTensorBytes:
    """Count the bytes autograd saves for backward inside a ``with`` block (``saved_tensors_hooks``).

    Each saved tensor is counted once per storage (views share storage); storages of the tensors in
    ``exclude`` (the parameters, which live in memory anyway) are not counted. The tensors are
    returned unchanged, so the backward pass works as usual.
    """

    def __init__(self, exclude: Iterable[Tensor] = ()) -> None:
        self.exclude = {t.untyped_storage().data_ptr() for t in exclude}
        self.storages: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: Tensor) -> Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in self.exclude:
            self.storages[ptr] = t.untyped_storage().nbytes()
        return t

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())

    def __enter__(self) -> SavedTensorBytes:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


def kept_inputs(num_modules: int, segments: int | None) -> list[int]:
    """Indices of the modules whose *input* autograd keeps after forward (eq-num-ckpt-memory).

    Without checkpointing every module keeps its input (a Linear needs it for its weight gradient;
    a ReLU's saved output is the next module's input, the same tensor). ``checkpoint_sequential``
    with s segments cuts the n modules into pieces of ``n // s``; each of the first s - 1 keeps only
    its own input, and the last segment runs normally, so every module in it keeps its input. The
    count, (s - 1) + (n - (s - 1) * (n // s)), is about s + n / s: smallest near s = sqrt(n).
    """
    if segments is None:
        return list(range(num_modules))
    if not 1 <= segments <= num_modules:
        raise ValueError(f"segments must be between 1 and {num_modules}, not {segments}")
    size = num_modules // segments
    starts = [j * size for j in range(segments - 1)]  # checkpointed segments keep their input only
    return starts + list(range((segments - 1) * size, num_modules))


def kept_input_bytes(model: nn.Sequential, batch: int, segments: int | None) -> int:
    """Bytes of the module inputs :func:`kept_inputs` says are kept, for a batch of ``batch`` rows."""
    widths = [next(m.parameters()).shape[1] for m in model]  # each module starts with a Linear
    itemsize = next(model.parameters()).element_size()
    return sum(batch * widths[i] * itemsize for i in kept_inputs(len(model), segments))


def grads_of(model: nn.Module) -> list[Tensor]:
    """Detached copies of the current ``.grad`` of every parameter (zeros where there is none)."""
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def flat(tensors: Sequence[Tensor]) -> Tensor:
    """All tensors flattened and concatenated (to compare whole gradient lists with one number)."""
    return torch.cat([t.flatten() for t in tensors])
