"""Distributed data parallel (DDP) training that provably matches one process, and ZeRO's memory arithmetic.

The lesson is chapters/optimization/distributed.ipynb. Launch the worker script with ``torchrun``
(the console script is ``python -m torch.distributed.run``)::

    torchrun --standalone --nproc_per_node=2 -m dlbook.distributed --out /tmp/ddp.pt

Each of the W worker processes loads MNIST, takes its shard of every global batch from a
``DistributedSampler``, computes the gradient of the mean loss on that shard, and
``DistributedDataParallel`` all-reduces (averages) the gradients, eq-ddp-allreduce; rank 0 saves
the final parameters. :func:`train_reference` trains the same model in one process on the combined
batches, which by eq-ddp-equivalence must give the same parameters up to rounding.
"""

from __future__ import annotations

import argparse
import copy
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DistributedSampler

DTYPES = {"float32": torch.float32, "float64": torch.float64}
GiB = 2**30


@dataclass
class DDPConfig:
    """Everything that defines a run; the worker and the reference read the same fields."""

    steps: int = 20
    per_rank_batch: int = 64  # b; the global batch is B = W * b
    hidden: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    seed: int = 0
    dtype: str = "float64"  # float64 makes the equality check exact up to ~1e-15 rounding
    profile: str = "quick"

    def to_args(self) -> list[str]:
        """The command-line flags that rebuild this config in a worker (see :func:`parse_args`)."""
        return [a for f in fields(self) for a in (f"--{f.name.replace('_', '-')}", str(getattr(self, f.name)))]


# --- model and data ------------------------------------------------------------------------------


def make_model(hidden: int = 128, seed: int = 0, dtype: str = "float64") -> nn.Sequential:
    """A 784-hidden-10 MLP, initialised from ``seed``: every rank and the reference build the same one.

    No BatchNorm and no dropout: both would make one rank's computation depend on more than its
    shard and its parameters (eq-ddp-bn), and the exact check would no longer hold.
    """
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10)).to(DTYPES[dtype])


