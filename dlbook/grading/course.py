"""Where the course lives: find the course root and read its nbgrader directory layout."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CONFIG_NAME = "nbgrader_config.py"
READ_ONLY_ENV = "DLBOOK_GRADING_READ_ONLY"  # tells nbgrader_config.py not to create folders


class CourseError(Exception):
    """The course, an assignment or a folder given on the command line does not exist."""


class ReleaseError(Exception):
    """nbgrader could not generate the assignment (raised by :mod:`.release`)."""


@dataclass(frozen=True)
class CourseLayout:
    """Absolute paths of an nbgrader course, as configured by its ``nbgrader_config.py``."""

    root: Path
    source_dir: Path
    release_dir: Path
    submitted_dir: Path
    autograded_dir: Path
    db_url: str
    directory_structure: str = "{nbgrader_step}/{student_id}/{assignment_id}"
    feedback_dir: Path | None = None  # default: ``feedback`` next to the autograded folder

    def __post_init__(self) -> None:
        if self.feedback_dir is None:
            object.__setattr__(self, "feedback_dir", self.autograded_dir.parent / "feedback")

    @property
    def logs_dir(self) -> Path:
        """Where the grader keeps nbgrader's output of each student (``grading/logs``)."""
        return self.submitted_dir.parent / "logs"

    def output_dirs(self) -> list[Path]:
        """The folders the grader writes, besides the submitted one: autograded, feedback, logs."""
        assert self.feedback_dir is not None
        return [self.autograded_dir, self.feedback_dir, self.logs_dir]

    @property
    def config_file(self) -> Path:
        """The course's nbgrader configuration file."""
        return self.root / CONFIG_NAME

    def step_folder(self, step_dir: Path, student_id: str, assignment: str) -> Path:
        """Folder of one student's assignment in a grading step (``step_dir``: e.g. ``submitted_dir``)."""
        try:
            step = step_dir.relative_to(self.root).as_posix()
        except ValueError:  # configured outside the course root
            step = step_dir.as_posix()
        relative = self.directory_structure.format(
            nbgrader_step=step, student_id=student_id, assignment_id=assignment
        )
        return self.root / relative

    def assignments(self) -> list[str]:
        """Names of the assignments that have a source folder, sorted."""
        if not self.source_dir.is_dir():
            return []
        return sorted(p.name for p in self.source_dir.iterdir() if p.is_dir() and not p.name.startswith("."))

    def source_notebooks(self, assignment: str) -> list[str]:
        """File names of the notebooks of ``assignment`` (e.g. ``["mlp-lab.ipynb"]``), sorted.

        Raises:
            CourseError: the assignment has no source folder or no notebook.
        """
        folder = self.source_dir / assignment
        if not folder.is_dir():
            known = ", ".join(self.assignments()) or "none"
            raise CourseError(f"unknown assignment {assignment!r}: no folder {folder} (known: {known})")
        names = sorted(p.name for p in folder.glob("*.ipynb"))
        if not names:
            raise CourseError(f"assignment {assignment!r} has no notebook in {folder}")
        return names


def find_course_root(start: Path | None = None) -> Path:
    """Directory holding ``nbgrader_config.py``: walk up from ``start`` (default: the cwd), then
    fall back on the repository that contains this package (an editable install).

    Raises:
        CourseError: no course found.
    """
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / CONFIG_NAME).is_file():
            return folder
    package_repo = Path(__file__).resolve().parents[2]
    if (package_repo / CONFIG_NAME).is_file():
        return package_repo
    raise CourseError(f"no {CONFIG_NAME} found above {here}; pass --course-root")


def load_layout(root: Path) -> CourseLayout:
    """Read the directory layout of the course rooted at ``root`` from its ``nbgrader_config.py``.

    nbgrader's own ``CourseDirectory`` resolves the values, so defaults and validation are the
    ones nbgrader uses; the root is always ``root``, whatever the file says.

    Raises:
        CourseError: ``root`` has no ``nbgrader_config.py``.
    """
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config.loader import PyFileConfigLoader

    root = Path(root).resolve()
    if not (root / CONFIG_NAME).is_file():
        raise CourseError(f"{root} is not a course root: it has no {CONFIG_NAME}")
    previous = os.environ.get(READ_ONLY_ENV)
    os.environ[READ_ONLY_ENV] = "1"  # the config file then creates no folder
    try:
        config = PyFileConfigLoader(CONFIG_NAME, path=str(root)).load_config()
    finally:
        if previous is None:
            del os.environ[READ_ONLY_ENV]
        else:
            os.environ[READ_ONLY_ENV] = previous
    coursedir = CourseDirectory(config=config)
    coursedir.root = str(root)

    def folder(name: str) -> Path:
        return (root / name).resolve()

    return CourseLayout(
        root=root,
        source_dir=folder(coursedir.source_directory),
        release_dir=folder(coursedir.release_directory),
        submitted_dir=folder(coursedir.submitted_directory),
        autograded_dir=folder(coursedir.autograded_directory),
        feedback_dir=folder(coursedir.feedback_directory),
        db_url=coursedir.db_url,
        directory_structure=coursedir.directory_structure,
    )
