"""A submission is matched to its lab by the lab's identity in the notebook metadata, which
``release`` writes (``dlbook.grading.release``, ``dlbook.grading.submissions``,
``dlbook.grading.grade``); notebooks without it (older releases) keep the rename rule."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
from grading_helpers import REPO

from dlbook.grading.grade import _check_student
from dlbook.grading.integrity import load_reference
from dlbook.grading.submissions import LAB_KEY, LabStamp, lab_stamp

ASSIGNMENTS = sorted(p.name for p in (REPO / "solutions").iterdir() if p.is_dir() and not p.name.startswith("."))
ANN_LAB = REPO / "labs" / "ann" / "mlp-lab.ipynb"
CNN_LAB = REPO / "labs" / "cnn" / "cnn-lab.ipynb"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_released_labs_carry_their_identity(assignment: str) -> None:
    for path in sorted((REPO / "labs" / assignment).glob("*.ipynb")):
        assert lab_stamp(path) == LabStamp(assignment, path.name), (
            f"labs/{assignment}/{path.name} has no {LAB_KEY!r} metadata: "
            f"run `python -m dlbook.grading release {assignment}`"
        )


def test_sources_and_other_files_have_no_identity(tmp_path: Path) -> None:
    assert lab_stamp(REPO / "solutions" / "ann" / "mlp-lab.ipynb") is None
    (tmp_path / "bad.ipynb").write_text("not json", encoding="utf-8")
    assert lab_stamp(tmp_path / "bad.ipynb") is None
    assert lab_stamp(tmp_path / "absent.ipynb") is None


@pytest.fixture(scope="module")
def ann_batch() -> SimpleNamespace:
    """What ``_check_student`` reads of a batch grading the ANN lab."""
    ref = load_reference(REPO / "solutions" / "ann" / "mlp-lab.ipynb", ANN_LAB)
    return SimpleNamespace(assignment="ann", notebooks=["mlp-lab.ipynb"], refs={"mlp-lab.ipynb": ref})


def _student(root: Path, name: str, files: dict[str, Path]) -> Path:
    for rel, source in files.items():
        (root / name / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, root / name / rel)
    return root / name


def test_another_labs_notebook_is_reported_not_renamed(tmp_path: Path, ann_batch: SimpleNamespace) -> None:
    # only the CNN lab, in nbgrader's nested layout: the labs share cell ids (setup, ex1-visible...)
    valid, problems, _ = _check_student(_student(tmp_path, "carol", {"cnn/cnn-lab.ipynb": CNN_LAB}), ann_batch)
    assert valid == []
    row = problems["mlp-lab.ipynb"]
    assert row.status == "missing-notebook"
    assert row.message == "no mlp-lab.ipynb in carol/; found another lab's notebook (cnn/cnn-lab.ipynb, lab cnn)"
    # the CNN lab saved under the ANN lab's name
    valid, problems, _ = _check_student(_student(tmp_path, "dave", {"mlp-lab.ipynb": CNN_LAB}), ann_batch)
    assert valid == [] and problems["mlp-lab.ipynb"].status == "missing-notebook"
    assert "another lab's notebook (mlp-lab.ipynb, lab cnn)" in problems["mlp-lab.ipynb"].message


def test_own_lab_under_another_name_is_a_rename(tmp_path: Path, ann_batch: SimpleNamespace) -> None:
    folder = _student(tmp_path, "erin", {"Copy of mlp-lab.ipynb": ANN_LAB, "cnn/cnn-lab.ipynb": CNN_LAB})
    valid, problems, notes = _check_student(folder, ann_batch)
    assert problems == {}
    (sub,) = valid
    assert sub.renamed_from == "Copy of mlp-lab.ipynb"
    assert [n.text for n in notes["mlp-lab.ipynb"]] == [
        "renamed: submitted as Copy of mlp-lab.ipynb, graded as mlp-lab.ipynb"
    ]
    # the expected notebook next to another lab's: graded, the other ignored
    folder = _student(tmp_path, "gina", {"mlp-lab.ipynb": ANN_LAB, "cnn-lab.ipynb": CNN_LAB})
    valid, problems, _ = _check_student(folder, ann_batch)
    assert [s.path for s in valid] == [folder / "mlp-lab.ipynb"] and problems == {}


def test_unstamped_notebook_keeps_the_rename_rule(tmp_path: Path, ann_batch: SimpleNamespace) -> None:
    """A notebook from before the stamp (here: the CNN lab without it) is judged by its cells."""
    nb = nbformat.read(CNN_LAB, as_version=4)
    del nb.metadata[LAB_KEY]
    old = tmp_path / "old-cnn-lab.ipynb"
    nbformat.write(nb, old)
    valid, problems, notes = _check_student(_student(tmp_path, "frank", {"cnn-lab.ipynb": old}), ann_batch)
    assert problems == {} and valid[0].renamed_from == "cnn-lab.ipynb"
    assert notes["mlp-lab.ipynb"][0].text == "renamed: submitted as cnn-lab.ipynb, graded as mlp-lab.ipynb"
