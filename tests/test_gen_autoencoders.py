"""Generative lesson 6.1: autoencoders (chapters/generative/autoencoders.ipynb).

The code is dlbook/models/autoencoder.py. The proofs of the lesson run here again in float64:
principal angles from QR + SVD equal ``scipy.linalg.subspace_angles`` (planted bugs: raw vectors
compared column by column, no orthonormalisation), PCA's error equals the Eckart-Young optimum and
a trained linear autoencoder reaches it and spans the principal subspace, and the masked loss
equals a reference computed another way with zero gradient on visible pixels (planted bug: the
loss over all patches). Then unit tests of every public function: shapes, clear errors, seeding.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from scipy.linalg import subspace_angles

from dlbook.gradients import rel_error
from dlbook.models.autoencoder import (
    AUTOENCODER_DEFAULTS,
    PCA,
    DenoisingStep,
    LinearAutoencoder,
    LinearProbe,
    MaskedStep,
    MLPAutoencoder,
    add_gaussian_noise,
    check_images,
    encode_images,
    fit_code_gaussian,
    fit_pca,
    mask_images,
    masked_patch_loss,
    model_reconstruct,
    orthonormal_basis,
    patchify,
    pca_optimum,
    pixel_mask,
    plain_step,
    principal_angles,
    probe_accuracy,
    random_patch_mask,
    reconstruction_mse,
    sample_autoencoder,
    train_autoencoder,
    train_linear_autoencoder,
    train_linear_probe,
    unpatchify,
)

f64 = torch.float64


# --------------------------------------------------------------------------- principal angles


def planted_subspaces(angles: list[float], d: int = 50, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Skewed (non-orthonormal) bases of two subspaces of R^d whose principal angles are ``angles``."""
    gen = torch.Generator().manual_seed(seed)
    planted = torch.tensor(sorted(angles, reverse=True), dtype=f64)
    m = len(planted)
    rotation, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=f64))
    basis_b = rotation[:, :m] * planted.cos() + rotation[:, m : 2 * m] * planted.sin()
    a = rotation[:, :m] @ torch.randn(m, m, generator=gen, dtype=f64)
    b = basis_b @ torch.randn(m, m, generator=gen, dtype=f64)
    return a, b, planted


def raw_vector_angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Planted bug 1: the angle between column j of a and column j of b."""
    cos = (a * b).sum(0).abs() / (a.norm(dim=0) * b.norm(dim=0))
    return torch.arccos(cos.clamp(-1, 1)).sort(descending=True).values


def unorthonormalised_angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Planted bug 2: the singular values of a^T b taken as cosines, without the QR step."""
    return torch.arccos(torch.linalg.svdvals(a.T @ b).clamp(-1, 1)).flip(0)


@pytest.mark.parametrize("angles", [[1.4, 0.7, 0.1, 1e-6], [0.5, 0.1, 1e-3, 1e-6], [1.5, 1.2, 0.9]])
def test_principal_angles_equal_scipy_and_the_planted_angles(angles: list[float]) -> None:
    a, b, planted = planted_subspaces(angles)
    ours = principal_angles(a, b)
    assert rel_error(ours, torch.from_numpy(subspace_angles(a.numpy(), b.numpy()))) < 1e-8
    assert rel_error(ours, planted) < 1e-12


def test_principal_angles_of_unequal_dimensions_match_scipy() -> None:
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(30, 6, generator=gen, dtype=f64), torch.randn(30, 3, generator=gen, dtype=f64)
    for x, y in ((a, b), (b, a)):
        ours = principal_angles(x, y)
        assert ours.shape == (3,)
        assert rel_error(ours, torch.from_numpy(subspace_angles(x.numpy(), y.numpy()))) < 1e-8


def test_principal_angles_ignore_the_basis() -> None:
    a, b, _ = planted_subspaces([0.3, 0.2, 0.1])
    g = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0], [1.0, 0.0, 1.0]], dtype=f64)
    assert rel_error(principal_angles(a @ g, b), principal_angles(a, b)) < 1e-12
    assert principal_angles(a, a @ g).max() < 1e-7  # the same subspace


def test_planted_bugs_raw_vectors_and_no_orthonormalisation_are_caught() -> None:
    a, b, _ = planted_subspaces([1.4, 0.7, 0.1, 1e-6])
    reference = torch.from_numpy(subspace_angles(a.numpy(), b.numpy()))
    assert rel_error(raw_vector_angles(a, b), reference) > 1e-3
    assert rel_error(unorthonormalised_angles(a, b), reference) > 1e-3
    # the same subspace in another basis: the raw-vector comparison sees large angles
    g = torch.tensor([[1.0, 1.0], [-1.0, 1.0]], dtype=f64)
    q = a[:, :2]
    assert raw_vector_angles(q @ g, q).max() > 0.3 and principal_angles(q @ g, q).max() < 1e-7


