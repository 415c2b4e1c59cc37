"""Autograde a folder of submissions, one sandboxed nbgrader run per student, into :class:`GradeRow` rows.

The submissions folder is never written: it is graded from a snapshot copy, and afterwards every
file is checked against its digest and put back if it changed (:mod:`.snapshot`). A folder inside
the grader's own output (autograded, feedback, logs) is refused; the course's submitted folder
(``nbgrader collect``'s) is accepted and then left as it is.

For each student: find the expected notebooks (a notebook stamped with another lab is reported,
not graded; a single notebook of the lab under another name is taken, and the rename noted),
validate them (size, JSON, nbformat) before nbgrader sees them, restore their locked cells from
the release and scan the student's code (:mod:`.integrity`), then run ``nbgrader autograde`` in
a throw-away copy of the course (:mod:`.sandbox`) with a wall-clock limit. Scores are checked
against the source's points and the executed notebook, the autograded notebook is scanned
(truncated output, leaked hidden tests), and the results are copied into the real course
(``grading/``: submitted and autograded notebooks, the gradebook). The files of the assignment in
the course are checked after every student and restored if they changed.

A bad submission only ever produces its own row; every row says what was noticed in ``notes``
and whether a person should ``review`` it.
"""

from __future__ import annotations

import copy
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from .course import CourseLayout
from .gradebook import exercise_of, store_scores, stored_scores
from .integrity import LabReference, Note, load_reference, repair, scan_code, scan_outputs
from .release import generate_isolated, notebook_differences, register_assignment
from .report import GradeRow
from .runner import DEFAULT_MAX_OUTPUT, DEFAULT_TIMEOUT, summarize_error
from .sandbox import SandboxRun, autograde_in_sandbox
from .snapshot import Snapshot, check_submissions_folder, is_inside
from .submissions import (
    STUDENT_ID,
    Submission,
    find_submissions,
    lab_stamp,
    student_folders,
    unexpected_notebooks,
)
from .validation import validate_notebook

_GRADEBOOK_LOCK = threading.Lock()  # one thread at a time writes the real course
_SKIP = {"__pycache__", ".ipynb_checkpoints"}