def load_train_data(
    profile: str = "quick", dtype: str = "float64", data_file: Path | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST training images, flattened to (N, 784) in ``dtype``, and labels (N,) int64.

    ``data_file`` (written by :func:`save_train_data`) holds the same tensors, so that launched
    workers need not each import the data package and decode the IDX files (2 s of CPU apiece).
    """
    if data_file is not None:
        saved = torch.load(data_file, weights_only=True)
        x, y = saved["x"], saved["y"]
    else:
        from dlbook.data import load_mnist  # imported here: the ZeRO arithmetic needs no data

        x, y = load_mnist(profile, flatten=True).train.tensors  # type: ignore[arg-type]
    return x.to(DTYPES[dtype]), y


def save_train_data(path: Path, profile: str = "quick",
                    data: tuple[torch.Tensor, torch.Tensor] | None = None) -> Path:
    """Save MNIST's training tensors (float32, as :func:`load_train_data` reads them) for the workers;
    ``data`` passes tensors already loaded (the same ones), so they are not decoded again."""
    x, y = load_train_data(profile, "float32") if data is None else (data[0].float(), data[1])
    torch.save({"x": x, "y": y}, path)
    return path


# --- sharding ------------------------------------------------------------------------------------


def steps_per_epoch(n: int, world_size: int, per_rank_batch: int) -> int:
    """Full global batches per epoch: the sampler drops the tail to n // W per rank, the loader to b."""
    return (n // world_size) // per_rank_batch


def rank_batches(
    n: int, world_size: int, rank: int, per_rank_batch: int, steps: int, seed: int = 0
) -> Iterator[torch.Tensor]:
    """Sample indices of rank ``rank``'s batch at each of ``steps`` steps, exactly as DDP training sees them.

    ``DistributedSampler`` shuffles with a generator seeded ``seed + epoch`` (the same permutation on
    every rank) and hands rank r the positions r, r + W, r + 2W, ... of it; batching by b then gives
    rank r one strided slice of each consecutive block of B = W * b positions.
    """
    sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                 drop_last=True)
    per_epoch = steps_per_epoch(n, world_size, per_rank_batch)
    for step in range(steps):
        epoch, k = divmod(step, per_epoch)
        if k == 0:
            sampler.set_epoch(epoch)  # forgetting this repeats epoch 0's order forever
            batches = iter(BatchSampler(sampler, per_rank_batch, drop_last=True))
        yield torch.tensor(next(batches))


def global_batches(n: int, world_size: int, per_rank_batch: int, steps: int, seed: int = 0) -> Iterator[torch.Tensor]:
    """The combined batch of each step, written without a sampler: block k of the epoch's permutation.

    This is what the single-process reference trains on; the union over ranks of
    :func:`rank_batches` must equal it (tests/test_opt_ddp.py checks that).
    """
    B, per_epoch = world_size * per_rank_batch, steps_per_epoch(n, world_size, per_rank_batch)
    for step in range(steps):
        epoch, k = divmod(step, per_epoch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        yield order[k * B:(k + 1) * B]


# --- training ------------------------------------------------------------------------------------


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One SGD step on the *mean* cross-entropy of this batch (the mean is what eq-ddp-equivalence needs)."""
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # under DDP, the all-reduce of eq-ddp-allreduce runs inside backward
    optimizer.step()
    return loss.detach()


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread, like each torchrun worker with OMP_NUM_THREADS=1, then restore.

    Used for a fair 1-process vs 2-process timing, and so that the in-process simulation runs the
    same single-threaded kernels as the workers (their sums then round identically).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_optimizer(model: nn.Module, cfg: DDPConfig) -> torch.optim.Optimizer:
    """SGD with momentum: a plain local optimizer; under DDP each rank steps with the averaged gradient."""
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)


@dataclass
class RunResult:
    """Final parameters (on the CPU), the global mean loss of every step, and the training seconds."""

    state: dict[str, torch.Tensor]
    losses: list[float]
    seconds: float


def train_reference(
    cfg: DDPConfig, world_size: int, data: tuple[torch.Tensor, torch.Tensor] | None = None
) -> RunResult:
    """One process, the combined batch of B = W * b samples per step, same seed and same order as DDP."""
    x, y = data if data is not None else load_train_data(cfg.profile, cfg.dtype)
    model = make_model(cfg.hidden, cfg.seed, cfg.dtype)
    optimizer = make_optimizer(model, cfg)
    losses = []
    start = time.perf_counter()
    for idx in global_batches(len(x), world_size, cfg.per_rank_batch, cfg.steps, cfg.seed):
        losses.append(train_step(model, optimizer, x[idx], y[idx]).item())
    seconds = time.perf_counter() - start
    return RunResult({k: v.detach().clone() for k, v in model.state_dict().items()}, losses, seconds)


def train_simulated(
    cfg: DDPConfig, world_size: int, data: tuple[torch.Tensor, torch.Tensor] | None = None
) -> RunResult:
    """DDP's arithmetic without processes: at each step, every "rank's" gradient on its own shard (the
    shards of :func:`rank_batches`), averaged as in eq-ddp-allreduce, then one SGD step."""
    x, y = data if data is not None else load_train_data(cfg.profile, cfg.dtype)
    model = make_model(cfg.hidden, cfg.seed, cfg.dtype)
    optimizer = make_optimizer(model, cfg)
    shards = [rank_batches(len(x), world_size, r, cfg.per_rank_batch, cfg.steps, cfg.seed) for r in range(world_size)]
    losses = []
    start = time.perf_counter()
    for step_shards in zip(*shards):
        idx = torch.cat(step_shards)  # rank order, so the equal split below hands rank r its own shard
        grads = data_parallel_gradients(model, x[idx], y[idx], world_size)
        with torch.no_grad():  # the global loss of eq-ddp-equivalence, before the step, as DDP logs it
            losses.append(sum(F.cross_entropy(model(x[s]), y[s]).item() for s in step_shards) / world_size)
        for name, p in model.named_parameters():
            p.grad = grads[name]
        optimizer.step()
    seconds = time.perf_counter() - start
    return RunResult({k: v.detach().clone() for k, v in model.state_dict().items()}, losses, seconds)


def backend_and_device(requested: str = "auto") -> tuple[str, torch.device]:
    """NCCL on one GPU per process when there are enough GPUs, else Gloo on the CPU.

    NCCL cannot put two ranks on the same GPU, so a 1-GPU machine runs ``nproc_per_node=2`` on the CPU.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if requested != "cpu" and torch.cuda.is_available() and torch.cuda.device_count() >= local_world:
        return "nccl", torch.device("cuda", local_rank)
    return "gloo", torch.device("cpu")


def train_ddp(cfg: DDPConfig, out: Path | None, device: str = "auto", data_file: Path | None = None) -> RunResult:
    """The worker: run by every process that torchrun starts (it sets RANK, WORLD_SIZE, MASTER_ADDR, ...)."""
    backend, dev = backend_and_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        x, y = load_train_data(cfg.profile, cfg.dtype, data_file)
        x, y = x.to(dev), y.to(dev)  # the whole (small) set lives on the device; batches are index slices
        model = make_model(cfg.hidden, cfg.seed, cfg.dtype).to(dev)
        # DDP broadcasts rank 0's parameters at construction, so replicas start equal even if seeds differed,
        # and registers the hooks that all-reduce gradient buckets while backward is still running.
        ddp = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
        optimizer = make_optimizer(ddp, cfg)
        batches = list(rank_batches(len(x), world, rank, cfg.per_rank_batch, cfg.steps, cfg.seed))
        losses = torch.zeros(cfg.steps, dtype=torch.float64, device=dev)
        dist.barrier()  # time the training only, not process start-up or data loading
        start = time.perf_counter()
        for step, idx in enumerate(batches):
            idx = idx.to(dev)
            losses[step] = train_step(ddp, optimizer, x[idx], y[idx])
        if dev.type == "cuda":
            torch.cuda.synchronize()
        elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64, device=dev)
        last_shard_loss = losses[-1].item()
        # Bookkeeping after the timed loop: the global loss is the mean of the shard losses (equal shards).
        dist.all_reduce(losses)
        losses /= world
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the slowest rank sets the pace
        first = batches[0].to(dev)
        gathered = [torch.empty_like(first) for _ in range(world)]
        dist.all_gather(gathered, first)
        print(f"[rank {rank}/{world}] {backend} on {dev}: step-0 shard = samples {batches[0][:4].tolist()}..., "
              f"last-step shard loss {last_shard_loss:.4f}", flush=True)
        result = RunResult({k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                           losses.cpu().tolist(), float(elapsed))
        if rank == 0 and out is not None:
            torch.save({"state_dict": result.state, "losses": result.losses, "seconds": result.seconds,
                        "world_size": world, "backend": backend, "device": str(dev), "config": asdict(cfg),
                        "first_step_shards": [g.cpu() for g in gathered]}, out)
            print(f"[rank 0] {cfg.steps} steps of {world} x {cfg.per_rank_batch} samples in {result.seconds:.3f} s; "
                  f"final global loss {result.losses[-1]:.4f}; parameters saved to {out}", flush=True)
        return result
    finally:
        dist.destroy_process_group()


def parse_args(argv: Sequence[str] | None = None) -> tuple[DDPConfig, Path, str, Path | None]:
    parser = argparse.ArgumentParser(description="DDP training of an MNIST MLP (launch with torchrun).")
    parser.add_argument("--out", type=Path, required=True, help="where rank 0 saves the final parameters")
    parser.add_argument("--device", choices=["auto", "cpu"], default="auto", help="cpu forces the gloo backend")
    parser.add_argument("--data", type=Path, default=None, help="tensors from save_train_data (default: load MNIST)")
    for f in fields(DDPConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    args = parser.parse_args(argv)
    cfg = DDPConfig(**{f.name: getattr(args, f.name) for f in fields(DDPConfig)})
    if cfg.dtype not in DTYPES:
        parser.error(f"--dtype must be one of {sorted(DTYPES)}")
    return cfg, args.out, args.device, args.data


def main(argv: Sequence[str] | None = None) -> None:
    cfg, out, device, data_file = parse_args(argv)
    train_ddp(cfg, out, device, data_file)


# --- launching from Python (the notebook and the tests) --------------------------------------------


def free_port() -> int:
    """A TCP port that was free a moment ago (the OS picks it), for torchrun's static rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(
    nproc: int, out: Path, cfg: DDPConfig, master_port: int | None = None, device: str = "auto",
    data_file: Path | None = None,
) -> list[str]:
    """``torchrun --standalone --nproc_per_node=N -m dlbook.distributed ...`` as an argument list.

    ``--standalone`` lets the launcher pick a free port itself; with ``master_port`` the launch uses
    the static rendezvous on 127.0.0.1 and that port instead.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    if master_port is None:
        cmd.append("--standalone")
    else:
        cmd += ["--nnodes=1", "--master_addr=127.0.0.1", f"--master_port={master_port}"]
    cmd += ["-m", "dlbook.distributed", "--out", str(out), "--device", device, *cfg.to_args()]
    return cmd + (["--data", str(data_file)] if data_file is not None else [])


@dataclass
class Launch:
    """What a torchrun launch printed, how long it took end to end, and what rank 0 saved."""

    output: str
    wall_seconds: float
    saved: dict[str, Any]


def launch(
    nproc: int, out: Path, cfg: DDPConfig, *, master_port: int | None = None, device: str = "auto",
    data_file: Path | None = None, timeout: float = 120.0,
) -> Launch:
    """Run :func:`torchrun_command` as a subprocess (one thread per worker) and load rank 0's file."""
    env = dict(os.environ, OMP_NUM_THREADS="1")  # N processes on N cores: no oversubscription
    root = str(Path(__file__).resolve().parents[1])  # so `-m dlbook.distributed` imports without an install
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    start = time.perf_counter()
    proc = subprocess.run(torchrun_command(nproc, out, cfg, master_port, device, data_file), env=env, capture_output=True,
                          text=True, timeout=timeout)
    wall = time.perf_counter() - start
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited with {proc.returncode}:\n{output}")
    return Launch(output, wall, torch.load(out, weights_only=True))


# --- the equivalence, simulated in one process (for BatchNorm and unequal shards) ---------------------


def full_batch_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradient of the mean loss over the whole batch, left side of eq-ddp-equivalence."""
    replica = copy.deepcopy(model)  # keep the caller's model (and BatchNorm statistics) untouched
    params = dict(replica.named_parameters())
    grads = torch.autograd.grad(F.cross_entropy(replica(x), y), list(params.values()))
    return dict(zip(params, grads))


def data_parallel_gradients(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, world_size: int, shard_sizes: Sequence[int] | None = None
) -> dict[str, torch.Tensor]:
    """What DDP's all-reduce leaves on every rank, eq-ddp-allreduce: the plain average over W replicas of
    each replica's mean-loss gradient on its own shard. Equal shards by default; ``shard_sizes``
    makes them unequal to show that the plain average then weights samples unequally.
    """
    sizes = list(shard_sizes) if shard_sizes is not None else [len(x) // world_size] * world_size
    if len(sizes) != world_size or sum(sizes) != len(x):
        raise ValueError(f"{world_size} shard sizes summing to {len(x)} expected, got {sizes}")
    total: dict[str, torch.Tensor] = {}
    for xs, ys in zip(x.split(sizes), y.split(sizes)):
        for name, g in full_batch_gradients(model, xs, ys).items():  # one rank's backward on its shard
            total[name] = total.get(name, 0) + g / world_size
    return total


# --- ZeRO / FSDP memory arithmetic ---------------------------------------------------------------

ZERO_STAGES = {0: "DDP (replicated)", 1: "ZeRO-1 (optimizer states)", 2: "ZeRO-2 (+ gradients)",
               3: "ZeRO-3 / FSDP (+ parameters)"}


def zero_bytes_per_gpu(
    n_params: float, n_gpus: int, stage: int, *, weight_bytes: float = 2, grad_bytes: float = 2,
    state_bytes: float = 12,
) -> float:
    """Model-state bytes on each GPU, eq-ddp-zero-memory: stage k >= 1 shards the optimizer states over
    the N GPUs, k >= 2 also the gradients, k = 3 also the parameters.

    Defaults are mixed-precision Adam as in ZeRO: fp16/bf16 weights (2 B) and gradients (2 B), fp32
    master weights, momentum and variance (4 + 4 + 4 = 12 B), 16 B per parameter in all. Activations,
    communication buffers and fragmentation come on top.
    """
    if stage not in ZERO_STAGES:
        raise ValueError(f"stage must be one of {sorted(ZERO_STAGES)}, got {stage}")
    weights = weight_bytes * n_params / (n_gpus if stage >= 3 else 1)
    grads = grad_bytes * n_params / (n_gpus if stage >= 2 else 1)
    states = state_bytes * n_params / (n_gpus if stage >= 1 else 1)
    return weights + grads + states


def zero_memory_table(models: dict[str, float], n_gpus: int, **bytes_per_param: float) -> list[dict[str, Any]]:
    """One row per (model, stage): GiB of model states per GPU from :func:`zero_bytes_per_gpu`."""
    return [{"model": name, "stage": ZERO_STAGES[k], "GiB per GPU": zero_bytes_per_gpu(n, n_gpus, k, **bytes_per_param) / GiB}
            for name, n in models.items() for k in ZERO_STAGES]


if __name__ == "__main__":
    main()
