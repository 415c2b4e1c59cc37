import gzip
import hashlib
import re
import struct
import threading
import urllib.error
from functools import partial
from http.server import HTTPServer, SimpleHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest
import torch

from dlbook.data import download as fetch_module
from dlbook.data import mnist as mnist_module
from dlbook.data.download import ChecksumError, MissingDataError, fetch, verify
from dlbook.data.registry import REGISTRY, DataFile, lookup


def test_registry_entries_are_complete():
    assert {"mnist/t10k-images-idx3-ubyte.gz", "mnist/train-images-idx3-ubyte.gz"} <= set(REGISTRY)
    for key, entry in REGISTRY.items():
        assert entry.key == key
        assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256), key
        # Zalando's canonical Fashion-MNIST URL is plain http; the checksum protects it as any other.
        assert entry.url.startswith(("https://", "http://")) and entry.url.endswith(entry.filename), key
        assert entry.license and entry.description, key


def test_registry_matches_the_mirror_checksums(mirror):
    sums = dict(line.split()[::-1] for line in (mirror / "SHA256SUMS").read_text().splitlines() if line.strip())
    checked = 0
    for key, digest in sums.items():
        entry = REGISTRY.get(key)
        if entry is None or entry.content_sha256:
            continue  # not (yet) a course dataset, or checked on its decompressed bytes below
        assert entry.sha256 == digest, f"registry sha256 for {key} differs from the mirror's SHA256SUMS"
        checked += 1
    assert checked >= 5, f"only {checked} registry files found in the mirror's SHA256SUMS"
    content = [e for e in REGISTRY.values() if e.content_sha256]
    assert len(content) == 4, "the four Fashion-MNIST files are verified on their decompressed bytes"
    for entry in content:
        verify(mirror / entry.key, entry)  # raises ChecksumError on a mismatch


def test_lookup_unknown_key_lists_known_ones():
    with pytest.raises(KeyError, match="known files"):
        lookup("nope/missing.bin")


def _register(monkeypatch, key: str, payload: bytes, url: str = "https://example.invalid/file.bin") -> DataFile:
    entry = DataFile(key, url, hashlib.sha256(payload).hexdigest(), "test licence", "a test file")
    monkeypatch.setitem(REGISTRY, key, entry)
    return entry


def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(fetch_module.urllib.request, "urlopen", refuse)


def test_fetch_uses_mirror_in_place(isolated_data, tmp_path, monkeypatch):
    payload = b"mirror bytes"
    _register(monkeypatch, "toy/file.bin", payload)
    mirror = tmp_path / "mirror"
    (mirror / "toy").mkdir(parents=True)
    (mirror / "toy" / "file.bin").write_bytes(payload)
    monkeypatch.setenv("DLBOOK_DATA_MIRROR", str(mirror))
    _no_network(monkeypatch)
    assert fetch("toy/file.bin") == mirror / "toy" / "file.bin"
    assert not (isolated_data / "toy").exists(), "a mirror file must not be copied into the cache"


def test_fetch_rejects_corrupt_mirror_file(isolated_data, tmp_path, monkeypatch):
    _register(monkeypatch, "toy/file.bin", b"the real bytes")
    mirror = tmp_path / "mirror"
    (mirror / "toy").mkdir(parents=True)
    (mirror / "toy" / "file.bin").write_bytes(b"tampered")
    monkeypatch.setenv("DLBOOK_DATA_MIRROR", str(mirror))
    with pytest.raises(ChecksumError, match="toy/file.bin"):
        fetch("toy/file.bin")


def test_offline_without_mirror_names_file_url_and_variable(isolated_data, monkeypatch):
    entry = _register(monkeypatch, "toy/file.bin", b"x")
    _no_network(monkeypatch)
    with pytest.raises(MissingDataError) as info:
        fetch("toy/file.bin")
    message = str(info.value)
    assert "file.bin" in message and entry.url in message and "DLBOOK_DATA_MIRROR" in message


