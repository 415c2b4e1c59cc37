"""Optimization lesson: numerics (dlbook/numerics.py, chapters/optimization/numerics.ipynb).

The format formulas must reproduce torch.finfo, our dynamic loss scaler must follow
torch.amp.GradScaler step for step, gradient accumulation must equal the large batch in float64,
and activation checkpointing must give the same gradients while keeping the bytes the memory model
predicts. Planted bugs (a scaler that steps on overflow, the wrong accumulation weights, the
reentrant checkpoint on data inputs) must fail the same checks.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dlbook.numerics as num
from dlbook.gradients import compare, rel_error
from dlbook.models import LeNet5

f64 = torch.float64


@pytest.fixture(scope="module")
def mnist() -> tuple[torch.Tensor, torch.Tensor]:
    from dlbook.data import load_mnist

    return load_mnist("quick").train.tensors


# --- number formats ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", list(num.FORMAT_BITS), ids=str)
def test_format_formulas_equal_finfo(dtype: torch.dtype) -> None:
    assert num.finfo_mismatches(dtype) == {}


def test_wrong_bit_count_is_caught() -> None:
    """Planted bug: float16 with one mantissa bit too few disagrees with finfo on eps and the range."""
    wrong, theirs = num.FloatFormat("float16?", 5, 9), torch.finfo(torch.float16)
    assert wrong.eps != theirs.eps and wrong.max != theirs.max
    assert wrong.smallest_subnormal != theirs.smallest_normal * theirs.eps


def test_float_format_rejects_unknown_dtype() -> None:
    with pytest.raises(ValueError):
        num.float_format(torch.int32)


def test_cast_stats_on_known_values() -> None:
    values = torch.tensor([2.0**-26, 2.0**-20, 1.0, 1e5], dtype=f64)
    s = num.cast_stats(values, torch.float16)
    assert (s.flushed, s.subnormal, s.overflow) == (0.25, 0.25, 0.25)
    scaled = num.cast_stats(values, torch.float16, scale=2.0**8)  # moves the small ones up, 1e5 still overflows
    assert scaled.flushed == 0 and scaled.subnormal == 0.25 and scaled.overflow == 0.25
    assert num.cast_stats(values, torch.bfloat16).flushed == 0
    with pytest.raises(ValueError):
        num.cast_stats(torch.zeros(3), torch.float16)


def test_largest_safe_scale() -> None:
    g = torch.tensor([0.5, -3.0, 1e-9])
    s = num.largest_safe_scale(g)
    assert torch.isfinite(torch.tensor(3.0 * s).half()) and not torch.isfinite(torch.tensor(3.0 * 2 * s).half())


def test_float16_loses_real_activation_gradients(mnist) -> None:
    """LeNet-5 at initialisation on real MNIST: float16 loses most activation gradients, bfloat16 none."""
    x, y = mnist[0][:128], mnist[1][:128]
    torch.manual_seed(0)
    model = LeNet5()
    acts = []
    hooks = [m.register_forward_hook(lambda mod, i, o: acts.append(o)) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), acts)
    for h in hooks:
        h.remove()
    g = num.flat(grads)
    f16 = num.cast_stats(g, torch.float16)
    assert f16.flushed + f16.subnormal > 0.5
    assert num.cast_stats(g, torch.bfloat16).subnormal == 0
    scaled = num.cast_stats(g, torch.float16, scale=2.0**16)
    assert scaled.flushed < f16.flushed and scaled.overflow == 0


# --- dynamic loss scaling ------------------------------------------------------------------------

SETTINGS = dict(init_scale=2.0**10, growth_factor=2.0, backoff_factor=0.5, growth_interval=3)


class NoSkipScaler(num.DynamicLossScaler):
    """Planted bug: steps even when a gradient is inf."""

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        super().step(optimizer)
        if self.found_inf:
            optimizer.step()
        return True


class NoResetScaler(num.DynamicLossScaler):
    """Planted bug: forgets to reset the clean-step counter after an overflow."""

    def update(self) -> None:
        if self.found_inf:
            self.scale_value *= self.backoff_factor
        else:
            super().update()


@pytest.mark.parametrize("overflows", [(), (4, 5, 11), (0, 1, 2)])
def test_scaler_equals_gradscaler(overflows: tuple[int, ...]) -> None:
    ours = num.scripted_scaler_run(num.DynamicLossScaler(**SETTINGS), 16, overflows)
    theirs = num.scripted_scaler_run(torch.amp.GradScaler("cpu", **SETTINGS), 16, overflows)
    assert ours.scales == theirs.scales
    assert ours.stepped == theirs.stepped == [i not in overflows for i in range(16)]
    compare({str(i): p for i, p in enumerate(ours.params)},
            {str(i): p for i, p in enumerate(theirs.params)}, tolerance=1e-12).assert_ok()


@pytest.mark.parametrize("buggy", [NoSkipScaler, NoResetScaler])
def test_planted_scaler_bugs_are_caught(buggy: type[num.DynamicLossScaler]) -> None:
    overflows = (4, 6, 11)
    bad = num.scripted_scaler_run(buggy(**SETTINGS), 16, overflows)
    good = num.scripted_scaler_run(torch.amp.GradScaler("cpu", **SETTINGS), 16, overflows)
    same_params = all(torch.equal(a, b) for a, b in zip(bad.params, good.params))
    assert bad.scales != good.scales or bad.stepped != good.stepped or not same_params


# --- gradient accumulation -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def lenet64_batch(mnist) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return LeNet5().double(), mnist[0][:96].double(), mnist[1][:96]


@pytest.mark.parametrize("k", [1, 4, 5, 7])
def test_accumulation_equals_large_batch(lenet64_batch, k: int) -> None:
    model, x, y = lenet64_batch
    reference = num.batch_grads(model, F.cross_entropy, x, y)
    accumulated = num.accumulated_grads(model, F.cross_entropy, x, y, micro_batches=k)
    assert rel_error(num.flat(accumulated), num.flat(reference)) < 1e-12


@pytest.mark.parametrize(("k", "weighting"), [(5, "1/k"), (7, "1/k"), (4, "none"), (2, "none")])
def test_wrong_accumulation_weights_are_caught(lenet64_batch, k: int, weighting: str) -> None:
    model, x, y = lenet64_batch
    reference = num.batch_grads(model, F.cross_entropy, x, y)
    accumulated = num.accumulated_grads(model, F.cross_entropy, x, y, micro_batches=k, weighting=weighting)
    assert rel_error(num.flat(accumulated), num.flat(reference)) > 1e-3


def test_accumulation_rejects_unknown_weighting(lenet64_batch) -> None:
    model, x, y = lenet64_batch
    with pytest.raises(ValueError):
        num.accumulated_grads(model, F.cross_entropy, x, y, 2, weighting="mean")


# --- activation checkpointing --------------------------------------------------------------------


def _grads(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, segments: int | None,
           use_reentrant: bool = False) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the reentrant checkpoint warns that gradients will be None
        num.checkpointed_loss(model, x, y, segments, use_reentrant).backward()
    return {name: g for (name, _), g in zip(model.named_parameters(), num.grads_of(model))}


@pytest.mark.parametrize("segments", [1, 2, 3, 8])
def test_checkpointing_gives_the_same_gradients(mnist, segments: int) -> None:
    model = num.deep_mlp(depth=6, width=32, dtype=f64)
    x, y = mnist[0][:64].flatten(1).double(), mnist[1][:64]
    compare(_grads(model, x, y, segments), _grads(model, x, y, None), tolerance=1e-12).assert_ok()


def test_reentrant_checkpoint_on_data_input_is_caught(mnist) -> None:
    """Planted bug: use_reentrant=True with an input that does not require grad drops the gradients."""
    model = num.deep_mlp(depth=6, width=32, dtype=f64)
    x, y = mnist[0][:64].flatten(1).double(), mnist[1][:64]
    report = compare(_grads(model, x, y, 3, use_reentrant=True), _grads(model, x, y, None), tolerance=1e-12)
    assert not report.ok and report.worst[1] > 0.5


def test_kept_inputs_formula() -> None:
    assert num.kept_inputs(10, None) == list(range(10))
    assert num.kept_inputs(10, 1) == list(range(10))
    assert num.kept_inputs(10, 10) == list(range(10))  # a segment per module keeps every input anyway
    assert num.kept_inputs(32, 4) == [0, 8, 16, *range(24, 32)]
    counts = {s: len(num.kept_inputs(100, s)) for s in range(1, 101)}
    assert min(counts, key=counts.get) in range(8, 13)  # about sqrt(100)
    with pytest.raises(ValueError):
        num.kept_inputs(10, 11)


def test_saved_bytes_follow_the_memory_model(mnist) -> None:
    model = num.deep_mlp(depth=10, width=64)
    batch = 32
    x, y = mnist[0][:batch].flatten(1).clone(), mnist[1][:batch].clone()
    differences = {}
    for segments in (None, 2, 3, 4, 12):
        with num.SavedTensorBytes(exclude=model.parameters()) as saved:
            num.checkpointed_loss(model, x, y, segments)
        differences[segments] = saved.bytes - num.kept_input_bytes(model, batch, segments)
    # the loss keeps its log-probabilities (batch x 10 float32), the targets (int64) and one scalar
    assert set(differences.values()) == {batch * 10 * 4 + batch * 8 + 4}


def test_saved_bytes_counts_storages_once_and_skips_parameters() -> None:
    w = torch.randn(8, 8, requires_grad=True)
    x = torch.randn(4, 8)
    with num.SavedTensorBytes(exclude=[w]) as saved:
        (x @ w).sum()
    assert saved.bytes == x.numel() * 4
    with num.SavedTensorBytes() as saved:
        (x @ w + x @ w).sum()  # x saved twice (for dL/dw), one storage; w is not needed (x needs no grad)
    assert saved.bytes == x.numel() * 4