def test_orthonormal_basis_and_its_errors() -> None:
    a = torch.randn(10, 3, generator=torch.Generator().manual_seed(0), dtype=f64)
    q = orthonormal_basis(a)
    assert rel_error(q.T @ q, torch.eye(3, dtype=f64)) < 1e-14
    assert rel_error(q @ (q.T @ a), a) < 1e-14  # same column space
    with pytest.raises(ValueError, match="linearly dependent"):
        orthonormal_basis(torch.cat([a, a[:, :1] * 2], dim=1))
    with pytest.raises(ValueError, match="1 <= k <= d"):
        orthonormal_basis(torch.randn(3, 5))
    with pytest.raises(ValueError, match="same number of rows"):
        principal_angles(torch.randn(5, 2), torch.randn(6, 2))


# --------------------------------------------------------------------------- PCA and the linear autoencoder


def spectrum_data(n: int = 600, d: int = 20, seed: int = 0) -> torch.Tensor:
    """Centred data with a clear spectrum (standard deviations 5, 4, 3, then 1 and below)."""
    gen = torch.Generator().manual_seed(seed)
    scales = torch.tensor([5.0, 4.0, 3.0] + [1.0 - 0.04 * i for i in range(d - 3)])
    rotation, _ = torch.linalg.qr(torch.randn(d, d, generator=gen))
    x = (torch.randn(n, d, generator=gen) * scales) @ rotation.T
    return x - x.mean(0)


def test_pca_components_are_the_svds_right_singular_vectors() -> None:
    x = spectrum_data().double()
    pca = fit_pca(x, 3)
    _, s, vh = torch.linalg.svd(x - x.mean(0), full_matrices=False)
    assert rel_error(pca.components.T @ pca.components, torch.eye(3, dtype=f64)) < 1e-12
    assert principal_angles(pca.components, vh[:3].T).max() < 1e-10
    assert rel_error(pca.singular_values, s) < 1e-12
    assert pca.encode(x).shape == (600, 3) and pca.truncate(2).k == 2


def test_pca_error_is_the_eckart_young_optimum_and_no_rank_k_matrix_beats_it() -> None:
    x = spectrum_data().double()
    k = 3
    pca = fit_pca(x, k)
    centred = x - pca.mean
    projected = centred @ pca.components @ pca.components.T
    error = ((centred - projected) ** 2).mean().item()
    optimum = pca_optimum(pca.singular_values, k, centred.numel())
    assert abs(error - optimum) / optimum < 1e-10
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):  # random rank-k reconstructions, and small perturbations of the optimum
        w = pca.components + 0.05 * torch.randn(pca.components.shape, generator=gen, dtype=f64)
        q, _ = torch.linalg.qr(w)
        assert ((centred - centred @ q @ q.T) ** 2).mean() >= optimum * (1 - 1e-12)
        b = torch.randn(600, k, generator=gen, dtype=f64) @ torch.randn(k, 20, generator=gen, dtype=f64)
        assert ((centred - b) ** 2).mean() >= optimum


def test_pca_decode_clips_and_checks_k() -> None:
    images = torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    pca = fit_pca(images, 5)
    out = pca.reconstruct(images, clip=True)
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError, match="k must be"):
        fit_pca(images, 41)
    with pytest.raises(ValueError, match="k must be"):
        pca.truncate(6)
    with pytest.raises(ValueError, match="k must be"):
        pca_optimum(pca.singular_values, 100, 10)


def test_linear_autoencoder_reaches_pca_and_spans_the_principal_subspace() -> None:
    x = spectrum_data()
    model, history = train_linear_autoencoder(x, 3, epochs=15, lr=3e-2, batch_size=64, seed=0)
    pca = fit_pca(x.double(), 3)
    angle = math.degrees(principal_angles(model.decoder.weight.detach().double(), pca.components).max())
    with torch.no_grad():
        error = F.mse_loss(model(x).double(), x.double()).item()
    optimum = pca_optimum(pca.singular_values, 3, x.numel())
    assert angle < 1.0, f"decoder span {angle:.2f} degrees from the principal subspace"
    assert error < optimum * 1.01
    assert len(history) == 15 and not model.training