class _CourseGuard:
    """The assignment's files in the course (sources, release, configuration), kept in memory.

    Student code can reach the real course by absolute path (the sandbox is not an OS-level
    jail). :meth:`finish` puts back any file that changed and reports files that appeared.
    """

    def __init__(self, layout: CourseLayout, assignment: str) -> None:
        self.root = layout.root
        self.folders = [layout.source_dir / assignment, layout.release_dir / assignment]
        self.files: dict[Path, bytes] = {layout.config_file: layout.config_file.read_bytes()}
        for folder in self.folders:
            for path in self._walk(folder):
                self.files[path] = path.read_bytes()
        self.reported: set[Path] = set()
        self.lock = threading.Lock()
        self.active: set[str] = set()  # students being autograded
        self.window: set[str] = set()  # students graded since the last check
        self.pending: dict[str, list[str]] = {}  # notes for students still running

    @staticmethod
    def _walk(folder: Path) -> list[Path]:
        if not folder.is_dir():
            return []
        return sorted(
            p for p in folder.rglob("*") if p.is_file() and not _SKIP & set(p.relative_to(folder).parts)
        )

    def _name(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def support_files(self, source_folder: Path) -> dict[str, bytes]:
        """The assignment's source files other than notebooks, relative path -> bytes."""
        return {
            p.relative_to(source_folder).as_posix(): data
            for p, data in self.files.items()
            if p.suffix != ".ipynb" and source_folder in p.parents
        }

    def start(self, student_id: str) -> None:
        """A student's autograding starts."""
        with self.lock:
            self.active.add(student_id)
            self.window.add(student_id)

    def finish(self, student_id: str) -> list[str]:
        """A student's autograding ended: restore changed files; return the notes for this student.

        A change is blamed on every student graded since the previous check (one with ``--jobs 1``);
        those still running get the note when they finish.
        """
        with self.lock:
            changed = self._restore()
            if changed:
                suspects = sorted(self.window)
                who = "this student" if suspects == [student_id] else "students " + ", ".join(suspects)
                note = f"course files changed while grading {who}: " + ", ".join(changed)
                for suspect in suspects:
                    self.pending.setdefault(suspect, []).append(note)
            self.active.discard(student_id)
            self.window = set(self.active)
            return self.pending.pop(student_id, [])

    def _restore(self) -> list[str]:
        """Put back the files that changed; return what changed (and what appeared)."""
        changed: list[str] = []
        for path, data in self.files.items():
            try:
                same = not path.is_symlink() and path.is_file() and path.read_bytes() == data
            except OSError:
                same = False
            if same:
                continue
            try:
                if path.is_symlink() or path.is_file():
                    path.unlink()
                elif path.is_dir():
                    shutil.rmtree(path)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                changed.append(f"{self._name(path)} (restored)")
            except OSError as exc:
                changed.append(f"{self._name(path)} (could not restore: {exc.strerror or exc})")
        for folder in self.folders:
            for path in self._walk(folder):
                if path not in self.files and path not in self.reported:
                    self.reported.add(path)
                    changed.append(f"{self._name(path)} (new file, left in place)")
        return changed


@dataclass
class _Batch:
    """Everything the graders of one batch share."""

    layout: CourseLayout
    assignment: str
    notebooks: list[str]
    refs: dict[str, LabReference]
    config_text: str
    gradebook: bytes
    guard: _CourseGuard
    timeout: float
    max_output: int
    scores: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    copy_submitted: bool = True  # False when grading the course's own submitted folder

    @property
    def support_files(self) -> dict[str, bytes]:
        return self.guard.support_files(self.layout.source_dir / self.assignment)

    def max_score(self, notebook: str) -> float:
        return sum(self.refs[notebook].points.values())


def _failed_message(tests: dict[str, float], points: dict[str, float]) -> str:
    failed = [gid for gid, score in tests.items() if score < points[gid]]
    return f"failed: {', '.join(failed)}" if failed else "all tests passed"


def _checked_scores(
    ref: LabReference, cells: dict[str, tuple[float | None, float]], nb: nbformat.NotebookNode
) -> tuple[dict[str, float], list[str]]:
    """Score of each test cell, from the gradebook of the run and from the executed notebook.

    Points come from the source, not from the run; the lower of the two scores is kept and any
    disagreement is reported (the student's code ran in that sandbox and could have written there).
    """
    from nbgrader.utils import determine_grade

    by_id: dict[str, nbformat.NotebookNode] = {}
    for cell in nb.cells:
        gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if gid and gid not in by_id:
            by_id[gid] = cell
    tests: dict[str, float] = {}
    unrecorded: list[str] = []
    other_points: list[str] = []
    absent: list[str] = []
    disagree: list[str] = []
    for gid, points in ref.points.items():
        auto, top = cells.get(gid, (None, None))
        if gid not in cells:
            unrecorded.append(gid)
        elif top != points:
            other_points.append(f"{gid} {top:g} (not {points:g})")
        from_notebook: float | None = 0.0
        cell = by_id.get(gid)
        if cell is None:
            absent.append(gid)
        else:
            probe = copy.deepcopy(cell)
            probe.metadata.nbgrader["points"] = points
            probe.metadata.nbgrader["grade"] = True
            try:
                from_notebook, _ = determine_grade(probe)
            except Exception:
                from_notebook = 0.0
        found = [x for x in (auto, from_notebook) if x is not None]
        if auto is not None and from_notebook is not None and abs(auto - from_notebook) > 1e-9:
            disagree.append(f"{gid} ({auto:g} vs {from_notebook:g})")
        tests[gid] = min(max(0.0, min(found)), points) if found else 0.0

    def listed(items: list[str]) -> str:
        return ", ".join(items[:4]) + (f" and {len(items) - 4} more" if len(items) > 4 else "")

    problems = []
    if unrecorded:
        problems.append(f"the run's gradebook has no score for {listed(unrecorded)}")
    if other_points:
        problems.append(f"the run's gradebook gives other points: {listed(other_points)}")
    if absent:
        problems.append(f"missing from the autograded notebook: {listed(absent)}")
    if disagree:
        problems.append(f"the run's gradebook and outputs disagree, kept the lower: {listed(disagree)}")
    return tests, problems


def _row_from_run(batch: _Batch, student_id: str, sub: Submission, run: SandboxRun) -> GradeRow:
    """Row of one notebook after its sandbox run; also records its per-cell scores in ``batch``."""
    assignment, name = batch.assignment, sub.notebook
    max_score = batch.max_score(name)
    result = run.result
    if result.timed_out:
        message = f"autograding took longer than {batch.timeout:g} s and was stopped"
        return GradeRow(student_id, assignment, name, "timeout", message, max_score=max_score)
    if result.returncode != 0:
        return GradeRow(
            student_id,
            assignment,
            name,
            "autograde-error",
            summarize_error(result.output),
            max_score=max_score,
        )
    if name in run.unguarded:
        message = f"nbgrader ran without the sandbox's configuration: {summarize_error(result.output)}"
        return GradeRow(student_id, assignment, name, "autograde-error", message, max_score=max_score)
    ref = batch.refs[name]
    cells = run.cells.get(Path(name).stem)
    autograded = run.autograded.get(name)
    if cells is None or autograded is None:
        what = "no score" if cells is None else "no readable autograded notebook"
        return GradeRow(
            student_id,
            assignment,
            name,
            "autograde-error",
            f"nbgrader finished but left {what}",
            max_score=max_score,
        )
    tests, problems = _checked_scores(ref, cells, autograded)
    exercises: dict[str, float] = {}
    for gid, score in tests.items():
        exercises[exercise_of(gid)] = exercises.get(exercise_of(gid), 0.0) + score
    row = GradeRow(
        student_id,
        assignment,
        name,
        "graded",
        _failed_message(tests, ref.points),
        score=sum(tests.values()),
        max_score=max_score,
        exercises=exercises,
    )
    for problem in problems:
        row.add_note(problem, review=True)
    for note in scan_outputs(autograded, ref):
        row.add_note(note.text, note.review)
    batch.scores[(student_id, name)] = tests
    return row


def _store(
    batch: _Batch, student_id: str, valid: list[Submission], run: SandboxRun, rows: list[GradeRow]
) -> None:
    """Copy a student's submitted and autograded notebooks into the course and record the scores.

    When the batch grades the course's submitted folder itself (``nbgrader collect``'s), the
    submitted notebooks are already there and that folder is not written.
    """
    layout, assignment = batch.layout, batch.assignment
    with _GRADEBOOK_LOCK:
        autograded = layout.step_folder(layout.autograded_dir, student_id, assignment)
        if autograded.exists():
            shutil.rmtree(autograded)
        if batch.copy_submitted:
            submitted = layout.step_folder(layout.submitted_dir, student_id, assignment)
            if submitted.exists():
                shutil.rmtree(submitted)
            submitted.mkdir(parents=True)
            for sub in valid:
                assert sub.path is not None
                shutil.copyfile(sub.path, submitted / sub.notebook)
        for name, nb in run.autograded.items():
            autograded.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, autograded / name)
        log = layout.logs_dir / assignment / f"{student_id}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(run.result.output, encoding="utf-8")  # nbgrader's output, head and tail
        for row in rows:
            tests = batch.scores.get((student_id, row.notebook))
            if row.status != "graded" or tests is None:
                continue
            try:
                store_scores(layout.db_url, assignment, student_id, Path(row.notebook).stem, tests)
            except Exception as exc:
                row.add_note(
                    f"not recorded in the course gradebook: {type(exc).__name__}: {exc}", review=True
                )


