"""Build the book with Jupyter Book and look at it in headless Chromium: shared by the site tests
(tests/site_build.py, tests/test_site_browser.py), the PDF tests and tools/book_pdf.py.

Builds here reuse executed notebooks: ``DLBOOK_EXECUTED_DIR`` (where ``tools/test`` keeps the
lessons nbval ran) primes a jupyter-cache, and myst-nb runs in cache mode, so a lesson whose code
has not changed since is not executed a second time. The published build (book/_config.yml,
tools/build-book) always executes every notebook.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


class BuildError(RuntimeError):
    """``jupyter-book build -W`` failed; the message ends with the log's last lines."""


def _prime_cache(cache_path: Path, executed: Path | None) -> int:
    """Put the notebooks nbval executed into a jupyter-cache; returns how many. A lesson whose code
    changed since, or that nbval did not run, finds no match and is executed by the build itself."""
    if executed is None or not executed.is_dir():
        return 0
    from jupyter_cache import get_cache

    cache = get_cache(str(cache_path))
    count = 0
    for nb in sorted(executed.rglob("*.ipynb")):
        source = ROOT / nb.relative_to(executed)
        if source.is_file():
            cache.cache_notebook_file(str(nb), uri=str(source), check_validity=False, overwrite=True)
            count += 1
    return count


def executed_dir() -> Path | None:
    """Where the last test run kept its executed lessons (``DLBOOK_EXECUTED_DIR``, else the
    ``_build/executed`` of the last full ``tools/test`` run), if anywhere."""
    executed = os.environ.get("DLBOOK_EXECUTED_DIR")
    if executed:
        return Path(executed)
    default = ROOT / "_build" / "executed"
    return default if default.is_dir() else None


def build(out: Path, builder: str = "html", executed: Path | None = None) -> tuple[Path, int]:
    """``jupyter-book build -W`` of the whole book into ``out`` with ``builder`` (``html`` or
    ``singlehtml``), in cache mode primed from ``executed``; returns (output folder, notebooks
    reused). Raises BuildError with the log when the build fails or warns."""
    out.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((ROOT / "book" / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "cache"
    config["execute"]["cache"] = str(out / "jupyter_cache")
    # local extension folders are relative to the config file, which now lives in `out`
    extensions = config["sphinx"].get("local_extensions") or {}
    config["sphinx"]["local_extensions"] = {k: str(ROOT / "book" / v) for k, v in extensions.items()}
    primed = _prime_cache(out / "jupyter_cache", executed)
    config_path = out / "_config.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", ".", "--config", str(config_path),
           "--toc", "book/_toc.yml", "-W", "--builder", builder, "--path-output", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    if proc.returncode != 0:
        log = proc.stdout + proc.stderr
        raise BuildError(f"jupyter-book build -W --builder {builder} failed ({primed} notebooks reused):\n{log[-6000:]}")
    return out / "_build" / builder, primed


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test and tool output readable
        pass


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on localhost (a page opened from file:// may not load its fonts); yields
    the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()


def chromium(profile_dir: Path, command_timeout: float = 120):
    """Debian's headless Chromium through ChromeDriver, with no network chatter; the caller quits it."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{missing} not found: install Debian's chromium and chromium-driver "
                                "(bash tools/ensure-chromium does this with apt-get when run as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # No network here: without the background-networking flags Chromium keeps trying Google's hosts.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,900", f"--user-data-dir={profile_dir}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    # printing the whole book is one command that runs for minutes: the default 120 s is too short
    driver.command_executor.client_config.timeout = command_timeout
    driver.set_page_load_timeout(max(60, command_timeout))
    return driver


def wait_for_mathjax(driver, limit_seconds: float = 120) -> int:
    """Wait until MathJax has typeset every ``.math`` element (or ``limit_seconds``); the number
    typeset, or -1 when MathJax never loaded. MathJax inserts a page's typeset maths all at once
    when it has finished, which on a busy machine took over 30 s for a page with 90 expressions."""
    driver.set_script_timeout(limit_seconds + 30)
    return driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const limit = arguments[0];
        const start = Date.now();
        (function poll() {
          // Count the equations on every poll: once in CI the count read right after the page load
          // was 0 on a page with 169 equations, which ended the wait before MathJax had run.
          const wanted = document.querySelectorAll('.math').length;
          if (!wanted && document.readyState === 'complete' && Date.now() - start > 300) { done(0); return; }
          const typeset = document.querySelectorAll('mjx-container').length;
          const loaded = window.MathJax && MathJax.startup && MathJax.startup.promise;
          if (wanted && loaded && typeset >= wanted) { done(typeset); }
          else if (Date.now() - start > limit) { done(loaded ? typeset : -1); }
          else { setTimeout(poll, 200); }
        })();
        """,
        limit_seconds * 1000,
    )