def test_linear_autoencoder_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="centred"):
        train_linear_autoencoder(spectrum_data() + 3.0, 2, epochs=1)
    with pytest.raises(ValueError, match="matrix"):
        train_linear_autoencoder(torch.zeros(4, 2, 3), 2)
    with pytest.raises(ValueError, match="1 <= k <= d"):
        LinearAutoencoder(5, 6)
    with pytest.raises(ValueError, match="init"):
        LinearAutoencoder(5, 2, init="zeros")


def test_linear_autoencoder_seeding_reproduces() -> None:
    x = spectrum_data(n=200)
    a, _ = train_linear_autoencoder(x, 2, epochs=2, seed=5)
    b, _ = train_linear_autoencoder(x, 2, epochs=2, seed=5)
    assert torch.equal(a.decoder.weight, b.decoder.weight)


# --------------------------------------------------------------------------- masking


def masked_problem(seed: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 1, 28, 28, generator=gen, dtype=f64)
    out = torch.rand(3, 1, 28, 28, generator=gen, dtype=f64, requires_grad=True)
    return x, out, random_patch_mask(3, 4, 0.5, generator=gen)


def reference_masked_loss(out: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, patch: int) -> torch.Tensor:
    """Another way: the mask upsampled to pixels, F.mse_loss(reduction='none') averaged over them."""
    g = math.isqrt(mask.shape[1])
    pixels = F.interpolate(mask.reshape(len(mask), 1, g, g).to(out.dtype), scale_factor=patch, mode="nearest").bool()
    return F.mse_loss(out, x, reduction="none")[pixels].mean()


def test_masked_loss_equals_reference_and_its_gradient_skips_visible_pixels() -> None:
    x, out, mask = masked_problem()
    ours = masked_patch_loss(out, x, mask, 7)
    reference = reference_masked_loss(out, x, mask, 7)
    assert rel_error(ours, reference) < 1e-12
    (grad,) = torch.autograd.grad(ours, out)
    (ref_grad,) = torch.autograd.grad(reference, out)
    pixels = pixel_mask(mask, 7).bool()
    assert rel_error(grad, ref_grad) < 1e-12
    assert rel_error(grad, 2 * (out - x).detach() * pixels / pixels.sum()) < 1e-12
    assert torch.equal(grad[~pixels], torch.zeros_like(grad[~pixels]))
    assert (grad[pixels] != 0).all()


def test_planted_bug_loss_over_all_patches_is_caught() -> None:
    x, out, mask = masked_problem()
    bug = F.mse_loss(out, x)
    assert rel_error(bug, reference_masked_loss(out, x, mask, 7)) > 1e-3
    (grad,) = torch.autograd.grad(bug, out)
    assert grad[~pixel_mask(mask, 7).bool()].abs().max() > 0


@pytest.mark.parametrize("patch", [4, 7, 14])
def test_patchify_equals_unfold_and_unpatchify_inverts_it(patch: int) -> None:
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    patches = patchify(x, patch)
    assert torch.equal(patches, F.unfold(x, kernel_size=patch, stride=patch).transpose(1, 2))
    assert torch.equal(unpatchify(patches, patch), x)
    rgb = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(unpatchify(patchify(rgb, 4), 4, channels=3), rgb)


def test_patch_errors() -> None:
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(ValueError, match="does not divide"):
        patchify(x, 5)
    with pytest.raises(ValueError, match="square"):
        patchify(torch.rand(2, 1, 28, 14), 7)
    with pytest.raises(ValueError, match="unpatchify"):
        unpatchify(torch.rand(2, 15, 49), 7)


def test_random_patch_mask_counts_and_seeding() -> None:
    mask = random_patch_mask(50, 4, 0.75, torch.Generator().manual_seed(0))
    assert mask.shape == (50, 16) and mask.dtype == torch.bool
    assert (mask.sum(1) == 12).all()
    assert not (mask == mask[0]).all()  # each image draws its own patches
    again = random_patch_mask(50, 4, 0.75, torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)
    for ratio in (0.0, 1.0):
        with pytest.raises(ValueError, match="masks"):
            random_patch_mask(2, 4, ratio)
    with pytest.raises(ValueError, match="positive"):
        random_patch_mask(0, 4, 0.5)