def _grade_student(
    batch: _Batch, student_id: str, valid: list[Submission], notes: dict[str, list[Note]]
) -> list[GradeRow]:
    """Repair, scan and autograde one student's valid notebooks in a sandbox; one row per notebook."""
    found: dict[str, list[Note]] = {sub.notebook: list(notes.get(sub.notebook, [])) for sub in valid}
    prepared = {}
    for sub in valid:
        assert sub.path is not None
        ref = batch.refs[sub.notebook]
        nb = nbformat.read(sub.path, as_version=4)
        fixed, repairs = repair(nb, ref)
        found[sub.notebook] += repairs + scan_code(nb, ref)
        prepared[sub.notebook] = fixed
    batch.guard.start(student_id)
    try:
        run = autograde_in_sandbox(
            config_text=batch.config_text,
            gradebook=batch.gradebook,
            support_files=batch.support_files,
            assignment=batch.assignment,
            student_id=student_id,
            notebooks=prepared,
            timeout=batch.timeout,
            max_output_chars=batch.max_output,
            max_total_output_chars=5 * batch.max_output,
        )
    finally:
        changed = batch.guard.finish(student_id)
    rows = []
    for sub in valid:
        row = _row_from_run(batch, student_id, sub, run)
        for note in found[sub.notebook]:
            row.add_note(note.text, note.review)
        for problem in run.problems:
            row.add_note(problem, review=True)
        for note in changed:
            row.add_note(note, review=True)
        rows.append(row)
    _store(batch, student_id, valid, run, rows)
    return rows


