"""Time to 91% and 93% on Fashion-MNIST: the pytorch/examples recipe against the course's recipe.

    python benchmarks/time_to_accuracy.py --seeds 0 1 2 --ladder --out benchmarks/results/time-to-accuracy-cpu.json
    python benchmarks/time_to_accuracy.py --split val --ladder --out /tmp/choose.json   # choosing budgets

``--split test`` (the default, the number to report) trains on all 60,000 Fashion-MNIST training
images and evaluates the official 10,000 test images; ``--split val`` trains on 55,000 and
evaluates the stratified 5,000-image validation slice, the split the course's budgets were chosen
on. In one run on one device it measures, for each seed, the reference (pytorch/examples'
``mnist/main.py`` recipe, written plainly, untuned: ``dlbook.speedrun.train_reference``) and the
course's recipes for 91% and 93% (``dlbook.speedrun.course_recipe``, trained with ``fit``); with
``--ladder`` also every change between them, one at a time (seed 0; its first rung is the
reference run of seed 0). Every run evaluates the same way (``dlbook.train.evaluate`` in float32,
every quarter epoch); ``seconds`` is training time only. The reference stops at 91% or after
``--reference-epochs``. The JSON records the device, torch, threads, the load average and, per
run, the seconds and epochs to each target and the whole accuracy curve.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dlbook import speedrun  # noqa: E402
from dlbook.runtime import device_name  # noqa: E402


def fashion(split: str, n_train: int | None = None, n_eval: int | None = None) -> tuple[TensorDataset, TensorDataset]:
    """(train, held-out) for ``split`` (``dlbook.speedrun.load_split``)."""
    train, held_out, _ = speedrun.load_split(split, n_train, n_eval)
    return train, held_out


def summary(runs: list[dict[str, Any]], target: str) -> dict[str, Any]:
    """Median seconds to ``target`` over the runs that reached it, and how many did."""
    times = [r["seconds_to"][target] for r in runs if r["seconds_to"].get(target) is not None]
    return {"reached": f"{len(times)}/{len(runs)}", "median_seconds": statistics.median(times) if times else None,
            "seconds": times}


def run(*, split: str = "test", seeds: tuple[int, ...] = (0, 1, 2), with_ladder: bool = False,
        device: torch.device | None = None, reference_epochs: float = 6.0, seeds_93: int | None = None,
        n_train: int | None = None,
        n_eval: int | None = None, max_steps: int | None = None) -> dict[str, Any]:
    """Measure everything; return the JSON-ready record (see the module docstring)."""
    device = device or torch.device("cpu")
    train, held_out = fashion(split, n_train, n_eval)
    reference = speedrun.REFERENCE.but("reference", epochs=reference_epochs)
    record: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": device_name(device),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "split": split,
        "train_examples": len(train), "eval_examples": len(held_out),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()], "runs": {}, "ladder": []}
    runs: dict[str, list[dict[str, Any]]] = {"reference": [], "course_91": [], "course_93": []}
    for i, seed in enumerate(seeds):
        for key, recipe, targets in (("reference", reference, (0.91,)),
                                     ("course_91", speedrun.course_recipe(0.91, device), (0.91,)),
                                     ("course_93", speedrun.course_recipe(0.93, device), speedrun.TARGETS)):
            if key == "course_93" and seeds_93 is not None and i >= seeds_93:
                continue  # the long run: the first seeds_93 seeds only
            result = speedrun.time_to_accuracy(recipe, train, held_out, targets=targets, seed=seed, device=device,
                                               max_steps=max_steps)
            runs[key].append(result.as_dict())
            print(f"seed {seed} {key}: {result.seconds_to} final {result.final_acc:.4f}", flush=True)
    record["runs"] = runs
    record["summary"] = {
        "reference_to_91": summary(runs["reference"], "0.91"),
        "course_to_91": summary(runs["course_91"], "0.91"),
        "course_to_93": summary(runs["course_93"], "0.93"),
    }
    ref, fast = record["summary"]["reference_to_91"]["median_seconds"], record["summary"]["course_to_91"]["median_seconds"]
    record["summary"]["speedup_to_91"] = ref / fast if ref and fast else None
    if with_ladder:
        first = runs["reference"][0] if seeds and seeds[0] == 0 else None  # the ladder's seed-0 reference
        record["ladder"] = speedrun.run_ladder(train, held_out, device=device, reference_epochs=reference_epochs,
                                               max_steps=max_steps, first=first)
        for row in speedrun.ladder_rows(record["ladder"]):
            print(f"ladder {row['change']}: {row['seconds']} s, x{row['speedup']}", flush=True)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=["test", "val"], default="test")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ladder", action="store_true", help="also every change between the two, seed 0")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reference-epochs", type=float, default=6.0)
    parser.add_argument("--seeds-93", type=int, help="run the 93%% recipe for the first N seeds only (it is the long one)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA device here; use --device cpu")
    record = run(split=args.split, seeds=tuple(args.seeds), with_ladder=args.ladder, device=device,
                 reference_epochs=args.reference_epochs, seeds_93=args.seeds_93)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
