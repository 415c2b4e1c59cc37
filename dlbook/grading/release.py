"""Generate student labs from the instructor sources with ``nbgrader generate_assignment``.

:func:`release` runs nbgrader in a throw-away copy of the course (configuration + the
assignment's sources, a fresh gradebook) and copies the generated folder back into the release
directory (``labs/``): nothing else in the repository changes, and the same sources always give
byte-identical labs. Each generated notebook is stamped with the identity of its lab
(:data:`dlbook.grading.submissions.LAB_KEY` in the notebook metadata), which the grader reads to
tell another lab's notebook from a renamed one. :func:`register_assignment` is the grading-side counterpart: it records the
assignment in the course gradebook without writing into ``labs/``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import nbformat

from .course import CONFIG_NAME, CourseLayout, ReleaseError
from .runner import run_nbgrader, summarize_error
from .submissions import LAB_KEY


def _generate(
    assignment: str,
    course_root: Path,
    release_dir: Path,
    db_url: str | None = None,
    logfile: Path | None = None,
) -> None:
    """Run ``nbgrader generate_assignment`` in ``course_root``, writing into ``release_dir``;
    ``db_url`` and ``logfile`` override the configured ones."""
    args = [
        "generate_assignment",
        assignment,
        "--force",
        f"--CourseDirectory.release_directory={release_dir}",
    ]
    if db_url is not None:
        args.append(f"--CourseDirectory.db_url={db_url}")
    if logfile is not None:
        args.append(f"--NbGrader.logfile={logfile}")
    result = run_nbgrader(args, course_root)
    generated = release_dir / assignment
    if not result.ok or not generated.is_dir():
        raise ReleaseError(
            f"nbgrader generate_assignment {assignment} failed: {summarize_error(result.output)}\n"
            f"{result.output[-3000:]}"
        )


def _check_no_outputs(folder: Path) -> None:
    """Fail if a generated notebook kept outputs or execution counts (they must not be committed)."""
    for path in sorted(folder.rglob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None):
                raise ReleaseError(
                    f"{path}: cell {cell.get('id')} has outputs; clear the source notebook first"
                )


def _stamp(folder: Path, assignment: str) -> None:
    """Write the lab's identity into the metadata of every generated notebook of ``folder``."""
    for path in sorted(folder.rglob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nb.metadata[LAB_KEY] = {"lab": assignment, "notebook": path.relative_to(folder).as_posix()}
        nbformat.write(nb, path)


def generate_isolated(layout: CourseLayout, assignment: str, workdir: Path) -> tuple[Path, Path]:
    """Generate the student version of ``assignment`` in a throw-away course under ``workdir``.

    Only ``nbgrader_config.py`` and the assignment's source folder are copied there, with a
    gradebook of its own; the real course (its gradebook, ``labs/``) is not touched. Returns the
    generated folder and that gradebook file, which knows the assignment and nothing else (the
    sandboxes of :mod:`dlbook.grading.sandbox` start from a copy of it).
    """
    layout.source_notebooks(assignment)  # raises CourseError for an unknown assignment
    workdir = Path(workdir).resolve()
    course = workdir / "course"
    source_rel = layout.source_dir.relative_to(layout.root)
    (course / source_rel).mkdir(parents=True)
    shutil.copy2(layout.config_file, course / CONFIG_NAME)
    shutil.copytree(
        layout.source_dir / assignment,
        course / source_rel / assignment,
        ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"),
    )
    out = workdir / "release"
    db = workdir / "gradebook.db"
    _generate(assignment, course, out, f"sqlite:///{db.as_posix()}", workdir / "nbgrader.log")
    _check_no_outputs(out / assignment)
    _stamp(out / assignment, assignment)
    return out / assignment, db


def generate_release(layout: CourseLayout, assignment: str, dest: Path) -> Path:
    """Generate the student version of ``assignment`` into ``dest/<assignment>``, in isolation
    (:func:`generate_isolated`). Returns the generated folder."""
    dest = Path(dest).resolve()
    with tempfile.TemporaryDirectory(prefix="dlbook-release-") as tmp:
        generated, _ = generate_isolated(layout, assignment, Path(tmp))
        target = dest / assignment
        if target.exists():
            shutil.rmtree(target)
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copytree(generated, target)
    return target


def release(layout: CourseLayout, assignment: str) -> list[Path]:
    """Regenerate ``<release_dir>/<assignment>`` (``labs/ann``) from the sources; return its files."""
    target = generate_release(layout, assignment, layout.release_dir)
    return sorted(p for p in target.rglob("*") if p.is_file())


def register_assignment(layout: CourseLayout, assignment: str, scratch: Path) -> Path:
    """Record ``assignment`` (notebooks, cells, points, hidden tests) in the course gradebook.

    nbgrader's autograder needs this before grading. ``generate_assignment`` runs in the real
    course, so the real gradebook is updated, but writes its notebooks under ``scratch`` instead
    of ``labs/``. Returns the generated folder (``scratch/<assignment>``), e.g. to check that
    ``labs/`` is up to date.
    """
    layout.source_notebooks(assignment)
    _generate(assignment, layout.root, Path(scratch).resolve())
    return Path(scratch).resolve() / assignment


def notebook_differences(expected_dir: Path, actual_dir: Path) -> list[str]:
    """Differences between two released folders, notebook by notebook: missing notebooks, cell
    count, and for each cell its type, source and nbgrader metadata; a notebook equal in all of
    these but not byte for byte is reported too (the release is deterministic: the same sources
    give the same bytes on any machine, so a difference means the lab was edited or released by
    another version). Empty when in sync."""
    problems: list[str] = []
    expected = {p.name: p for p in Path(expected_dir).glob("*.ipynb")}
    actual = {p.name: p for p in Path(actual_dir).glob("*.ipynb")}
    for name in sorted(expected.keys() - actual.keys()):
        problems.append(f"{name}: missing from {actual_dir}")
    for name in sorted(actual.keys() - expected.keys()):
        problems.append(f"{name}: not generated from the sources (stale file in {actual_dir})")
    for name in sorted(expected.keys() & actual.keys()):
        found = len(problems)
        a = nbformat.read(expected[name], as_version=4).cells
        b = nbformat.read(actual[name], as_version=4).cells
        if len(a) != len(b):
            problems.append(f"{name}: {len(b)} cells instead of {len(a)}")
        for i, (ca, cb) in enumerate(zip(a, b)):
            label = f"{name}: cell {i} ({ca.get('id', '?')})"
            if ca.cell_type != cb.cell_type:
                problems.append(f"{label}: type {cb.cell_type} instead of {ca.cell_type}")
            if ca.source != cb.source:
                problems.append(f"{label}: source differs")
            if ca.metadata.get("nbgrader") != cb.metadata.get("nbgrader"):
                problems.append(f"{label}: nbgrader metadata differs")
        if len(problems) == found and expected[name].read_bytes() != actual[name].read_bytes():
            problems.append(f"{name}: same cells, different bytes (edited by hand, or released by another version)")
    return problems
