"""Find the students and their notebooks in a folder of submissions.

Accepted layouts, for an assignment ``ann`` with notebook ``mlp-lab.ipynb``::

    SUBMISSIONS_DIR/<student_id>/mlp-lab.ipynb
    SUBMISSIONS_DIR/<student_id>/ann/mlp-lab.ipynb      (preferred when both exist)

Every visible sub-folder is a student; files directly in SUBMISSIONS_DIR are ignored.

A released notebook carries the identity of its lab in its metadata (:data:`LAB_KEY`, written by
:func:`dlbook.grading.release.release`): :func:`lab_stamp` reads it, so that a notebook of another
lab is told apart from a renamed one. Notebooks released before the stamp have none.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

# nbgrader uses the student id in glob patterns and paths: keep to characters safe for both.
STUDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")

#: Notebook metadata key of the lab's identity: ``{"dlbook": {"lab": "ann", "notebook": "mlp-lab.ipynb"}}``.
LAB_KEY = "dlbook"
_MAX_STAMP_BYTES = 50 * 2**20


@dataclass(frozen=True)
class LabStamp:
    """Which lab (assignment) and which of its notebooks a released notebook is."""

    lab: str
    notebook: str


def lab_stamp(path: Path) -> LabStamp | None:
    """The lab identity in the metadata of the notebook at ``path``; ``None`` when it has none
    (an older release, a notebook made elsewhere) or the file is not a readable notebook."""
    try:
        if Path(path).stat().st_size > _MAX_STAMP_BYTES:
            return None
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        stamp = data["metadata"][LAB_KEY]
        lab, notebook = stamp["lab"], stamp["notebook"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if isinstance(lab, str) and isinstance(notebook, str) and lab and notebook:
        return LabStamp(lab, notebook)
    return None


@dataclass(frozen=True)
class Submission:
    """One expected notebook of one student; ``path`` is ``None`` when it was not found."""

    student_id: str
    notebook: str
    path: Path | None
    others: tuple[str, ...] = ()  # notebooks found in the student's folder under other names
    renamed_from: str | None = None  # set when ``path`` is a notebook under another name


def student_folders(submissions_dir: Path) -> list[Path]:
    """Sub-folders of ``submissions_dir`` (one per student), sorted, hidden ones skipped."""
    return sorted(
        p for p in Path(submissions_dir).iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
    )


def find_submissions(folder: Path, assignment: str, notebooks: list[str]) -> list[Submission]:
    """The expected ``notebooks`` of the student whose folder is ``folder``."""
    found = []
    present = sorted(
        {
            p.relative_to(folder).as_posix()
            for p in folder.rglob("*.ipynb")
            if ".ipynb_checkpoints" not in p.parts
        }
    )
    for name in notebooks:
        candidates = [folder / assignment / name, folder / name]
        path = next((c for c in candidates if c.is_file()), None)
        others = tuple(p for p in present if Path(p).name != name)
        found.append(Submission(folder.name, name, path, others))
    return found


def unexpected_notebooks(sub: Submission, notebooks: list[str]) -> list[str]:
    """Notebooks of the student's folder (relative paths) named like none of ``notebooks``."""
    return [p for p in sub.others if Path(p).name not in notebooks]
