"""MNIST through torchvision's IDX readers, split per execution profile.

``quick`` uses the official 10,000-image *test* set (the only MNIST file an offline mirror has)
as raw material, split into the lesson's own train and validation sets: these are not MNIST
benchmark numbers, and ``describe()`` says so. ``full`` uses the standard 60,000 training images
(minus a validation slice) and reports on the untouched 10,000-image test set.
"""

from __future__ import annotations

import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from ..runtime import Profile
from ..runtime import profile as current_profile
from .download import cache_dir, fetch

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # over the 60,000 training images


DIGIT_CLASSES = tuple(str(d) for d in range(10))


@dataclass
class Splits:
    """Train/validation/test datasets; ``test`` is ``None`` when the lesson has no test split.

    ``name`` is the dataset, ``classes`` the label names and ``note`` where each split comes
    from, so a lesson's first output line states exactly what it trains and reports on.
    """

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset | None
    profile: Profile
    name: str = "MNIST"
    classes: tuple[str, ...] = DIGIT_CLASSES
    note: str = ""

    def describe(self) -> str:
        sizes = [f"train {len(self.train):,}", f"val {len(self.val):,}"]
        if self.test is not None:
            sizes.append(f"test {len(self.test):,}")
        text = f"{self.name} ({self.profile}): " + ", ".join(sizes)
        return f"{text} ({self.note})" if self.note else text


def _gunzip(gz: Path, folder: str = "mnist") -> Path:
    """Decompress into the cache (the mirror may be read-only) once; return the raw IDX path.

    ``folder`` keeps datasets whose files share names (MNIST and Fashion-MNIST) apart.
    """
    raw = cache_dir() / folder / "raw" / gz.name.removesuffix(".gz")
    if not raw.is_file() or raw.stat().st_mtime < gz.stat().st_mtime:
        raw.parent.mkdir(parents=True, exist_ok=True)
        tmp = raw.with_suffix(".part")
        with gzip.open(gz, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        tmp.replace(raw)
    return raw


def read_idx_pair(images_key: str, labels_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Fetch (mirror/cache/network) and parse one images+labels pair: uint8 (N,28,28), int64 (N,)."""
    folder = images_key.split("/", 1)[0]
    # torchvision's IDX readers; imported here because torchvision costs seconds at kernel start
    from torchvision.datasets.mnist import read_image_file, read_label_file

    images = read_image_file(str(_gunzip(fetch(images_key), folder)))
    labels = read_label_file(str(_gunzip(fetch(labels_key), folder)))
    if len(images) != len(labels):
        raise ValueError(f"{images_key} has {len(images)} images but {labels_key} {len(labels)} labels")
    return images, labels


def to_float(images: torch.Tensor, normalize: bool = True, flatten: bool = False,
             mean: float = MNIST_MEAN, std: float = MNIST_STD) -> torch.Tensor:
    """uint8 (N,28,28) -> float32 (N,1,28,28) or (N,784), scaled to [0,1] and standardised."""
    x = images.float().div_(255.0)
    if normalize:
        x = (x - mean) / std
    return x.reshape(len(x), -1) if flatten else x.unsqueeze(1)


def _split(x: torch.Tensor, y: torch.Tensor, n_val: int, seed: int) -> tuple[TensorDataset, TensorDataset]:
    # A seeded permutation, so the quick split is the same on every machine and every run.
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = order[:n_val], order[n_val:]
    return TensorDataset(x[train_idx], y[train_idx]), TensorDataset(x[val_idx], y[val_idx])


def load_mnist(
    which: Profile | None = None,
    *,
    flatten: bool = False,
    normalize: bool = True,
    val_size: int | None = None,
    seed: int = 0,
) -> Splits:
    """MNIST as in-memory tensors, split for the profile (see the module docstring).

    ``val_size`` defaults to 2,000 of the 10,000 images in ``quick`` and 5,000 of the 60,000
    training images in ``full``.
    """
    which = which or current_profile()
    test_x, test_y = read_idx_pair("mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz")
    if which == "quick":
        x = to_float(test_x, normalize, flatten)
        train, val = _split(x, test_y, 2_000 if val_size is None else val_size, seed)
        note = ("both split from the official MNIST test set, the only MNIST offline: raw material "
                "for this lesson, not the MNIST benchmark")
        return Splits(train, val, None, which, note=note)
    train_x, train_y = read_idx_pair("mnist/train-images-idx3-ubyte.gz", "mnist/train-labels-idx1-ubyte.gz")
    train, val = _split(to_float(train_x, normalize, flatten), train_y, 5_000 if val_size is None else val_size, seed)
    test = TensorDataset(to_float(test_x, normalize, flatten), test_y)
    note = "val held out from the 60,000 training images; test is the official test set"
    return Splits(train, val, test, which, note=note)
