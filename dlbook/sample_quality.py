"""Measuring generative models: a Fréchet distance in a classifier's feature space (lesson 6.5).

The equations of ``chapters/generative/measuring-generative-models.ipynb`` this module implements:

* eq-gen-fd-stats: the mean and unbiased covariance of a set of features, :func:`gaussian_stats`;
* eq-gen-fd: the Fréchet (2-Wasserstein) distance between two Gaussians,
  ``d² = ||μ1 - μ2||² + Tr(Σ1 + Σ2 - 2 (Σ1 Σ2)^{1/2})``, :func:`frechet_distance`, whose trace of a
  matrix square root is computed through the symmetric matrix of eq-gen-fd-sym,
  ``Tr (Σ1 Σ2)^{1/2} = Tr (Σ1^{1/2} Σ2 Σ1^{1/2})^{1/2}``, :func:`trace_sqrt_product`;
  :func:`frechet_distance_sqrtm` is the published reference computation (``scipy.linalg.sqrtm`` of
  the non-symmetric product), kept to prove the two equal;
* eq-gen-mean-bias: the expected squared distance of two sample means, the part of the
  finite-sample bias of the distance that has a closed form, :func:`expected_mean_term`;
* eq-gen-cond-acc: the accuracy with which a classifier recognises the class a conditional model
  was asked for, :func:`conditional_accuracy`; eq-gen-hist-entropy: the entropy of the histogram
  of predicted classes, with the mean largest probability, :func:`class_scores`.

The feature extractor is the course's own Fashion-MNIST classifier (:class:`FashionClassifier`,
trained once by :func:`load_classifier` and cached by its configuration's hash), not ImageNet's
Inception network: the numbers measure the same thing as the FID of Heusel et al. (2017) but in
another feature space, so they are not comparable with published FIDs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .data.fashion_mnist import FASHION_MEAN, FASHION_STD

Tensor = torch.Tensor
Sampler = Callable[..., Tensor]

# --- eq-gen-fd: the Fréchet distance between two Gaussians ------------------------------------------


def _check_features(features: Tensor, name: str = "features") -> Tensor:
    if features.dim() != 2:
        raise ValueError(f"{name} must be a (N, D) matrix, not shape {tuple(features.shape)}")
    if features.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 rows for a covariance, has {features.shape[0]}")
    return features.detach().to(torch.float64)


def gaussian_stats(features: Tensor) -> tuple[Tensor, Tensor]:
    """eq-gen-fd-stats: the mean ``μ`` (D,) and unbiased covariance ``Σ`` (D, D) of ``features``
    (N, D), in float64.

    The covariance is computed from centred features, ``(X - μ)ᵀ(X - μ) / (N - 1)``, not from
    ``ΣxxᵀN - μμᵀ``, which loses digits to cancellation when the mean is large against the spread.
    """
    x = _check_features(features)
    mu = x.mean(0)
    centred = x - mu
    return mu, centred.T @ centred / (x.shape[0] - 1)


def _check_square(matrix: Tensor, name: str) -> Tensor:
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{name} must be a square matrix, not shape {tuple(matrix.shape)}")
    return matrix.detach().to(torch.float64)


def sqrtm_psd(matrix: Tensor) -> Tensor:
    """The symmetric square root ``S^{1/2} = V diag(√λ) Vᵀ`` of a symmetric positive semi-definite
    ``S = V diag(λ) Vᵀ`` (float64), from its eigendecomposition.

    ``S`` is symmetrised first (``(S + Sᵀ)/2``, which removes rounding asymmetry) and eigenvalues
    that rounding made slightly negative are set to 0: a covariance has none below 0.
    """
    s = _check_square(matrix, "matrix")
    eigenvalues, vectors = torch.linalg.eigh((s + s.T) / 2)
    return (vectors * eigenvalues.clamp_min(0).sqrt()) @ vectors.T


def trace_sqrt_product(sigma1: Tensor, sigma2: Tensor) -> Tensor:
    """eq-gen-fd-sym: ``Tr (Σ1 Σ2)^{1/2}`` as ``Tr (Σ1^{1/2} Σ2 Σ1^{1/2})^{1/2} = Σ_i √λ_i`` (float64).

    ``Σ1 Σ2`` is not symmetric, but it has the same eigenvalues as the symmetric positive
    semi-definite ``M = Σ1^{1/2} Σ2 Σ1^{1/2}`` (``AB`` and ``BA`` share them, with ``A = Σ1^{1/2}``
    and ``B = Σ1^{1/2} Σ2``), and the trace of a square root is the sum of the square roots of the
    eigenvalues. ``torch.linalg.eigvalsh`` finds the eigenvalues of a symmetric matrix in real
    arithmetic, each within about ``1e-16 ||M||`` of the truth; no complex numbers, no Schur form.
    """
    s1, s2 = _check_square(sigma1, "sigma1"), _check_square(sigma2, "sigma2")
    if s1.shape != s2.shape:
        raise ValueError(f"the covariances differ in shape: {tuple(s1.shape)} vs {tuple(s2.shape)}")
    root1 = sqrtm_psd(s1)
    m = root1 @ s2 @ root1
    return torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()


def _check_gaussians(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> tuple[Tensor, ...]:
    mu1, mu2 = mu1.detach().to(torch.float64), mu2.detach().to(torch.float64)
    s1, s2 = _check_square(sigma1, "sigma1"), _check_square(sigma2, "sigma2")
    d = s1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s2.shape != (d, d):
        raise ValueError(f"shapes do not match: mu1 {tuple(mu1.shape)}, sigma1 {tuple(s1.shape)}, "
                         f"mu2 {tuple(mu2.shape)}, sigma2 {tuple(s2.shape)}")
    return mu1, s1, mu2, s2


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """eq-gen-fd: ``||μ1 - μ2||² + Tr Σ1 + Tr Σ2 - 2 Tr (Σ1 Σ2)^{1/2}``, in float64.

    The squared 2-Wasserstein (Fréchet) distance between ``N(μ1, Σ1)`` and ``N(μ2, Σ2)``; the FID
    when the Gaussians are fitted to Inception features. Rounding can make a distance of 0 come out
    a hair below 0; it is returned as computed so that a proof sees the rounding.
    """
    mu1, s1, mu2, s2 = _check_gaussians(mu1, sigma1, mu2, sigma2)
    mean_term = (mu1 - mu2).square().sum()
    return float(mean_term + s1.trace() + s2.trace() - 2 * trace_sqrt_product(s1, s2))


def frechet_distance_sqrtm(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor, eps: float = 1e-6) -> float:
    """eq-gen-fd computed as the published FID code does: ``scipy.linalg.sqrtm(Σ1 Σ2)``.

    The reference for :func:`frechet_distance`. ``sqrtm`` works on the non-symmetric product through
    a complex Schur decomposition; where the result is not finite (a singular product) ``eps·I`` is
    added to both covariances, and a rounding imaginary part is dropped, as in Heusel et al.'s code.
    """
    from scipy import linalg  # here: scipy.linalg takes a second to import

    mu1, s1, mu2, s2 = (t.numpy() for t in _check_gaussians(mu1, sigma1, mu2, sigma2))
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def frechet_distance_features(features1: Tensor, features2: Tensor) -> float:
    """eq-gen-fd between the Gaussians fitted (eq-gen-fd-stats) to two sets of features (N1, D), (N2, D)."""
    f1, f2 = _check_features(features1, "features1"), _check_features(features2, "features2")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"the feature sets differ in dimension: {f1.shape[1]} vs {f2.shape[1]}")
    return frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2))


def expected_mean_term(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor, n1: int, n2: int) -> float:
    """eq-gen-mean-bias: ``E ||μ̂1 - μ̂2||² = ||μ1 - μ2||² + Tr Σ1 / n1 + Tr Σ2 / n2`` for sample means
    of ``n1`` and ``n2`` independent draws: the mean term of eq-gen-fd is biased upwards by
    ``Tr Σ1 / n1 + Tr Σ2 / n2``, which shrinks only as ``1/n``."""
    if n1 < 1 or n2 < 1:
        raise ValueError(f"sample sizes must be positive, not {n1} and {n2}")
    mu1, s1, mu2, s2 = _check_gaussians(mu1, sigma1, mu2, sigma2)
    return float((mu1 - mu2).square().sum() + s1.trace() / n1 + s2.trace() / n2)


def frechet_by_sample_size(features1: Tensor, features2: Tensor, sizes: Sequence[int], *, repeats: int = 3,
                           generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """eq-gen-fd between random subsets of ``n`` rows of each feature set, for every ``n`` in ``sizes``.

    Returns the mean and the standard deviation over ``repeats`` draws, each of shape
    ``(len(sizes),)``: the distance's finite-sample bias (eq-gen-mean-bias and more) made visible.
    """
    f1, f2 = _check_features(features1, "features1"), _check_features(features2, "features2")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, not {repeats}")
    for n in sizes:
        if not 2 <= n <= min(len(f1), len(f2)):
            raise ValueError(f"sample size {n} must be in [2, {min(len(f1), len(f2))}]")
    values = torch.zeros(len(sizes), repeats, dtype=torch.float64)
    for i, n in enumerate(sizes):
        for r in range(repeats):
            a = torch.randperm(len(f1), generator=generator)[:n]
            b = torch.randperm(len(f2), generator=generator)[:n]
            values[i, r] = frechet_distance_features(f1[a], f2[b])
    std = values.std(1) if repeats > 1 else torch.zeros(len(sizes), dtype=torch.float64)
    return values.mean(1), std


# --- the feature extractor: the course's own Fashion-MNIST classifier ---------------------------------


class FashionClassifier(nn.Module):
    """A small CNN for Fashion-MNIST whose penultimate layer is the feature space of the distance.

    Input: images (N, 1, 28, 28) in [0, 1], standardised inside with the dataset's statistics so
    that every caller passes pixels as the generative models produce them. Two 3×3 convolutions
    with max pooling, a hidden layer of ``num_features`` ReLU units (their pre-activations are
    :meth:`features`) and a linear read-out of 10 logits (:meth:`forward`).
    """

    def __init__(self, channels: tuple[int, int] = (16, 32), num_features: int = 64, n_classes: int = 10) -> None:
        super().__init__()
        c1, c2 = channels
        self.num_features = num_features  # torchmetrics reads this instead of running a dummy image
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(c2 * 7 * 7, num_features),
        )
        self.head = nn.Linear(num_features, n_classes)

    def features(self, images: Tensor) -> Tensor:
        """The penultimate layer's pre-activations (N, ``num_features``): what the distance compares.

        Before the ReLU, not after it: the ReLU piles every negative value on an exact 0, and a
        unit that is never positive gives the covariance a zero row, a singular matrix whose
        square root (eq-gen-fd-sym) is ill-conditioned. The pre-activations hold the same
        information (the ReLU is a fixed function of them)."""
        return self.body((images - FASHION_MEAN) / FASHION_STD)

    def forward(self, images: Tensor) -> Tensor:
        """Logits (N, 10): ``head(ReLU(features))``."""
        return self.head(torch.relu(self.features(images)))


class ClassifierFeatures(nn.Module):
    """``classifier.features`` as a module of its own: the ``feature`` argument of torchmetrics'
    ``FrechetInceptionDistance`` (which reads ``num_features`` and calls ``forward``)."""

    def __init__(self, classifier: FashionClassifier) -> None:
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.num_features

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier.features(images)


CLASSIFIER_CONFIG: dict[str, Any] = {
    "channels": (16, 32), "num_features": 64, "epochs": 3, "batch_size": 128, "lr": 2e-3,
    "train_size": 10_000, "seed": 0,
}


def train_classifier(train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor], config: Mapping[str, Any],
                     *, device: torch.device | None = None, progress: bool = False) -> tuple[FashionClassifier, dict[str, float]]:
    """Train a :class:`FashionClassifier` with :func:`dlbook.train.fit` (Adam, cross-entropy).

    ``config`` keys (defaults in :data:`CLASSIFIER_CONFIG`): ``channels``, ``num_features``,
    ``epochs``, ``batch_size``, ``lr``, ``seed``. The epoch is chosen on the validation accuracy
    (:class:`dlbook.train.EarlyStopping` restores the best epoch's weights). Returns the model in
    eval mode on the CPU and ``{"val_acc", "best_epoch", "train_seconds"}``.
    """
    from .train import EarlyStopping, accuracy, fit

    cfg = {**CLASSIFIER_CONFIG, **config}
    torch.manual_seed(cfg["seed"])
    model = FashionClassifier(tuple(cfg["channels"]), cfg["num_features"])
    choose = EarlyStopping(monitor="val_acc", mode="max", patience=cfg["epochs"], restore_best=True)
    history = fit(model, train, val_data=val, optimizer=torch.optim.Adam(model.parameters(), lr=cfg["lr"]),
                  epochs=cfg["epochs"], batch_size=cfg["batch_size"], metrics=accuracy(10), device=device,
                  seed=cfg["seed"], progress=progress, callbacks=[choose])
    info = {"val_acc": float(choose.best), "best_epoch": float(choose.best_epoch or 0),
            "train_seconds": history.last["train_seconds"]}
    return model.cpu().eval(), info


def load_classifier(config: Mapping[str, Any] | None = None, *, device: torch.device | None = None,
                    progress: bool = False, folder: str = "sample_quality") -> tuple[FashionClassifier, dict[str, Any]]:
    """The course's Fashion-MNIST classifier for ``config``: trained once, then loaded from the cache.

    Trains on ``config["train_size"]`` images of the training split (``None``: all 55,000) and
    chooses on the validation split (:func:`train_classifier`); the weights are saved under the
    course cache, named by a hash of the configuration (:func:`dlbook.transfer.cached_state`), so a
    second run, or another lesson with the same configuration, loads them. Returns the model (eval
    mode, CPU) and ``{"loaded": bool, "val_acc": float, "config": dict}``; the validation accuracy
    is measured again after a load, so it is there either way.
    """
    from .data.fashion_mnist import load_fashion_mnist
    from .train import accuracy, evaluate
    from .transfer import cached_state

    cfg = {**CLASSIFIER_CONFIG, **(config or {})}
    cfg["channels"] = list(cfg["channels"])
    splits = load_fashion_mnist(normalize=False, train_size=cfg["train_size"], seed=0)
    model = FashionClassifier(tuple(cfg["channels"]), cfg["num_features"])
    trained: dict[str, float] = {}

    def train(target: nn.Module) -> None:
        fitted, info = train_classifier(splits.train.tensors, splits.val.tensors, cfg, device=device, progress=progress)
        target.load_state_dict(fitted.state_dict())
        trained.update(info)

    key = {**cfg, "model": "FashionClassifier", "data": "fashion-mnist, normalize=False, val_size=5000, seed=0"}
    model, loaded = cached_state(model, key, train, folder=folder)
    model.cpu().eval()
    val_acc = evaluate(model, splits.val.tensors, metrics=accuracy(10), device=torch.device("cpu"))["acc"]
    return model, {"loaded": loaded, "val_acc": val_acc, "config": cfg, **trained}


@torch.no_grad()
def _in_batches(classifier: FashionClassifier, forward: Callable[[Tensor], Tensor], images: Tensor,
                batch_size: int) -> Tensor:
    """``forward`` (a method of ``classifier``) over ``images`` in eval mode, batch by batch, as
    float64 on the CPU; the classifier's mode is restored afterwards."""
    _check_images(images)
    was_training = classifier.training
    classifier.eval()
    dtype = next(classifier.parameters()).dtype
    out = torch.cat([forward(images[i:i + batch_size].to(dtype)).double() for i in range(0, len(images), batch_size)])
    classifier.train(was_training)
    return out


def classifier_features(classifier: FashionClassifier, images: Tensor, batch_size: int = 1000) -> Tensor:
    """The penultimate features (N, D) of ``images`` (N, 1, 28, 28) in [0, 1], in float64 on the CPU."""
    return _in_batches(classifier, classifier.features, images, batch_size)


def predict_proba(classifier: FashionClassifier, images: Tensor, batch_size: int = 1000) -> Tensor:
    """Class probabilities (N, 10) of ``images`` (N, 1, 28, 28) in [0, 1], float64 on the CPU."""
    return _in_batches(classifier, classifier, images, batch_size).softmax(1)


def classifier_frechet_distance(classifier: FashionClassifier, images1: Tensor, images2: Tensor) -> float:
    """eq-gen-fd between two image sets in ``classifier``'s penultimate feature space.

    Compare only distances computed with the same number of images on each side: the estimate is
    biased upwards by an amount that shrinks as ``1/n`` (eq-gen-mean-bias).
    """
    return frechet_distance_features(classifier_features(classifier, images1), classifier_features(classifier, images2))


def _check_images(images: Tensor) -> None:
    if images.dim() != 4 or images.shape[1:] != (1, 28, 28):
        raise ValueError(f"images must have shape (N, 1, 28, 28), not {tuple(images.shape)}")


# --- checks with the classifier's predictions -------------------------------------------------------


def class_scores(probs: Tensor) -> dict[str, float]:
    """eq-gen-hist-entropy: ``mean_max_prob``, the mean over images of the largest class probability
    (how sure the classifier is: high for sharp, recognisable images), and ``class_entropy``, the
    entropy in bits of the histogram of predicted classes (``log2 K`` when every class is predicted
    equally often; low when a model produces few kinds of image)."""
    if probs.dim() != 2 or len(probs) == 0:
        raise ValueError(f"probs must be a non-empty (N, K) matrix, not shape {tuple(probs.shape)}")
    p = probs.detach().double()
    counts = torch.bincount(p.argmax(1), minlength=p.shape[1]).double()
    freq = counts / counts.sum()
    nonzero = freq[freq > 0]
    return {"mean_max_prob": float(p.max(1).values.mean()),
            "class_entropy": float(-(nonzero * nonzero.log2()).sum()) + 0.0}  # + 0.0: no "-0.0" for one class


def conditional_accuracy(classifier: FashionClassifier, sampler: Sampler, n_per_class: int, *,
                         generator: torch.Generator, n_classes: int = 10) -> tuple[float, Tensor]:
    """eq-gen-cond-acc: ask a conditional model for ``n_per_class`` images of each class and measure
    how often the classifier recognises the class asked for.

    ``sampler(n, labels=labels, generator=generator)`` must return ``(n, 1, 28, 28)`` images in
    [0, 1] for the ``labels`` (n,) it is given (``functools.partial(sample_vae, model)`` does).
    Returns the accuracy over all ``n_classes * n_per_class`` images and the accuracy per class
    (``n_classes``,). A model that ignores its labels scores about the chance level ``1 / n_classes``.
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be at least 1, not {n_per_class}")
    labels = torch.arange(n_classes).repeat_interleave(n_per_class)
    images = sampler(len(labels), labels=labels, generator=generator)
    if images.shape != (len(labels), 1, 28, 28):
        raise ValueError(f"the sampler returned shape {tuple(images.shape)}, not ({len(labels)}, 1, 28, 28)")
    hits = (predict_proba(classifier, images).argmax(1) == labels).double()
    return float(hits.mean()), hits.view(n_classes, n_per_class).mean(1)


# --- corruptions for the sanity checks --------------------------------------------------------------


def add_gaussian_noise(images: Tensor, sigma: float, *, generator: torch.Generator) -> Tensor:
    """``clamp(x + σ ε, 0, 1)`` with ``ε ~ N(0, I)``: images degraded by pixel noise of scale ``sigma``."""
    if sigma < 0:
        raise ValueError(f"sigma must be non-negative, not {sigma}")
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype)
    return (images + sigma * noise).clamp(0, 1)


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Images (N, C, H, W) blurred by a Gaussian of standard deviation ``sigma`` pixels
    (separable, kernel radius ``ceil(3σ)``, reflected borders); ``sigma = 0`` returns a copy."""
    if sigma < 0:
        raise ValueError(f"sigma must be non-negative, not {sigma}")
    if images.dim() != 4:
        raise ValueError(f"images must have shape (N, C, H, W), not {tuple(images.shape)}")
    if sigma == 0:
        return images.clone()
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-offsets.square() / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    x = nn.functional.pad(images, (radius, radius, radius, radius), mode="reflect")
    x = nn.functional.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return nn.functional.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
