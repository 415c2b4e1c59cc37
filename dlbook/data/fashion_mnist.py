"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): 60,000 training and 10,000 test images of clothing.

The splits follow the benchmark's rules: a seeded, stratified validation slice is held out of the
*training* set and used for every choice (epochs, learning rates, model families); the 10,000
test images are evaluated once, for a lesson's final number. The ``quick`` profile trains on a
seeded, stratified subset of the training split (never on test images) and keeps the same
validation and test sets, so its numbers are comparable with ``full`` ones, only smaller-budget.
"""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from ..runtime import Profile, by_profile
from ..runtime import profile as current_profile
from .mnist import Splits, read_idx_pair, to_float

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# Over the 60,000 training images (the dataset's published statistics; checked by a test).
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530
DEFAULT_TRAIN_SIZE = {"quick": 10_000, "full": None}  # None: the whole training split


def stratified_split(labels: torch.Tensor, n_second: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of two disjoint parts of ``labels``, the second of size ``n_second``, each class
    in the same proportion in both (scikit-learn's stratified ``train_test_split``, seeded)."""
    if not 0 < n_second < len(labels):
        raise ValueError(f"cannot take {n_second:,} of {len(labels):,} examples; need 0 < n < {len(labels):,}")
    index = torch.arange(len(labels)).numpy()
    from sklearn.model_selection import train_test_split  # here: scikit-learn takes seconds to import

    first, second = train_test_split(index, test_size=n_second, stratify=labels.numpy(), random_state=seed)
    return torch.from_numpy(first).sort().values, torch.from_numpy(second).sort().values


def load_fashion_mnist(
    which: Profile | None = None,
    *,
    flatten: bool = False,
    normalize: bool = True,
    val_size: int = 5_000,
    train_size: int | None | str = "profile",
    seed: int = 0,
) -> Splits:
    """Fashion-MNIST as in-memory tensors: train / validation / test (see the module docstring).

    ``val_size`` images are held out of the 60,000 training images (stratified, seeded by
    ``seed``); ``train_size`` (default: 10,000 in ``quick``, all 55,000 in ``full``) takes a
    stratified subset of the rest. The test set is always the official 10,000 images.
    """
    which = which or current_profile()
    if train_size == "profile":
        train_size = by_profile(DEFAULT_TRAIN_SIZE, which)
    train_x, train_y = read_idx_pair("fashion-mnist/train-images-idx3-ubyte.gz", "fashion-mnist/train-labels-idx1-ubyte.gz")
    test_x, test_y = read_idx_pair("fashion-mnist/t10k-images-idx3-ubyte.gz", "fashion-mnist/t10k-labels-idx1-ubyte.gz")
    fit_idx, val_idx = stratified_split(train_y, val_size, seed)
    pool = len(fit_idx)
    if train_size is not None and train_size != pool:
        if train_size > pool:
            raise ValueError(f"train_size {train_size:,} exceeds the {pool:,} training images left after validation")
        _, keep = stratified_split(train_y[fit_idx], train_size, seed)
        fit_idx = fit_idx[keep]

    def convert(images: torch.Tensor) -> torch.Tensor:
        return to_float(images, normalize, flatten, FASHION_MEAN, FASHION_STD)

    train = TensorDataset(convert(train_x[fit_idx]), train_y[fit_idx])
    val = TensorDataset(convert(train_x[val_idx]), train_y[val_idx])
    test = TensorDataset(convert(test_x), test_y)
    train_part = "the rest" if len(fit_idx) == pool else f"a stratified subset of the other {pool:,}"
    note = (f"val is a stratified slice of the 60,000 training images and train {train_part}; "
            "test is the official 10,000, evaluated once")
    return Splits(train, val, test, which, name="Fashion-MNIST", classes=FASHION_CLASSES, note=note)
