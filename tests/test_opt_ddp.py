"""Optimization lesson "Distributed data parallel": sharding, the gradient-averaging identity, a real
two-process torchrun launch (gloo on the CPU) against the single-process run, and ZeRO's memory arithmetic.

The lesson is chapters/optimization/distributed.ipynb; the code is dlbook/distributed.py.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import dlbook.distributed as ddp
from dlbook.gradients import compare, rel_error

f64 = torch.float64


def synthetic(n: int = 96, dtype: torch.dtype = f64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 784, generator=g, dtype=dtype), torch.randint(0, 10, (n,), generator=g)


# --- sharding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("n", [1000, 1001])
def test_rank_shards_partition_the_global_batch(world_size: int, n: int) -> None:
    b = 16
    steps = 2 * ddp.steps_per_epoch(n, world_size, b) + 3  # crosses two epoch boundaries
    per_rank = [list(ddp.rank_batches(n, world_size, r, b, steps, seed=5)) for r in range(world_size)]
    combined = list(ddp.global_batches(n, world_size, b, steps, seed=5))
    assert len(combined) == steps and all(len(p) == steps for p in per_rank)
    for step in range(steps):
        shards = [p[step] for p in per_rank]
        assert all(len(s) == b for s in shards), "every rank must get an equal shard (eq-ddp-equivalence)"
        union = torch.cat(shards)
        assert len(set(union.tolist())) == world_size * b, f"shards overlap at step {step}"
        assert set(union.tolist()) == set(combined[step].tolist()), f"step {step}: shards != the combined batch"
    per_epoch = ddp.steps_per_epoch(n, world_size, b)
    assert not torch.equal(combined[0], combined[per_epoch]), "set_epoch must reshuffle each epoch"


def test_rank_shard_is_a_strided_slice() -> None:
    """DistributedSampler gives rank r positions r, r + W, ... of the permutation."""
    order = torch.randperm(100, generator=torch.Generator().manual_seed(0))
    shard = next(ddp.rank_batches(100, 2, 1, 10, 1, seed=0))
    assert torch.equal(shard, order[1:20:2])


def test_steps_per_epoch() -> None:
    assert ddp.steps_per_epoch(8000, 2, 64) == 62 and ddp.steps_per_epoch(8000, 1, 128) == 62
    assert ddp.steps_per_epoch(1001, 3, 16) == 20  # 1001 // 3 = 333 per rank, 20 full batches of 16


# --- eq-ddp-equivalence, checked in float64 ------------------------------------------------------


def mlp() -> nn.Module:
    return ddp.make_model(hidden=32, seed=1, dtype="float64")


def test_averaged_shard_gradients_equal_full_batch_gradient() -> None:
    x, y = synthetic()
    model = mlp()
    for world_size in (2, 3, 4):
        report = compare(ddp.data_parallel_gradients(model, x, y, world_size),
                         ddp.full_batch_gradients(model, x, y), tolerance=1e-12)
        report.assert_ok()


def test_planted_bug_unequal_shards_break_the_average() -> None:
    x, y = synthetic()
    model = mlp()
    err = rel_error(ddp.data_parallel_gradients(model, x, y, 2, shard_sizes=[16, 80])["0.weight"],
                    ddp.full_batch_gradients(model, x, y)["0.weight"])
    assert err > 1e-3, f"unequal shards averaged uniformly should be visibly wrong, rel error {err:.1e}"


def test_planted_bug_summing_instead_of_averaging() -> None:
    x, y = synthetic()
    model = mlp()
    summed = {k: 2 * g for k, g in ddp.data_parallel_gradients(model, x, y, 2).items()}
    assert not compare(summed, ddp.full_batch_gradients(model, x, y)).ok


def test_planted_bug_batchnorm_couples_the_samples_of_a_shard() -> None:
    x, y = synthetic()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10)).double()
    report = compare(ddp.data_parallel_gradients(model, x, y, 2), ddp.full_batch_gradients(model, x, y))
    assert report.worst[1] > 1e-3, f"per-shard BatchNorm statistics must change the gradient: {report}"
    # In eval mode BatchNorm is a fixed affine map, the loss is per-sample again and the identity holds.
    model.eval()
    compare(ddp.data_parallel_gradients(model, x, y, 2), ddp.full_batch_gradients(model, x, y),
            tolerance=1e-12).assert_ok()


@pytest.mark.parametrize(("dtype", "tolerance"), [("float64", 1e-12), ("float32", 1e-5)])
def test_simulated_ddp_training_matches_reference(dtype: str, tolerance: float) -> None:
    cfg = ddp.DDPConfig(steps=8, per_rank_batch=8, hidden=16, dtype=dtype)
    data = synthetic(200, ddp.DTYPES[dtype])
    with ddp.one_thread():
        sim, ref = ddp.train_simulated(cfg, 2, data), ddp.train_reference(cfg, 2, data)
    compare(sim.state, ref.state, tolerance=tolerance).assert_ok()
    assert max(abs(a - b) for a, b in zip(sim.losses, ref.losses)) < 10 * tolerance


# --- the real thing: torchrun, two gloo processes ------------------------------------------------


@pytest.mark.slow  # a subprocess or a training run: not in `tools/test --fast`
def test_torchrun_two_processes_match_single_process(tmp_path, mirror) -> None:
    cfg = ddp.DDPConfig(steps=10, per_rank_batch=32, hidden=32, dtype="float64")
    data_file = ddp.save_train_data(tmp_path / "mnist.pt", cfg.profile)  # real MNIST, decoded once
    run = ddp.launch(2, tmp_path / "ddp.pt", cfg, master_port=ddp.free_port(), device="cpu", data_file=data_file,
                     timeout=120)
    saved = run.saved
    assert saved["world_size"] == 2 and saved["backend"] == "gloo", run.output
    data = ddp.load_train_data(cfg.profile, cfg.dtype)  # straight from the mirror, not from data_file
    with ddp.one_thread():
        ref = ddp.train_reference(cfg, 2, data)
        sim = ddp.train_simulated(cfg, 2, data)
    compare(saved["state_dict"], ref.state, tolerance=1e-12).assert_ok()
    assert max(abs(a - b) for a, b in zip(saved["losses"], ref.losses)) < 1e-12
    # Same single-threaded kernels, and W = 2 makes DDP's divide-by-W exact: bit-for-bit equal.
    for name, value in sim.state.items():
        assert torch.equal(saved["state_dict"][name], value), f"{name}: DDP differs from the simulation"
    shards = saved["first_step_shards"]
    first = next(ddp.global_batches(len(data[0]), 2, cfg.per_rank_batch, 1, cfg.seed))
    assert set(torch.cat(shards).tolist()) == set(first.tolist()) and not set(shards[0].tolist()) & set(shards[1].tolist())


def test_cli_round_trip() -> None:
    cfg = ddp.DDPConfig(steps=3, per_rank_batch=5, lr=0.1, dtype="float32", profile="full")
    parsed, out, device, data_file = ddp.parse_args(["--out", "x.pt", "--device", "cpu", *cfg.to_args()])
    assert parsed == cfg and str(out) == "x.pt" and device == "cpu" and data_file is None
    cmd = ddp.torchrun_command(2, out, cfg)
    assert cmd[1:3] == ["-m", "torch.distributed.run"] and "--standalone" in cmd and "--nproc_per_node=2" in cmd
    assert "--master_port=1234" in ddp.torchrun_command(2, out, cfg, master_port=1234)


def test_backend_is_gloo_on_cpu() -> None:
    assert ddp.backend_and_device("cpu") == ("gloo", torch.device("cpu"))


# --- ZeRO memory arithmetic ----------------------------------------------------------------------


def test_zero_memory_reproduces_the_paper() -> None:
    """ZeRO's Figure 1: 7.5B parameters, 64 GPUs, K = 12 -> 120, 31.4, 16.6 and 1.9 GB per GPU."""
    got = [round(ddp.zero_bytes_per_gpu(7.5e9, 64, k) / 1e9, 1) for k in range(4)]
    assert got == [120.0, 31.4, 16.6, 1.9]


def test_zero_memory_edge_cases() -> None:
    for k in range(4):
        assert ddp.zero_bytes_per_gpu(1.0, 1, k) == 16.0, "one GPU: nothing to shard, 16 B per parameter"
    fp32 = dict(weight_bytes=4, grad_bytes=4, state_bytes=8)  # plain fp32 Adam: also 16 B per parameter
    assert ddp.zero_bytes_per_gpu(1e9, 8, 0, **fp32) == 16e9
    assert ddp.zero_bytes_per_gpu(1e9, 8, 1, **fp32) == 8e9 + 1e9
    with pytest.raises(ValueError):
        ddp.zero_bytes_per_gpu(1e9, 8, 4)
    table = ddp.zero_memory_table({"1B": 1e9}, 8)
    assert [round(r["GiB per GPU"], 2) for r in table] == [14.90, 5.12, 3.49, 1.86]


def test_config_fields_have_cli_flags() -> None:
    names = {f.name for f in dataclasses.fields(ddp.DDPConfig)}
    flags = set(ddp.DDPConfig().to_args()[::2])
    assert flags == {"--" + n.replace("_", "-") for n in names}
