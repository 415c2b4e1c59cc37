"""Time to a target accuracy: the course loop (``dlbook.train.fit``) against a plain PyTorch loop.

    python benchmarks/time_to_accuracy.py --profile quick --out benchmarks/results/time-to-accuracy-quick-cpu.json
    DLBOOK_PROFILE=full python benchmarks/time_to_accuracy.py --profile full --out benchmarks/results/time-to-accuracy-full-<gpu>.json

For each flagship model of the course (an MLP and LeNet-5 on Fashion-MNIST, a character LSTM on
tiny Shakespeare) both loops train the same architecture from the same seed with the same optimizer
class (Adam) until the *validation* metric reaches the model's target, on the same device, in one
run; each trained model is then evaluated once on the *test* split (Fashion-MNIST's official
10,000 images, the last 5 % of tiny Shakespeare), the number to report. Fashion-MNIST's training
split is the 60,000 official training images minus a 5,000-image stratified validation slice; the
quick profile trains on a stratified 10,000-image subset of the rest, the full one on all 55,000:

* ``dlbook``: ``fit`` as the lessons use it: the data moved to the device once and batched by
  indexing there, a large batch (with a larger learning rate, the linear-scaling idea of
  Goyal et al. 2017, tuned by measurement), mixed precision on CUDA, ``stop_at`` the target.
* ``reference``: the loop of most tutorials: a ``DataLoader`` over a ``TensorDataset``, each
  batch copied with ``.to(device)``, float32, batch 64, learning rate 1e-3.

Both are evaluated once per epoch. ``seconds`` is the training time to the target (evaluation
excluded: it is measurement, not training); ``wall_seconds`` and ``cpu_seconds`` (the process's
CPU time, the steadier figure on a shared machine) cover the whole run, evaluation included.
``test_value`` is the test metric of the model as training left it. Speed-up = reference seconds / dlbook seconds. It combines two effects that ``seconds_per_epoch``
and ``epochs`` separate: what one epoch costs in each loop, and how many epochs each recipe needs
(the dlbook learning rates were tuned for their batch size on the quick profile; the reference
keeps the tutorial defaults). Timings depend on the machine and its load: the JSON records the
device, the torch version, the thread count and the load average.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dlbook.runtime import seed_everything  # noqa: E402
from dlbook.train import evaluate, fit  # noqa: E402

LN2 = math.log(2.0)
PROFILES = ("quick", "full")


# --- models and data -------------------------------------------------------------------------------


def mnist_mlp(profile: str) -> nn.Module:
    """The MLP of the ANN chapter: 784-256-128-10 with ReLU (here on Fashion-MNIST)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))


def mnist_cnn(profile: str) -> nn.Module:
    """LeNet-5 of the CNN chapter (ReLU, max-pooling), 61,706 parameters (here on Fashion-MNIST)."""
    from dlbook.models.cnn import LeNet5

    return LeNet5()


class NextCharLogits(nn.Module):
    """A ``CharLSTM`` read window by window from a zero state, returning logits (B, V, T) so that
    ``F.cross_entropy(logits, targets)`` with targets (B, T) is the mean next-character loss."""

    def __init__(self, vocab_size: int, **sizes: Any) -> None:
        super().__init__()
        from dlbook.models.char_lm import CharLSTM

        self.lm = CharLSTM(vocab_size, **sizes)

    def forward(self, x: Tensor) -> Tensor:
        logits, _ = self.lm(x)
        return logits.transpose(1, 2)


class NegBitsPerChar(torchmetrics.Metric):
    """Minus the bits per character (mean cross-entropy / ln 2), so that higher is better and
    ``fit(stop_at=("val_neg_bpc", -target))`` stops when the bpc falls to the target."""

    higher_is_better = True
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("nats", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor) -> None:
        self.nats += F.cross_entropy(logits.float(), target, reduction="sum").double()
        self.count += target.numel()

    def compute(self) -> Tensor:
        return -self.nats / self.count / LN2


def fashion_data(profile: str, n_train: int | None = None) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """Fashion-MNIST train / val / test; ``n_train`` takes a stratified subset of that size (tests)."""
    from dlbook.data import load_fashion_mnist

    splits = load_fashion_mnist(profile, train_size="profile" if n_train is None else n_train, seed=0)
    return splits.train, splits.val, splits.test


# quick: a small LSTM and short windows, sized so both loops reach the target in seconds on a CPU;
# full: the char-language-model lesson's full configuration.
CHAR_SIZES = {"quick": {"embed_dim": 32, "hidden": 64}, "full": {"embed_dim": 64, "hidden": 512, "layers": 2}}
CHAR_SEQ_LEN = {"quick": 32, "full": 128}


