"""The grader never changes a submission: it grades a snapshot and proves the originals unchanged.

:func:`check_submissions_folder` refuses a submissions folder inside (or holding) the folders the
grader writes (autograded notebooks, feedback, logs). :class:`Snapshot` copies the submissions
folder to a private temporary folder before anything reads it, and records a digest of every
entry (path, kind, SHA-256 of the bytes or the target of a link). Grading reads only the copy;
:meth:`Snapshot.verify` compares the originals with the digest afterwards, puts back from the
copy whatever changed (student code can reach the originals by absolute path) and says so.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .course import CourseError, CourseLayout

_CHUNK = 1 << 20


def is_inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or below it (both resolved)."""
    return path == folder or folder in path.parents


def check_submissions_folder(layout: CourseLayout, submissions_dir: Path) -> Path:
    """The resolved ``submissions_dir``, if grading may read it.

    Raises:
        CourseError: the folder is, is inside or holds one of the folders the grader writes.
    """
    subs = Path(submissions_dir).resolve()
    if not subs.is_dir():
        raise CourseError(f"submissions folder not found: {submissions_dir}")
    for out in layout.output_dirs():
        if is_inside(subs, out):
            raise CourseError(
                f"refusing to grade {subs}: it is inside {out}, which the grader writes; "
                "grade the submitted folder (e.g. grading/submitted) or a folder outside grading/"
            )
        if is_inside(out, subs):
            raise CourseError(
                f"refusing to grade {subs}: it holds {out}, which the grader writes; "
                "pass the folder that holds one sub-folder per student"
            )
    return subs


def _entry(path: Path) -> tuple[str, str]:
    """Kind and digest of one entry (not following links)."""
    if path.is_symlink():
        return "link", os.readlink(path)
    if path.is_dir():
        return "dir", ""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        return "unreadable", exc.strerror or type(exc).__name__
    return "file", digest.hexdigest()


def tree_state(folder: Path) -> dict[str, tuple[str, str]]:
    """``relative path -> (kind, digest)`` of every entry under ``folder`` (links not followed)."""
    state: dict[str, tuple[str, str]] = {}
    for dirpath, dirnames, filenames in os.walk(folder, onerror=lambda _exc: None):
        base = Path(dirpath)
        for name in dirnames + filenames:
            path = base / name
            state[path.relative_to(folder).as_posix()] = _entry(path)
    return state


@dataclass
class Snapshot:
    """A private copy of a submissions folder and the digest of the original.

    Use as a context manager: the copy is deleted on exit. ``folder`` is the copy to grade.
    """

    original: Path
    scratch: Path = field(init=False)
    folder: Path = field(init=False)
    before: dict[str, tuple[str, str]] = field(init=False)
    copy_errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.original = Path(self.original).resolve()
        self.before = tree_state(self.original)
        self.scratch = Path(tempfile.mkdtemp(prefix="dlbook-submissions-")).resolve()
        self.folder = self.scratch / "submissions"
        try:
            shutil.copytree(self.original, self.folder, symlinks=True)
        except shutil.Error as exc:  # unreadable files: copied what could be, grading reports the rest
            self.copy_errors = [f"{Path(src).name}: {why}" for src, _dst, why in exc.args[0]][:5]

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *_exc: object) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)

    @property
    def files(self) -> int:
        """Number of files (and links) recorded in the digest."""
        return sum(kind != "dir" for kind, _ in self.before.values())

    def _restore(self, rel: str) -> None:
        target, saved = self.original / rel, self.folder / rel
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir() and self.before[rel][0] != "dir":
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        kind = self.before[rel][0]
        if kind == "dir":
            target.mkdir(exist_ok=True)
        elif kind == "link":
            target.symlink_to(os.readlink(saved))
        else:
            shutil.copy2(saved, target)

    def verify(self) -> dict[str, list[str]]:
        """Compare the original with its digest; restore what changed from the copy.

        Returns ``student folder -> what changed`` (empty when every entry is byte-identical).
        New entries are reported and left in place; an entry that cannot be restored says so.
        """
        after = tree_state(self.original)
        changes: dict[str, list[str]] = {}

        def report(rel: str, what: str) -> None:
            changes.setdefault(rel.split("/", 1)[0], []).append(f"{rel} ({what})")

        for rel in sorted(self.before):
            if after.get(rel) == self.before[rel] or self.before[rel][0] == "unreadable":
                continue
            try:
                self._restore(rel)
                same = _entry(self.original / rel) == self.before[rel]
                report(rel, "restored from the snapshot" if same else "restored, but still differs")
            except OSError as exc:
                report(rel, f"changed, could not restore: {exc.strerror or exc}")
        for rel in sorted(after.keys() - self.before.keys()):
            report(rel, "new, left in place")
        return changes
