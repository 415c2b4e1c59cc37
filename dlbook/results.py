"""The committed full-profile results, rendered where a lesson ends.

``benchmarks/run_full.py`` writes one file per device kind, ``benchmarks/results/full-<kind>.json``
(e.g. ``full-cpu.json``, ``full-h100.json``), holding for each lesson the date, device, torch
version, seconds and the measured-vs-target lines its outcome check printed, or why it was not
run there. A lesson's last outcome cell calls :func:`show_full_scale` so the book states only
full-profile numbers that a run produced, and says "not measured yet" where none has.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def lesson_key(lesson: str) -> str:
    """``"ann/deep-mlp-mnist"`` (or a path to it) -> ``"chapters/ann/deep-mlp-mnist.ipynb"``."""
    name = lesson.removesuffix(".ipynb")
    name = name[name.index("chapters/") + len("chapters/"):] if "chapters/" in name else name
    return f"chapters/{name}.ipynb"


def load_full_results(results_dir: Path | None = None) -> dict[str, dict]:
    """Every ``full-<kind>.json`` in ``results_dir``, keyed by kind (``cpu``, ``h100``, ...)."""
    folder = results_dir or RESULTS_DIR
    found = {}
    for path in sorted(folder.glob("full-*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record.get("lessons"), dict):
            raise ValueError(f"{path} is not a full-profile results file (no 'lessons' table)")
        found[path.stem.removeprefix("full-")] = record
    return found


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def full_scale_markdown(lesson: str, results_dir: Path | None = None) -> str:
    """A Markdown table of the lesson's full-profile runs, one row per device kind."""
    key = lesson_key(lesson)
    rows = []
    for kind, record in load_full_results(results_dir).items():
        entry = record["lessons"].get(key)
        if entry is None:
            continue
        status = entry.get("status", "ok")
        if status == "ok":
            outcome = "<br>".join(_cell(line) for line in entry.get("outcome_lines", [])) or "(no outcome line printed)"
            seconds = f"{entry['seconds']:.0f}"
        elif status == "error":
            outcome = f"failed: {_cell(entry.get('error', ''))}"
            seconds = f"{entry['seconds']:.0f}"
        else:  # not run on this device: say why, with what was measured instead
            outcome = f"not measured yet: {_cell(entry.get('reason', ''))}"
            seconds = "–"
        rows.append(f"| {_cell(entry.get('device', kind))} | {entry.get('date', '–')[:10]} | "
                    f"{entry.get('torch', '–')} | {seconds} | {outcome} |")
    title = "**At full scale** (`full` profile, from `benchmarks/results/full-*.json`)"
    if not rows:
        return f"{title}: not measured yet on any device."
    header = "| device | date | torch | seconds | measured vs target |\n|---|---|---|---|---|"
    return "\n".join([title, "", header, *rows])


def show_full_scale(lesson: str, results_dir: Path | None = None) -> None:
    """Display :func:`full_scale_markdown` in a notebook (plain text elsewhere)."""
    text = full_scale_markdown(lesson, results_dir)
    try:
        from IPython.display import Markdown, display

        display(Markdown(text))
    except ImportError:  # pragma: no cover - outside Jupyter
        print(text)
