"""Root pytest plugin: keep what nbval executed, so the book build need not execute it again.

CI runs every lesson twice otherwise: once under nbval (the test) and once in the
``jupyter-book build`` (the site). With ``DLBOOK_EXECUTED_DIR`` set (``tools/test`` sets it),
each lesson whose cells all passed under nbval is written there with its outputs; the book test
then primes a jupyter-cache with those notebooks, and myst-nb's ``cache`` mode uses them for any
notebook whose code is unchanged (it matches on a hash of the code cells) and executes the rest.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent
_failed: set[str] = set()  # notebooks (by path) with a failed cell: never written


def _executed_dir() -> Path | None:
    value = os.environ.get("DLBOOK_EXECUTED_DIR")
    return Path(value) if value else None


def pytest_runtest_logreport(report) -> None:
    if report.failed and ".ipynb::" in report.nodeid:
        _failed.add(report.nodeid.split("::")[0])


def pytest_runtest_teardown(item, nextitem) -> None:
    target_root = _executed_dir()
    cell = getattr(item, "cell", None)
    if target_root is None or cell is None or not hasattr(item, "test_outputs"):
        return  # not an nbval cell, or capture is off
    source = Path(str(item.parent.fspath)).resolve()
    try:
        rel = source.relative_to(ROOT / "chapters")
    except ValueError:
        return  # only lessons are in the book (labs and solutions are not)
    cell.outputs = [nbformat.from_dict(out) for out in (item.test_outputs or [])]
    if nextitem is not None and getattr(nextitem, "parent", None) is item.parent:
        return  # more cells of this notebook to come
    nodeid = item.nodeid.split("::")[0]
    if nodeid in _failed or getattr(item.parent, "timed_out", False):
        return
    nb = item.parent.nb
    for count, code in enumerate((c for c in nb.cells if c.cell_type == "code"), start=1):
        code.execution_count = count
        for out in code.get("outputs", []):
            if out.get("output_type") == "execute_result":
                out["execution_count"] = count
    target = target_root / "chapters" / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, target)


def _file_rank(item) -> int:
    """0: a file with a test marked slow (a grading batch, a subprocess: 10-100 s each); 1: a lesson
    notebook (10-35 s); 2: everything else (unit tests, a few seconds per file)."""
    if item.get_closest_marker("slow") is not None:
        return 0
    return 1 if item.path.suffix == ".ipynb" else 2


# The measured seconds of each lesson under nbval (the table tools/test writes at the end of a
# full run, committed as the first section of benchmarks/results/ci-times-cpu.md): the order
# among the lessons. A lesson
# not in the table yet counts as a long one, so it is not left for the end.
_LESSON_TIMES = ROOT / "benchmarks" / "results" / "ci-times-cpu.md"
_UNMEASURED_SECONDS = 30.0


def _lesson_seconds() -> dict[str, float]:
    if not _LESSON_TIMES.is_file():
        return {}
    seconds = {}
    for line in _LESSON_TIMES.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            break  # the newest run is the file's first section; older runs follow
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].count("/") == 1 and not cells[0].startswith("*"):
            try:
                seconds[cells[0]] = float(cells[1])
            except ValueError:
                continue
    return seconds


def pytest_collection_modifyitems(config, items) -> None:
    """Longest work first. Under ``--dist loadfile`` (with ``--no-loadscope-reorder``) each worker
    takes the next file in this order when it is free; a long file taken last keeps one worker busy
    while the other idles, so the long files go first and the short ones fill the gaps at the end
    (the longest-processing-time-first rule): grading batches, then lessons from the slowest measured
    to the fastest, then the rest. Files stay contiguous and keep their own order."""
    rank: dict[str, int] = {}
    for item in items:
        path = str(item.path)
        rank[path] = min(rank.get(path, 2), _file_rank(item))
    measured = _lesson_seconds()

    def lesson_key(path: str) -> float:
        rel = Path(path).resolve()
        try:
            name = rel.relative_to(ROOT / "chapters").with_suffix("").as_posix()
        except ValueError:
            return 0.0
        return -measured.get(name, _UNMEASURED_SECONDS)

    # stable: collection order within a file and among equals
    items.sort(key=lambda item: (rank[str(item.path)], lesson_key(str(item.path)) if rank[str(item.path)] == 1 else 0.0))


@pytest.fixture(autouse=True)
def _environment_is_restored_after_each_test():
    """A test that changes os.environ (run_full.main sets DLBOOK_PROFILE=full for its kernels) must
    not change it for what runs after it on the same worker: every notebook kernel inherits the
    worker's environment, and one such leak once ran the rest of a worker's lessons in full."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)