def char_lstm(profile: str) -> nn.Module:
    return NextCharLogits(65, **CHAR_SIZES[profile])  # 65 characters in tiny Shakespeare


def shakespeare_data(profile: str, n_train: int | None = None) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """Non-overlapping windows of the character stream: x (N, seq_len), y = x shifted by one."""
    from dlbook.data import char_windows, load_shakespeare

    seq_len = CHAR_SEQ_LEN[profile]
    corpus = load_shakespeare(profile)
    if len(corpus.vocab) != 65:
        raise ValueError(f"expected the 65-character vocabulary, got {len(corpus.vocab)}")
    train = TensorDataset(*char_windows(corpus.train, seq_len))
    if n_train is not None:
        train = TensorDataset(*(t[:n_train] for t in train.tensors))
    return train, TensorDataset(*char_windows(corpus.val, seq_len)), TensorDataset(*char_windows(corpus.test, seq_len))


@dataclass(frozen=True)
class Spec:
    """One benchmark: how to build the model and the data, what to reach, and each loop's recipe."""

    name: str
    build: Callable[[str], nn.Module]  # profile -> model
    data: Callable[..., tuple[TensorDataset, TensorDataset, TensorDataset]]  # (profile, n_train=None) -> train, val, test
    metric: str  # the fit record key ("val_acc" or "val_neg_bpc")
    unit: str  # what the target means, for the JSON
    target: dict[str, float]  # per profile, in the unit (bpc for the LSTM: lower is better)
    batch: dict[str, int]  # the dlbook loop's batch per profile
    lr: dict[str, float]  # the dlbook loop's learning rate at that batch, per profile
    ref_lr: dict[str, float]  # the reference loop's learning rate at batch 64, per profile
    max_epochs: dict[str, int]
    grad_clip: float | None = None

    @property
    def lower_is_better(self) -> bool:
        return self.unit == "bpc"


# Quick targets and learning rates were measured on a 2-core CPU (OMP_NUM_THREADS=1) so that both
# loops reach the targets in a few epochs; the full values are estimates for a GPU and the full
# data, not measured here (the char-LSTM's are the char-language-model lesson's, scaled to the batch).
SPECS: dict[str, Spec] = {
    "mlp": Spec("mlp", mnist_mlp, fashion_data, "val_acc", "val accuracy",
                target={"quick": 0.84, "full": 0.88}, batch={"quick": 256, "full": 1024},
                lr={"quick": 3e-3, "full": 3e-3}, ref_lr={"quick": 1e-3, "full": 1e-3},
                max_epochs={"quick": 30, "full": 60}),
    "cnn": Spec("cnn", mnist_cnn, fashion_data, "val_acc", "val accuracy",
                target={"quick": 0.85, "full": 0.90}, batch={"quick": 256, "full": 1024},
                lr={"quick": 5e-3, "full": 5e-3}, ref_lr={"quick": 1e-3, "full": 1e-3},
                max_epochs={"quick": 30, "full": 60}),
    "char_lstm": Spec("char_lstm", char_lstm, shakespeare_data, "val_neg_bpc", "bpc",
                      target={"quick": 3.0, "full": 1.8}, batch={"quick": 128, "full": 256},
                      lr={"quick": 1e-2, "full": 4e-3}, ref_lr={"quick": 3e-3, "full": 2e-3},
                      max_epochs={"quick": 30, "full": 60}, grad_clip=1.0),
}
REFERENCE_BATCH = 64
DATASETS = {"mlp": "Fashion-MNIST", "cnn": "Fashion-MNIST", "char_lstm": "tiny Shakespeare"}


def _metrics(spec: Spec) -> dict[str, torchmetrics.Metric]:
    if spec.unit == "bpc":
        return {"neg_bpc": NegBitsPerChar()}
    return {"acc": torchmetrics.Accuracy(task="multiclass", num_classes=10)}


def _reported(spec: Spec, value: float) -> float:
    """The metric in the unit of the target (bpc is stored negated for ``stop_at``)."""
    return -value if spec.lower_is_better else value


class _OutOfTime(Exception):
    pass


def _deadline_loss(deadline: float) -> Callable[[Tensor, Tensor], Tensor]:
    """Cross-entropy that gives up once ``deadline`` (perf_counter) has passed: --max-seconds
    for a loop (``fit``) that has no time limit of its own."""

    def loss_fn(out: Tensor, y: Tensor) -> Tensor:
        if time.perf_counter() > deadline:
            raise _OutOfTime
        return F.cross_entropy(out, y)

    return loss_fn


# --- the two loops ---------------------------------------------------------------------------------


