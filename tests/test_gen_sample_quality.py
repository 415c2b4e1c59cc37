"""Proofs and unit tests of dlbook.sample_quality (chapters/generative/measuring-generative-models.ipynb).

The Fréchet distance (eq-gen-fd) is checked in float64 against ``scipy.linalg.sqrtm`` (the
published computation), against torchmetrics' ``FrechetInceptionDistance`` with the course's
classifier as its feature extractor, and against closed forms; a planted bug, ``Tr(Σ1 Σ2)`` without
the square root, must fail the same checks.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from dlbook.sample_quality import (
    ClassifierFeatures,
    FashionClassifier,
    add_gaussian_noise,
    class_scores,
    classifier_features,
    classifier_frechet_distance,
    conditional_accuracy,
    expected_mean_term,
    frechet_by_sample_size,
    frechet_distance,
    frechet_distance_features,
    frechet_distance_sqrtm,
    gaussian_blur,
    gaussian_stats,
    load_classifier,
    predict_proba,
    sqrtm_psd,
    trace_sqrt_product,
)

f64 = torch.float64


def random_covariance(d: int, seed: int, rank: int | None = None) -> torch.Tensor:
    """A random symmetric positive (semi-)definite matrix with a spread of eigenvalues."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, rank or d, generator=g, dtype=f64)
    return a @ a.T / (rank or d) + (0.1 * torch.eye(d, dtype=f64) if rank is None else 0)


def random_gaussians(d: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(d, generator=g, dtype=f64), random_covariance(d, seed + 1),
            torch.randn(d, generator=g, dtype=f64), random_covariance(d, seed + 2))


