"""dlbook.deploy: the int8 arithmetic and its error bound on real trained weights, agreement with
torchao and ONNX Runtime, and checkpoints that resume bit for bit (chapters/optimization/deployment.ipynb)."""

from __future__ import annotations

import copy
import functools
import random

import numpy as np
import pytest
import torch
from torch import nn

from dlbook.deploy import (
    CHECKPOINT_PARTS,
    ResumableTrainer,
    affine_qparams,
    atomic_save,
    dequantize,
    export_onnx,
    int8_linear,
    latency,
    onnx_run,
    onnx_session,
    quantize,
    random_augment,
    rng_state,
    saved_bytes,
    set_rng_state,
    symmetric_qparams,
)

# x / s is computed in float32 (relative error <= 2 * 2**-24): up to 127.5 * 2**-23 of a step, so
# 1e-4 of a half step covers it; the exact-arithmetic bound is 1 (eq-deploy-error-bound).
HALF_STEP_TOL = 1e-4


def half_steps(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, z: torch.Tensor | int = 0) -> float:
    """max |x - x_hat| / (s / 2), in float64."""
    x, s = x.double(), s.double()
    return ((x - dequantize(q, s, z)).abs() / (s / 2)).max().item()


@functools.cache
def _trained() -> tuple[nn.Module, torch.Tensor]:
    from dlbook.data import load_mnist
    from dlbook.train import fit

    torch.manual_seed(0)
    splits = load_mnist("quick", flatten=True)
    model = nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
    fit(model, splits.train, optimizer=torch.optim.Adam(model.parameters(), lr=1e-3), epochs=1, batch_size=128,
        device=torch.device("cpu"), progress=False)
    return model.eval(), splits.val.tensors[0][:256]


@pytest.fixture
def trained(mirror) -> tuple[nn.Module, torch.Tensor]:
    """An MLP trained for one epoch on the real quick MNIST split (once per session), and 256
    validation images: real weights for the error bound, not random ones."""
    return _trained()


def test_error_bound_on_trained_weights(trained):
    model, x = trained
    for layer in (model[0], model[2]):
        w = layer.weight.detach()
        for dim in (-1, None):  # per row and per tensor (eq-deploy-symmetric)
            s = symmetric_qparams(w, dim=dim)
            q = quantize(w, s)
            assert q.dtype == torch.int8
            assert half_steps(w, q, s) <= 1 + HALF_STEP_TOL
        s, z = affine_qparams(w.min(), w.max())  # eq-deploy-affine on the same weights
        assert half_steps(w, quantize(w, s, z), s, z) <= 1 + HALF_STEP_TOL
    with torch.no_grad():
        h = model[1](model[0](x))  # ReLU outputs: alpha = 0, so z = qmin
    s, z = affine_qparams(h.min(), h.max())
    assert z.item() == -128
    assert half_steps(h, quantize(h, s, z), s, z) <= 1 + HALF_STEP_TOL


def test_planted_bug_truncation_breaks_the_bound(trained):
    w = trained[0][0].weight.detach()
    s = symmetric_qparams(w)
    q_floor = torch.clamp(torch.floor(w / s), -128, 127)  # floor instead of round
    assert half_steps(w, q_floor, s) > 1.5


def test_bound_is_tight_and_zero_is_exact():
    x = torch.linspace(-1.0, 3.0, 10_001)
    s, z = affine_qparams(x.min(), x.max())
    q = quantize(x, s, z)
    ratio = half_steps(x, q, s, z)
    assert 0.9 < ratio <= 1 + HALF_STEP_TOL  # a dense grid gets close to the bound
    zero = quantize(torch.zeros(1), s, z)
    assert zero.item() == z.item() and dequantize(zero, s, z).item() == 0.0
    assert q.min().item() >= -128 and q.max().item() <= 127


def test_codes_and_layer_match_torchao(trained):
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    model, x = trained
    int8_model = copy.deepcopy(model)
    quantize_(int8_model, Int8DynamicActivationInt8WeightConfig(version=2))
    w = model[0].weight.detach()
    s = symmetric_qparams(w)
    q = quantize(w, s)
    assert torch.equal(int8_model[0].weight.qdata, q)
    assert torch.equal(int8_model[0].weight.scale.reshape(-1, 1), s)
    with torch.no_grad():
        ours, theirs = int8_linear(x, q, s, model[0].bias), int8_model[0](x)
        exact = model[0](x)
    assert ((ours - theirs).abs().max() / theirs.abs().max()).item() < 1e-6
    # and the int8 layer stays close to the float one (errors of a few half steps, summed over 784 inputs)
    assert ((ours - exact).abs().max() / exact.abs().max()).item() < 0.05


