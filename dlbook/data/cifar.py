"""CIFAR-10 (Krizhevsky 2009) from the official "python version" archive, split per execution profile.

The archive ``cifar-10-python.tar.gz`` holds ``cifar-10-batches-py/`` with five training batches
(``data_batch_1`` .. ``data_batch_5``, 10,000 images each), ``test_batch`` (10,000) and
``batches.meta``. Each batch is a pickled dict: ``b"data"`` a (N, 3072) uint8 array whose rows are
1,024 red, then 1,024 green, then 1,024 blue values of a row-major 32x32 image, and ``b"labels"``
a list of N class indices in 0..9.

As for MNIST, ``quick`` splits the 10,000 test images into train and validation (no test split)
and ``full`` uses the 50,000 training images (minus a validation slice) and reports on the
untouched test batch. The archive is fetched with :func:`dlbook.data.fetch` (mirror, cache,
network, sha256 every time), extracted once into the cache with every member checked to stay
inside the target folder, and the batches are unpickled with an allow-list (numpy arrays only),
so a tampered pickle cannot run code.
"""

from __future__ import annotations

import pickle
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ..runtime import Profile
from ..runtime import profile as current_profile
from .download import cache_dir, fetch
from .mnist import Splits, _split
from .registry import lookup

CIFAR10_KEY = "cifar10/cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass
class CifarSplits(Splits):
    """:class:`~dlbook.data.Splits` plus the per-channel statistics used to standardise and the class names."""

    name: str = "CIFAR-10"
    classes: tuple[str, ...] = CIFAR10_CLASSES
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)


# --- safe extraction ---------------------------------------------------------------------------


def _checked_members(tar: tarfile.TarFile, dest: Path) -> list[tarfile.TarInfo]:
    """Every member, after checking it is a plain file or folder whose path stays inside ``dest``."""
    root = dest.resolve()
    members = tar.getmembers()
    for member in members:
        target = (root / member.name).resolve()
        if target != root and root not in target.parents:
            raise ValueError(f"refusing to extract {member.name!r}: it would be written outside {root}")
        if not (member.isfile() or member.isdir()):
            raise ValueError(f"refusing to extract {member.name!r}: only plain files and folders are expected")
    return members


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar(.gz) into ``dest``, refusing absolute paths, ``..``, links and devices."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:*") as tar:
        members = _checked_members(tar, dest)
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.12: the standard library's own check too
            tar.extractall(dest, members=members, filter="data")
        else:  # pragma: no cover - older Pythons; the members were checked above
            tar.extractall(dest, members=members)


def extract_cifar10() -> Path:
    """The folder of extracted CIFAR-10 batches in the cache, extracting the archive on first use.

    A stamp file holds the archive's sha256, so a different archive (a new registry entry, a
    test's generated one) is extracted afresh instead of silently reusing stale batches.
    """
    archive = fetch(CIFAR10_KEY)
    digest = lookup(CIFAR10_KEY).sha256  # fetch verified the file against it
    home = cache_dir() / "cifar10"
    folder, stamp = home / CIFAR10_FOLDER, home / "extracted.sha256"
    needed = (*CIFAR10_TRAIN_BATCHES, "test_batch")
    if stamp.is_file() and stamp.read_text().strip() == digest and all((folder / n).is_file() for n in needed):
        return folder
    home.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=home, prefix="extract-"))
    try:
        safe_extract(archive, tmp)
        extracted = tmp / CIFAR10_FOLDER
        missing = [n for n in needed if not (extracted / n).is_file()]
        if missing:
            raise ValueError(f"{archive} has no {CIFAR10_FOLDER}/{missing[0]}: not the CIFAR-10 python archive")
        shutil.rmtree(folder, ignore_errors=True)
        extracted.replace(folder)
        stamp.write_text(digest + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


# --- reading the pickled batches ---------------------------------------------------------------

_NUMPY_CORE = "numpy._core" if hasattr(np, "_core") else "numpy.core"
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): (f"{_NUMPY_CORE}.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): (f"{_NUMPY_CORE}.multiarray", "_reconstruct"),
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("_codecs", "encode"): ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and numpy arrays; any other global (``os.system``...) is refused."""

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR-10 batch file")
        return super().find_class(*_ALLOWED[(module, name)])


def read_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One pickled batch as uint8 images (N, 3, 32, 32) and int64 labels (N,)."""
    with open(path, "rb") as fh:
        batch = _BatchUnpickler(fh, encoding="bytes").load()
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise ValueError(f"{path.name}: expected (N, 3072) data and N labels, got {data.shape} and {labels.shape}")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels.copy())


def read_class_names(folder: Path) -> tuple[str, ...]:
    """The class names from ``batches.meta`` (the fixed CIFAR-10 names when the file is absent)."""
    meta = folder / "batches.meta"
    if not meta.is_file():
        return CIFAR10_CLASSES
    with open(meta, "rb") as fh:
        names = _BatchUnpickler(fh, encoding="bytes").load()[b"label_names"]
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of uint8 images (N, C, H, W), on the [0, 1] scale."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(images), 10_000):  # float64 in chunks: 50,000 images at once would be 1.2 GB
        x = images[start : start + 10_000].to(torch.float64).div_(255.0)
        total += x.sum(dim=(0, 2, 3))
        squares += x.square().sum(dim=(0, 2, 3))
    count = images.numel() // images.shape[1]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def to_float(images: torch.Tensor, mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 in [0, 1], then (x - mean_c) / std_c per channel when given."""
    x = images.float().div_(255.0)
    if mean is not None and std is not None:
        m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
        x = (x - m) / s
    return x


def load_cifar10(
    which: Profile | None = None, *, val_size: int | None = None, normalize: bool = True, seed: int = 0
) -> CifarSplits:
    """CIFAR-10 as in-memory float tensors (N, 3, 32, 32), split for the profile.

    ``quick``: the 10,000 test images split into train and ``val_size`` (default 2,000) validation
    images, no test split. ``full``: the 50,000 training images minus ``val_size`` (default 5,000)
    for validation, and the 10,000 test images as test. With ``normalize`` every split is
    standardised per channel with the mean and standard deviation of *its* training split (no
    statistics leak from validation or test); they are returned as ``mean`` and ``std``.
    """
    which = which or current_profile()
    folder = extract_cifar10()
    test_x, test_y = read_batch(folder / "test_batch")
    if which == "quick":
        pool_x, pool_y, n_val = test_x, test_y, 2_000 if val_size is None else val_size
    else:
        parts = [read_batch(folder / name) for name in CIFAR10_TRAIN_BATCHES]
        pool_x, pool_y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        n_val = 5_000 if val_size is None else val_size
    if not 0 <= n_val < len(pool_x):
        raise ValueError(f"val_size={n_val} must be between 0 and {len(pool_x) - 1}")
    train_u8, val_u8 = _split(pool_x, pool_y, n_val, seed)  # uint8 still: the split is a permutation
    mean, std = channel_stats(train_u8.tensors[0]) if normalize else ((0.0,) * 3, (1.0,) * 3)

    def prepare(x: torch.Tensor, y: torch.Tensor) -> TensorDataset:
        return TensorDataset(to_float(x, mean, std) if normalize else to_float(x), y)

    train, val = prepare(*train_u8.tensors), prepare(*val_u8.tensors)
    test = None if which == "quick" else prepare(test_x, test_y)
    return CifarSplits(train, val, test, which, classes=read_class_names(folder), mean=mean, std=std)
