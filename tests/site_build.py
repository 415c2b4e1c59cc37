"""Build the site once per test session (shared by test_book_build.py and test_site_browser.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def toc_pages() -> list[str]:
    """Every page of book/_toc.yml, root first, without suffix."""
    toc = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text())

    def walk(entries: list[dict]) -> list[str]:  # a page, then its sections (derivations nest)
        return [page for e in entries for page in [e["file"], *walk(e.get("sections", []))]]

    return [toc["root"]] + [page for part in toc["parts"] for page in walk(part["chapters"])]


def _prime_cache(cache_path: Path) -> int:
    """Put the notebooks nbval executed (``DLBOOK_EXECUTED_DIR``, see the root conftest.py) into a
    jupyter-cache; returns how many. A lesson whose code changed since, or that nbval did not run,
    finds no match and is executed by the build itself."""
    executed = os.environ.get("DLBOOK_EXECUTED_DIR")
    if not executed or not Path(executed).is_dir():
        return 0
    from jupyter_cache import get_cache

    cache = get_cache(str(cache_path))
    count = 0
    for nb in sorted(Path(executed).rglob("*.ipynb")):
        source = ROOT / nb.relative_to(executed)
        if source.is_file():
            cache.cache_notebook_file(str(nb), uri=str(source), check_validity=False, overwrite=True)
            count += 1
    return count


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Path:
    prebuilt = os.environ.get("DLBOOK_BUILT_SITE")
    if prebuilt:  # check an existing build (e.g. _build/html from tools/build-book) instead
        assert (Path(prebuilt) / "index.html").is_file(), f"DLBOOK_BUILT_SITE={prebuilt} has no index.html"
        return Path(prebuilt)
    out = tmp_path_factory.mktemp("book")
    # The published build (book/_config.yml, tools/build-book) always executes every notebook. The
    # test builds with the same configuration in myst-nb's cache mode, so outputs nbval has just
    # produced for unchanged code are reused rather than computed a second time.
    config = yaml.safe_load((ROOT / "book" / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "cache"
    config["execute"]["cache"] = str(out / "jupyter_cache")
    # local extension folders are relative to the config file, which now lives in the temp dir
    extensions = config["sphinx"].get("local_extensions") or {}
    config["sphinx"]["local_extensions"] = {k: str(ROOT / "book" / v) for k, v in extensions.items()}
    primed = _prime_cache(out / "jupyter_cache")
    config_path = out / "_config.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", ".", "--config", str(config_path),
           "--toc", "book/_toc.yml", "-W", "--path-output", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"jupyter-book build -W failed ({primed} notebooks from nbval):\n{log[-6000:]}"
    print(f"book built with {primed} notebooks executed by nbval, the rest executed by the build")
    return out / "_build" / "html"


