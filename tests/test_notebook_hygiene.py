"""Repository rules that CI enforces: notebooks without outputs, one title each, the lesson shape's
set-up and outcome check, everything in the table of contents, no data committed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".venv", "_build", ".git", "grading", ".ipynb_checkpoints", "node_modules"}


def project_files(pattern: str) -> list[Path]:
    # Walk only the project's own top-level folders: .venv alone holds ~100k files.
    found = [p for p in ROOT.glob(pattern) if p.is_file()]
    for top in ROOT.iterdir():
        if top.is_dir() and top.name not in SKIP_DIRS and not top.name.startswith("."):
            found += [p for p in top.rglob(pattern) if not {".ipynb_checkpoints", "__pycache__"} & set(p.parts)]
    return sorted(found)


NOTEBOOKS = project_files("*.ipynb")
LESSONS = [p for p in NOTEBOOKS if p.relative_to(ROOT).parts[0] == "chapters"]


def rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def test_there_are_lessons_and_labs():
    assert LESSONS, "no lesson notebooks found under chapters/"
    assert any(rel(p).startswith("labs/") for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=rel)
def test_notebook_has_no_outputs(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    dirty = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{rel(path)} has outputs in cells {dirty}: run `nbstripout {rel(path)}` before committing"


@pytest.mark.parametrize("path", LESSONS, ids=rel)
def test_lesson_shape(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    markdown = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"]
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    titles = [line for text in markdown for line in text.splitlines() if re.match(r"^# \S", line)]
    assert len(titles) == 1, f"{rel(path)} needs exactly one '# title', found {titles}"
    assert markdown and markdown[0].startswith("# "), f"{rel(path)} must open with its title"
    assert any("dlbook.setup()" in c for c in code[:2]), f"{rel(path)}: the set-up cell must call dlbook.setup()"
    assert any(re.search(r"^\s*assert ", c, re.M) for c in code), f"{rel(path)} asserts nothing"
    assert nb["metadata"].get("kernelspec", {}).get("name") == "python3"


def _toc_files(node) -> list[str]:
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("file", "root"):
                found.append(value)
            else:
                found += _toc_files(value)
    elif isinstance(node, list):
        for item in node:
            found += _toc_files(item)
    return found


def test_toc_lists_every_chapter_page_and_nothing_missing():
    toc = _toc_files(yaml.safe_load((ROOT / "book" / "_toc.yml").read_text()))
    for entry in toc:
        assert any((ROOT / f"{entry}{ext}").is_file() for ext in (".md", ".ipynb")), f"_toc.yml lists missing {entry}"
    pages = [p for p in project_files("*.md") + LESSONS if rel(p).startswith("chapters/")]
    missing = [rel(p) for p in pages if str(p.relative_to(ROOT).with_suffix("")) not in toc]
    assert not missing, f"pages not in book/_toc.yml (they would not be built): {missing}"


def test_no_data_or_large_files_committed():
    data_like = [rel(p) for p in project_files("*") if p.is_file() and (
        p.suffix in {".gz", ".pt", ".pth", ".npz", ".db"} or "ubyte" in p.name or p.stat().st_size > 2_000_000)]
    assert not data_like, f"data or large files in the repository (use the mirror / cache): {data_like}"


_WIDGET = re.compile(r"\bipywidgets\.(interact|interactive)\b|\binteract\(|\bwidgets\.[A-Z]\w*\(")


@pytest.mark.parametrize("path", LESSONS, ids=rel)
def test_widget_explorers_have_a_static_figure(path):
    """The site cannot run widgets: every explorer cell is hidden there (remove-output) and an
    earlier cell draws the same figure statically, so a reader of the site loses nothing."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    for i, cell in enumerate(code):
        source = "".join(cell["source"])
        if not _WIDGET.search(source):
            continue
        tags = cell.get("metadata", {}).get("tags", [])
        assert "remove-output" in tags, f"{rel(path)}: widget cell {i} must be tagged remove-output"
        earlier = "".join("".join(c["source"]) for c in code[:i])
        assert re.search(r"plt\.show\(\)|\.savefig\(|plot_\w+\(", earlier), (
            f"{rel(path)}: widget cell {i} has no static figure before it for the site")


