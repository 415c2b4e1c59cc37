"""The built site in a real browser (headless Chromium), served from localhost with no internet.

Every page of the table of contents loads without console errors, MathJax (served from the site,
not a CDN) has typeset the equations, every image loads, every internal link and anchor resolves,
and the search page finds a term. Screenshots of the home page and a chapter page are written to
``artifacts/screenshots`` (kept by CI as artefacts).

Chromium and ChromeDriver come from Debian (``apt-get install chromium chromium-driver``);
``tools/test`` installs them when they are missing.
"""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import sys
import threading
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urljoin, urlparse

import pytest
from site_build import ROOT, toc_pages

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SCREENSHOTS = ROOT / "artifacts" / "screenshots"


@pytest.fixture(scope="module")
def server(site: Path) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the pytest output readable
        pass


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    if missing:
        pytest.fail(f"{missing} not found: install Debian's chromium and chromium-driver "
                    "(tools/test does this with apt-get when it runs as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # No network here: without the background-networking flags Chromium keeps trying Google's hosts.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,900",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait_for_mathjax(driver) -> int:
    """Wait until MathJax has typeset every ``.math`` element (or 120 s); the number typeset, or
    -1 when MathJax never loaded. MathJax inserts a page's typeset maths all at once when it has
    finished, which on a busy machine took over 30 s for a page with 90 expressions."""
    driver.set_script_timeout(150)
    return driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const start = Date.now();
        (function poll() {
          // Count the equations on every poll: once in CI the count read right after the page load
          // was 0 on a page with 169 equations, which ended the wait before MathJax had run.
          const wanted = document.querySelectorAll('.math').length;
          if (!wanted && document.readyState === 'complete' && Date.now() - start > 300) { done(0); return; }
          const typeset = document.querySelectorAll('mjx-container').length;
          const loaded = window.MathJax && MathJax.startup && MathJax.startup.promise;
          if (wanted && loaded && typeset >= wanted) { done(typeset); }
          else if (Date.now() - start > 120000) { done(loaded ? typeset : -1); }
          else { setTimeout(poll, 100); }
        })();
        """
    )


@pytest.mark.slow
def test_every_page_loads_renders_math_and_images(browser, server):
    problems: list[str] = []
    typeset_total = 0
    for page in toc_pages():
        browser.get(urljoin(server, f"{page}.html"))
        typeset = _wait_for_mathjax(browser)
        n_math = browser.execute_script("return document.querySelectorAll('.math').length")
        if 0 <= typeset < n_math:
            # A page whose equations are not all typeset gets a second load before it is called
            # broken (the same built site that once failed here passed when checked again).
            print(f"{page}: {typeset} of {n_math} equations typeset after the wait; reloading once")
            browser.get(urljoin(server, f"{page}.html"))
            typeset = _wait_for_mathjax(browser)
        if typeset < 0:
            problems.append(f"{page}: MathJax never loaded (is it served from _static/mathjax?)")
        typeset_total += max(typeset, 0)
        if typeset >= 0 and typeset < n_math:
            problems.append(f"{page}: {n_math} math elements but {typeset} typeset")
        text = browser.execute_script("return document.querySelector('main') ? "
                                      "document.querySelector('main').innerText : document.body.innerText")
        if "$$" in text:
            problems.append(f"{page}: raw $$ in the rendered text")
        broken = browser.execute_script(
            "return [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
        problems += [f"{page}: image did not load: {src}" for src in broken]
        for entry in browser.get_log("browser"):
            if entry["level"] == "SEVERE":
                problems.append(f"{page}: console error: {entry['message'][:300]}")
    assert not problems, "\n".join(problems)
    assert typeset_total > 100, f"only {typeset_total} equations typeset across the site"


@pytest.mark.slow
def test_screenshots_of_home_and_a_chapter(browser, server):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for name, page in (("home", "book/intro.html"), ("chapter", "chapters/ann/backpropagation.html")):
        browser.get(urljoin(server, page))
        _wait_for_mathjax(browser)
        path = SCREENSHOTS / f"{name}.png"
        assert browser.save_screenshot(str(path)), f"could not save {path}"
        assert path.stat().st_size > 10_000, f"{path} is suspiciously small (blank page?)"


@pytest.mark.slow
def test_search_finds_a_term(browser, server):
    browser.get(urljoin(server, "search.html?q=backpropagation"))
    browser.set_script_timeout(60)
    hits = browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const start = Date.now();
        (function poll() {
          const items = document.querySelectorAll('#search-results li');
          if (items.length) { done([...items].map(li => li.querySelector('a').getAttribute('href'))); }
          else if (Date.now() - start > 30000) { done([]); } else { setTimeout(poll, 200); }
        })();
        """
    )
    assert hits, "the search page found nothing for 'backpropagation'"
    assert any("backprop" in h for h in hits), f"no backpropagation page among the hits: {hits[:10]}"


