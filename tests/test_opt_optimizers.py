"""Optimization lesson 1: optimizers from scratch (dlbook/scratch/optimizers.py).

The derivation is chapters/optimization/optimizers-derivation.md. Each scratch optimizer must equal
torch.optim weight for weight after 200 float64 steps on real Fashion-MNIST batches (as in the lesson), the derivation's
equivalence claims must hold numerically, and planted bugs (Adam without bias correction, L2 in
place of decoupled decay) must fail the same check.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch

import dlbook.scratch.optimizers as opt

f64 = torch.float64
TOLERANCE = 1e-10
SETTINGS = opt.proof_settings()


@pytest.fixture(scope="module")
def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    from dlbook.data import load_fashion_mnist

    x, y = load_fashion_mnist("quick", flatten=True, train_size=8_000).train.tensors
    return opt.batches_of(x, y, batch_size=32)[:200]


@pytest.fixture(scope="module")
def mlp() -> torch.nn.Module:
    return opt.small_mlp(hidden=32, dtype=f64)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_scratch_equals_torch_after_200_steps(name: str, batches, mlp) -> None:
    make_torch, make_scratch = SETTINGS[name]
    agreement = opt.compare_with_torch(mlp, batches, make_torch, make_scratch, steps=200, name=name)
    assert agreement.ok(TOLERANCE), str(agreement)
    assert agreement.moved > 0.05, f"{name}: the weights barely moved, the check would be vacuous"


def test_proof_settings_cover_every_optimizer_and_weight_decay() -> None:
    kinds = {type(make_scratch([torch.zeros(1, requires_grad=True)])) for _, make_scratch in SETTINGS.values()}
    assert kinds == {opt.SGDScratch, opt.RMSpropScratch, opt.AdamScratch, opt.AdamWScratch}
    scratch = {name: make([torch.zeros(1, requires_grad=True)]) for name, (_, make) in SETTINGS.items()}
    assert any(o.defaults.get("nesterov") for o in scratch.values())
    decayed = [name for name, o in scratch.items() if o.defaults["weight_decay"] > 0]
    assert {"SGD + weight decay", "Adam + L2 weight decay", "AdamW"} <= set(decayed)


def test_planted_bug_adam_without_bias_correction_fails(batches, mlp) -> None:
    buggy = opt.compare_with_torch(mlp, batches, torch.optim.Adam,
                                   partial(opt.AdamScratch, bias_correction=False), steps=50)
    assert not buggy.ok(TOLERANCE)
    assert buggy.max_rel > 1e-2, str(buggy)


def test_planted_bug_l2_instead_of_decoupled_fails(batches, mlp) -> None:
    """AdamScratch with L2 weight decay is not torch.optim.AdamW."""
    wrong = opt.compare_with_torch(mlp, batches, partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.1),
                                   partial(opt.AdamScratch, lr=1e-3, weight_decay=0.1), steps=50)
    assert wrong.max_rel > 1e-3, str(wrong)


def test_l2_equals_decoupled_for_plain_sgd_only(batches, mlp) -> None:
    """eq-optim-sgd-l2-equals-decay: equal without momentum; with momentum they differ."""
    plain = opt.compare_with_torch(mlp, batches, partial(torch.optim.SGD, lr=0.05, weight_decay=0.05),
                                   partial(opt.SGDScratch, lr=0.05, weight_decay=0.05, decoupled_weight_decay=True),
                                   steps=100)
    assert plain.ok(TOLERANCE), str(plain)
    heavy = opt.compare_with_torch(
        mlp, batches, partial(torch.optim.SGD, lr=0.02, momentum=0.9, weight_decay=0.05),
        partial(opt.SGDScratch, lr=0.02, momentum=0.9, weight_decay=0.05, decoupled_weight_decay=True), steps=50)
    assert heavy.max_rel > 1e-3, str(heavy)


def test_adam_on_constant_gradient_bias_and_step_size() -> None:
    """eq-optim-adam-bias: m_t = (1 - beta1^t) g; with the correction each step moves lr (eps aside)."""
    g = torch.tensor([0.5, -2.0, 3e-2], dtype=f64)
    for correct in (True, False):
        w = torch.zeros(3, dtype=f64, requires_grad=True)
        adam = opt.AdamScratch([w], lr=0.01, bias_correction=correct)
        for t in range(1, 13):
            before = w.detach().clone()
            w.grad = g.clone()
            adam.step()
            torch.testing.assert_close(adam.state[w]["exp_avg"], (1 - 0.9**t) * g, rtol=1e-13, atol=0)
            step = (w.detach() - before).abs() / 0.01
            expected = 1.0 if correct else float(opt.adam_step_inflation(t))
            torch.testing.assert_close(step, torch.full((3,), expected, dtype=f64), rtol=1e-4, atol=0)
    assert opt.adam_step_inflation(1).item() == pytest.approx(10**0.5)
    assert opt.adam_step_inflation(12).item() == pytest.approx(6.5685, abs=1e-4)


def test_rmsprop_first_step_is_lr_over_sqrt_one_minus_alpha() -> None:
    """No bias correction in RMSprop: v_1 = (1 - alpha) g^2, so the first step is lr / sqrt(1 - alpha)."""
    w = torch.zeros(2, dtype=f64, requires_grad=True)
    rms = opt.RMSpropScratch([w], lr=1e-3, alpha=0.99, eps=0.0)
    w.grad = torch.tensor([4.0, -0.01], dtype=f64)
    rms.step()
    torch.testing.assert_close(w.detach(), torch.tensor([-1e-2, 1e-2], dtype=f64), rtol=1e-12, atol=0)


def _quadratic_grad(p: torch.Tensor) -> torch.Tensor:
    # f(p) = 0.5 p^T A p with an ill-conditioned A
    return torch.tensor([[10.0, 2.0], [2.0, 1.0]], dtype=f64) @ p


def _sgd_path(lrs: list[float], **kwargs) -> torch.Tensor:
    p = torch.tensor([1.0, -1.0], dtype=f64, requires_grad=True)
    sgd = opt.SGDScratch([p], lr=lrs[0], momentum=0.9, **kwargs)
    path = [p.detach().clone()]
    for lr in lrs:
        sgd.param_groups[0]["lr"] = lr
        p.grad = _quadratic_grad(p.detach())
        sgd.step()
        path.append(p.detach().clone())
    return torch.stack(path)


def test_momentum_forms_equal_for_constant_lr_only() -> None:
    """eq-optim-momentum vs eq-optim-momentum-lr-inside."""
    start = torch.tensor([1.0, -1.0], dtype=f64)
    constant = [0.02] * 30
    torch.testing.assert_close(_sgd_path(constant), opt.heavy_ball_lr_inside(_quadratic_grad, start, constant, 0.9),
                               rtol=0, atol=1e-13)
    schedule = [0.02] * 15 + [0.002] * 15
    gap = (_sgd_path(schedule) - opt.heavy_ball_lr_inside(_quadratic_grad, start, schedule, 0.9)).abs().max()
    assert gap > 1e-2


def test_nesterov_torch_form_is_the_lookahead_point() -> None:
    """eq-optim-nesterov-lookahead: PyTorch's parameter = theta + mu v of Sutskever's form."""
    start = torch.tensor([1.0, -1.0], dtype=f64)
    thetas, lookaheads = opt.nesterov_sutskever(_quadratic_grad, start, lr=0.02, momentum=0.9, steps=30)
    torch_path = _sgd_path([0.02] * 30, nesterov=True)
    torch.testing.assert_close(torch_path, lookaheads, rtol=0, atol=1e-13)
    assert (torch_path - thetas).abs().max() > 1e-2  # planted confusion: theta itself is not what is stored


def test_state_dict_round_trip_continues_identically() -> None:
    """State lives in self.state: save mid-run, load into a fresh optimizer, continue, get the same weights."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 5, dtype=f64), torch.randint(0, 3, (64,))
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    for cls in (opt.SGDScratch, opt.RMSpropScratch, opt.AdamScratch, opt.AdamWScratch):
        kwargs = dict(lr=1e-2, momentum=0.9) if cls is opt.SGDScratch else dict(lr=1e-2)
        straight = opt.small_mlp(5, 8, 3, dtype=f64)
        o = cls(straight.parameters(), **kwargs)
        opt.train_steps(straight, o, batches, 8)

        resumed = opt.small_mlp(5, 8, 3, dtype=f64)
        o1 = cls(resumed.parameters(), **kwargs)
        opt.train_steps(resumed, o1, batches, 4)
        o2 = cls(resumed.parameters(), **kwargs)
        o2.load_state_dict(o1.state_dict())
        opt.train_steps(resumed, o2, batches, 4)  # steps 5-8 see batches 0-3 again, as in the straight run
        for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-15, msg=f"{cls.__name__} did not resume exactly")


