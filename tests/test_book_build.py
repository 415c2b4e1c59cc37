"""The site builds with -W (any Sphinx warning fails), executing every notebook, and the pages a
reader needs are there: lessons with executed outputs, numbered equations, citations resolved
into the bibliography, launch buttons."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("book")
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", ".", "--config", "book/_config.yml",
           "--toc", "book/_toc.yml", "-W", "--path-output", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"jupyter-book build -W failed:\n{log[-6000:]}"
    return out / "_build" / "html"


def _toc_pages() -> list[str]:
    toc = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text())
    pages = [toc["root"]]
    for part in toc["parts"]:
        for chapter in part["chapters"]:
            pages.append(chapter["file"])
            pages += [s["file"] for s in chapter.get("sections", [])]
    return pages


@pytest.mark.slow
def test_every_toc_page_is_built(site):
    missing = [p for p in _toc_pages() if not (site / f"{p}.html").is_file()]
    assert not missing, f"pages missing from the built site: {missing}"
    assert (site / "index.html").is_file()


@pytest.mark.slow
def test_lessons_are_executed_with_profile_and_figures(site):
    for page in _toc_pages():
        if not (ROOT / f"{page}.ipynb").is_file():
            continue
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
    for author in ("Glorot", "Rumelhart", "He"):
        assert author in bib, f"{author} missing from the bibliography"
    assert "bibliography.html#id" in html or "bibliography.html#" in html, "citations link to the bibliography"


@pytest.mark.slow
def test_api_appendix_documents_the_library(site):
    html = (site / "book/dlbook-api.html").read_text(encoding="utf-8")
    for name in ("dlbook.train.fit", "dlbook.data.download.fetch", "dlbook.runtime.profile", "dlbook.gradients.gradcheck64"):
        assert name in html, f"{name} is not documented in the appendix"
