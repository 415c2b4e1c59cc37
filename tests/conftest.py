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


@pytest.fixture(autouse=True)
def torch_global_settings_restored():
    """A test that calls ``dlbook.setup()`` (deterministic algorithms, cuDNN benchmark off) or sets
    the thread count must not change what the next test on the same worker sees."""
    import torch

    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.get_num_threads(), torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision())
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.benchmark = saved[2]
    torch.set_num_threads(saved[3])
    torch.backends.cudnn.allow_tf32 = saved[4]
    torch.set_float32_matmul_precision(saved[5])