@pytest.fixture
def http_server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    handler = partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_download_into_cache_then_reuse(isolated_data, http_server, monkeypatch):
    root, base = http_server
    payload = bytes(range(256)) * 100
    (root / "file.bin").write_bytes(payload)
    _register(monkeypatch, "toy/file.bin", payload, url=base + "file.bin")
    path = fetch("toy/file.bin")
    assert path == isolated_data / "toy" / "file.bin" and path.read_bytes() == payload
    (root / "file.bin").unlink()  # second call must not touch the network
    assert fetch("toy/file.bin") == path


def test_bad_download_is_deleted(isolated_data, http_server, monkeypatch):
    root, base = http_server
    (root / "file.bin").write_bytes(b"not what the registry says")
    _register(monkeypatch, "toy/file.bin", b"expected", url=base + "file.bin")
    with pytest.raises(ChecksumError):
        fetch("toy/file.bin")
    assert not (isolated_data / "toy" / "file.bin").exists(), "a corrupt download must not stay in the cache"


# --- MNIST -------------------------------------------------------------------------------------

def _idx_images(images: np.ndarray) -> bytes:
    n, h, w = images.shape
    return struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes()


def _idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes()


@pytest.fixture
def fake_mnist_mirror(isolated_data, tmp_path, monkeypatch):
    """Small MNIST files in the real IDX + gzip format, registered with their own checksums."""
    rng = np.random.default_rng(0)
    mirror = tmp_path / "fake-mirror"
    (mirror / "mnist").mkdir(parents=True)
    sizes = {"train": 120, "t10k": 30}
    for split, n in sizes.items():
        files = {
            f"mnist/{split}-images-idx3-ubyte.gz": _idx_images(rng.integers(0, 256, (n, 28, 28))),
            f"mnist/{split}-labels-idx1-ubyte.gz": _idx_labels(np.arange(n) % 10),
        }
        for key, raw in files.items():
            blob = gzip.compress(raw, mtime=0)
            (mirror / key).write_bytes(blob)
            real = REGISTRY[key]
            monkeypatch.setitem(REGISTRY, key, DataFile(key, real.url, hashlib.sha256(blob).hexdigest(), real.license, real.description))
    monkeypatch.setenv("DLBOOK_DATA_MIRROR", str(mirror))
    _no_network(monkeypatch)
    return sizes


def test_full_profile_loader_on_generated_idx_files(fake_mnist_mirror):
    splits = mnist_module.load_mnist("full", val_size=20)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (100, 20, 30)
    x, y = splits.train.tensors
    assert x.shape == (100, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert splits.test.tensors[1].tolist() == [i % 10 for i in range(30)]
    flat = mnist_module.load_mnist("full", val_size=20, flatten=True, normalize=False)
    assert flat.train.tensors[0].shape == (100, 784)
    assert 0.0 <= flat.train.tensors[0].min() and flat.train.tensors[0].max() <= 1.0


def test_quick_profile_uses_only_the_test_files(fake_mnist_mirror, tmp_path):
    splits = mnist_module.load_mnist("quick", val_size=10)
    assert splits.test is None and (len(splits.train), len(splits.val)) == (20, 10)


def test_full_profile_without_training_files_says_what_to_do(fake_mnist_mirror, tmp_path, monkeypatch):
    mirror = Path(monkeypatch_env := __import__("os").environ["DLBOOK_DATA_MIRROR"])
    (mirror / "mnist" / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(MissingDataError, match="train-images-idx3-ubyte.gz") as info:
        mnist_module.load_mnist("full")
    assert "DLBOOK_DATA_MIRROR" in str(info.value), monkeypatch_env


def test_quick_split_of_the_real_test_set(mirror, monkeypatch, tmp_path):
    monkeypatch.setenv("DLBOOK_DATA_DIR", str(tmp_path / "cache"))
    a = mnist_module.load_mnist("quick", flatten=True)
    b = mnist_module.load_mnist("quick", flatten=True)
    assert (len(a.train), len(a.val), a.test) == (8_000, 2_000, None)
    assert torch.equal(a.val.tensors[1], b.val.tensors[1]), "the quick split must be the same every run"
    labels = a.train.tensors[1]
    counts = torch.bincount(labels, minlength=10)
    assert counts.min() > 600, f"every digit should be well represented: {counts.tolist()}"
    x = a.train.tensors[0]
    assert abs(x.mean().item() - 0.0) < 0.1 and abs(x.std().item() - 1.0) < 0.1  # standardised
