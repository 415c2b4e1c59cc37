"""Shared fixtures. The suite needs the data mirror (DLBOOK_DATA_MIRROR, which tools/test sets to
../shared/data when it exists) for the tests that read real MNIST."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import pytest
from site_build import site  # noqa: F401  (the built site, a session fixture)

matplotlib.use("Agg")  # tests draw figures without a display

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def mirror() -> Path:
    """The real data mirror; a clear failure (not a skip) when it is not configured."""
    value = os.environ.get("DLBOOK_DATA_MIRROR")
    if not value or not Path(value).is_dir():
        pytest.fail(
            "DLBOOK_DATA_MIRROR must point at the data mirror (e.g. ../shared/data); "
            "run the suite with `bash tools/test`, which sets it when ../shared/data exists"
        )
    return Path(value)


@pytest.fixture
def isolated_data(tmp_path, monkeypatch) -> Path:
    """An empty cache and no mirror: nothing leaks in from the machine's real data folders."""
    from dlbook.data import download

    cache = tmp_path / "cache"
    monkeypatch.setenv("DLBOOK_DATA_DIR", str(cache))
    monkeypatch.delenv("DLBOOK_DATA_MIRROR", raising=False)
    monkeypatch.setattr(download, "SYSTEM_MIRRORS", ())  # e.g. Debian's /usr/share/datasets
    return cache