def _renamed(
    folder: Path, sub: Submission, batch: _Batch, candidates: list[str]
) -> tuple[Submission | None, GradeRow | None, Note | None]:
    """Take the only notebook of a folder that lacks ``sub.notebook``: a valid submission, or a row."""
    (other,) = candidates
    path = folder / other
    student_id, name = folder.name, sub.notebook
    problem = validate_notebook(path)
    if problem is not None:
        message = f"{other} (submitted instead of {name}): {problem}"
        return None, GradeRow(student_id, batch.assignment, name, "invalid-notebook", message), None
    if not batch.refs[name].has_cells_of_the_lab(nbformat.read(path, as_version=4)):
        message = f"no {name} in {student_id}/; found instead: {other}, which has none of the lab's cells"
        return None, GradeRow(student_id, batch.assignment, name, "missing-notebook", message), None
    note = Note(f"renamed: submitted as {other}, graded as {name}")
    return Submission(student_id, name, path, sub.others, renamed_from=other), None, note


def _foreign(folder: Path, rel: str, assignment: str) -> str | None:
    """How to name ``folder/rel`` when its metadata says it is another lab's notebook, else ``None``."""
    stamp = lab_stamp(folder / rel)
    if stamp is None or stamp.lab == assignment:
        return None
    return f"{rel}, lab {stamp.lab}"


def _check_student(
    folder: Path, batch: _Batch
) -> tuple[list[Submission], dict[str, GradeRow], dict[str, list[Note]]]:
    """Split a student's expected notebooks into valid ones and rows for the problems found.

    A notebook stamped with another lab (:func:`.submissions.lab_stamp`) is reported as such,
    never graded; one stamped with this lab's notebook under another file name is a rename; an
    unstamped notebook (an older release) is taken as a rename when it is the folder's only
    other notebook and has cells of the lab.
    """
    student_id, assignment, notebooks = folder.name, batch.assignment, batch.notebooks
    if not STUDENT_ID.match(student_id):
        message = "use letters, digits and . _ @ - only (no spaces)"
        return (
            [],
            {n: GradeRow(student_id, assignment, n, "invalid-student-id", message) for n in notebooks},
            {},
        )
    valid: list[Submission] = []
    problems: dict[str, GradeRow] = {}
    notes: dict[str, list[Note]] = {}
    subs = find_submissions(folder, assignment, notebooks)
    missing = [s for s in subs if s.path is None]
    for sub in subs:
        if sub.path is None:
            others = unexpected_notebooks(sub, notebooks)
            stamps = {o: lab_stamp(folder / o) for o in sub.others}
            foreign = {o: st.lab for o, st in stamps.items() if st is not None and st.lab != assignment}
            own = [
                o for o in others if (st := stamps[o]) and st.lab == assignment and st.notebook == sub.notebook
            ]
            unstamped = [o for o in others if stamps[o] is None]
            # this lab's notebook by its stamp; else, for older releases, the only other notebook
            candidates = own if len(own) == 1 else unstamped if not own and len(missing) == 1 else []
            if len(candidates) == 1:
                renamed, row, note = _renamed(folder, sub, batch, candidates)
                if renamed is not None and note is not None:
                    valid.append(renamed)
                    notes[sub.notebook] = [note]
                elif row is not None:
                    problems[sub.notebook] = row
                continue
            hint = "".join(f"; found another lab's notebook ({o}, lab {lab})" for o, lab in foreign.items())
            rest = [o for o in sub.others if o not in foreign]
            if rest:
                hint += f"; found instead: {', '.join(rest)}"
            problems[sub.notebook] = GradeRow(
                student_id,
                assignment,
                sub.notebook,
                "missing-notebook",
                f"no {sub.notebook} in {folder.name}/{hint}",
            )
            continue
        foreign_self = _foreign(folder, sub.path.relative_to(folder).as_posix(), assignment)
        if foreign_self is not None:
            problems[sub.notebook] = GradeRow(
                student_id,
                assignment,
                sub.notebook,
                "missing-notebook",
                f"no {sub.notebook} of lab {assignment} in {folder.name}/; "
                f"found another lab's notebook ({foreign_self})",
            )
            continue
        problem = validate_notebook(sub.path)
        if problem is None:
            valid.append(sub)
        else:
            problems[sub.notebook] = GradeRow(
                student_id, assignment, sub.notebook, "invalid-notebook", problem
            )
    return valid, problems, notes


