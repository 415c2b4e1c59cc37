"""The full-profile results: the runner's bookkeeping, the committed files and their rendering."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dlbook.results import RESULTS_DIR, full_scale_markdown, lesson_key, load_full_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import run_full  # noqa: E402


def test_device_kind_names():
    assert run_full.device_kind("cpu (x86_64, 2 cores)") == "cpu"
    assert run_full.device_kind("NVIDIA H100 80GB HBM3") == "h100"
    assert run_full.device_kind("NVIDIA H200") == "h200"
    assert run_full.device_kind("NVIDIA A100-SXM4-40GB") == "a100"


def test_lesson_key_forms():
    assert lesson_key("ann/deep-mlp-mnist") == "chapters/ann/deep-mlp-mnist.ipynb"
    assert lesson_key("chapters/ann/deep-mlp-mnist.ipynb") == "chapters/ann/deep-mlp-mnist.ipynb"
    assert lesson_key("/x/y/chapters/cnn/a.ipynb") == "chapters/cnn/a.ipynb"


def test_rendering_ok_error_not_run_and_missing(tmp_path):
    record = {"device_kind": "cpu", "lessons": {
        "chapters/ann/a.ipynb": {"date": "2026-12-06T08:00:00+00:00", "device": "cpu (x86_64, 2 cores)",
                                 "torch": "2.14.1", "status": "ok", "seconds": 61.2,
                                 "outcome_lines": ["full: test accuracy 0.8912 (target 0.88)"]},
        "chapters/ann/b.ipynb": {"date": "2026-12-06", "device": "cpu", "torch": "2.14.1", "status": "error",
                                 "seconds": 3.0, "error": "AssertionError: below | target"},
        "chapters/ann/c.ipynb": {"date": "2026-12-06", "device": "cpu", "torch": "2.14.1", "status": "not run",
                                 "reason": "about 2 h on this CPU; waits for a GPU"},
    }}
    (tmp_path / "full-cpu.json").write_text(json.dumps(record))
    ok = full_scale_markdown("ann/a", tmp_path)
    assert "| cpu (x86_64, 2 cores) | 2026-12-06 | 2.14.1 | 61 | full: test accuracy 0.8912 (target 0.88) |" in ok
    assert "failed: AssertionError: below \\| target" in full_scale_markdown("ann/b", tmp_path)
    assert "not measured yet: about 2 h" in full_scale_markdown("ann/c", tmp_path)
    assert full_scale_markdown("ann/d", tmp_path).endswith("not measured yet on any device.")


def test_a_file_without_lessons_is_refused(tmp_path):
    (tmp_path / "full-cpu.json").write_text(json.dumps({"notebooks": []}))
    with pytest.raises(ValueError, match="not a full-profile results file"):
        load_full_results(tmp_path)


def test_not_run_rows_keep_the_others_and_record_quick_seconds(tmp_path):
    lesson = "chapters/ann/deep-mlp-mnist.ipynb"
    (tmp_path / "full-cpu.json").write_text(json.dumps({"device_kind": "cpu", "lessons": {
        "chapters/ann/other.ipynb": {"status": "ok", "seconds": 1.0}}}))
    code = run_full.main([lesson, "--device", "cpu", "--not-run", "waits for a GPU", "--results-dir", str(tmp_path)])
    assert code == 0
    lessons = json.loads((tmp_path / "full-cpu.json").read_text())["lessons"]
    assert set(lessons) == {"chapters/ann/other.ipynb", lesson}
    assert lessons[lesson]["status"] == "not run" and lessons[lesson]["reason"] == "waits for a GPU"


@pytest.mark.slow  # a subprocess or a training run: not in `tools/test --fast`
def test_unknown_path_is_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_full.py"), "chapters/nope.ipynb",
                             "--device", "cpu", "--results-dir", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode != 0 and "no such notebook: chapters/nope.ipynb" in result.stderr


def test_committed_results_are_complete():
    results = load_full_results(RESULTS_DIR)
    assert "cpu" in results, "benchmarks/results/full-cpu.json (the full profile on this course's CPU) is missing"
    for kind, record in results.items():
        for lesson, entry in record["lessons"].items():
            assert (ROOT / lesson).is_file(), f"full-{kind}.json names a missing lesson {lesson}"
            assert {"date", "device", "torch", "status"} <= set(entry), f"full-{kind}.json: {lesson} incomplete"
            if entry["status"] == "ok":
                assert entry["outcome_lines"], f"full-{kind}.json: {lesson} ran but recorded no outcome line"
            elif entry["status"] == "not run":
                assert entry["reason"], f"full-{kind}.json: {lesson} not run, with no reason"
