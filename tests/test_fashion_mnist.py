"""Fashion-MNIST: the registry entries, both sources verify, splits that never touch the test set,
and errors that say what to do (corrupt, truncated or missing files)."""

import gzip
import hashlib
import struct

import numpy as np
import pytest
import torch

from dlbook.data import download as download_module
from dlbook.data import fashion_mnist as fm
from dlbook.data.download import ChecksumError, MissingDataError, fetch, verify
from dlbook.data.registry import REGISTRY, DataFile

KEYS = [f"fashion-mnist/{s}-{k}" for s in ("train", "t10k") for k in ("images-idx3-ubyte.gz", "labels-idx1-ubyte.gz")]


def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise download_module.urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(download_module.urllib.request, "urlopen", refuse)


def _idx(images: np.ndarray | None = None, labels: np.ndarray | None = None) -> bytes:
    if images is not None:
        n, h, w = images.shape
        return struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes()
    return struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes()


@pytest.fixture
def fake_fashion(isolated_data, tmp_path, monkeypatch):
    """Small Fashion-MNIST files in the IDX + gzip format, registered by their decompressed sha256,
    each gzipped twice with different settings (as upstream and Debian differ)."""
    rng = np.random.default_rng(0)
    sizes = {"train": 400, "t10k": 50}
    raws = {}
    for split, n in sizes.items():
        raws[f"fashion-mnist/{split}-images-idx3-ubyte.gz"] = _idx(images=rng.integers(0, 256, (n, 28, 28)))
        raws[f"fashion-mnist/{split}-labels-idx1-ubyte.gz"] = _idx(labels=np.arange(n) % 10)
    mirrors = {}
    for name, level in (("upstream", 9), ("debian", 1)):
        root = tmp_path / name
        (root / "fashion-mnist").mkdir(parents=True)
        for key, raw in raws.items():
            (root / key).write_bytes(gzip.compress(raw, compresslevel=level, mtime=0))
        mirrors[name] = root
    assert (mirrors["upstream"] / KEYS[0]).read_bytes() != (mirrors["debian"] / KEYS[0]).read_bytes()
    for key, raw in raws.items():
        real = REGISTRY[key]
        monkeypatch.setitem(REGISTRY, key, DataFile(key, real.url, hashlib.sha256(raw).hexdigest(), real.license,
                                                    real.description, True, real.offline_hint))
    _no_network(monkeypatch)
    return mirrors


def test_registry_has_the_four_files_with_upstream_urls_and_content_checksums():
    for key in KEYS:
        entry = REGISTRY[key]
        assert entry.content_sha256 and entry.url.startswith("http://fashion-mnist.s3-website")
        assert "MIT" in entry.license and "dataset-fashion-mnist" in entry.offline_hint


def test_upstream_and_recompressed_files_both_verify(fake_fashion, monkeypatch):
    for name in ("upstream", "debian"):
        monkeypatch.setenv("DLBOOK_DATA_MIRROR", str(fake_fashion[name]))
        for key in KEYS:
            assert fetch(key) == fake_fashion[name] / key


def test_debian_folder_is_searched_without_configuration(fake_fashion, monkeypatch):
    monkeypatch.setattr(download_module, "SYSTEM_MIRRORS", (fake_fashion["debian"],))
    assert fetch(KEYS[1]) == fake_fashion["debian"] / KEYS[1]