def buggy_frechet(mu1, s1, mu2, s2) -> float:
    """The planted bug: Tr(Σ1 Σ2) where eq-gen-fd has Tr (Σ1 Σ2)^{1/2}."""
    return float((mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * (s1 @ s2).trace())


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


# --- proofs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frechet_distance_equals_scipy_sqrtm_and_the_bug_does_not(seed):
    stats = random_gaussians(seed=seed)
    ours, reference = frechet_distance(*stats), frechet_distance_sqrtm(*stats)
    assert rel(ours, reference) < 1e-8, f"eq-gen-fd off the sqrtm reference by {rel(ours, reference):.1e}"
    assert rel(buggy_frechet(*stats), reference) > 1e-2, "the planted bug must be rejected"


def test_trace_sqrt_product_is_the_sum_of_root_eigenvalues_of_the_product():
    _, s1, _, s2 = random_gaussians(d=9, seed=3)
    eigenvalues = np.linalg.eigvals(s1.numpy() @ s2.numpy())  # real and positive, up to rounding
    assert np.abs(eigenvalues.imag).max() < 1e-10 and eigenvalues.real.min() > 0
    expected = np.sqrt(eigenvalues.real).sum()
    assert rel(float(trace_sqrt_product(s1, s2)), float(expected)) < 1e-10
    # symmetric in its arguments, although Σ1^{1/2} Σ2 Σ1^{1/2} is not Σ2^{1/2} Σ1 Σ2^{1/2}
    assert rel(float(trace_sqrt_product(s1, s2)), float(trace_sqrt_product(s2, s1))) < 1e-12


def test_sqrtm_psd_squares_back_and_handles_singular_matrices():
    s = random_covariance(7, seed=4)
    root = sqrtm_psd(s)
    assert torch.allclose(root, root.T) and (root @ root - s).abs().max() < 1e-12
    singular = random_covariance(7, seed=5, rank=3)
    root = sqrtm_psd(singular)
    assert torch.isfinite(root).all() and (root @ root - singular).abs().max() < 1e-7


def test_frechet_distance_agrees_with_torchmetrics_on_the_course_classifier():
    from torchmetrics.image.fid import FrechetInceptionDistance

    torch.manual_seed(0)
    extractor = ClassifierFeatures(FashionClassifier().double()).eval()
    g = torch.Generator().manual_seed(0)
    real = torch.rand(300, 1, 28, 28, generator=g, dtype=f64)
    fake = (real[:250] * 0.7 + 0.3 * torch.rand(250, 1, 28, 28, generator=g, dtype=f64)).clamp(0, 1)
    metric = FrechetInceptionDistance(feature=extractor, normalize=True)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    theirs = float(metric.compute())
    with torch.no_grad():
        f_real, f_fake = extractor(real), extractor(fake)
    ours = frechet_distance_features(f_real, f_fake)
    # measured 1e-11 to 1e-10: torchmetrics takes eigenvalues of the non-symmetric product
    assert rel(ours, theirs) < 1e-8, f"ours {ours} vs torchmetrics {theirs}"
    bug = buggy_frechet(*gaussian_stats(f_real), *gaussian_stats(f_fake))
    assert rel(bug, theirs) > 1e-2, "the planted bug must be rejected"


def test_identical_sets_are_at_distance_zero():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(500, 16, generator=g, dtype=f64) * 3 + 5
    mu, s = gaussian_stats(x)
    # a difference of traces of about 2 Tr Σ: zero up to rounding of that size
    assert abs(frechet_distance_features(x, x)) < 1e-12 * float(s.trace())
    assert abs(frechet_distance_features(x, x[torch.randperm(500, generator=g)])) < 1e-12 * float(s.trace())


def test_closed_form_for_known_gaussians():
    g = torch.Generator().manual_seed(2)
    d = 6
    a, b = torch.rand(d, generator=g, dtype=f64) + 0.1, torch.rand(d, generator=g, dtype=f64) + 0.1
    mu1, mu2 = torch.randn(d, generator=g, dtype=f64), torch.randn(d, generator=g, dtype=f64)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=f64))
    # commuting covariances Q diag(a) Qᵀ and Q diag(b) Qᵀ: d² = ||μ1 - μ2||² + Σ (√a - √b)²
    expected = float((mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum())
    got = frechet_distance(mu1, q @ torch.diag(a) @ q.T, mu2, q @ torch.diag(b) @ q.T)
    assert rel(got, expected) < 1e-10
    # isotropic: d² = ||μ1 - μ2||² + d (σ1 - σ2)²
    eye = torch.eye(d, dtype=f64)
    got = frechet_distance(mu1, 4 * eye, mu2, 0.25 * eye)
    assert rel(got, float((mu1 - mu2).square().sum()) + d * (2 - 0.5) ** 2) < 1e-12
    buggy = buggy_frechet(mu1, q @ torch.diag(a) @ q.T, mu2, q @ torch.diag(b) @ q.T)
    assert rel(buggy, expected) > 1e-2


def test_gaussian_stats_match_numpy():
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(3)).float()
    mu, s = gaussian_stats(x)
    assert mu.dtype == f64 and s.shape == (5, 5)
    assert np.allclose(s.numpy(), np.cov(x.double().numpy(), rowvar=False), atol=1e-14)
    assert np.allclose(mu.numpy(), x.double().numpy().mean(0), atol=1e-14)


def test_expected_mean_term_matches_monte_carlo():
    mu1, s1, mu2, s2 = random_gaussians(d=4, seed=6)
    n1, n2, trials = 5, 8, 20_000
    g = torch.Generator().manual_seed(7)
    l1, l2 = torch.linalg.cholesky(s1), torch.linalg.cholesky(s2)
    draws1 = mu1 + torch.randn(trials, n1, 4, generator=g, dtype=f64) @ l1.T
    draws2 = mu2 + torch.randn(trials, n2, 4, generator=g, dtype=f64) @ l2.T
    squared = (draws1.mean(1) - draws2.mean(1)).square().sum(1)
    expected = expected_mean_term(mu1, s1, mu2, s2, n1, n2)
    stderr = float(squared.std() / math.sqrt(trials))
    assert abs(float(squared.mean()) - expected) < 4 * stderr
    assert expected > float((mu1 - mu2).square().sum())  # biased upwards