def test_planted_bug_int8_linear_without_activation_scale_disagrees(trained):
    model, x = trained
    w = model[0].weight.detach()
    s = symmetric_qparams(w)
    q = quantize(w, s)
    q_x = quantize(x, symmetric_qparams(x))
    forgot = (q_x.int() @ q.int().T).float() * s.reshape(1, -1) + model[0].bias  # s^x left out
    with torch.no_grad():
        good = int8_linear(x, q, s, model[0].bias)
    assert ((forgot - good).abs().max() / good.abs().max()).item() > 1.0


def test_saved_bytes_and_latency(tmp_path):
    model = nn.Linear(100, 50)
    path = tmp_path / "m.pt"
    n = saved_bytes(model, path)
    assert n == path.stat().st_size
    # the float32 numbers plus the zip container (its entry names depend on the file name)
    assert 4 * (100 * 50 + 50) < n < 4 * (100 * 50 + 50) + 4096
    assert abs(saved_bytes(model) - n) < 512
    assert 0 < latency(lambda: model(torch.zeros(1, 100)), repeats=5, warmup=1) < 1.0
    with pytest.raises(ValueError):
        latency(lambda: None, repeats=0)


@pytest.mark.slow  # the first torch.onnx.export of a process takes a few seconds
def test_onnx_export_dynamic_batch_matches_pytorch(tmp_path):
    import onnx

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3)).train()
    path = export_onnx(model, torch.randn(2, 20), tmp_path / "m.onnx")
    assert not model.training  # export puts the model in eval mode (dropout off)
    graph = onnx.load(path)
    onnx.checker.check_model(graph, full_check=True)
    assert not list(tmp_path.glob("*.data")), "weights should be inside the .onnx file"
    session = onnx_session(path)
    for b in (1, 5, 33):  # batch sizes never seen at export
        x = torch.randn(b, 20)
        with torch.no_grad():
            assert (onnx_run(session, x) - model(x)).abs().max().item() < 1e-5


def test_rng_state_round_trip():
    gen = torch.Generator().manual_seed(3)
    state = rng_state()
    data_order = gen.get_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item())
    set_rng_state(state)
    gen.set_state(data_order)
    again = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item())
    assert first == again


def test_atomic_save_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_save({"w": torch.arange(3)}, path)
    before = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 (pickling errors differ between versions)
        atomic_save({"w": torch.arange(5), "bad": lambda: None}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # no temporary file left
    atomic_save({"w": torch.arange(5)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(5))


STEPS, BATCH = 40, 32


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    x = torch.randn(500, 30, generator=g)
    return x, (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 1).long()  # 3 classes, learnable


def _trainer(seed: int, data) -> ResumableTrainer:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(30, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 3))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=STEPS)
    return ResumableTrainer(net, opt, sched, data, batch_size=BATCH, generator=torch.Generator().manual_seed(seed),
                            augment=random_augment)


def _scramble() -> None:
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)


def _run_with_resume(tmp_path, stop: int, skip=()) -> tuple[ResumableTrainer, ResumableTrainer]:
    from dlbook.runtime import seed_everything

    data = _data()
    seed_everything(0)
    full = _trainer(0, data)
    full.run(STEPS)
    seed_everything(0)
    first = _trainer(0, data)
    first.run(stop)
    path = first.save(tmp_path / "ckpt.pt")
    _scramble()
    resumed = _trainer(1, data)  # other initial weights, other data generator
    resumed.load(path, skip=skip)
    resumed.run(STEPS)
    return full, resumed


@pytest.mark.parametrize("stop", [7, 16, 23])  # mid-epoch, on an epoch boundary (16 batches), in epoch 2
def test_resume_is_bit_exact(tmp_path, stop):
    full, resumed = _run_with_resume(tmp_path, stop)
    assert len(full.losses) == STEPS and len(resumed.losses) == STEPS - stop
    assert full.losses[stop:] == resumed.losses
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert (resumed.step, resumed.epoch, resumed.batch_in_epoch) == (full.step, full.epoch, full.batch_in_epoch)


@pytest.mark.parametrize("part", ["optimizer", "scheduler", "rng", "data_order"])
def test_planted_bug_resume_without_a_part_diverges(tmp_path, part):
    full, resumed = _run_with_resume(tmp_path, stop=7, skip=[part])
    assert full.losses[7:] != resumed.losses


def test_unknown_part_is_rejected(tmp_path):
    trainer = _trainer(0, _data())
    with pytest.raises(ValueError):
        trainer.load_state_dict(trainer.state_dict(), skip=["weights"])
    assert set(trainer.state_dict()) == set(CHECKPOINT_PARTS)
