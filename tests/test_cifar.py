"""CIFAR-10 loader (dlbook/data/cifar.py) on a small generated archive in the real format.

The real archive (163 MB) is not in the offline mirror, so every test builds a
``cifar-10-python.tar.gz`` with a few images per batch file, registers it with its own sha256
(as tests/test_data.py does for MNIST) and reads it through the shared fetch path.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from dlbook.data import cifar
from dlbook.data import download as fetch_module
from dlbook.data.download import MissingDataError
from dlbook.data.registry import REGISTRY, DataFile

KEY = "cifar10/cifar-10-python.tar.gz"
PER_TRAIN_BATCH, N_TEST = 6, 10


def _no_network(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(fetch_module.urllib.request, "urlopen", refuse)


def _batch(rng: np.random.Generator, n: int, first_label: int) -> tuple[bytes, np.ndarray, list[int]]:
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [(first_label + i) % 10 for i in range(n)]
    blob = pickle.dumps({b"batch_label": b"generated", b"labels": labels, b"data": data,
                         b"filenames": [b"img%d.png" % i for i in range(n)]}, protocol=2)
    return blob, data, labels


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, payload in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def _install(monkeypatch, tmp_path: Path, archive: bytes) -> Path:
    """Put ``archive`` in a fresh mirror and register it under the real key with its own sha256."""
    mirror = tmp_path / "fake-mirror"
    (mirror / "cifar10").mkdir(parents=True, exist_ok=True)
    (mirror / KEY).write_bytes(archive)
    real = REGISTRY[KEY]
    monkeypatch.setitem(REGISTRY, KEY, DataFile(KEY, real.url, hashlib.sha256(archive).hexdigest(), real.license, real.description))
    monkeypatch.setenv("DLBOOK_DATA_MIRROR", str(mirror))
    return mirror


@pytest.fixture
def fake_cifar(isolated_data, tmp_path, monkeypatch):
    """A generated CIFAR-10 archive: 5 x 6 training images, 10 test images, batches.meta."""
    _no_network(monkeypatch)
    rng = np.random.default_rng(0)
    files, train_data, train_labels = {}, [], []
    for i, name in enumerate(cifar.CIFAR10_TRAIN_BATCHES):
        blob, data, labels = _batch(rng, PER_TRAIN_BATCH, first_label=i)
        files[f"cifar-10-batches-py/{name}"] = blob
        train_data.append(data)
        train_labels += labels
    blob, test_data, test_labels = _batch(rng, N_TEST, first_label=3)
    files["cifar-10-batches-py/test_batch"] = blob
    names = [n.encode() for n in cifar.CIFAR10_CLASSES]
    files["cifar-10-batches-py/batches.meta"] = pickle.dumps({b"label_names": names, b"num_vis": 3072}, protocol=2)
    _install(monkeypatch, tmp_path, _tar(files))
    return {"train": (np.concatenate(train_data), train_labels), "test": (test_data, test_labels), "cache": isolated_data}


def test_registry_entry_is_the_official_archive():
    entry = REGISTRY[KEY]
    assert entry.url == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert entry.sha256 == "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
    assert "Krizhevsky" in entry.license and "CIFAR-10" in entry.description


def test_full_profile_shapes_labels_and_split(fake_cifar):
    splits = cifar.load_cifar10("full", val_size=5, normalize=False)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (25, 5, N_TEST)
    x, y = splits.train.tensors
    assert x.shape == (25, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert splits.classes == cifar.CIFAR10_CLASSES and "CIFAR-10 (full)" in splits.describe()
    # The test batch keeps its order; train + val together are exactly the five training batches.
    test_x, test_y = fake_cifar["test"]
    assert splits.test.tensors[1].tolist() == test_y
    assert torch.equal((splits.test.tensors[0] * 255).round().to(torch.uint8), torch.from_numpy(test_x).view(-1, 3, 32, 32))
    pool = torch.cat([splits.train.tensors[0], splits.val.tensors[0]])
    pool_y = torch.cat([splits.train.tensors[1], splits.val.tensors[1]])
    got = sorted(((pool[i] * 255).round().to(torch.uint8).flatten().tolist(), int(pool_y[i])) for i in range(len(pool)))
    data, labels = fake_cifar["train"]
    want = sorted((data[i].tolist(), labels[i]) for i in range(len(labels)))
    assert got == want, "train + val must be a permutation of the training batches, labels attached"


def test_rows_are_red_then_green_then_blue_planes(fake_cifar):
    splits = cifar.load_cifar10("full", val_size=0, normalize=False)
    raw = fake_cifar["test"][0][0]
    image = (splits.test.tensors[0][0] * 255).round().to(torch.uint8)
    assert image[0].flatten().tolist() == raw[:1024].tolist(), "channel 0 is the first 1,024 values (red)"
    assert image[2, 0, :5].tolist() == raw[2048:2053].tolist(), "blue plane, first row"
    # The planted bug: reading a row as interleaved HWC pixels gives a different image.
    wrong = torch.from_numpy(raw.reshape(32, 32, 3).copy()).permute(2, 0, 1)
    assert not torch.equal(wrong, image)


def test_normalisation_uses_training_statistics(fake_cifar):
    splits = cifar.load_cifar10("full", val_size=5)
    x = splits.train.tensors[0]
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-5)
    raw = cifar.load_cifar10("full", val_size=5, normalize=False)
    mean, std = torch.tensor(splits.mean).view(1, 3, 1, 1), torch.tensor(splits.std).view(1, 3, 1, 1)
    assert torch.allclose(splits.val.tensors[0], (raw.val.tensors[0] - mean) / std, atol=1e-5), "val must reuse train stats"
    assert torch.allclose(splits.test.tensors[0], (raw.test.tensors[0] - mean) / std, atol=1e-5)


def test_quick_profile_splits_the_test_batch(fake_cifar):
    splits = cifar.load_cifar10("quick", val_size=4)
    assert splits.test is None and (len(splits.train), len(splits.val)) == (6, 4)
    again = cifar.load_cifar10("quick", val_size=4)
    assert torch.equal(splits.val.tensors[1], again.val.tensors[1]), "the split must be the same every run"
    with pytest.raises(ValueError, match="val_size"):
        cifar.load_cifar10("quick", val_size=N_TEST)


def test_extracts_once_into_the_cache_and_again_for_a_new_archive(fake_cifar, tmp_path, monkeypatch):
    folder = cifar.extract_cifar10()
    assert folder == fake_cifar["cache"] / "cifar10" / "cifar-10-batches-py"
    before = (folder / "test_batch").stat().st_mtime_ns
    assert cifar.extract_cifar10() == folder and (folder / "test_batch").stat().st_mtime_ns == before
    blob, _, labels = _batch(np.random.default_rng(1), N_TEST, first_label=7)
    files = {f"cifar-10-batches-py/{n}": blob for n in (*cifar.CIFAR10_TRAIN_BATCHES, "test_batch")}
    _install(monkeypatch, tmp_path, _tar(files))
    splits = cifar.load_cifar10("full", val_size=5, normalize=False)
    assert splits.test.tensors[1].tolist() == labels, "a different archive must not reuse stale batches"


def test_missing_archive_names_file_url_and_mirror_variable(isolated_data, monkeypatch):
    _no_network(monkeypatch)
    with pytest.raises(MissingDataError) as info:
        cifar.load_cifar10("quick")
    message = str(info.value)
    assert "cifar-10-python.tar.gz" in message and REGISTRY[KEY].url in message and "DLBOOK_DATA_MIRROR" in message


def test_mirror_without_the_archive_says_so(isolated_data, tmp_path, monkeypatch):
    _no_network(monkeypatch)
    monkeypatch.setenv("DLBOOK_DATA_MIRROR", str(tmp_path))
    with pytest.raises(MissingDataError, match="has no cifar10/cifar-10-python.tar.gz"):
        cifar.load_cifar10("full")


def test_archive_with_a_path_outside_the_target_is_refused(isolated_data, tmp_path, monkeypatch):
    _no_network(monkeypatch)
    _install(monkeypatch, tmp_path, _tar({"cifar-10-batches-py/test_batch": b"x", "../../escaped.txt": b"owned"}))
    with pytest.raises(ValueError, match="outside"):
        cifar.extract_cifar10()
    assert not any(p.name == "escaped.txt" for p in tmp_path.rglob("*"))


def test_archive_with_a_link_is_refused(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        link = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="only plain files"):
        cifar.safe_extract(archive, tmp_path / "out")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_batch_unpickler_refuses_code(tmp_path):
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"data": _Exploit(), b"labels": [0]}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="system"):
        cifar.read_batch(path)


def test_batch_with_wrong_shape_is_rejected(tmp_path):
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, protocol=2))
    with pytest.raises(ValueError, match="3072"):
        cifar.read_batch(path)
