"""The whole book as one PDF (``bash tools/build-pdf``): built, printed and read back.

Not part of ``bash tools/test``'s full run (``.ci/run``): printing about 750 pages and typesetting
about 4,000 equations takes minutes on CI's two cores, which the 15-minute budget does not
have. Run it with ``bash tools/test tests/test_book_pdf.py`` after a full run (it reuses the
notebooks that run executed); the pages workflow builds and publishes the PDF with every release.
The printing itself is tested in every CI run on one page of the site
(``tests/test_site_browser.py::test_a_lesson_prints_to_pdf_with_its_equations``).
"""

from __future__ import annotations

import re
import sys
import unicodedata
from pathlib import Path

import pytest
import yaml
from site_build import toc_pages

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import book_pdf  # noqa: E402
import book_site  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pdf(tmp_path_factory: pytest.TempPathFactory) -> tuple[book_pdf.PdfReport, list[str]]:
    from pypdf import PdfReader

    work = tmp_path_factory.mktemp("pdf")
    report = book_pdf.build_pdf(work / "dlbook.pdf", work / "build", book_site.executed_dir())
    # NFKC: the printed text uses ligatures (the "fi" of "Artificial" is one glyph, U+FB01)
    texts = [unicodedata.normalize("NFKC", page.extract_text() or "") for page in PdfReader(report.path).pages]
    return report, texts


def _chapter_titles() -> list[str]:
    """The H1 of every chapter landing page in book/_toc.yml, as printed."""
    toc = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text())
    titles = []
    for part in toc["parts"]:
        for chapter in part["chapters"]:
            path = ROOT / f"{chapter['file']}.md"
            if path.is_file():
                heading = next(line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("# "))
                titles.append(heading[2:].strip().replace("`", ""))  # Markdown code prints as text
    return titles


def test_page_count_and_size(pdf) -> None:
    report, texts = pdf
    pages_in_toc = len(toc_pages())
    # measured 2026-12-07 (bash tools/test tests/test_book_pdf.py after a full run, commit 9ca2002):
    # 1,125 pages and 56 MiB for 70 pages of the table of contents, in 6 min on 2 CPU cores
    assert 4 * pages_in_toc <= report.pages <= 25 * pages_in_toc, f"{report.pages} pages for {pages_in_toc} toc pages"
    assert 2**20 < report.bytes < 150 * 2**20, f"{report.bytes / 2**20:.1f} MiB"
    assert len(texts) == report.pages


def test_every_chapter_is_in_the_pdf_with_numbered_pages(pdf) -> None:
    report, texts = pdf
    text = re.sub(r"\s+", " ", " ".join(texts))
    missing = [title for title in _chapter_titles() if re.sub(r"\s+", " ", title) not in text]
    assert not missing, f"chapters missing from the PDF: {missing}"
    assert f"1 / {report.pages}" in texts[0] and f"{report.pages} / {report.pages}" in texts[-1], "page numbers"


def test_equations_are_typeset_and_chinese_is_printed(pdf) -> None:
    report, texts = pdf
    assert report.equations > 1000, f"only {report.equations} equations typeset"
    raw = [i + 1 for i, t in enumerate(texts) if "$$" in t or "\\[" in t or "\\begin{" in t]
    assert not raw, f"raw LaTeX on pages {raw[:10]}"
    # the glossary gives each term its Chinese name: without a CJK font these print as blanks
    assert "注意力机制" in "".join(texts), "the Chinese names are missing (install fonts-wqy-microhei)"
