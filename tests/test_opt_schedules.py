"""Optimization lesson 2: learning-rate schedules from scratch (dlbook/scratch/schedules.py).

Every formula must reproduce its ``torch.optim.lr_scheduler`` counterpart at every step (relative
error < 1e-12), planted off-by-one bugs must fail the same check, ``PlateauScratch`` must make
the same decisions as ``ReduceLROnPlateau``, and the range test must follow eq-lr-range and
eq-lr-smooth and leave the caller's model alone.
"""

from __future__ import annotations

import inspect
import math
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler

import dlbook.scratch.schedules as sch

TOL = 1e-12
BASE = 0.1

# name: (scheduler factory, formula of t, steps)
CASES = {
    "step": (partial(lr_scheduler.StepLR, step_size=7, gamma=0.5),
             partial(sch.step_decay, base_lr=BASE, step_size=7, gamma=0.5), 60),
    "exponential": (partial(lr_scheduler.ExponentialLR, gamma=0.97),
                    partial(sch.exponential_decay, base_lr=BASE, gamma=0.97), 300),
    "cosine": (partial(lr_scheduler.CosineAnnealingLR, T_max=500),
               partial(sch.cosine_annealing, base_lr=BASE, total=500), 500),
    "cosine eta_min": (partial(lr_scheduler.CosineAnnealingLR, T_max=333, eta_min=1e-3),
                       partial(sch.cosine_annealing, base_lr=BASE, total=333, eta_min=1e-3), 333),
    "sgdr T_mult=1": (partial(lr_scheduler.CosineAnnealingWarmRestarts, T_0=17),
                      partial(sch.cosine_warm_restarts, base_lr=BASE, t_0=17), 100),
    "sgdr T_mult=3": (partial(lr_scheduler.CosineAnnealingWarmRestarts, T_0=5, T_mult=3, eta_min=1e-4),
                      partial(sch.cosine_warm_restarts, base_lr=BASE, t_0=5, t_mult=3, eta_min=1e-4), 200),
    "warm-up + cosine": (
        lambda opt: lr_scheduler.SequentialLR(opt, [
            lr_scheduler.LinearLR(opt, start_factor=0.05, total_iters=40),
            lr_scheduler.CosineAnnealingLR(opt, T_max=360, eta_min=1e-5)], milestones=[40]),
        partial(sch.warmup_cosine, base_lr=BASE, warmup=40, total=400, start_factor=0.05, eta_min=1e-5), 400),
    "warm-up + steps, LambdaLR": (
        lambda opt: lr_scheduler.LambdaLR(opt, lambda t: sch.warmup_multistep(t, 1.0, 10, (50, 80))),
        partial(sch.warmup_multistep, base_lr=BASE, warmup=10, milestones=(50, 80)), 100),
    "warm-up + steps, LinearLR then MultiStepLR": (
        lambda opt: lr_scheduler.SequentialLR(opt, [
            lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=10),
            lr_scheduler.MultiStepLR(opt, milestones=[40, 70], gamma=0.1)], milestones=[10]),
        partial(sch.warmup_multistep, base_lr=BASE, warmup=10, milestones=(50, 80)), 100),
    "one-cycle defaults": (partial(lr_scheduler.OneCycleLR, max_lr=0.5, total_steps=1000),
                           partial(sch.one_cycle, max_lr=0.5, total=1000), 1000),
    "one-cycle custom, odd length": (
        partial(lr_scheduler.OneCycleLR, max_lr=0.3, total_steps=37, pct_start=0.25, div_factor=10.0,
                final_div_factor=100.0),
        partial(sch.one_cycle, max_lr=0.3, total=37, pct_start=0.25, div_factor=10.0, final_div_factor=100.0), 37),
}


@pytest.mark.parametrize("name", list(CASES))
def test_formula_equals_torch_scheduler_every_step(name: str) -> None:
    make, formula, steps = CASES[name]
    lrs, _ = sch.torch_lrs(make, steps, BASE, momentum=0.9)
    assert sch.max_rel_gap([formula(t) for t in range(steps)], lrs) < TOL