@pytest.mark.slow
def test_labs_page_opens_every_lab_in_colab_and_downloads_it(browser, server):
    """Every student notebook in labs/ is one click away: an "Open in Colab" link at this
    release's tag (tools/project.py) and a download link that serves the committed file itself."""
    from selenium.webdriver.common.by import By

    sys.path.insert(0, str(ROOT / "tools"))
    import project

    labs = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "labs").rglob("*.ipynb")
                  if ".ipynb_checkpoints" not in p.parts)
    assert labs, "no student notebooks in labs/"
    browser.get(urljoin(server, "book/labs.html"))
    colab = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "a.colab-link")]
    assert sorted(colab) == sorted(project.colab_url(p) for p in labs), colab
    assert all(a.text == "Open in Colab" for a in browser.find_elements(By.CSS_SELECTOR, "a.colab-link"))
    downloads = {a.text: a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "a.download")}
    for lab in labs:
        name = Path(lab).name
        assert name in downloads, f"no download link named {name} on the labs page: {sorted(downloads)}"
        with urllib.request.urlopen(downloads[name]) as response:  # the local server, not the internet
            served = response.read()
        assert served == (ROOT / lab).read_bytes(), f"{downloads[name]} is not {lab}"


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(values["id"])
        if tag == "a" and values.get("href"):
            self.hrefs.append(values["href"])


@functools.cache
def _parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


@pytest.mark.slow
def test_every_internal_link_and_anchor_resolves(site):
    broken: list[str] = []
    pages = [site / f"{p}.html" for p in toc_pages()] + [site / "genindex.html"]
    for page in pages:
        for href in _parse(page).hrefs:
            if urlparse(href).scheme or href.startswith(("mailto:", "//", "javascript:")):
                continue  # external: the browser test runs offline, so they are not followed
            target, fragment = urldefrag(urljoin(page.as_uri(), href))
            path = Path(unquote(urlparse(target).path))
            if path.is_dir():
                path = path / "index.html"
            if not path.is_file():
                broken.append(f"{page.relative_to(site)}: {href} (no such file)")
            elif fragment and path.suffix == ".html" and fragment not in _parse(path).ids:
                broken.append(f"{page.relative_to(site)}: {href} (no #{fragment} there)")
    assert not broken, "broken internal links:\n" + "\n".join(broken[:50])


@pytest.mark.slow
def test_no_page_loads_scripts_or_styles_from_a_cdn(site):
    """The site must work in an offline classroom: no <script src> or stylesheet from the internet."""
    remote = re.compile(r'<(?:script|link)[^>]*(?:src|href)="(https?:)?//[^"]+"[^>]*>')
    offenders = []
    for page in toc_pages():
        html = (site / f"{page}.html").read_text(encoding="utf-8")
        for tag in remote.finditer(html):
            if "<link" in tag.group(0) and 'rel="stylesheet"' not in tag.group(0) and "<script" not in tag.group(0):
                continue  # <link rel="canonical"> and friends load nothing
            offenders.append(f"{page}: {tag.group(0)[:160]}")
    assert not offenders, "resources loaded from the internet:\n" + "\n".join(offenders[:30])