def test_frechet_by_sample_size_shrinks_and_reproduces():
    g = torch.Generator().manual_seed(8)
    a, b = torch.randn(2000, 8, generator=g, dtype=f64), torch.randn(2000, 8, generator=g, dtype=f64)
    mean, std = frechet_by_sample_size(a, b, [50, 200, 2000], repeats=3, generator=torch.Generator().manual_seed(0))
    again, _ = frechet_by_sample_size(a, b, [50, 200, 2000], repeats=3, generator=torch.Generator().manual_seed(0))
    assert mean.shape == std.shape == (3,) and torch.equal(mean, again)
    assert mean[0] > mean[1] > mean[2] > 0  # same distribution: all of it is bias


# --- the classifier and its checks -----------------------------------------------------------------


def test_classifier_shapes_and_features():
    torch.manual_seed(0)
    model = FashionClassifier(channels=(4, 8), num_features=12)
    x = torch.rand(5, 1, 28, 28)
    assert model(x).shape == (5, 10)
    feats = classifier_features(model, x, batch_size=2)
    assert feats.shape == (5, 12) and feats.dtype == f64
    probs = predict_proba(model, x)
    assert probs.shape == (5, 10) and torch.allclose(probs.sum(1), torch.ones(5, dtype=f64))
    assert torch.allclose(ClassifierFeatures(model)(x).double(), feats)
    with pytest.raises(ValueError, match="shape"):
        classifier_features(model, torch.rand(5, 28, 28))


def test_classifier_frechet_distance_zero_for_same_images():
    torch.manual_seed(0)
    model = FashionClassifier(channels=(4, 8), num_features=8)
    x = torch.rand(60, 1, 28, 28)
    assert abs(classifier_frechet_distance(model, x, x)) < 1e-9
    assert classifier_frechet_distance(model, x, gaussian_blur(x, 2.0)) > 1e-3


def test_load_classifier_trains_once_then_loads(tmp_path, monkeypatch, mirror):
    from dlbook import transfer

    monkeypatch.setattr(transfer, "cache_dir", lambda: tmp_path)  # the weights only: the data stay cached
    config = {"channels": (4, 8), "num_features": 8, "epochs": 1, "train_size": 500, "batch_size": 100}
    first, info = load_classifier(config)
    assert not info["loaded"] and 0.1 < info["val_acc"] <= 1 and not first.training
    second, info2 = load_classifier(config)
    assert info2["loaded"] and info2["val_acc"] == pytest.approx(info["val_acc"])
    assert all(torch.equal(p, q) for p, q in zip(first.state_dict().values(), second.state_dict().values(), strict=True))
    assert len(list((tmp_path / "sample_quality").glob("*.pt"))) == 1


