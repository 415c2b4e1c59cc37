"""The book as one PDF: Jupyter Book's ``singlehtml`` build printed by headless Chromium.

    bash tools/build-pdf                      -> _build/pdf/dlbook.pdf
    python tools/book_pdf.py --out FILE.pdf   (inside the course environment)

LaTeX would need a TeX installation and re-typesets every notebook output; the single HTML page
is the site itself (same MathJax, same figures, same glued numbers), so the PDF shows exactly
what the site shows. Notebooks the last ``bash tools/test`` executed (``_build/executed``, or
``DLBOOK_EXECUTED_DIR``) are reused; any other lesson is executed by the build (minutes).
"""

from __future__ import annotations

import argparse
import base64
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import book_site  # noqa: E402  (tools/ is not a package)

# A4 with room for a running header and the page numbers; backgrounds keep code-cell shading.
PRINT = {
    "paperWidth": 8.27,
    "paperHeight": 11.69,
    "marginTop": 0.6,
    "marginBottom": 0.6,
    "marginLeft": 0.55,
    "marginRight": 0.55,
    "printBackground": True,
    "displayHeaderFooter": True,
    "headerTemplate": '<div style="font-size:7px;width:100%;text-align:center;color:#666"><span class="title"></span></div>',
    "footerTemplate": ('<div style="font-size:7px;width:100%;text-align:center;color:#666">'
                       '<span class="pageNumber"></span> / <span class="totalPages"></span></div>'),
}

# The site's navigation, buttons and search are for the screen: hidden in print. The theme's own
# print style hides most of them; these are what remained on the printed page.
PRINT_CSS = """
@media print {
  .bd-header, .bd-sidebar-primary, .bd-sidebar-secondary, .bd-footer, .bd-footer-content,
  .bd-header-article, .prev-next-area, .header-article-items, .search-button-field,
  #pst-back-to-top, .skip-link, .headerlink, .toggle-details, .bd-search { display: none !important; }
  .bd-main .bd-content .bd-article-container { max-width: 100% !important; }
  .bd-page-width { max-width: 100% !important; }
  img, figure, .cell_output, table, .math { break-inside: avoid; }
  h1, h2, h3 { break-after: avoid; }
  h1 { break-before: page; }
}
"""


@dataclass
class PdfReport:
    path: Path
    pages: int
    bytes: int
    equations: int
    build_seconds: float
    print_seconds: float


def print_to_pdf(site: Path, page: str, out: Path, profile_dir: Path, limit_seconds: float = 900) -> tuple[int, float]:
    """Print ``page`` (a path inside the built ``site``) to ``out`` once MathJax has typeset every
    equation; returns (equations typeset, seconds)."""
    start = time.perf_counter()
    driver = book_site.chromium(profile_dir, command_timeout=limit_seconds)
    try:
        with book_site.serve(site) as url:
            driver.get(url + page)
            equations = driver.execute_script("return document.querySelectorAll('.math').length")
            typeset = book_site.wait_for_mathjax(driver, limit_seconds=limit_seconds)
            if typeset < equations:
                raise RuntimeError(f"MathJax typeset {typeset} of {equations} equations within {limit_seconds} s: "
                                   "the PDF would show raw LaTeX (is the machine very busy?)")
            # the print style, except that the book's title page starts on page 1, not after a blank one
            driver.execute_script(
                "const s = document.createElement('style'); s.textContent = arguments[0]; document.head.appendChild(s);"
                "const first = document.querySelector('main h1'); if (first) first.style.breakBefore = 'auto';",
                PRINT_CSS,
            )
            pdf = driver.execute_cdp_cmd("Page.printToPDF", PRINT)
    finally:
        driver.quit()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(pdf["data"]))
    return typeset, time.perf_counter() - start


def build_pdf(out: Path, work: Path, executed: Path | None) -> PdfReport:
    """Build the singlehtml book into ``work`` and print it to ``out``."""
    from pypdf import PdfReader

    start = time.perf_counter()
    site, _ = book_site.build(work, builder="singlehtml", executed=executed)
    build_seconds = time.perf_counter() - start
    # singlehtml writes the whole book into its root document, book/intro.html, but with links to
    # _static/ and _images/ relative to the site's root: read from the root, the page finds them
    (site / "dlbook-print.html").write_bytes((site / "book" / "intro.html").read_bytes())
    equations, print_seconds = print_to_pdf(site, "dlbook-print.html", out, work / "chromium-profile")
    pages = len(PdfReader(out).pages)
    return PdfReport(out, pages, out.stat().st_size, equations, build_seconds, print_seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=book_site.ROOT / "_build" / "pdf" / "dlbook.pdf")
    parser.add_argument("--executed", type=Path, default=book_site.executed_dir() or book_site.ROOT / "_build" / "executed",
                        help="executed notebooks to reuse (default: what the last tools/test run kept)")
    args = parser.parse_args(argv)
    if not args.executed.is_dir():
        print(f"no executed notebooks in {args.executed}: the build executes every lesson (run bash tools/test "
              "first to reuse its outputs)")
    with tempfile.TemporaryDirectory(prefix="dlbook-pdf-") as work:
        report = build_pdf(args.out.resolve(), Path(work), args.executed if args.executed.is_dir() else None)
    print(f"{report.path}: {report.pages} pages, {report.bytes / 2**20:.1f} MiB, {report.equations} equations; "
          f"built in {report.build_seconds:.0f} s, printed in {report.print_seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