def _sqlite_path(db_url: str) -> Path | None:
    """File of a ``sqlite:///`` database URL, else ``None``."""
    return Path(db_url[len("sqlite:///") :]) if db_url.startswith("sqlite:///") else None


def _prepare(
    layout: CourseLayout,
    assignment: str,
    scratch: Path,
    timeout: float,
    max_output: int,
    say: Callable[[str], None],
) -> _Batch:
    """Record the assignment in the course gradebook, build the sandboxes' gradebook and references."""
    notebooks = layout.source_notebooks(assignment)
    say(f"registering assignment {assignment!r} in the gradebook ({layout.db_url})")
    generated, gradebook = generate_isolated(layout, assignment, scratch / "isolated")
    real_db = _sqlite_path(layout.db_url)
    if real_db is not None and not real_db.exists():
        real_db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(gradebook, real_db)  # a new gradebook: the isolated one is the same, made once
    else:
        register_assignment(layout, assignment, scratch / "course")
    stale = notebook_differences(generated, layout.release_dir / assignment)
    if stale:
        say(
            f"warning: {layout.release_dir / assignment} is out of date with the sources "
            f"({stale[0]}{', ...' if len(stale) > 1 else ''}); students may have an older lab. "
            f"Run `python -m dlbook.grading release {assignment}`."
        )
    refs = {
        name: load_reference(layout.source_dir / assignment / name, generated / name) for name in notebooks
    }
    guard = _CourseGuard(layout, assignment)
    return _Batch(
        layout=layout,
        assignment=assignment,
        notebooks=notebooks,
        refs=refs,
        config_text=guard.files[layout.config_file].decode("utf-8"),
        gradebook=gradebook.read_bytes(),
        guard=guard,
        timeout=timeout,
        max_output=max_output,
    )


def _verify_gradebook(batch: _Batch, rows: list[GradeRow]) -> None:
    """Check that the course gradebook still holds the scores of this batch (student code could
    reach it by absolute path); rewrite and flag the rows whose entry changed."""
    for row in rows:
        tests = batch.scores.get((row.student_id, row.notebook))
        if row.status != "graded" or tests is None:
            continue
        notebook_id = Path(row.notebook).stem
        with _GRADEBOOK_LOCK:
            try:
                stored = stored_scores(batch.layout.db_url, batch.assignment, row.student_id, notebook_id)
                if stored != tests:
                    store_scores(batch.layout.db_url, batch.assignment, row.student_id, notebook_id, tests)
                    row.add_note("the course gradebook entry changed after grading; rewritten", review=True)
            except Exception as exc:
                row.add_note(f"cannot check the course gradebook: {type(exc).__name__}", review=True)


