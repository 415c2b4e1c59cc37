"""Every number the book states comes from a run.

Run-dependent numbers in a lesson's prose are glued from the notebook (``{glue:text}`name```) or
rendered from committed results; what remains typed must be an exact constant with a reason on
the chapter's allow-list, ``tests/prose_numbers/<chapter>.json``:
``{"chapters/cnn/x.ipynb": [{"text": "15.3%", "why": "AlexNet's published top-5 error ..."}]}``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dlbook.prose import find_prose_numbers, prose_only

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted(p for p in (ROOT / "chapters").rglob("*") if p.suffix in (".ipynb", ".md")
               and ".ipynb_checkpoints" not in p.parts)
ALLOWED_DIR = ROOT / "tests" / "prose_numbers"


def rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def allowed() -> dict[str, dict[str, str]]:
    table: dict[str, dict[str, str]] = {}
    for path in sorted(ALLOWED_DIR.glob("*.json")):
        for page, entries in json.loads(path.read_text(encoding="utf-8")).items():
            for entry in entries:
                assert set(entry) == {"text", "why"}, f"{path.name}: {page} entry {entry} needs exactly text and why"
                assert len(entry["why"].strip()) >= 10, f"{path.name}: {page} {entry['text']!r} needs a real reason"
                table.setdefault(page, {})[entry["text"]] = entry["why"]
    return table


ALLOWED = allowed()


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_no_typed_run_dependent_numbers(page):
    permitted = ALLOWED.get(rel(page), {})
    typed = [n for n in find_prose_numbers(page, rel(page)) if n.text not in permitted]
    listing = "\n".join(f"  cell {n.cell}: {n.text!r} in '... {n.context} ...'" for n in typed)
    assert not typed, (
        f"{rel(page)} types {len(typed)} number(s) into its prose. Glue a measured value from the "
        f"notebook ({{glue:text}}`name:.3f`), render it from benchmarks/results, or, for an exact "
        f"constant or a cited figure, add it with its reason to tests/prose_numbers/<chapter>.json:\n{listing}"
    )


def test_allow_list_names_real_pages_and_numbers_still_there():
    stale = []
    for page, entries in ALLOWED.items():
        path = ROOT / page
        assert path.is_file(), f"allow-list names a page that does not exist: {page}"
        present = {n.text for n in find_prose_numbers(path)}
        stale += [f"{page}: {text!r}" for text in entries if text not in present]
    assert not stale, "allow-list entries no longer in the prose (remove them):\n" + "\n".join(stale)


def test_the_scanner_flags_typed_numbers_and_ignores_glue_math_and_code(tmp_path):
    page = tmp_path / "lesson.md"
    page.write_text(
        "The model reaches 0.966 accuracy, 12% better, in 15 s, a 3.2× speed-up.\n"
        "Glued: {glue:text}`acc:.3f`, math $x = 0.5$, code `lr=0.01`, an equation\n"
        "$$ y = 2.5 x $$ (eq-y)\n"
        "and a figure of 6 x 28 x 28 values in [link](https://example.org/v0.4.2).\n"
        "References are not measurements: lesson 1.5, lessons 5.1 and 5.3, PyTorch 2.2, torch 2.14.1.\n"
        "| 1.5 | [A lesson](a.ipynb) | 0.25 |\n"
    )
    assert [n.text for n in find_prose_numbers(page)] == ["0.966", "12%", "15 s", "3.2×", "0.25"]
    assert "0.5" not in prose_only("math $x = 0.5$ here")