def run_dlbook(spec: Spec, train: TensorDataset, val: TensorDataset, *, profile: str, device: torch.device,
               max_seconds: float, seed: int = 0, target: float | None = None,
               test: TensorDataset | None = None) -> dict[str, Any]:
    """Train with ``dlbook.train.fit`` until the target (``stop_at``) or ``max_seconds``; then
    evaluate ``test`` once (``test_value``)."""
    target = spec.target[profile] if target is None else target
    stop = -target if spec.lower_is_better else target
    seed_everything(seed)
    model = spec.build(profile).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr[profile])
    metrics = _metrics(spec)
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        history = fit(model, train, val_data=val, optimizer=optimizer, epochs=spec.max_epochs[profile],
                      batch_size=spec.batch[profile], metrics=metrics, device=device, grad_clip=spec.grad_clip,
                      loss_fn=_deadline_loss(start + max_seconds), seed=seed, progress=False,
                      stop_at=(spec.metric, stop))
    except _OutOfTime:
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        value = evaluate(model, val, metrics=_metrics(spec), device=device)[spec.metric.removeprefix("val_")]
        return _row(spec, target, reached=False, seconds=None, wall=wall, cpu=cpu, value=value, epochs=None,
                    batch=spec.batch[profile], lr=spec.lr[profile], amp=_amp_name(device),
                    test_value=_test_value(model, test, spec, device))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    last = history.last
    return _row(spec, target, reached=last[spec.metric] >= stop, seconds=last["train_seconds"], wall=wall, cpu=cpu,
                value=last[spec.metric], epochs=int(last["epoch"]), batch=spec.batch[profile], lr=spec.lr[profile],
                amp=_amp_name(device), test_value=_test_value(model, test, spec, device))


def _amp_name(device: torch.device) -> str | None:
    from dlbook.train import amp_dtype

    dtype = amp_dtype(device, None)
    return None if dtype is None else str(dtype).removeprefix("torch.")


@torch.no_grad()
def _plain_evaluate(model: nn.Module, val: TensorDataset, spec: Spec, device: torch.device) -> float:
    model.eval()
    metric = _metrics(spec)[spec.metric.removeprefix("val_")].to(device)
    for x, y in DataLoader(val, batch_size=1024):
        metric.update(model(x.to(device)), y.to(device))
    model.train()
    return float(metric.compute())


def run_reference(spec: Spec, train: TensorDataset, val: TensorDataset, *, profile: str, device: torch.device,
                  max_seconds: float, seed: int = 0, target: float | None = None,
                  test: TensorDataset | None = None) -> dict[str, Any]:
    """The plain loop: DataLoader batch 64, ``.to(device)`` per batch, float32, evaluation per epoch."""
    target = spec.target[profile] if target is None else target
    stop = -target if spec.lower_is_better else target
    seed_everything(seed)
    model = spec.build(profile).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.ref_lr[profile])
    loader = DataLoader(train, batch_size=REFERENCE_BATCH, shuffle=True, generator=torch.Generator().manual_seed(seed))
    start, cpu_start = time.perf_counter(), time.process_time()
    train_seconds, value, epoch, reached, out_of_time = 0.0, float("-inf"), 0, False, False
    for epoch in range(1, spec.max_epochs[profile] + 1):  # noqa: B007 (epoch is reported)
        model.train()
        t0 = time.perf_counter()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            if spec.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
            optimizer.step()
            if time.perf_counter() - start > max_seconds:
                out_of_time = True
                break
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_seconds += time.perf_counter() - t0
        value = _plain_evaluate(model, val, spec, device)
        reached = value >= stop and not out_of_time
        if reached or out_of_time:
            break
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return _row(spec, target, reached=reached, seconds=train_seconds if reached else None, wall=wall, cpu=cpu, value=value,
                epochs=epoch if reached else None, batch=REFERENCE_BATCH, lr=spec.ref_lr[profile], amp=None,
                test_value=_test_value(model, test, spec, device))


def _test_value(model: nn.Module, test: TensorDataset | None, spec: Spec, device: torch.device) -> float | None:
    """The test metric (in the target's unit), evaluated once after training; None without a test split."""
    if test is None:
        return None
    return round(_reported(spec, _plain_evaluate(model, test, spec, device)), 4)


def _row(spec: Spec, target: float, *, reached: bool, seconds: float | None, wall: float, cpu: float,
         value: float, epochs: int | None, batch: int, lr: float, amp: str | None,
         test_value: float | None = None) -> dict[str, Any]:
    return {
        "reached": bool(reached),
        "seconds": None if seconds is None else round(seconds, 3),
        "wall_seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "value": round(_reported(spec, value), 4),
        "test_value": test_value,
        "epochs": epochs,
        # The speed-up mixes the loop's cost per epoch with the recipe's epochs to the target.
        "seconds_per_epoch": None if seconds is None or not epochs else round(seconds / epochs, 3),
        "batch_size": batch,
        "lr": lr,
        "amp": amp,
    }