def test_loader_splits_are_stratified_disjoint_and_never_use_test(fake_fashion, monkeypatch):
    monkeypatch.setenv("DLBOOK_DATA_MIRROR", str(fake_fashion["upstream"]))
    full = fm.load_fashion_mnist("full", val_size=100, normalize=False)
    assert (len(full.train), len(full.val), len(full.test)) == (300, 100, 50)
    assert full.name == "Fashion-MNIST" and full.classes[0] == "T-shirt/top" and len(full.classes) == 10
    assert torch.bincount(full.val.tensors[1]).tolist() == [10] * 10, "validation must be stratified"
    # train and val partition the training file: every training image is in exactly one of them
    train_x = torch.cat([full.train.tensors[0], full.val.tensors[0]]).flatten(1)
    assert len({tuple(r.tolist()) for r in (train_x * 255).round().to(torch.uint8)}) == 400
    quick = fm.load_fashion_mnist("quick", val_size=100, train_size=50)
    assert len(quick.train) == 50 and torch.bincount(quick.train.tensors[1]).tolist() == [5] * 10
    assert torch.equal(quick.val.tensors[1], full.val.tensors[1]), "both profiles choose on the same validation set"
    assert torch.equal(quick.test.tensors[1], torch.arange(50) % 10), "test is the official test file"
    again = fm.load_fashion_mnist("quick", val_size=100, train_size=50)
    assert torch.equal(again.train.tensors[0], quick.train.tensors[0]), "the split must be seeded"
    assert "stratified" in quick.describe() and "test is the official" in quick.describe()


def test_train_size_larger_than_the_split_is_refused(fake_fashion, monkeypatch):
    monkeypatch.setenv("DLBOOK_DATA_MIRROR", str(fake_fashion["upstream"]))
    with pytest.raises(ValueError, match="exceeds"):
        fm.load_fashion_mnist("quick", val_size=100, train_size=301)


def test_corrupt_file_names_file_expected_found_and_fix(fake_fashion, tmp_path, monkeypatch):
    bad = tmp_path / "bad"
    (bad / "fashion-mnist").mkdir(parents=True)
    for key in KEYS:
        (bad / key).write_bytes((fake_fashion["upstream"] / key).read_bytes())
    (bad / KEYS[1]).write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\x07" * 20))
    monkeypatch.setenv("DLBOOK_DATA_MIRROR", str(bad))
    with pytest.raises(ChecksumError) as info:
        fm.load_fashion_mnist("quick")
    message = str(info.value)
    entry = REGISTRY[KEYS[1]]
    assert str(bad / KEYS[1]) in message and entry.sha256 in message
    assert hashlib.sha256(b"\x00\x00\x08\x01" + b"\x07" * 20).hexdigest() in message, "the found checksum"
    assert "replace" in message and "dataset-fashion-mnist" in message and "DLBOOK_DATA_MIRROR" in message


def test_truncated_gzip_is_reported_as_truncated(fake_fashion, tmp_path):
    blob = (fake_fashion["upstream"] / KEYS[0]).read_bytes()
    cut = tmp_path / "cut.gz"
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ChecksumError, match="truncated or not a gzip file"):
        verify(cut, REGISTRY[KEYS[0]])


def test_missing_offline_names_file_url_variable_and_debian_package(fake_fashion):
    with pytest.raises(MissingDataError) as info:
        fetch(KEYS[2])
    message = str(info.value)
    assert "t10k-images-idx3-ubyte.gz" in message and REGISTRY[KEYS[2]].url in message
    assert "DLBOOK_DATA_MIRROR" in message and "apt-get install dataset-fashion-mnist" in message


def test_bad_download_leaves_nothing_in_the_cache(fake_fashion, isolated_data, monkeypatch):
    class Response:
        headers = {"Content-Length": "8"}

        def __init__(self):
            self.chunks = [b"garbage!"]

        def read(self, n):
            return self.chunks.pop() if self.chunks else b""

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(download_module.urllib.request, "urlopen", lambda *a, **k: Response())
    with pytest.raises(ChecksumError):
        fetch(KEYS[3])
    leftovers = [p for p in isolated_data.rglob("*") if p.is_file()]
    assert not leftovers, f"a failed download left {leftovers} in the cache"


def test_the_real_files_give_the_published_statistics(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("DLBOOK_DATA_DIR", str(tmp_path / "cache"))
    splits = fm.load_fashion_mnist("full", normalize=False)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (55_000, 5_000, 10_000)
    x = torch.cat([splits.train.tensors[0], splits.val.tensors[0]])
    assert abs(x.mean().item() - fm.FASHION_MEAN) < 1e-3 and abs(x.std().item() - fm.FASHION_STD) < 1e-3
    assert torch.bincount(splits.val.tensors[1]).tolist() == [500] * 10
    assert torch.bincount(splits.test.tensors[1]).tolist() == [1_000] * 10
