"""dlbook.speedrun and dlbook.scratch.fast: the lesson "As fast as possible".

The float64 proofs (memory layout, flip test-time augmentation and its gradient) each with a
planted bug that must fail; the recipes are the reference plus one change at a time; the runner
measures training time without its evaluations."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from torch.utils.data import TensorDataset

from dlbook import speedrun
from dlbook.perf import count_macs
from dlbook.scratch import fast


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def test_offsets_are_pytorch_memory_addresses():
    shape = (2, 3, 4, 5)
    x = torch.arange(120.0).reshape(shape)
    nchw, nhwc = x.contiguous(), x.contiguous(memory_format=torch.channels_last)
    flat_nchw = torch.as_strided(nchw, (nchw.numel(),), (1,))
    flat_nhwc = torch.as_strided(nhwc, (nhwc.numel(),), (1,))
    for index in itertools.product(*(range(s) for s in shape)):
        assert flat_nchw[fast.nchw_offset(index, shape)] == x[index]
        assert flat_nhwc[fast.nhwc_offset(index, shape)] == x[index]
    # planted bug: h and w swapped in the channels-last formula must land on other values
    n, c, h, w = 1, 2, 3, 1
    swapped = ((n * shape[3] + w) * shape[2] + h) * shape[1] + c
    assert flat_nhwc[swapped] != x[n, c, h, w]


def _fastnet64(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return speedrun.FastNet((4, 6, 8)).double()


def test_channels_last_is_the_same_math_float64():
    x = torch.randn(5, 1, 28, 28, dtype=torch.float64)
    y = torch.randint(0, 10, (5,))
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        model = _fastnet64().to(memory_format=layout)
        loss = torch.nn.functional.cross_entropy(model(x.contiguous(memory_format=layout)), y)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        results.append((loss.detach(), grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert rel_err(loss_b, loss_a) < 1e-12
    assert max(rel_err(b, a) for a, b in zip(grads_a, grads_b, strict=True)) < 1e-12
    # planted bug: "converting" by reinterpreting NCHW memory as NHWC scrambles a 3-channel input
    x3 = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    wrong = x3.reshape(2, 8, 8, 3).permute(0, 3, 1, 2)
    assert rel_err(wrong, x3) > 1e-3


def test_tta_logits_are_mirror_invariant():
    model = _fastnet64().eval()
    x = torch.randn(4, 1, 28, 28, dtype=torch.float64)
    assert torch.equal(fast.tta_logits(model, x.flip(-1)), fast.tta_logits(model, x))
    assert not torch.allclose(model(x.flip(-1)), model(x))  # the plain model is not


def test_tta_input_gradient_by_hand_equals_autograd_float64():
    model = _fastnet64().eval()
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(3, 10, dtype=torch.float64)
    (auto,) = torch.autograd.grad((fast.tta_logits(model, x) * upstream).sum(), x)
    by_hand = fast.tta_input_grad(model, x, upstream)
    assert rel_err(by_hand, auto) < 1e-8, f"TTA input gradient off by {rel_err(by_hand, auto):.1e}"

    # planted bug: the mirror's gradient not mirrored back (P^T forgotten)
    def forgot_flip(z):
        g = [torch.autograd.grad((model(v) * upstream).sum(), v)[0]
             for v in (z.detach().requires_grad_(True), z.detach().flip(-1).requires_grad_(True))]
        return (g[0] + g[1]) / 2

    assert rel_err(forgot_flip(x), auto) > 1e-3


def test_time_factors_multiply_to_the_speedup():
    before, after = {"epochs": 3.0, "seconds_per_epoch": 70.0}, {"epochs": 2.0, "seconds_per_epoch": 10.0}
    f = fast.time_factors(before, after)
    assert f["fewer_epochs"] == 1.5 and f["cheaper_epochs"] == 7.0
    assert f["speedup"] == pytest.approx(210.0 / 20.0)


def test_reference_is_the_pytorch_example():
    r = speedrun.REFERENCE
    assert (r.model, r.loader, r.batch_size, r.optimizer, r.lr, r.schedule) == (
        "example", "dataloader", 64, "adadelta", 1.0, "step")
    assert (r.label_smoothing, r.flip, r.tta, r.channels_last, r.amp, r.compile) == (0.0, False, False, False, False, False)
    # pytorch/examples' Net: 320 + 18,496 + 1,179,776 + 1,290 parameters
    assert sum(p.numel() for p in speedrun.ExampleNet().parameters()) == 1_199_882


@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
def test_ladder_changes_one_thing_at_a_time(device_type):
    steps = speedrun.ladder(torch.device(device_type))
    assert steps[0] == speedrun.REFERENCE
    assert len(steps) == (9 if device_type == "cuda" else 7)
    skip = {"name", "change"}
    for before, after in itertools.pairwise(steps):
        changed = {f.name for f in dataclasses.fields(before)
                   if f.name not in skip and getattr(before, f.name) != getattr(after, f.name)}
        assert changed, f"{after.change}: nothing changed"
        # one idea per rung: the optimizer change carries its batch, rate, decay, schedule and budget
        allowed = {"batch_size", "optimizer", "lr", "weight_decay", "schedule", "epochs"}
        assert len(changed) == 1 or changed <= allowed or changed == {"flip", "tta"}, (after.change, changed)
    assert dataclasses.replace(steps[-1], name="x") == dataclasses.replace(
        speedrun.course_recipe(0.91, torch.device(device_type)), name="x")


def test_the_network_sized_for_the_target_is_far_cheaper():
    example = count_macs(speedrun.ExampleNet(), (1, 1, 28, 28))
    small = count_macs(speedrun.FastNet(), (1, 1, 28, 28))
    assert small * 5 < example


def _tiny(n_train: int = 1024, n_test: int = 256) -> tuple[TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (n_train + n_test,), generator=g)
    # a learnable problem: the class sets the brightness of a block of pixels
    x = torch.randn(n_train + n_test, 1, 28, 28, generator=g) * 0.3
    for k in range(10):
        x[y == k, :, 2 * k:2 * k + 4, 4:24] += 2.0
    return TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:])


@pytest.mark.parametrize("rung", range(7))
def test_every_rung_trains_and_records_its_curve(rung):
    recipe = speedrun.ladder(torch.device("cpu"))[rung]
    train, test = _tiny()
    run = speedrun.time_to_accuracy(recipe, train, test, targets=(0.5, 0.99), max_steps=8, eval_every=0.5)
    assert run.curve and run.curve[-1]["epoch"] == pytest.approx(8 / run.steps_per_epoch, abs=1e-3)
    seconds = [p["train_seconds"] for p in run.curve]
    assert seconds == sorted(seconds) and seconds[0] > 0
    assert set(run.seconds_to) == {"0.50", "0.99"}
    assert all(0 <= p["test_acc"] <= 1 for p in run.curve)


def test_runs_stop_at_the_highest_target_and_record_when_it_was_reached():
    train, test = _tiny()
    recipe = speedrun.course_recipe(0.91, torch.device("cpu")).but("fast", epochs=20.0)
    run = speedrun.time_to_accuracy(recipe, train, test, targets=(0.9,), eval_every=0.25)
    assert run.seconds_to["0.90"] is not None, run.curve
    assert run.curve[-1]["test_acc"] >= 0.9 and run.curve[-1]["epoch"] < 20  # stopped early, at the target
    assert run.seconds_to["0.90"] == run.curve[-1]["train_seconds"]
    reference = speedrun.REFERENCE.but("ref", epochs=20.0)
    ref_run = speedrun.time_to_accuracy(reference, train, test, targets=(0.9,), eval_every=0.25)
    assert ref_run.seconds_to["0.90"] is not None and ref_run.curve[-1]["epoch"] < 20


def test_cpu_runs_reproduce():
    train, test = _tiny()
    recipe = speedrun.course_recipe(0.91, torch.device("cpu"))
    a = speedrun.time_to_accuracy(recipe, train, test, max_steps=8, seed=3)
    b = speedrun.time_to_accuracy(recipe, train, test, max_steps=8, seed=3)
    assert [p["test_acc"] for p in a.curve] == [p["test_acc"] for p in b.curve]


def test_one_cycle_needs_enough_steps():
    train, test = _tiny(n_train=512)
    with pytest.raises(ValueError, match="at least 8 steps"):
        speedrun.time_to_accuracy(speedrun.course_recipe(0.91, torch.device("cpu")), train, test, max_steps=4)