class MeanIntensityClassifier(nn.Module):
    """A stand-in classifier: class k is an image whose pixels all equal (k + 0.5) / 10."""

    def __init__(self) -> None:
        super().__init__()
        self.centres = nn.Parameter((torch.arange(10) + 0.5) / 10, requires_grad=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return -100 * (images.mean((1, 2, 3))[:, None] - self.centres).square()


def test_conditional_accuracy_perfect_chance_and_bad_arguments():
    classifier = MeanIntensityClassifier()

    def faithful(n, *, labels, generator):
        return ((labels.float() + 0.5) / 10).view(n, 1, 1, 1).expand(n, 1, 28, 28).clone()

    def ignores_labels(n, *, labels, generator):
        return torch.full((n, 1, 28, 28), 0.05)

    acc, per_class = conditional_accuracy(classifier, faithful, 3, generator=torch.Generator())
    assert acc == 1.0 and per_class.shape == (10,) and (per_class == 1).all()
    acc, per_class = conditional_accuracy(classifier, ignores_labels, 3, generator=torch.Generator())
    assert acc == pytest.approx(0.1) and per_class[0] == 1 and (per_class[1:] == 0).all()
    with pytest.raises(ValueError, match="n_per_class"):
        conditional_accuracy(classifier, faithful, 0, generator=torch.Generator())
    with pytest.raises(ValueError, match="sampler returned"):
        conditional_accuracy(classifier, lambda n, **_: torch.zeros(n, 28, 28), 2, generator=torch.Generator())


def test_class_scores():
    uniform = torch.eye(10).repeat(3, 1)  # every class predicted 3 times, with certainty
    scores = class_scores(uniform)
    assert scores["mean_max_prob"] == pytest.approx(1.0) and scores["class_entropy"] == pytest.approx(math.log2(10))
    one_class = torch.full((7, 10), 0.05)
    one_class[:, 2] = 0.55
    scores = class_scores(one_class)
    assert scores["class_entropy"] == 0.0 and scores["mean_max_prob"] == pytest.approx(0.55)
    with pytest.raises(ValueError):
        class_scores(torch.ones(10))


# --- corruptions ---------------------------------------------------------------------------------


def test_gaussian_blur_matches_torchvision():
    from torchvision.transforms.functional import gaussian_blur as tv_blur

    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0), dtype=f64)
    for sigma in (0.5, 1.0, 2.0):
        radius = math.ceil(3 * sigma)
        expected = tv_blur(x, [2 * radius + 1] * 2, [sigma, sigma])
        assert (gaussian_blur(x, sigma) - expected).abs().max() < 1e-12
    assert torch.equal(gaussian_blur(x, 0.0), x)
    flat = torch.full((1, 1, 28, 28), 0.3, dtype=f64)
    assert (gaussian_blur(flat, 1.5) - 0.3).abs().max() < 1e-15
    with pytest.raises(ValueError):
        gaussian_blur(x, -1.0)
    with pytest.raises(ValueError):
        gaussian_blur(x[0], 1.0)


def test_add_gaussian_noise_is_seeded_and_stays_in_range():
    x = torch.rand(4, 1, 28, 28)
    a = add_gaussian_noise(x, 0.3, generator=torch.Generator().manual_seed(1))
    b = add_gaussian_noise(x, 0.3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1 and not torch.equal(a, x)
    assert torch.equal(add_gaussian_noise(x, 0.0, generator=torch.Generator()), x)
    with pytest.raises(ValueError):
        add_gaussian_noise(x, -0.1, generator=torch.Generator())


# --- bad arguments -------------------------------------------------------------------------------


def test_bad_arguments_give_clear_errors():
    mu, s = torch.zeros(3, dtype=f64), torch.eye(3, dtype=f64)
    with pytest.raises(ValueError, match="square"):
        frechet_distance(mu, torch.zeros(3, 2), mu, s)
    with pytest.raises(ValueError, match="shapes do not match"):
        frechet_distance(torch.zeros(4), s, mu, s)
    with pytest.raises(ValueError, match="differ in shape"):
        trace_sqrt_product(s, torch.eye(4))
    with pytest.raises(ValueError, match="at least 2 rows"):
        gaussian_stats(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        gaussian_stats(torch.zeros(3))
    with pytest.raises(ValueError, match="dimension"):
        frechet_distance_features(torch.rand(5, 3), torch.rand(5, 4))
    with pytest.raises(ValueError, match="sample size"):
        frechet_by_sample_size(torch.rand(5, 2), torch.rand(5, 2), [10], generator=torch.Generator())
    with pytest.raises(ValueError, match="positive"):
        expected_mean_term(mu, s, mu, s, 0, 3)


def test_frechet_distance_float32_inputs_are_computed_in_float64():
    stats = random_gaussians(seed=9)
    assert rel(frechet_distance(*(t.float() for t in stats)), frechet_distance(*stats)) < 1e-6


def test_feature_extractor_copy_is_independent():
    model = FashionClassifier(channels=(4, 8), num_features=8)
    extractor = ClassifierFeatures(copy.deepcopy(model).double())
    assert extractor.num_features == 8 and next(model.parameters()).dtype == torch.float32