def grade_submissions(
    layout: CourseLayout,
    assignment: str,
    submissions_dir: Path,
    timeout: float = DEFAULT_TIMEOUT,
    jobs: int = 1,
    progress: Callable[[str], None] | None = None,
    max_output: int = DEFAULT_MAX_OUTPUT,
) -> list[GradeRow]:
    """Grade every student folder of ``submissions_dir``; one row per student and notebook.

    ``timeout`` is the wall-clock limit, in seconds, of one student's autograding; ``jobs`` is
    how many students are autograded at the same time (each one is an nbgrader process and a
    kernel); ``max_output`` is how many characters of output are kept per cell.
    ``progress`` receives one line per step (default: print to stderr).
    """
    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    originals = check_submissions_folder(layout, submissions_dir)
    with tempfile.TemporaryDirectory(prefix="dlbook-grade-") as scratch:
        batch = _prepare(layout, assignment, Path(scratch), timeout, max_output, say)
    batch.copy_submitted = not (
        is_inside(originals, layout.submitted_dir) or is_inside(layout.submitted_dir, originals)
    )
    with Snapshot(originals) as snapshot:
        for error in snapshot.copy_errors:
            say(f"warning: could not copy {error}")
        rows = _grade_folder(batch, snapshot.folder, jobs, say)
        changes = snapshot.verify()
    if changes:
        for row in rows:
            for change in changes.get(row.student_id, []):
                row.add_note(f"submission changed during grading: {change}", review=True)
        changed = "; ".join(f"{who}: {', '.join(what)}" for who, what in sorted(changes.items()))
        say(f"warning: files of {originals} changed while grading ({changed})")
    else:
        say(f"checked {originals}: all {snapshot.files} files byte-identical after grading (SHA-256)")
    return rows


def _grade_folder(batch: _Batch, folder: Path, jobs: int, say: Callable[[str], None]) -> list[GradeRow]:
    """Grade every student folder of ``folder`` (the snapshot of the submissions)."""
    assignment = batch.assignment
    checked: dict[str, tuple[list[Submission], dict[str, GradeRow], dict[str, list[Note]]]] = {}
    for student in student_folders(folder):
        try:
            checked[student.name] = _check_student(student, batch)
        except Exception as exc:  # e.g. an unreadable folder: report it, go on
            message = f"{type(exc).__name__}: {exc}"
            checked[student.name] = (
                [],
                {
                    n: GradeRow(student.name, assignment, n, "autograde-error", message)
                    for n in batch.notebooks
                },
                {},
            )

    def autograde(student_id: str) -> list[GradeRow]:
        valid, _, notes = checked[student_id]
        say(f"autograding {student_id} ({', '.join(s.notebook for s in valid)})")
        try:
            rows = _grade_student(batch, student_id, valid, notes)
            failed = [row for row in rows if row.status == "autograde-error"]
            if failed:
                # nbgrader itself failed (seen once on an overloaded machine: a kernel that did not
                # start in time). One fresh attempt tells a passing hiccup from a broken notebook.
                first = "; ".join(f"{row.notebook}: {row.message}" for row in failed)
                say(f"retrying {student_id} once after autograde-error ({first})")
                rows = _grade_student(batch, student_id, valid, notes)
                for row in rows:
                    row.add_note(f"graded on the second attempt; the first ended in autograde-error ({first})"
                                 if row.status != "autograde-error" else "autograde-error on two attempts")
            return rows
        except Exception as exc:  # never lose the batch to one student
            message = f"{type(exc).__name__}: {exc}"
            return [GradeRow(student_id, assignment, s.notebook, "autograde-error", message) for s in valid]

    to_grade = [student_id for student_id, (valid, _, _) in checked.items() if valid]
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:  # threads only wait on subprocesses
        graded = dict(zip(to_grade, pool.map(autograde, to_grade)))

    rows: list[GradeRow] = []
    for student_id, (_, problems, _) in checked.items():
        by_notebook = {**problems, **{row.notebook: row for row in graded.get(student_id, [])}}
        for name in batch.notebooks:
            row = by_notebook[name]
            if row.max_score is None:
                row.max_score = batch.max_score(name)
            rows.append(row)
    _verify_gradebook(batch, rows)
    return rows
