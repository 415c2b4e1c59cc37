"""Where the course lives and which release a page belongs to: one source for every link.

The repository URL is book/_config.yml's ``repository.url`` (the only place it is written), the
version is pyproject.toml's, and a release is the git tag ``v<version>``. The lessons' Colab cell
(tools/colab_cell.py) installs that tag, and the labs page links each student notebook on Colab at
that tag (book/_ext/lab_links.py), so a published book, its notebooks and its library agree. To
release: move CHANGELOG's [Unreleased] under the new version, set it in pyproject.toml and
CITATION.cff, run ``python tools/colab_cell.py`` (the hygiene test fails until you do), commit,
then ``git tag v<version>`` and push the tag (the Pages workflow publishes tags).
"""

from __future__ import annotations

import sys
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
COLAB = "https://colab.research.google.com/github"


def repository_url() -> str:
    config = yaml.safe_load((ROOT / "book" / "_config.yml").read_text(encoding="utf-8"))
    url = ((config.get("repository") or {}).get("url") or "").rstrip("/")
    if not url.startswith("https://github.com/"):
        raise ValueError(f"book/_config.yml: repository.url must be a GitHub URL, got {url!r}")
    return url


def version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]


def release_tag() -> str:
    return f"v{version()}"


def install_spec() -> str:
    """What ``pip install`` takes to get the library of this release from the repository."""
    return f"dlbook @ git+{repository_url()}@{release_tag()}"


def colab_url(path: str) -> str:
    """Colab's URL for a notebook of the repository (``labs/cnn/cnn-lab.ipynb``) at this release."""
    owner_repo = repository_url().removeprefix("https://github.com/")
    return f"{COLAB}/{owner_repo}/blob/{release_tag()}/{path.lstrip('/')}"


def main(argv: list[str]) -> int:
    """``python tools/project.py`` prints the release; ``--check-tag TAG`` fails unless TAG is it."""
    if argv[:1] == ["--check-tag"] and len(argv) == 2:
        if argv[1] != release_tag():
            print(f"tag {argv[1]} is not this version's release tag {release_tag()} (pyproject.toml)", file=sys.stderr)
            return 1
        return 0
    print(f"{repository_url()} {release_tag()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
