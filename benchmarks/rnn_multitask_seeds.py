"""The seeds-and-weightings table of ``chapters/rnn/multi-task-rnn.ipynb`` (quick configuration).

    OMP_NUM_THREADS=2 python benchmarks/rnn_multitask_seeds.py

Trains, for seeds 0, 1, 2 and with the lesson's quick configuration (2 epochs, same minibatches and
steps for every model): one single-task model per task, the three-head model with the weights
w_k = 1 / ln C_k and with equal weights, and the two-task pairings (sentiment + negation,
sentiment + next word); and, for seed 0, the single-task and three-head models with three times
the budget (6 epochs). Writes ``benchmarks/results/rnn-multitask-seeds.json``; the lesson reads
that file and glues its numbers, so the prose states what this script measured.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from dlbook.data import load_polarity  # noqa: E402
from dlbook.models.multitask import (  # noqa: E402
    MultiTaskLSTM,
    TaskSpec,
    evaluate_tasks,
    polarity_tasks,
    train_multitask,
    uniform_guess_weights,
)

# the lesson's quick CONFIG (chapters/rnn/multi-task-rnn.ipynb, set-up cell)
CONFIG = {"max_len": 40, "lm_keep": 300, "embed": 32, "hidden": 64, "dropout": 0.0,
          "epochs": 2, "batch": 128, "lr": 1e-2}
SEEDS = (0, 1, 2)
OUT = ROOT / "benchmarks" / "results" / "rnn-multitask-seeds.json"


def main() -> None:
    start = time.perf_counter()
    data = load_polarity()
    train, val, test = (polarity_tasks(data, s, CONFIG["max_len"], CONFIG["lm_keep"]) for s in ("train", "val", "test"))
    K = CONFIG["lm_keep"]
    specs = {"sentiment": TaskSpec(2, pool="last"), "negation": TaskSpec(2, pool="mean"),
             "lm": TaskSpec(K, pool="token", causal=True)}
    uniform = uniform_guess_weights(specs)
    equal = dict.fromkeys(specs, 1.0)
    rows = {  # row name -> (task set, weights); a single-task row trains one model per task
        "single": (None, uniform),
        "three heads, uniform-guess weights": (list(specs), uniform),
        "three heads, equal weights": (list(specs), equal),
        "sentiment + negation": (["sentiment", "negation"], uniform),
        "sentiment + lm": (["sentiment", "lm"], uniform),
    }

    def run(tasks: list[str], weights: dict[str, float], seed: int, epochs: int) -> dict[str, float]:
        torch.manual_seed(seed)
        model = MultiTaskLSTM(len(data.vocab), {k: specs[k] for k in tasks}, CONFIG["embed"], CONFIG["hidden"],
                              dropout=CONFIG["dropout"], pack=False)
        train_multitask(model, train, val, weights=weights, epochs=epochs, batch_size=CONFIG["batch"],
                        lr=CONFIG["lr"], seed=seed, progress=False)
        return evaluate_tasks(model, test)

    results: dict[str, dict[str, list[float]]] = {}
    for row, (tasks, weights) in rows.items():
        results[row] = {}
        for seed in SEEDS:
            if tasks is None:
                scores = {k: run([k], weights, seed, CONFIG["epochs"])[k] for k in specs}
            else:
                scores = run(tasks, weights, seed, CONFIG["epochs"])
            for k, v in scores.items():
                results[row].setdefault(k, []).append(v)
            print(row, seed, {k: round(v, 4) for k, v in scores.items()}, flush=True)
    long_budget = {"single": {k: run([k], uniform, 0, 3 * CONFIG["epochs"])[k] for k in ("sentiment", "lm")},
                   "three heads": run(list(specs), uniform, 0, 3 * CONFIG["epochs"])}
    print("3x budget", long_budget, flush=True)
    OUT.write_text(json.dumps({
        "script": "benchmarks/rnn_multitask_seeds.py",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "device": f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "config": CONFIG,
        "seeds": list(SEEDS),
        "split": "test",
        "results": results,
        "three_times_budget_seed0": {"epochs": 3 * CONFIG["epochs"], **long_budget},
        "seconds": round(time.perf_counter() - start, 1),
    }, indent=2) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
