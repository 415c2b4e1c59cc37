"""Autograde one student in a throw-away copy of the course: a sandbox.

The student's code runs in a Jupyter kernel that nbgrader starts in the folder of the notebook
being graded. Autograding in the real course would put, within a relative path of that kernel,
the instructor's sources (``solutions/``, hidden tests included), the gradebook with every
student's grades and everyone's submissions. So each student is graded in a fresh temporary
folder holding only

- ``nbgrader_config.py``: the course's, with the folders pointed into the sandbox and nbgrader's
  ``Execute`` replaced by :class:`dlbook.grading.executor.GuardedExecute` (output caps; before
  the kernel starts it deletes the notebook it runs and the cell sources of the gradebook);
- ``gradebook.db``: a copy of a gradebook that knows the assignment and nothing else;
- ``source/<assignment>/``: the assignment's files other than notebooks (nbgrader copies them
  next to the graded notebook);
- ``submitted/<student>/<assignment>/``: the student's notebook(s), locked cells already
  restored by :func:`dlbook.grading.integrity.repair`.

Every process of the run is tagged (:data:`dlbook.grading.runner.MARKER_ENV`) and killed when
it ends; the folder is deleted. The caller copies the autograded notebooks out and records the
scores in the real gradebook. This is a file-level sandbox, not an OS one: see
book/instructors.md for what it does and does not protect.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from .gradebook import autograded_cells
from .runner import CommandResult, run_nbgrader

#: Notebook metadata that :class:`~dlbook.grading.executor.GuardedExecute` sets: the proof that
#: nbgrader loaded the sandbox's configuration (it only logs a configuration file that fails).
GUARD_KEY = "dlbook_grade"

#: Largest autograded notebook copied out of a sandbox (outputs are capped well below this).
MAX_AUTOGRADED_BYTES = 50 * 2**20

_CONFIG_TAIL = """

# ---- appended by dlbook.grading.sandbox: this copy of the course is a throw-away sandbox ----
from dlbook.grading.executor import GuardedExecute as _GuardedExecute  # noqa: E402
from nbgrader.converters import Autograde as _Autograde  # noqa: E402
from nbgrader.preprocessors import Execute as _Execute  # noqa: E402

c.CourseDirectory.root = {root!r}
c.CourseDirectory.source_directory = "source"
c.CourseDirectory.release_directory = "release"
c.CourseDirectory.submitted_directory = "submitted"
c.CourseDirectory.autograded_directory = "autograded"
c.CourseDirectory.feedback_directory = "feedback"
c.CourseDirectory.solution_directory = "solution"
c.CourseDirectory.directory_structure = "{{nbgrader_step}}/{{student_id}}/{{assignment_id}}"
c.CourseDirectory.db_url = {db_url!r}
c.NbGrader.logfile = {logfile!r}
_steps = c.Autograde.autograde_preprocessors if "autograde_preprocessors" in c.Autograde else None
if not isinstance(_steps, list):
    _steps = _Autograde.class_traits()["autograde_preprocessors"].default()
_plain = (_Execute, "nbgrader.preprocessors.Execute", "nbgrader.preprocessors.execute.Execute")
c.Autograde.autograde_preprocessors = [_GuardedExecute if s in _plain else s for s in _steps]
c.GuardedExecute.scrub_sandbox = True
_extra = list(c.Execute.extra_arguments) if "extra_arguments" in c.Execute else []
c.GuardedExecute.extra_arguments = _extra + [
    "--IPKernelApp.exec_lines=__import__('dlbook.grading.kernel_guard', fromlist=['install']).install({max_output})"
]
c.GuardedExecute.raise_on_iopub_timeout = False  # a flood still arriving: keep what came, go on
c.GuardedExecute.iopub_timeout = 10
c.GuardedExecute.shutdown_kernel = "immediate"  # a throw-away kernel: no graceful wait at the end
c.GuardedExecute.max_output_chars = {max_output} + 65536  # room for the kernel's own note
c.GuardedExecute.max_total_output_chars = {max_total_output}
"""


@dataclass
class SandboxRun:
    """Outcome of :func:`autograde_in_sandbox`.

    ``cells``: per notebook id, ``grade id -> (auto score, max score)`` read from the sandbox's
    gradebook (a notebook is absent when nbgrader recorded nothing for it); ``autograded``: per
    notebook file name, the autograded notebook (absent when nbgrader wrote none, or a bad one);
    ``unguarded``: notebooks that nbgrader executed without :class:`GuardedExecute` (the
    configuration did not load): they must not be graded.
    """

    result: CommandResult
    cells: dict[str, dict[str, tuple[float | None, float]]] = field(default_factory=dict)
    autograded: dict[str, NotebookNode] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    unguarded: list[str] = field(default_factory=list)


def _force_remove(path: Path) -> None:
    """Delete a folder the student's code may have made hard to delete (read-only parts)."""

    def retry(func, name, _exc):  # type: ignore[no-untyped-def]
        try:
            os.chmod(os.path.dirname(name), stat.S_IRWXU)
            os.chmod(name, stat.S_IRWXU)
            func(name)
        except OSError:
            pass

    shutil.rmtree(path, onerror=retry)