def test_one_cycle_momentum_mirrors_the_rate() -> None:
    make = partial(lr_scheduler.OneCycleLR, max_lr=0.2, total_steps=120, base_momentum=0.8, max_momentum=0.97)
    lrs, momenta = sch.torch_lrs(make, 120, BASE, momentum=0.9)
    ours = [sch.one_cycle(t, 0.2, 120, momentum=(0.8, 0.97)) for t in range(120)]
    assert sch.max_rel_gap([lr for lr, _ in ours], lrs) < TOL
    assert sch.max_rel_gap([m for _, m in ours], momenta) < TOL
    peak = int(np.argmax(lrs))
    assert momenta[peak] == pytest.approx(0.8, abs=1e-3) and momenta[0] == pytest.approx(0.97)


def test_torch_lrs_records_the_rate_of_each_step() -> None:
    lrs, _ = sch.torch_lrs(partial(lr_scheduler.StepLR, step_size=2, gamma=0.1), 5, 1.0)
    assert lrs == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01], rel=1e-15)  # step 0 uses the base rate


def _one_cycle_peak_at_pct_t(t: int, max_lr: float, total: int) -> float:
    # planted bug: the peak at step pct * T instead of PyTorch's pct * T - 1
    t_peak = 0.3 * total
    initial, final = max_lr / 25, max_lr / 25 / 1e4
    if t <= t_peak:
        return sch._cos_anneal(initial, max_lr, t / t_peak)
    return sch._cos_anneal(max_lr, final, (t - t_peak) / (total - 1 - t_peak))


@pytest.mark.parametrize(
    "case, buggy",
    [
        ("step", lambda t: sch.step_decay(t + 1, BASE, 7, 0.5)),  # scheduler stepped before the optimizer
        ("cosine", lambda t: sch.cosine_annealing(t, BASE, 499)),  # T - 1
        ("one-cycle defaults", lambda t: _one_cycle_peak_at_pct_t(t, 0.5, 1000)),
        ("sgdr T_mult=3", lambda t: sch.cosine_warm_restarts(t, BASE, 5, 2, 1e-4)),  # wrong cycle growth
    ],
    ids=["step-read-late", "cosine-T-1", "one-cycle-peak", "sgdr-T_mult"],
)
def test_planted_bugs_fail_the_check(case: str, buggy) -> None:
    make, _, steps = CASES[case]
    lrs, _ = sch.torch_lrs(make, steps, BASE)
    assert sch.max_rel_gap([buggy(t) for t in range(steps)], lrs) > 1e-3


SCRIPTED = [1.0, 0.8, 0.7, 0.69995, 0.7, 0.71, 0.7, 0.65, 0.66, 0.66, 0.66, 0.66, 0.66, 0.66] + [0.64] * 12


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(factor=0.5, patience=5),  # the source article's settings (without verbose)
        dict(factor=0.5, patience=2),
        dict(factor=0.5, patience=2, cooldown=2, min_lr=0.01),
        dict(factor=0.1, patience=1, threshold=0.1),  # a large threshold, down to the eps floor
        dict(factor=0.3, patience=0, threshold=1e-3),
    ],
    ids=str,
)
def test_plateau_scratch_matches_reduce_lr_on_plateau(kwargs) -> None:
    theirs = sch.plateau_lrs(lambda opt: lr_scheduler.ReduceLROnPlateau(opt, mode="min", **kwargs), SCRIPTED, 0.1)
    ours_sched = sch.PlateauScratch(lr=0.1, **kwargs)
    assert [ours_sched.step(v) for v in SCRIPTED] == theirs