# --- the benchmark ---------------------------------------------------------------------------------


def warm_up(spec: Spec, profile: str, train: TensorDataset, device: torch.device) -> None:
    """One untimed forward and backward pass, with and without autocast, so that neither loop pays
    the one-time costs (CUDA context and library handles, kernel selection, lazy imports) that
    would otherwise fall on whichever runs first."""
    from dlbook.train import _autocast, amp_dtype

    model = spec.build(profile).to(device)
    x, y = (t[:64].to(device) for t in train.tensors)
    for dtype in {None, amp_dtype(device, None)}:
        with _autocast(device, dtype):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()


def benchmark_model(name: str, *, profile: str, device: torch.device, max_seconds: float, seed: int = 0,
                    target: float | None = None, n_train: int | None = None) -> dict[str, Any]:
    """Both loops on one model; ``target``/``n_train`` override the profile's (for tests)."""
    spec = SPECS[name]
    kwargs = {} if n_train is None else {"n_train": n_train}
    train, val, test = spec.data(profile, **kwargs)
    warm_up(spec, profile, train, device)
    target = spec.target[profile] if target is None else target
    common = dict(profile=profile, device=device, max_seconds=max_seconds, seed=seed, target=target, test=test)
    fast = run_dlbook(spec, train, val, **common)
    ref = run_reference(spec, train, val, **common)
    both = fast["reached"] and ref["reached"]
    speedup = ref["seconds"] / fast["seconds"] if both and fast["seconds"] else None
    # On a shared machine the process's own CPU time is the steadier figure (whole run, evaluation included).
    cpu_speedup = ref["cpu_seconds"] / fast["cpu_seconds"] if both and fast["cpu_seconds"] else None
    return {
        "target": target,
        "metric": spec.unit,
        "dataset": DATASETS[name],
        "train_examples": len(train),
        "dlbook": fast,
        "reference": ref,
        "speedup": None if speedup is None else round(speedup, 2),
        "cpu_speedup": None if cpu_speedup is None else round(cpu_speedup, 2),
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def run(models: Sequence[str], *, profile: str, device: torch.device, max_seconds: float, seed: int = 0,
        targets: dict[str, float] | None = None, n_train: int | None = None) -> dict[str, Any]:
    """The whole benchmark as the JSON-ready record."""
    unknown = [m for m in models if m not in SPECS]
    if unknown:
        raise ValueError(f"unknown models {unknown}; choose from {list(SPECS)}")
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, not {profile!r}")
    targets = targets or {}
    results = {}
    for name in models:
        results[name] = benchmark_model(name, profile=profile, device=device, max_seconds=max_seconds, seed=seed,
                                        target=targets.get(name), n_train=n_train)
        print(_summary(name, results[name]), flush=True)
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(device),
        "torch": torch.__version__,
        "profile": profile,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch_threads": torch.get_num_threads(),
        # Timings on a shared machine mean little without the load they were taken under.
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "max_seconds": max_seconds,
        "seed": seed,
        "models": results,
    }


def _summary(name: str, r: dict[str, Any]) -> str:
    def side(d: dict[str, Any]) -> str:
        if not d["reached"]:
            return f"not reached ({d['value']} after {d['wall_seconds']:.1f} s)"
        return f"{d['seconds']:.2f} s, {d['epochs']} ep, {d['value']} (test {d['test_value']})"

    speed = f"x{r['speedup']}" if r["speedup"] else "-"
    return f"{name:10s} target {r['target']} {r['metric']}: dlbook {side(r['dlbook'])} | reference {side(r['reference'])} | {speed}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=PROFILES, default=None, help="default: DLBOOK_PROFILE / the device's")
    parser.add_argument("--models", nargs="+", default=list(SPECS), choices=list(SPECS))
    parser.add_argument("--out", type=Path, help="where to write the JSON")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="time limit per model and loop (default: 60 quick, 1800 full)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import dlbook

    profile = args.profile or dlbook.profile()
    max_seconds = args.max_seconds or {"quick": 60.0, "full": 1800.0}[profile]
    device = dlbook.device()
    record = run(args.models, profile=profile, device=device, max_seconds=max_seconds, seed=args.seed)
    text = json.dumps(record, indent=2) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0 if all(r["dlbook"]["reached"] and r["reference"]["reached"] for r in record["models"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