def _colab_cell():
    import importlib.util

    spec = importlib.util.spec_from_file_location("colab_cell", ROOT / "tools" / "colab_cell.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", LESSONS, ids=rel)
def test_lesson_opens_with_the_colab_setup_cell(path):
    """The first code cell installs dlbook where it is missing (Colab), identical in every lesson."""
    import nbformat

    assert _colab_cell().has_cell(nbformat.read(path, as_version=4)), (
        f"{rel(path)}: the first code cell must be the Colab set-up cell: run python tools/colab_cell.py {rel(path)}")


def test_bibliography_page_is_current():
    """book/bibliography.md lists each cited paper under the chapter that first cites it."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "bibliography.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_chapter_tables_number_lessons_as_the_sidebar_does():
    """A chapter's own table numbers its lessons 1.1, 1.2, ... in the order and with the numbers
    the numbered sidebar gives them (derivation pages nest under their lesson, and the index
    page's own headings are rubrics, so neither shifts the lessons' numbers)."""
    toc = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text())
    numbered = [p for p in toc["parts"] if p.get("numbered")]
    assert numbered, "no numbered part in book/_toc.yml"
    for number, part in enumerate(numbered, start=1):
        (chapter,) = part["chapters"]
        expected = [(f"{number}.{k}", Path(s["file"]).name) for k, s in enumerate(chapter["sections"], start=1)]
        index = (ROOT / f"{chapter['file']}.md").read_text(encoding="utf-8")
        table = re.findall(r"^\| (\d+\.\d+) \| \[[^\]]+\]\(([\w-]+)\.ipynb\)", index, re.M)
        assert table == expected, f"{chapter['file']}.md numbers its lessons {table}, the sidebar {expected}"
        headings = re.findall(r"^##+ .+$", index, re.M)
        assert not headings, f"{chapter['file']}.md: section headings shift the sidebar's lesson numbers: {headings}"


@pytest.mark.parametrize("path", LESSONS, ids=rel)
def test_lesson_ends_its_outcome_check_with_the_full_scale_results(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    stem = f"{path.parent.name}/{path.stem}"
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert any(f'show_full_scale("{stem}")' in c for c in code), (
        f"{rel(path)}: end the outcome check with a cell calling show_full_scale(\"{stem}\") "
        "(dlbook.results), which renders the committed full-profile results or 'not measured yet'"
    )


def _lesson_numbers() -> dict[str, str]:
    """``chapters/cnn/training-cnns`` -> ``2.9``: the numbers the sidebar gives the lessons."""
    toc = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text())
    numbered = [p for p in toc["parts"] if p.get("numbered")]
    return {s["file"]: f"{n}.{k}" for n, part in enumerate(numbered, start=1)
            for k, s in enumerate(part["chapters"][0]["sections"], start=1)}


def test_lesson_links_carry_the_sidebars_number():
    """A link written "[lesson 2.9](../chapters/cnn/training-cnns.ipynb)" names the number the
    sidebar shows: adding a lesson renumbers the ones after it, and this finds every stale one."""
    numbers = _lesson_numbers()
    stale = []
    for page in project_files("*.md"):
        if rel(page).split("/")[0] not in ("book", "chapters"):
            continue
        for number, target in re.findall(r"\[lesson (\d+\.\d+)\]\(([^)#]+)\.ipynb", page.read_text(encoding="utf-8")):
            key = rel((page.parent / target).resolve().with_suffix(".ipynb")).removesuffix(".ipynb")
            if numbers.get(key) != number:
                stale.append(f"{rel(page)}: lesson {number} -> {key} is {numbers.get(key)}")
    assert not stale, stale
    assert numbers["chapters/ann/neuron-and-mlp"] == "1.1"


def test_references_bib_parses():
    """Every entry of book/references.bib is well formed (the book build fails on one missing brace)."""
    from pybtex.database import parse_file

    entries = parse_file(str(ROOT / "book" / "references.bib")).entries
    assert len(entries) > 100