def test_step_with_closure_returns_loss_and_skips_params_without_grad() -> None:
    w = torch.tensor([3.0], dtype=f64, requires_grad=True)
    frozen = torch.tensor([1.0], dtype=f64, requires_grad=True)
    adam = opt.AdamScratch([w, frozen], lr=0.1)

    def closure() -> torch.Tensor:
        adam.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    loss = adam.step(closure)
    assert loss.item() == 9.0
    assert w.item() == pytest.approx(2.9, abs=1e-7) and frozen.item() == 1.0
    assert frozen not in adam.state


def test_invalid_hyperparameters_raise() -> None:
    p = [torch.zeros(1, requires_grad=True)]
    with pytest.raises(ValueError):
        opt.SGDScratch(p, lr=0.1, nesterov=True)  # Nesterov needs momentum
    with pytest.raises(ValueError):
        opt.AdamScratch(p, betas=(0.9, 1.0))
    with pytest.raises(ValueError):
        opt.RMSpropScratch(p, alpha=1.5)


def test_rosenbrock_trajectories() -> None:
    assert opt.rosenbrock(torch.tensor([1.0, 1.0], dtype=f64)).item() == 0.0
    path, losses = opt.trajectory(partial(opt.SGDScratch, lr=1e-3, momentum=0.9), (-1.2, 1.0), 300)
    assert path.shape == (301, 2) and losses.shape == (301,)
    assert losses[-1] < 0.05 < losses[0]
    _, sgd_losses = opt.trajectory(partial(opt.SGDScratch, lr=1e-3), (-1.2, 1.0), 300)
    assert sgd_losses[-1] > 10 * losses[-1]  # momentum beats plain SGD at the same lr
