"""The site builds with -W (any Sphinx warning fails) with every notebook executed, and the pages a
reader needs are there: lessons with executed outputs, numbered equations, citations resolved
into the bibliography, launch buttons."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from site_build import toc_pages

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_every_toc_page_is_built(site):
    missing = [p for p in toc_pages() if not (site / f"{p}.html").is_file()]
    assert not missing, f"pages missing from the built site: {missing}"
    assert (site / "index.html").is_file()


@pytest.mark.slow
def test_full_scale_results_page_renders_the_committed_files(site):
    html = (site / "book" / "full-scale-results.html").read_text(encoding="utf-8")
    assert "full-cpu.json:" in html and "lessons measured" in html, "the results page did not execute"
    assert "cnn/cnn-architectures" in html and "At full scale" in html, "no lesson rendered on the results page"


@pytest.mark.slow
def test_lessons_are_executed_with_profile_and_figures(site):
    for page in toc_pages():
        if not page.startswith("chapters/") or not (ROOT / f"{page}.ipynb").is_file():
            continue  # lessons only: book/full-scale-results.ipynb renders committed files, it trains nothing
        html = (site / f"{page}.html").read_text(encoding="utf-8")
        assert "profile on" in html, f"{page}: the executed set-up output (profile and device) is missing"
        # Output figures live in _images/ (theme icons such as the Colab logo live in _static/).
        figures = re.findall(r'<img [^>]*src="[^"]*_images/[^"]+\.png"', html)
        assert figures, f"{page}: no figure in the executed page (is MPLBACKEND forcing a non-inline backend?)"
        assert "colab.research.google.com" in html, f"{page}: no Colab launch button"


@pytest.mark.slow
def test_equations_are_numbered_and_citations_resolve(site):
    html = (site / "chapters/ann/deep-mlp-mnist.html").read_text(encoding="utf-8")
    assert 'id="equation-eq-deep-batchnorm"' in html
    assert re.search(r'class="eqno">\(\d+(\.\d+)*\)', html), "numbered equations render with their number"
    bib = (site / "book/bibliography.html").read_text(encoding="utf-8")
    for author in ("Glorot", "Rumelhart", "He", "Hochreiter", "Loshchilov"):
        assert author in bib, f"{author} missing from the bibliography"
    for chapter in ("Artificial neural networks", "Convolutional neural networks", "Recurrent neural networks",
                    "Optimization"):
        assert f"<h2>{chapter}" in bib, f"no bibliography section for {chapter}"
    assert "bibliography.html#id" in html or "bibliography.html#" in html, "citations link to the bibliography"


@pytest.mark.slow
def test_api_appendix_documents_the_library(site):
    html = (site / "book/dlbook-api.html").read_text(encoding="utf-8")
    for name in ("dlbook.train.fit", "dlbook.data.download.fetch", "dlbook.runtime.profile", "dlbook.gradients.gradcheck64"):
        assert name in html, f"{name} is not documented in the appendix"
