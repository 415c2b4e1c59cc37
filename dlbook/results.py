"""The committed full-profile results, rendered where a lesson ends.

``benchmarks/run_full.py`` writes one file per device kind, ``benchmarks/results/full-<kind>.json``
(e.g. ``full-cpu.json``, ``full-h100.json``), holding for each lesson the date, device, torch
version, seconds and the measured-vs-target lines its outcome check printed, or why it was not
run there. A lesson's last outcome cell calls :func:`show_full_scale` so the book states only
full-profile numbers that a run produced, and says "not measured yet" where none has.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"  # in a checkout
# Where there is no checkout (dlbook installed from the repository, as on Colab) the files the
# lessons read are downloaded once from the repository at this release's tag. A full-profile file
# exists per device kind; these are the kinds the course has measured or may measure.
FULL_FILES = ("full-cpu.json", "full-h100.json", "full-h200.json")


def _release_url(name: str) -> str:
    """``https://raw.githubusercontent.com/<owner>/<repo>/v<version>/benchmarks/results/<name>``."""
    urls = metadata.metadata("dlbook").get_all("Project-URL") or []
    repo = next((u.split(",", 1)[1].strip() for u in urls if u.lower().startswith("repository,")), None)
    if not repo or not repo.startswith("https://github.com/"):
        raise FileNotFoundError("the installed dlbook names no GitHub repository (pyproject.toml [project.urls])")
    owner_repo = repo.removeprefix("https://github.com/").rstrip("/")
    return f"https://raw.githubusercontent.com/{owner_repo}/v{metadata.version('dlbook')}/benchmarks/results/{name}"


def results_folder() -> Path:
    """Where the committed result files are: ``$DLBOOK_RESULTS_DIR``, else the checkout's
    ``benchmarks/results``, else the cache folder that :func:`result_file` downloads them into."""
    forced = os.environ.get("DLBOOK_RESULTS_DIR")
    if forced:
        return Path(forced)
    if RESULTS_DIR.is_dir():
        return RESULTS_DIR
    from dlbook.data.download import cache_dir

    return cache_dir() / "results" / f"v{metadata.version('dlbook')}"


def result_file(name: str, *, required: bool = True, timeout: float = 30.0) -> Path | None:
    """The committed result file ``name`` (``time-to-accuracy-cpu.json``), downloaded from the
    repository at this release when there is no checkout. ``required=False`` returns None for a
    file the repository does not have (or that cannot be downloaded) instead of raising."""
    folder = results_folder()
    path = folder / name
    if path.is_file():
        return path
    if not results_dir_is_download():  # a checkout or DLBOOK_RESULTS_DIR: nothing to download
        if required:
            raise FileNotFoundError(f"{path} does not exist")
        return None
    url = _release_url(name)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read()
    except (urllib.error.URLError, OSError) as exc:
        if not required:
            return None
        raise FileNotFoundError(f"{name} is not in this installation and {url} could not be read ({exc}); "
                                "clone the repository, or set DLBOOK_RESULTS_DIR to its benchmarks/results") from exc
    folder.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    part.write_bytes(data)
    part.replace(path)
    return path


def lesson_key(lesson: str) -> str:
    """``"ann/deep-mlp-mnist"`` (or a path to it) -> ``"chapters/ann/deep-mlp-mnist.ipynb"``."""
    name = lesson.removesuffix(".ipynb")
    name = name[name.index("chapters/") + len("chapters/"):] if "chapters/" in name else name
    return f"chapters/{name}.ipynb"


def results_dir_is_download() -> bool:
    return not os.environ.get("DLBOOK_RESULTS_DIR") and not RESULTS_DIR.is_dir()


def load_full_results(results_dir: Path | None = None) -> dict[str, dict]:
    """Every ``full-<kind>.json`` in ``results_dir``, keyed by kind (``cpu``, ``h100``, ...)."""
    if results_dir is None and results_dir_is_download():
        paths = [p for p in (result_file(name, required=False) for name in FULL_FILES) if p is not None]
    else:
        paths = sorted((results_dir or results_folder()).glob("full-*.json"))
    found = {}
    for path in paths:
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
