"""Import a zip of submissions downloaded from an LMS (Canvas, Moodle) into a folder to grade.

The conventions are those of nbgrader's ``zip_collect`` (``FileNameCollectorPlugin.named_regexp``):
a regular expression with the named groups ``student_id`` and ``file`` is matched against the whole
path of each file in the zip. The defaults, tried in this order:

- Canvas ("Download submissions"): one flat file per submission,
  ``{student}_{LATE_}?{user_id}_{file_id}_{original name}``, e.g.
  ``smithjohn_12345_67890_mlp-lab.ipynb`` or ``doejane_LATE_2222_3333_mlp-lab-1.ipynb``
  (student ``smithjohn``, ``doejane``);
- Moodle ("Download all submissions"): one folder per student,
  ``{Full Name}_{participant id}_assignsubmission_file_/{original name}`` (or the same without
  the ``/`` when folders are off), e.g. ``Jane Doe_4711_assignsubmission_file_/mlp-lab.ipynb``
  (student ``Jane-Doe_4711``).

:func:`import_zip` writes a new folder ``DEST/<student_id>/<notebook>`` that
``python -m dlbook.grading grade ASSIGNMENT DEST`` grades, and a record of the import,
``DEST/lms-import.json`` (files directly in DEST are not students). Nothing is deleted or
modified: the zip is only read, and DEST must be new (or an empty folder).

- Student ids are made safe for nbgrader: accents dropped, every run of other characters than
  letters, digits and ``. _ @ -`` becomes ``-``.
- A notebook the LMS renamed (``mlp-lab-1.ipynb``, ``mlp-lab (2).ipynb``) is saved under the
  lab's name (``mlp-lab.ipynb``), with a note. Other names are kept: the grader recognises the
  lab's notebook under another name by its metadata.
- When a student has several files for the same notebook, the one with the latest timestamp in
  the zip is kept (on a tie, the later one in the zip), with a note.
- Files that match no pattern, and files that are refused (not ``.ipynb``, an unsafe path, a
  link, encrypted, corrupt, too large), are listed in the report.
- Zip bombs: at most :data:`MAX_MEMBER_BYTES` per notebook (as for grading) and
  :data:`MAX_TOTAL_BYTES` in all, counted while decompressing (the sizes the zip declares are not
  trusted), and at most :data:`MAX_MEMBERS` entries.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import stat
import tempfile
import unicodedata
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .course import CourseError, CourseLayout
from .submissions import STUDENT_ID

CANVAS_PATTERN = r"(?:.*/)?(?P<student_id>[^/_]+)_(?:(?P<late>LATE|late)_)?(?P<user_id>\d+)_(?P<file_id>\d+)_(?P<file>[^/]+)"
MOODLE_PATTERN = r"(?:.*/)?(?P<student_id>[^/]+?_\d+)_assignsubmission_file_/?(?P<file>[^/]+)"
DEFAULT_PATTERNS = {"canvas": CANVAS_PATTERN, "moodle": MOODLE_PATTERN}

MAX_MEMBER_BYTES = 50 * 2**20  # the grader's limit on a notebook
MAX_TOTAL_BYTES = 2 * 2**30
MAX_MEMBERS = 20_000
NOTEBOOK_SUFFIX = ".ipynb"
RECORD_NAME = "lms-import.json"

# "mlp-lab-1", "mlp-lab (2)", "mlp-lab_3", "mlp-lab-1 (1)": what Canvas, Moodle and browsers append
_LMS_SUFFIX = re.compile(r"(?P<stem>.+?)(?:[-_]\d+|\s*\(\d+\))")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._ ()+-]+")


class LmsImportError(CourseError):
    """The zip cannot be imported at all (not found, not a zip, too large, bad pattern, DEST in use)."""


@dataclass(frozen=True)
class ImportedFile:
    """One notebook written to ``DEST/<student_id>/<notebook>``, from ``member`` of the zip."""

    student_id: str
    notebook: str
    member: str
    timestamp: dt.datetime  # the zip's (local) time of the member
    renamed_from: str | None = None  # the name in the LMS when the notebook was renamed


@dataclass
class ImportReport:
    """What :func:`import_zip` did. ``notes``: per student, what an instructor should know."""

    zip_path: Path
    dest: Path
    pattern: str
    files: list[ImportedFile] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)
    superseded: dict[str, str] = field(default_factory=dict)  # member not kept -> the member kept
    unmatched: list[str] = field(default_factory=list)  # members no pattern matched
    refused: dict[str, str] = field(default_factory=dict)  # member -> why it was not imported

    @property
    def students(self) -> list[str]:
        """The student ids imported, sorted."""
        return sorted({f.student_id for f in self.files})

    def note(self, student_id: str, text: str) -> None:
        notes = self.notes.setdefault(student_id, [])
        if text not in notes:
            notes.append(text)

    def format(self) -> str:
        """Plain-text summary, one line per fact worth reading."""
        lines = [
            f"imported {len(self.files)} notebook(s) of {len(self.students)} student(s) "
            f"from {self.zip_path} into {self.dest}"
        ]
        for student, notes in sorted(self.notes.items()):
            lines.extend(f"  {student}: {text}" for text in notes)
        if self.unmatched:
            lines.append(f"{len(self.unmatched)} file(s) match no pattern, not imported:")
            lines.extend(f"  {name}" for name in self.unmatched)
        if self.refused:
            lines.append(f"{len(self.refused)} file(s) refused:")
            lines.extend(f"  {name}: {why}" for name, why in self.refused.items())
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {
            "zip": str(self.zip_path),
            "pattern": self.pattern,
            "files": [{**f.__dict__, "timestamp": f.timestamp.isoformat(sep=" ")} for f in self.files],
            "notes": self.notes,
            "superseded": self.superseded,
            "unmatched": self.unmatched,
            "refused": self.refused,
        }


def sanitize_student_id(raw: str) -> str:
    """``raw`` as an nbgrader student id: accents dropped, other characters than letters, digits
    and ``. _ @ -`` turned into ``-``; ``""`` when nothing usable is left."""
    text = unicodedata.normalize("NFKD", raw).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^A-Za-z0-9._@-]+", "-", text.strip())
    text = re.sub(r"^[^A-Za-z0-9]+|-+$", "", text)
    return text if STUDENT_ID.match(text) else ""


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """``pattern`` compiled; it must have the named groups ``student_id`` and ``file``.

    Raises:
        LmsImportError: not a regular expression, or a group is missing.
    """
    try:
        regexp = re.compile(pattern)
    except re.error as exc:
        raise LmsImportError(f"--pattern {pattern!r} is not a regular expression: {exc}") from None
    missing = {"student_id", "file"} - set(regexp.groupindex)
    if missing:
        raise LmsImportError(
            f"--pattern {pattern!r} needs the named groups (?P<student_id>...) and (?P<file>...); "
            f"missing: {', '.join(sorted(missing))}"
        )
    return regexp


def _unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    """Why the member cannot be extracted safely, or ``None``."""
    name = info.filename.replace("\\", "/")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if "\0" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    if ".." in PurePosixPath(name).parts:
        return "a path with '..'"
    if info.flag_bits & 0x1:
        return "encrypted"
    if stat.S_IFMT(mode) and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):  # 0: not recorded
        return "not a regular file"
    return None


def expected_name(name: str, notebooks: Sequence[str]) -> str | None:
    """The lab notebook that ``name`` is once LMS suffixes are removed, one at a time
    (``mlp-lab-1.ipynb``, ``mlp-lab (2).ipynb`` -> ``mlp-lab.ipynb``), or ``None``."""
    if name in notebooks or not name.endswith(NOTEBOOK_SUFFIX):
        return None
    stem = name[: -len(NOTEBOOK_SUFFIX)]
    while (match := _LMS_SUFFIX.fullmatch(stem)) is not None:
        stem = match["stem"]
        if stem + NOTEBOOK_SUFFIX in notebooks:
            return stem + NOTEBOOK_SUFFIX
    return None


def _safe_file_name(name: str) -> str:
    """A file name safe in any folder (no separators, no leading dot)."""
    name = _UNSAFE_NAME.sub("_", name).strip(" ")
    return ("_" + name) if name.startswith(".") or not name else name


def _timestamp(info: zipfile.ZipInfo) -> dt.datetime:
    try:
        return dt.datetime(*info.date_time)
    except ValueError:
        return dt.datetime(1980, 1, 1)


def _copy_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, limit: int) -> int:
    """Decompress ``info`` into the new file ``target``; the bytes written. Raises
    :class:`ValueError` past ``limit`` bytes (the zip's declared sizes are not trusted)."""
    written = 0
    with archive.open(info) as src, open(target, "xb") as dst:
        while chunk := src.read(2**20):
            written += len(chunk)
            if written > limit:
                raise ValueError(written)
            dst.write(chunk)
    return written


def _lab_notebooks(
    assignment: str, notebooks: Sequence[str] | None, layout: CourseLayout | None
) -> list[str]:
    if notebooks is not None:
        return list(notebooks)
    if layout is None:
        from .course import find_course_root, load_layout

        layout = load_layout(find_course_root())
    return layout.source_notebooks(assignment)


def import_zip(
    zip_path: Path,
    dest: Path,
    assignment: str,
    pattern: str | None = None,
    *,
    notebooks: Sequence[str] | None = None,
    layout: CourseLayout | None = None,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> ImportReport:
    """Extract the notebooks of the LMS export ``zip_path`` into the new folder ``dest``, one
    sub-folder per student (``dest/<student_id>/<notebook>``), ready to grade as ``assignment``.

    ``pattern``: a regular expression with the named groups ``student_id`` and ``file``, matched
    against the whole path of each member (default: the Canvas, then the Moodle convention).
    ``notebooks``: the lab's notebook names (default: from ``layout``, or the course found from
    the current directory).

    Raises:
        LmsImportError: the zip is missing or not a zip, ``dest`` exists and is not an empty
        folder, the pattern is unusable, or the zip holds more than :data:`MAX_MEMBERS` entries
        or ``max_total_bytes`` of notebooks (then nothing is written).
    """
    zip_path, dest = Path(zip_path), Path(dest)
    expected = _lab_notebooks(assignment, notebooks, layout)
    regexps = [compile_pattern(pattern)] if pattern else [re.compile(p) for p in DEFAULT_PATTERNS.values()]
    if not zip_path.is_file():
        raise LmsImportError(f"zip file not found: {zip_path}")
    if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
        raise LmsImportError(f"{dest} already exists and is not empty: import into a new folder")
    report = ImportReport(zip_path, dest, pattern or " | ".join(DEFAULT_PATTERNS.values()))

    try:
        archive = zipfile.ZipFile(zip_path, "r")
    except (zipfile.BadZipFile, OSError) as exc:
        raise LmsImportError(f"{zip_path} is not a readable zip file: {exc}") from None
    with archive:
        members = archive.infolist()
        if len(members) > MAX_MEMBERS:
            raise LmsImportError(f"{zip_path} has {len(members)} entries (at most {MAX_MEMBERS})")
        # choose, per student and notebook, the member to keep
        chosen: dict[tuple[str, str], tuple[zipfile.ZipInfo, int, str | None]] = {}
        raw_ids: dict[str, str] = {}  # sanitised id -> the LMS name it came from
        for index, info in enumerate(members):
            if info.is_dir():
                continue
            name = info.filename.replace("\\", "/")
            match = next((m for r in regexps if (m := r.fullmatch(name))), None)
            if match is None:
                report.unmatched.append(info.filename)
                continue
            why = _unsafe_reason(info)
            if why:
                report.refused[info.filename] = f"refused: {why}"
                continue
            submitted = PurePosixPath(match["file"]).name
            if not submitted.lower().endswith(NOTEBOOK_SUFFIX):
                report.refused[info.filename] = "not a notebook (.ipynb)"
                continue
            raw = match["student_id"]
            student = sanitize_student_id(raw)
            if not student:
                report.refused[info.filename] = f"no usable student id in {raw!r}"
                continue
            base, n = student, 1
            while raw_ids.setdefault(student, raw) != raw:  # two LMS names would give one id
                n += 1
                student = f"{base}-{n}"
            if student != raw:
                report.note(student, f"LMS name {raw!r} imported as student id {student!r}")
            target = expected_name(submitted, expected)
            notebook = target or _safe_file_name(submitted)
            renamed = submitted if notebook != submitted else None
            key = (student, notebook)
            previous = chosen.get(key)
            if previous is not None:
                old, old_index, _ = previous
                newer = (_timestamp(info), index) > (_timestamp(old), old_index)
                keep, drop = (info, old) if newer else (old, info)
                tie = " (same time: the later in the zip)" if _timestamp(info) == _timestamp(old) else ""
                report.superseded[drop.filename] = keep.filename
                report.note(
                    student,
                    f"{notebook} submitted more than once: kept {keep.filename} ({_timestamp(keep)}), "
                    f"not {drop.filename} ({_timestamp(drop)}){tie}",
                )
                if not newer:
                    continue
            chosen[key] = (info, index, renamed)

        declared = sum(info.file_size for info, _, _ in chosen.values())
        if declared > max_total_bytes:
            raise LmsImportError(
                f"{zip_path} would extract {declared} bytes of notebooks (at most {max_total_bytes})"
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.importing-", dir=dest.parent))
        try:
            total = 0
            for (student, notebook), (info, _, renamed) in sorted(chosen.items()):
                folder = staging / student
                folder.mkdir(exist_ok=True)
                target = folder / notebook
                try:
                    total += _copy_member(
                        archive, info, target, min(max_member_bytes, max_total_bytes - total)
                    )
                except ValueError:
                    target.unlink(missing_ok=True)
                    if max_total_bytes - total < max_member_bytes:
                        raise LmsImportError(
                            f"{zip_path} decompresses to more than {max_total_bytes} bytes of notebooks"
                        ) from None
                    report.refused[info.filename] = f"refused: larger than {max_member_bytes} bytes"
                    continue
                except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError, EOFError) as exc:
                    target.unlink(missing_ok=True)
                    report.refused[info.filename] = f"refused: cannot be read ({type(exc).__name__}: {exc})"
                    continue
                when = _timestamp(info)
                os.utime(target, (when.timestamp(), when.timestamp()))
                if renamed:
                    report.note(student, f"submitted as {renamed}, imported as {notebook}")
                report.files.append(ImportedFile(student, notebook, info.filename, when, renamed))
            for folder in staging.iterdir():
                if not any(folder.iterdir()):
                    folder.rmdir()
            (staging / RECORD_NAME).write_text(
                json.dumps(report.to_json(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
            )
            if dest.exists():
                dest.rmdir()  # empty (checked above); rename needs it gone
            staging.rename(dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)  # only what this call created
            raise
    return report