def test_mask_images_and_pixel_mask() -> None:
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    mask = random_patch_mask(3, 4, 0.5, torch.Generator().manual_seed(1))
    pixels = pixel_mask(mask, 7)
    assert pixels.shape == x.shape and pixels.sum() == 3 * 8 * 49
    masked = mask_images(x, mask, 7)
    assert (masked[pixels.bool()] == 0).all() and torch.equal(masked[~pixels.bool()], x[~pixels.bool()])
    assert (mask_images(x, mask, 7, fill=0.5)[pixels.bool()] == 0.5).all()
    with pytest.raises(ValueError, match="patch_mask must have shape"):
        mask_images(x, mask[:, :4], 7)
    with pytest.raises(ValueError, match="no patch is masked"):
        masked_patch_loss(x, x, torch.zeros(3, 16, dtype=torch.bool), 7)
    with pytest.raises(ValueError, match="differ"):
        masked_patch_loss(x, x[:2], mask, 7)


def test_add_gaussian_noise() -> None:
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(add_gaussian_noise(x, 0.0), x)
    a = add_gaussian_noise(x, 0.5, torch.Generator().manual_seed(3))
    b = add_gaussian_noise(x, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and abs((a - x).std().item() - 0.5) < 0.05
    with pytest.raises(ValueError, match="non-negative"):
        add_gaussian_noise(x, -1.0)


def test_fit_steps_return_what_fit_needs() -> None:
    model = MLPAutoencoder(code_size=3, hidden=8)
    x = torch.rand(5, 1, 28, 28)
    out, target = plain_step(model, (x,))
    assert out.shape == x.shape and target is x
    out, target = DenoisingStep(0.3, torch.Generator().manual_seed(0))(model, (x,))
    assert out.shape == x.shape and target is x
    loss = MaskedStep(7, 0.5, torch.Generator().manual_seed(0))(model, (x,))
    assert loss.dim() == 0 and loss.requires_grad


# --------------------------------------------------------------------------- the nonlinear autoencoder, trainer, sampler


@pytest.fixture(scope="module")
def tiny_images() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(240) % 3
    base = torch.rand(3, 1, 28, 28, generator=gen)
    images = (base[labels] + 0.2 * torch.rand(240, 1, 28, 28, generator=gen)).clamp(0, 1)
    return images, labels


TINY = {"code_size": 4, "hidden": 16, "epochs": 1, "batch_size": 64}


def test_mlp_autoencoder_shapes_and_range() -> None:
    model = MLPAutoencoder(code_size=5, hidden=12)
    x = torch.rand(7, 1, 28, 28)
    assert model.encode(x).shape == (7, 5)
    out = model(x)
    assert out.shape == (7, 1, 28, 28) and out.min() >= 0 and out.max() <= 1
    assert int(model.code_count) == 0
    with pytest.raises(ValueError, match="positive"):
        MLPAutoencoder(code_size=0)


def test_train_autoencoder_contract_and_seeding(tiny_images) -> None:
    images, labels = tiny_images
    model, seconds = train_autoencoder(images, TINY, seed=3)
    again, _ = train_autoencoder(images, TINY, seed=3)
    assert isinstance(model, MLPAutoencoder) and not model.training and seconds > 0
    for (name, p), q in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(p, q), f"{name} differs between two runs with the same seed"
    assert int(model.code_count) == len(images) and model.class_mean is None
    for corruption in ("gaussian", "mask"):
        other, _ = train_autoencoder(images, {**TINY, "corruption": corruption}, seed=0)
        assert not other.training


def test_train_autoencoder_rejects_bad_arguments(tiny_images) -> None:
    images, labels = tiny_images
    with pytest.raises(ValueError, match="unknown config keys"):
        train_autoencoder(images, {"code": 4})
    with pytest.raises(ValueError, match="corruption"):
        train_autoencoder(images, {"corruption": "blur"})
    with pytest.raises(ValueError, match="shape"):
        train_autoencoder(images[:, :, :14], TINY)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        train_autoencoder(images * 2 - 1, TINY)
    with pytest.raises(ValueError, match="labels"):
        train_autoencoder(images, TINY, labels=labels[:10])
    with pytest.raises(ValueError, match="does not divide"):
        train_autoencoder(images, {**TINY, "corruption": "mask", "patch": 5})
    with pytest.raises(ValueError, match="positive"):
        train_autoencoder(images, {**TINY, "epochs": 0})
    with pytest.raises(ValueError, match="floating"):
        check_images(images.to(torch.uint8))
    assert set(AUTOENCODER_DEFAULTS) >= {"code_size", "epochs", "batch_size", "lr"}


def test_code_gaussian_is_the_mean_and_covariance_of_the_codes(tiny_images) -> None:
    images, labels = tiny_images
    model = fit_code_gaussian(MLPAutoencoder(code_size=4, hidden=16), images, labels)
    codes = encode_images(model, images).double()
    assert rel_error(model.code_mean.double(), codes.mean(0)) < 1e-5
    assert rel_error(model.code_cov.double(), torch.cov(codes.T, correction=0)) < 1e-5
    members = codes[labels == 1]
    assert rel_error(model.class_cov[1].double(), torch.cov(members.T, correction=0)) < 1e-5
    assert model.class_mean.shape == (3, 4) and model.class_cov.shape == (3, 4, 4)


def test_sampler_draws_from_the_code_gaussian(tiny_images) -> None:
    images, labels = tiny_images
    model = fit_code_gaussian(MLPAutoencoder(code_size=3, hidden=16), images, labels)
    # a stand-in decoder that is invertible (a sigmoid, inside the sampler's [0, 1]): the draws' codes come back
    model.decode = torch.sigmoid  # type: ignore[method-assign]
    draws = torch.logit(sample_autoencoder(model, 20_000, generator=torch.Generator().manual_seed(0)).double())
    cov = model.code_cov.double()
    assert (draws.mean(0) - model.code_mean.double()).abs().max() < 4 * cov.diagonal().sqrt().max() / math.sqrt(20_000)
    assert rel_error(torch.cov(draws.T), cov) < 0.05


def test_sample_autoencoder_contract(tiny_images) -> None:
    images, labels = tiny_images
    model, _ = train_autoencoder(images, TINY, labels=labels, seed=0)
    a = sample_autoencoder(model, 6, generator=torch.Generator().manual_seed(1))
    b = sample_autoencoder(model, 6, generator=torch.Generator().manual_seed(1))
    assert a.shape == (6, 1, 28, 28) and a.dtype == torch.float32 and a.device.type == "cpu"
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    per_class = sample_autoencoder(model, 3, generator=torch.Generator().manual_seed(1), labels=torch.tensor([0, 2, 1]))
    assert per_class.shape == (3, 1, 28, 28)
    with pytest.raises(ValueError, match="positive"):
        sample_autoencoder(model, 0, generator=torch.Generator())
    with pytest.raises(ValueError, match="labels must have shape"):
        sample_autoencoder(model, 3, generator=torch.Generator(), labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels must lie"):
        sample_autoencoder(model, 1, generator=torch.Generator(), labels=torch.tensor([5]))
    unconditional, _ = train_autoencoder(images, TINY, seed=0)
    with pytest.raises(ValueError, match="without labels"):
        sample_autoencoder(unconditional, 1, generator=torch.Generator(), labels=torch.tensor([0]))
    with pytest.raises(ValueError, match="no code Gaussian"):
        sample_autoencoder(MLPAutoencoder(), 1, generator=torch.Generator())


def test_reconstruction_mse_and_encode_images(tiny_images) -> None:
    images, _ = tiny_images
    model = MLPAutoencoder(code_size=4, hidden=16)
    with torch.no_grad():
        expected = F.mse_loss(model(images), images).item()
    assert abs(reconstruction_mse(model_reconstruct(model), images, batch_size=50) - expected) < 1e-6
    pca = fit_pca(images, 4)
    assert isinstance(pca, PCA)
    noisy = add_gaussian_noise(images, 0.1, torch.Generator().manual_seed(0))
    assert reconstruction_mse(lambda x: x, noisy, images) == pytest.approx(F.mse_loss(noisy, images).item(), rel=1e-5)
    assert encode_images(model, images, batch_size=100).shape == (240, 4)
    with pytest.raises(ValueError, match="target shape"):
        reconstruction_mse(lambda x: x, images, images[:10])


# --------------------------------------------------------------------------- the linear probe


def test_linear_probe_learns_a_separable_problem_and_checks_inputs() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = 4 * torch.randn(3, 5, generator=gen)
    y = torch.arange(600) % 3
    x = centres[y] + torch.randn(600, 5, generator=gen)
    probe, chosen = train_linear_probe((x[:400], y[:400]), (x[400:500], y[400:500]), classes=3, epochs=5, seed=0)
    assert isinstance(probe, LinearProbe) and set(chosen) == {"lr", "epoch", "val_acc"}
    assert chosen["val_acc"] > 0.9 and probe_accuracy(probe, x[500:], y[500:], classes=3) > 0.9
    with pytest.raises(ValueError, match="same width"):
        train_linear_probe((x, y), (x[:, :3], y))
    with pytest.raises(ValueError, match="differ in length"):
        train_linear_probe((x, y[:10]), (x, y))
    with pytest.raises(ValueError, match="at least one"):
        train_linear_probe((x, y), (x, y), lrs=())