def autograde_in_sandbox(
    *,
    config_text: str,
    gradebook: bytes,
    support_files: dict[str, bytes],
    assignment: str,
    student_id: str,
    notebooks: dict[str, NotebookNode],
    timeout: float,
    max_output_chars: int,
    max_total_output_chars: int,
) -> SandboxRun:
    """Run ``nbgrader autograde`` for one student in a fresh sandbox; see the module docstring.

    ``config_text``: the course's ``nbgrader_config.py``; ``gradebook``: bytes of a gradebook
    that knows the assignment; ``support_files``: the assignment's non-notebook files
    (relative path -> bytes); ``notebooks``: file name -> notebook to grade.
    """
    root = Path(tempfile.mkdtemp(prefix="dlbook-sandbox-")).resolve()
    try:
        db = root / "gradebook.db"
        db.write_bytes(gradebook)
        config = config_text + _CONFIG_TAIL.format(
            root=str(root),
            db_url=f"sqlite:///{db.as_posix()}",
            logfile=str(root / "nbgrader.log"),
            max_output=int(max_output_chars),
            max_total_output=int(max_total_output_chars),
        )
        (root / "nbgrader_config.py").write_text(config, encoding="utf-8")
        source = root / "source" / assignment
        source.mkdir(parents=True)
        for rel, data in support_files.items():
            (source / rel).parent.mkdir(parents=True, exist_ok=True)
            (source / rel).write_bytes(data)
        submitted = root / "submitted" / student_id / assignment
        submitted.mkdir(parents=True)
        for name, nb in notebooks.items():
            nbformat.write(nb, submitted / name)
        args = ["autograde", assignment, f"--student={student_id}", "--force"]
        result = run_nbgrader(args, root, timeout, marker=uuid.uuid4().hex)
        run = SandboxRun(result)
        if result.timed_out:
            return run
        for name in notebooks:
            notebook_id = Path(name).stem
            try:
                cells = autograded_cells(f"sqlite:///{db.as_posix()}", assignment, student_id, notebook_id)
            except Exception as exc:  # the student's code may have damaged the sandbox gradebook
                run.problems.append(f"{name}: cannot read the sandbox gradebook ({type(exc).__name__})")
                cells = None
            if cells is not None:
                run.cells[notebook_id] = cells
            path = root / "autograded" / student_id / assignment / name
            if path.is_symlink() or not path.is_file():
                continue
            if path.stat().st_size > MAX_AUTOGRADED_BYTES:
                run.problems.append(f"{name}: autograded notebook larger than {MAX_AUTOGRADED_BYTES} bytes")
                continue
            try:
                nb = nbformat.read(path, as_version=4)
            except Exception as exc:
                run.problems.append(f"{name}: unreadable autograded notebook ({type(exc).__name__})")
                continue
            if nb.metadata.get(GUARD_KEY, {}).get("guarded") is not True:
                run.unguarded.append(name)  # nbgrader ran without the sandbox's configuration
            else:
                run.autograded[name] = nb
        return run
    finally:
        _force_remove(root)
