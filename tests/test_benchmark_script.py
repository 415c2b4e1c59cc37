"""benchmarks/time_to_accuracy.py on a budget of steps: the reference and the course's recipes run
on real Fashion-MNIST, the ladder has every change, the JSON has its schema and the CLI writes it.
Speed is not asserted here: it depends on the machine (the lesson asserts the committed result)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tta():
    spec = importlib.util.spec_from_file_location("time_to_accuracy", ROOT / "benchmarks" / "time_to_accuracy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


TOP_KEYS = {"date", "device", "torch", "torch_threads", "omp_num_threads", "split", "train_examples",
            "eval_examples", "load_average_1_5_15", "runs", "summary", "ladder"}
RUN_KEYS = {"recipe", "seed", "seconds_to", "epochs_to", "final_test_acc", "seconds_per_epoch", "curve"}


def check_schema(record: dict, seeds: int, ladder: int) -> None:
    assert set(record) == TOP_KEYS
    assert record["torch"] == torch.__version__ and record["device"].startswith("cpu")
    assert set(record["runs"]) == {"reference", "course_91", "course_93"}
    for runs in record["runs"].values():
        assert len(runs) == seeds
        for run in runs:
            assert set(run) == RUN_KEYS and run["curve"]
            assert all(0 <= p["test_acc"] <= 1 and p["train_seconds"] > 0 for p in run["curve"])
    assert set(record["runs"]["course_93"][0]["seconds_to"]) == {"0.91", "0.93"}
    assert len(record["ladder"]) == ladder and all("change" in r for r in record["ladder"])
    assert set(record["summary"]) == {"reference_to_91", "course_to_91", "course_to_93", "speedup_to_91"}
    json.dumps(record)


@pytest.mark.slow  # training runs: not in `tools/test --fast`
def test_benchmark_runs_every_recipe_on_real_data(tta, mirror):
    record = tta.run(split="val", seeds=(0,), with_ladder=True, n_train=2048, n_eval=256, max_steps=8)
    check_schema(record, seeds=1, ladder=7)
    assert record["split"] == "val" and record["train_examples"] == 2048 and record["eval_examples"] == 256
    # the ladder reuses the seed-0 reference instead of training it twice
    assert record["ladder"][0]["curve"] == record["runs"]["reference"][0]["curve"]
    # eight steps reach nothing: no time to a target, so no speed-up
    assert record["summary"]["speedup_to_91"] is None
    assert record["summary"]["reference_to_91"]["reached"] == "0/1"


def test_test_split_is_all_60000_training_images_and_the_official_test_set(tta, mirror):
    train, held_out = tta.fashion("test")
    assert len(train) == 60_000 and len(held_out) == 10_000
    train_v, val = tta.fashion("val")
    assert len(train_v) == 55_000 and len(val) == 5_000


def test_summary_takes_the_median_of_the_runs_that_reached(tta):
    runs = [{"seconds_to": {"0.91": s}} for s in (30.0, None, 10.0, 20.0)]
    assert tta.summary(runs, "0.91") == {"reached": "3/4", "median_seconds": 20.0, "seconds": [30.0, 10.0, 20.0]}
    assert tta.summary([{"seconds_to": {"0.91": None}}], "0.91")["median_seconds"] is None


def test_cli_refuses_cuda_without_a_gpu(tta, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU-only machine, wherever this runs
    with pytest.raises(SystemExit, match="no CUDA device"):
        tta.main(["--device", "cuda", "--out", str(tmp_path / "x.json")])


def test_notebook_timer_keeps_the_outcome_lines() -> None:
    """benchmarks/time_notebooks.py records each lesson's printed measured-vs-target lines."""
    import nbformat

    spec = importlib.util.spec_from_file_location("time_notebooks", ROOT / "benchmarks" / "time_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cell = nbformat.v4.new_code_cell("print(...)")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=(
        "training 3 epochs\nval accuracy 0.9915 (target 0.98)\n"
        "target 'First Citizen'\nMSE 0.0020 (target <= 0.03 in the quick profile)\n"
        "angle 0.35 (target at most 1.0)\n"))]
    nb = nbformat.v4.new_notebook(cells=[cell])
    assert module.outcome_lines(nb) == ["val accuracy 0.9915 (target 0.98)",
                                        "MSE 0.0020 (target <= 0.03 in the quick profile)",
                                        "angle 0.35 (target at most 1.0)"]