@pytest.mark.parametrize("seed", range(5))
def test_plateau_scratch_on_random_curves(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = (1 / np.arange(1, 81) + 0.05 * rng.standard_normal(80)).tolist()
    kwargs = dict(factor=0.5, patience=int(rng.integers(0, 6)), cooldown=int(rng.integers(0, 3)), min_lr=1e-3)
    theirs = sch.plateau_lrs(lambda opt: lr_scheduler.ReduceLROnPlateau(opt, **kwargs), values, 0.1)
    ours_sched = sch.PlateauScratch(lr=0.1, **kwargs)
    assert [ours_sched.step(v) for v in values] == theirs


def test_plateau_without_patience_would_differ() -> None:
    """Planted bug: cutting after `patience` bad epochs instead of *more than* `patience`."""
    theirs = sch.plateau_lrs(lambda opt: lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=2), SCRIPTED, 0.1)
    ours_sched = sch.PlateauScratch(lr=0.1, factor=0.5, patience=1)
    assert [ours_sched.step(v) for v in SCRIPTED] != theirs


def test_verbose_is_not_a_parameter() -> None:
    """`verbose` was deprecated in PyTorch 2.2 and is not a parameter of ReduceLROnPlateau in torch
    2.14.1, the course's pin: read the learning rate from the optimizer or the training history."""
    assert "verbose" not in inspect.signature(lr_scheduler.ReduceLROnPlateau).parameters
    probe = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(TypeError, match="verbose"):
        lr_scheduler.ReduceLROnPlateau(probe, verbose=True)


# --- the range test ---------------------------------------------------------------------------


def _regression_problem(n_batches: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    w_true = torch.randn(8, 1, generator=gen)
    batches = []
    for _ in range(n_batches):
        x = torch.randn(32, 8, generator=gen)
        batches.append((x, x @ w_true + 0.1 * torch.randn(32, 1, generator=gen)))
    torch.manual_seed(seed)
    return nn.Linear(8, 1), batches


def test_range_test_follows_its_equations_and_leaves_the_model_alone() -> None:
    model, batches = _regression_problem(60)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    record = sch.lr_range_test(model, batches, lambda p: torch.optim.SGD(p, lr=0.0), loss_fn=nn.functional.mse_loss,
                               lr_min=1e-4, lr_max=10.0, steps=60, beta=0.9, progress=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), "the range test must train a copy"
    n = len(record.lrs)
    expected = [1e-4 * (10.0 / 1e-4) ** (t / 59) for t in range(n)]  # eq-lr-range
    np.testing.assert_allclose(record.lrs, expected, rtol=1e-13)
    average, smooth = 0.0, []
    for t, loss in enumerate(record.losses):  # eq-lr-smooth
        average = 0.9 * average + 0.1 * loss
        smooth.append(average / (1 - 0.9 ** (t + 1)))
    np.testing.assert_allclose(record.smoothed, smooth, rtol=1e-13)
    assert record.stopped_early and n < 60, "plain SGD on this problem must diverge before lr = 10"
    assert record.smoothed[-1] > 4 * min(record.smoothed) or not math.isfinite(record.smoothed[-1])
    assert 1e-3 < record.lr_at_min() < 2.0


def test_suggestion_rules_on_a_known_curve() -> None:
    lrs = np.logspace(-4, 0, 41).tolist()
    # smoothed loss: a logistic drop centred at 1e-2 (steepest there), minimum at lrs[36], then a rise
    smoothed = [2.0 - 1.5 / (1 + math.exp(-3 * (math.log10(lr) + 2))) for lr in lrs]
    smoothed = [s + (0.5 * (i - 36) ** 2 / 10 if i > 36 else -0.001 * i) for i, s in enumerate(smoothed)]
    record = sch.RangeTest(lrs=lrs, losses=smoothed, smoothed=smoothed)
    assert record.lr_at_min() == lrs[36]
    assert record.suggestion("min/10") == pytest.approx(lrs[36] / 10)
    assert record.suggestion("steepest") == pytest.approx(1e-2, rel=0.3)
    with pytest.raises(ValueError):
        record.suggestion("valley")


def test_range_test_needs_enough_batches() -> None:
    model, batches = _regression_problem(5)
    with pytest.raises(ValueError, match="needs 20 batches"):
        sch.lr_range_test(model, batches, lambda p: torch.optim.SGD(p, lr=0.0), loss_fn=nn.functional.mse_loss,
                          lr_min=1e-6, lr_max=1e-5, steps=20, progress=False)
