"""Build the site once per test session (shared by test_book_build.py and test_site_browser.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))  # book_site: the build and the browser, shared with tools/book_pdf.py
import book_site  # noqa: E402


def toc_pages() -> list[str]:
    """Every page of book/_toc.yml, root first, without suffix."""
    toc = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text())

    def walk(entries: list[dict]) -> list[str]:  # a page, then its sections (derivations nest)
        return [page for e in entries for page in [e["file"], *walk(e.get("sections", []))]]

    return [toc["root"]] + [page for part in toc["parts"] for page in walk(part["chapters"])]


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Path:
    prebuilt = os.environ.get("DLBOOK_BUILT_SITE")
    if prebuilt:  # check an existing build (e.g. _build/html from tools/build-book) instead
        assert (Path(prebuilt) / "index.html").is_file(), f"DLBOOK_BUILT_SITE={prebuilt} has no index.html"
        return Path(prebuilt)
    # The published build (book/_config.yml, tools/build-book) always executes every notebook. The
    # test builds with the same configuration in myst-nb's cache mode, so outputs nbval has just
    # produced for unchanged code are reused rather than computed a second time.
    try:
        html, primed = book_site.build(tmp_path_factory.mktemp("book"), "html", book_site.executed_dir())
    except book_site.BuildError as error:
        pytest.fail(str(error), pytrace=False)
    print(f"book built with {primed} notebooks executed by nbval, the rest executed by the build")
    return html
