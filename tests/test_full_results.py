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


def test_not_run_rows_keep_the_others_and_record_quick_seconds(tmp_path, monkeypatch):
    # run_full.main sets DLBOOK_PROFILE=full and DLBOOK_DEVICE for the kernels it starts: recorded
    # here so that they are undone, or every notebook this worker runs next would run in full
    monkeypatch.setenv("DLBOOK_PROFILE", "quick")
    monkeypatch.setenv("DLBOOK_DEVICE", "cpu")
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


class _Response:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def read(self) -> bytes:
        return self.data


def _no_checkout(monkeypatch, tmp_path, files: dict[str, bytes]) -> list[str]:
    """dlbook as installed from the repository (no benchmarks/ beside it): ``files`` are what the
    repository has at the release tag; returns the URLs requested."""
    import urllib.error

    from dlbook import results

    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path / "no-checkout")
    monkeypatch.delenv("DLBOOK_RESULTS_DIR", raising=False)
    monkeypatch.setenv("DLBOOK_DATA_DIR", str(tmp_path / "cache"))
    asked: list[str] = []

    def urlopen(url, timeout):
        asked.append(url)
        name = url.rsplit("/", 1)[1]
        if name not in files:
            raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)
        return _Response(files[name])

    monkeypatch.setattr(results.urllib.request, "urlopen", urlopen)
    return asked


def test_without_a_checkout_the_results_come_from_the_release(monkeypatch, tmp_path):
    from dlbook import results

    record = (RESULTS_DIR / "full-cpu.json").read_bytes()
    asked = _no_checkout(monkeypatch, tmp_path, {"full-cpu.json": record, "time-to-accuracy-cpu.json": b"{}"})
    version = results.metadata.version("dlbook")
    assert set(load_full_results()) == {"cpu"}
    assert asked[0] == ("https://raw.githubusercontent.com/dlbook-course/dlbook/"
                        f"v{version}/benchmarks/results/full-cpu.json")
    path = results.result_file("time-to-accuracy-cpu.json")
    assert path.read_bytes() == b"{}" and path.parent == tmp_path / "cache" / "results" / f"v{version}"
    before = len(asked)
    assert results.result_file("time-to-accuracy-cpu.json") == path and len(asked) == before, "downloaded once"


def test_offline_without_a_checkout_the_error_says_what_to_do(monkeypatch, tmp_path):
    from dlbook import results

    _no_checkout(monkeypatch, tmp_path, {})
    with pytest.raises(FileNotFoundError, match="clone the repository, or set DLBOOK_RESULTS_DIR"):
        results.result_file("time-to-accuracy-cpu.json")
    assert results.result_file("time-to-accuracy-cpu.json", required=False) is None
    assert load_full_results() == {}


def test_dlbook_results_dir_points_at_a_copy(monkeypatch, tmp_path):
    from dlbook import results

    (tmp_path / "t.json").write_text("{}")
    monkeypatch.setenv("DLBOOK_RESULTS_DIR", str(tmp_path))
    assert results.result_file("t.json") == tmp_path / "t.json"
    with pytest.raises(FileNotFoundError):
        results.result_file("missing.json")
