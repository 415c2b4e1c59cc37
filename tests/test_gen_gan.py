"""Generative lesson 6.3: generative adversarial networks (chapters/generative/gans.ipynb).

The code is dlbook/models/gan.py. The proofs of the lesson are repeated here, each with its planted
bug that the same check must reject: the optimal discriminator p / (p + q) against the value
2 JSD - log 4 (bug: q / (p + q)); the losses from logits against PyTorch's
binary_cross_entropy_with_logits in float64 (bug: a sign dropped); the closed-form gradients of the
saturating and non-saturating generator losses against autograd (bug: the two swapped). Then unit
tests of every public function: shapes, ValueErrors, seeding.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.distance import jensenshannon

import dlbook
from dlbook.gradients import rel_error
from dlbook.models.gan import (
    GAN,
    DCGANDiscriminator,
    DCGANGenerator,
    EnsembleLinear,
    Mixture1D,
    MLPDiscriminator,
    RingDiscriminator,
    RingGenerator,
    adversarial_fit,
    build_dcgan,
    build_ring_gan,
    discriminator_loss,
    gan_config,
    gan_value,
    generator_gradient_norms,
    generator_loss,
    generator_loss_grad,
    latent_noise,
    mode_coverage,
    optimal_discriminator,
    optimal_discriminator_logit,
    pca_frechet_distance,
    pixel_pca,
    probability_form_losses,
    ring_centres,
    sample_gan,
    sample_ring,
    train_gan,
)
from dlbook.train import fit

f64 = torch.float64
P = Mixture1D((0.5, 0.5), (-2.0, 1.5), (0.6, 0.8))
Q = Mixture1D((1.0,), (0.0,), (1.5,))


# --------------------------------------------------------------------------- optimal discriminator


def _grid_jsd(p: Mixture1D, q: Mixture1D) -> float:
    """JSD by SciPy on a fine grid (an independent implementation: a Riemann sum, exact to
    rounding for smooth densities whose tails vanish inside the grid)."""
    grid = np.linspace(-30, 30, 600_001)
    return float(jensenshannon(np.exp(p.log_prob(grid)), np.exp(q.log_prob(grid))) ** 2)


def test_value_at_optimal_discriminator_is_2_jsd_minus_log_4() -> None:
    v_star = gan_value(lambda x: optimal_discriminator_logit(P.log_prob(x), Q.log_prob(x)), P, Q)
    jsd = _grid_jsd(P, Q)
    assert abs(v_star - (2 * jsd - math.log(4))) < 1e-8
    assert 0 < jsd < math.log(2)


def test_planted_bug_q_over_p_plus_q_is_rejected() -> None:
    v_bug = gan_value(lambda x: optimal_discriminator_logit(Q.log_prob(x), P.log_prob(x)), P, Q)
    assert abs(v_bug - (2 * _grid_jsd(P, Q) - math.log(4))) > 1e-2


def test_optimal_discriminator_maximises_the_value() -> None:
    v_star = gan_value(lambda x: optimal_discriminator_logit(P.log_prob(x), Q.log_prob(x)), P, Q)
    for shift in (-0.3, 0.2):  # any other discriminator scores lower
        other = gan_value(lambda x, s=shift: optimal_discriminator_logit(P.log_prob(x), Q.log_prob(x)) + s, P, Q)
        assert other < v_star
    assert gan_value(lambda x: np.zeros_like(x), P, P) == pytest.approx(-math.log(4), abs=1e-10)


def test_trained_discriminator_finds_d_star_within_the_sampling_tolerance() -> None:
    """The lesson's Proof 1: an MLP classifier trained on samples of p and q is within 3 binomial
    standard errors (bins of width 0.5) of D* wherever a bin would hold 100 samples or more."""
    n = 4_000
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([P.sample(n, gen), Q.sample(n, gen)])
    y = torch.cat([torch.ones(n), torch.zeros(n)])
    dlbook.seed_everything(0)
    disc = MLPDiscriminator(in_dim=1, hidden=32, layers=2)
    opt = torch.optim.Adam(disc.parameters(), lr=1e-2)
    fit(disc, (x, y), optimizer=opt, epochs=40, batch_size=512, loss_fn=F.binary_cross_entropy_with_logits,
        scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(opt, 40 * 16), scheduler_step="batch",
        device=torch.device("cpu"), progress=False, seed=0)
    grid = np.linspace(-5, 5, 401)
    with torch.no_grad():
        learned = torch.sigmoid(disc(torch.from_numpy(grid).float()[:, None])).double().numpy()
    d_star = optimal_discriminator(P.log_prob(grid), Q.log_prob(grid))
    count = n * (np.exp(P.log_prob(grid)) + np.exp(Q.log_prob(grid))) * 0.5
    tolerance = 3 * np.sqrt(d_star * (1 - d_star) / count)
    inside = count >= 100
    assert (np.abs(learned - d_star) / tolerance)[inside].max() <= 1
    # the planted bug q / (p + q) is far outside the same tolerance
    assert (np.abs(learned - (1 - d_star)) / tolerance)[inside].max() > 5


def test_optimal_discriminator_values_and_stability() -> None:
    assert optimal_discriminator(np.log(3.0), np.log(1.0)) == pytest.approx(0.75, abs=1e-15)
    # both densities underflow to 0 in float64, their logs do not: D* stays exact
    assert optimal_discriminator(-2000.0, -2000.0 - math.log(3)) == pytest.approx(0.75, abs=1e-12)
    assert optimal_discriminator_logit(np.array([0.0]), np.array([1.0]))[0] == -1.0


def test_mixture_density_and_sampling() -> None:
    grid = np.linspace(-30, 30, 200_001)
    assert np.exp(P.log_prob(grid)).sum() * (60 / 200_000) == pytest.approx(1.0, abs=1e-12)  # not grid[1] - grid[0]: rounded
    a = P.sample(1000, torch.Generator().manual_seed(0))
    assert a.shape == (1000, 1) and a.dtype == torch.float32
    assert torch.equal(a, P.sample(1000, torch.Generator().manual_seed(0)))
    assert abs(float(a.mean()) - (-0.25)) < 0.2
    with pytest.raises(ValueError):
        Mixture1D((0.5, 0.6), (0.0, 1.0), (1.0, 1.0))
    with pytest.raises(ValueError):
        Mixture1D((1.0,), (0.0, 1.0), (1.0,))
    with pytest.raises(ValueError):
        P.sample(0, torch.Generator())


# --------------------------------------------------------------------------- losses from logits


def _logits(seed: int, n: int = 50, scale: float = 4.0) -> torch.Tensor:
    return scale * torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=f64)


def test_losses_equal_binary_cross_entropy_with_logits() -> None:
    real, fake = _logits(1), _logits(2)
    bce = F.binary_cross_entropy_with_logits
    d_ref = bce(real, torch.ones_like(real)) + bce(fake, torch.zeros_like(fake))
    assert rel_error(discriminator_loss(real, fake), d_ref) < 1e-8
    assert rel_error(generator_loss(fake, True), bce(fake, torch.ones_like(fake))) < 1e-8
    assert rel_error(generator_loss(fake, False), -bce(fake, torch.zeros_like(fake))) < 1e-8


def test_planted_bug_a_dropped_sign_is_rejected() -> None:
    real, fake = _logits(1), _logits(2)
    bce = F.binary_cross_entropy_with_logits
    d_ref = bce(real, torch.ones_like(real)) + bce(fake, torch.zeros_like(fake))
    buggy = F.softplus(real).mean() + F.softplus(fake).mean()  # softplus(l) for the real term
    assert rel_error(buggy, d_ref) > 1e-2


def test_losses_are_finite_where_the_probability_form_is_not() -> None:
    real = torch.tensor([200.0, -200.0])
    fake = torch.tensor([200.0, -200.0], requires_grad=True)
    naive = probability_form_losses(real, fake)
    assert not torch.isfinite(naive["discriminator"]) and not torch.isfinite(naive["non_saturating"])
    for value in (discriminator_loss(real, fake), generator_loss(fake, True), generator_loss(fake, False)):
        assert torch.isfinite(value)
    (grad,) = torch.autograd.grad(generator_loss(fake, True), fake)
    assert torch.isfinite(grad).all()
    assert discriminator_loss(real, fake).item() == pytest.approx(200.0, rel=1e-6)  # one wrong of each, /2 twice


def test_probability_form_agrees_at_moderate_logits() -> None:
    real, fake = _logits(3, scale=2.0), _logits(4, scale=2.0)
    naive = probability_form_losses(real, fake)
    assert rel_error(naive["discriminator"], discriminator_loss(real, fake)) < 1e-12
    assert rel_error(naive["saturating"], generator_loss(fake, False)) < 1e-12
    assert rel_error(naive["non_saturating"], generator_loss(fake, True)) < 1e-12


@pytest.mark.parametrize("non_saturating", [True, False])
def test_generator_loss_gradient_matches_autograd(non_saturating: bool) -> None:
    fake = _logits(5).requires_grad_(True)
    (auto,) = torch.autograd.grad(generator_loss(fake, non_saturating), fake)
    assert rel_error(generator_loss_grad(fake.detach(), non_saturating), auto) < 1e-8


def test_planted_bug_swapped_gradients_are_rejected() -> None:
    fake = _logits(5).requires_grad_(True)
    (auto,) = torch.autograd.grad(generator_loss(fake, True), fake)
    assert rel_error(generator_loss_grad(fake.detach(), False), auto) > 1e-2


def test_saturating_gradient_vanishes_where_non_saturating_does_not() -> None:
    confident = torch.full((4,), -10.0, dtype=f64)  # D(G(z)) = sigmoid(-10)
    sat, ns = generator_loss_grad(confident, False).abs(), generator_loss_grad(confident, True).abs()
    assert torch.allclose(sat / ns, torch.full_like(sat, math.exp(-10)), rtol=1e-12)


@pytest.mark.parametrize("bad", [torch.tensor([1, 2]), torch.tensor([]), [0.5]])
def test_losses_reject_bad_logits(bad) -> None:
    with pytest.raises(ValueError):
        generator_loss(bad)
    with pytest.raises(ValueError):
        discriminator_loss(torch.zeros(2), bad)


# --------------------------------------------------------------------------- networks


def test_dcgan_shapes_and_range() -> None:
    torch.manual_seed(0)
    gan = build_dcgan(latent_dim=8, width=4)
    z = latent_noise(3, 8, torch.Generator().manual_seed(0))
    x = gan.generator(z)
    assert x.shape == (3, 1, 28, 28) and x.abs().max() <= 1
    assert gan.discriminator(x).shape == (3,)
    assert gan.latent_dim == 8 and gan.num_classes is None


def test_dcgan_init_follows_the_recipe() -> None:
    torch.manual_seed(0)
    gan = build_dcgan(latent_dim=16, width=32)
    w = gan.generator.net[0].weight.detach()
    assert abs(float(w.std()) - 0.02) < 0.002 and abs(float(w.mean())) < 0.002
    bn = gan.generator.net[1].requires_grad_(False)
    assert abs(float(bn.weight.mean()) - 1) < 0.01 and float(bn.bias.abs().max()) == 0


def test_conditional_dcgan() -> None:
    g, d = DCGANGenerator(8, 4, num_classes=10), DCGANDiscriminator(4, num_classes=10)
    z, y = torch.randn(5, 8), torch.arange(5)
    x = g(z, y)
    assert x.shape == (5, 1, 28, 28) and d(x, y).shape == (5,)
    with pytest.raises(ValueError):
        g(z)
    with pytest.raises(ValueError):
        d(x)
    with pytest.raises(ValueError):
        DCGANGenerator(8, 4)(z, y)
    with pytest.raises(ValueError):
        DCGANDiscriminator(4)(x, y)
    with pytest.raises(ValueError):
        DCGANGenerator(0, 4)


def test_ensemble_members_are_independent_linear_layers() -> None:
    torch.manual_seed(0)
    layer = EnsembleLinear(3, 4, 5)
    x = torch.randn(3, 7, 4)
    out = layer(x)
    for s in range(3):
        assert torch.allclose(out[s], x[s] @ layer.weight[s] + layer.bias[s, 0], atol=1e-6)
    bound = 1 / math.sqrt(4)
    assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound


def test_ring_nets_keep_members_apart() -> None:
    torch.manual_seed(0)
    g, d = RingGenerator(members=3, latent_dim=2, hidden=8), RingDiscriminator(members=3, hidden=8)
    z = torch.randn(6, 3 * 2)
    x = g(z)
    assert x.shape == (6, 3, 2) and d(x).shape == (6, 3)
    z2 = z.clone()
    z2[:, 2:4] += 1  # change member 1's noise only
    x2 = g(z2)
    assert torch.equal(x2[:, 0], x[:, 0]) and torch.equal(x2[:, 2], x[:, 2]) and not torch.equal(x2[:, 1], x[:, 1])
    with pytest.raises(ValueError):
        d(torch.randn(6, 2, 2))
    with pytest.raises(ValueError):
        RingGenerator(members=0)


def test_mlp_discriminator_shape() -> None:
    assert MLPDiscriminator(1, 8, 2)(torch.randn(5, 1)).shape == (5,)
    with pytest.raises(ValueError):
        MLPDiscriminator(1, 0)


# --------------------------------------------------------------------------- training


def _tiny_images(n: int = 64) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def test_adversarial_fit_records_and_snapshots() -> None:
    torch.manual_seed(0)
    gan = build_dcgan(latent_dim=4, width=2)
    noise = torch.randn(3, 4)
    history = adversarial_fit(gan, _tiny_images() * 2 - 1, steps=3, batch_size=16, snapshot_steps=(0, 3),
                              snapshot_noise=noise, d_steps=2)
    assert history.step == [1, 2, 3] and len(history.d_loss) == 3 and history.seconds > 0
    assert set(history.snapshots) == {0, 3} and history.snapshots[3].shape == (3, 1, 28, 28)
    assert all(0 < v < 1 for v in history.d_real + history.d_fake)
    assert gan.history is history


def test_adversarial_fit_rejects_bad_arguments() -> None:
    gan = build_dcgan(latent_dim=4, width=2)
    with pytest.raises(ValueError):
        adversarial_fit(gan, _tiny_images(8), steps=1, batch_size=16)
    with pytest.raises(ValueError):
        adversarial_fit(gan, _tiny_images(), steps=0)
    with pytest.raises(ValueError):
        adversarial_fit(gan, _tiny_images(), steps=1, labels=torch.zeros(64, dtype=torch.long))
    with pytest.raises(ValueError):
        adversarial_fit(gan, _tiny_images(), steps=1, snapshot_steps=(1,))


def test_train_gan_contract_and_seeding() -> None:
    images = _tiny_images()
    config = {"steps": 2, "batch_size": 16, "latent_dim": 4, "width": 2, "snapshot_steps": (0, 2), "snapshot_count": 4}
    model, seconds = train_gan(images, config, seed=3)
    again, _ = train_gan(images, config, seed=3)
    assert isinstance(model, GAN) and not model.training and seconds > 0
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    snap = model.history.snapshots[2]
    assert snap.shape == (4, 1, 28, 28) and snap.min() >= 0 and snap.max() <= 1
    x = sample_gan(model, 5, generator=torch.Generator().manual_seed(0))
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.float32 and x.device.type == "cpu"
    assert x.min() >= 0 and x.max() <= 1
    assert torch.equal(x, sample_gan(model, 5, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError):
        sample_gan(model, 2, generator=torch.Generator(), labels=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError):
        sample_gan(model, 0, generator=torch.Generator())


def test_train_gan_epochs_and_conditional() -> None:
    images, labels = _tiny_images(), torch.arange(64) % 10
    model, _ = train_gan(images, {"epochs": 1, "batch_size": 32, "latent_dim": 4, "width": 2}, labels=labels)
    assert model.num_classes == 10 and model.history.step == [1, 2]  # 64 // 32 steps
    x = sample_gan(model, 4, generator=torch.Generator().manual_seed(0), labels=torch.tensor([0, 1, 2, 3]))
    assert x.shape == (4, 1, 28, 28)
    assert sample_gan(model, 3, generator=torch.Generator().manual_seed(0)).shape == (3, 1, 28, 28)


@pytest.mark.parametrize("images, config, labels", [
    (torch.rand(8, 28, 28), {}, None),                       # no channel axis
    (torch.rand(8, 1, 28, 28) * 2 - 1, {}, None),           # [-1, 1], not [0, 1]
    (torch.rand(8, 1, 28, 28), {"stpes": 3}, None),          # a typo
    (torch.rand(8, 1, 28, 28), {}, torch.zeros(7, dtype=torch.long)),
    (torch.rand(8, 1, 28, 28), {}, torch.full((8,), 10)),
])
def test_train_gan_rejects_bad_arguments(images, config, labels) -> None:
    with pytest.raises(ValueError):
        train_gan(images, config, labels=labels)


def test_gan_config_defaults() -> None:
    cfg = gan_config({"lr": 1e-3})
    assert cfg["lr"] == 1e-3 and cfg["betas"] == (0.5, 0.999) and cfg["batch_size"] == 64


def test_generator_gradient_norms_rows() -> None:
    torch.manual_seed(0)
    gan = build_dcgan(latent_dim=4, width=2)
    rows = generator_gradient_norms(gan, _tiny_images() * 2 - 1, checkpoints=(0, 2), batch_size=8)
    assert [r["d_steps"] for r in rows] == [0.0, 2.0]
    assert all(r["sat"] > 0 and r["ns"] > 0 and 0 < r["d_fake"] < 1 for r in rows)
    with pytest.raises(ValueError):
        generator_gradient_norms(gan, _tiny_images(), checkpoints=(2, 1))


def test_non_saturating_gradient_dominates_once_the_discriminator_is_confident() -> None:
    """The lesson's measurement at initialisation, on synthetic 'real' images (bright squares)."""
    real = -torch.ones(256, 1, 28, 28)
    real[:, :, 8:20, 8:20] = 1.0
    torch.manual_seed(0)
    gan = build_dcgan(latent_dim=8, width=8)
    rows = generator_gradient_norms(gan, real, checkpoints=(0, 40), batch_size=32, lr=1e-3)
    first, last = rows
    assert 0.2 < first["ns"] / first["sat"] < 5  # an untrained discriminator: same size
    assert last["d_fake"] < 0.1 and last["ns"] > 10 * last["sat"]


# --------------------------------------------------------------------------- ring and measures


def test_ring_and_mode_coverage() -> None:
    centres = ring_centres(8, 2.0)
    assert centres.shape == (8, 2) and torch.allclose(centres.norm(dim=1), torch.full((8,), 2.0))
    pts = sample_ring(8000, std=0.05, generator=torch.Generator().manual_seed(0))
    cover = mode_coverage(pts, centres, 0.05)
    assert cover.modes_covered == 8 and sum(cover.counts) == pytest.approx(8000 * (1 - math.exp(-4.5)), rel=0.01)
    assert cover.high_quality == pytest.approx(1 - math.exp(-4.5), abs=0.01)  # eq-gand-3sigma
    one_mode = centres[:1] + 0.01 * torch.randn(500, 2)
    collapsed = mode_coverage(one_mode, centres, 0.05)
    assert collapsed.modes_covered == 1 and collapsed.counts[0] == 500 and collapsed.high_quality == 1.0
    with pytest.raises(ValueError):
        mode_coverage(torch.zeros(5, 3), centres, 0.05)
    with pytest.raises(ValueError):
        mode_coverage(pts, centres, 0.05, min_share=0)
    with pytest.raises(ValueError):
        sample_ring(0, generator=torch.Generator())


def test_ring_gan_trains_members() -> None:
    torch.manual_seed(0)
    gan = build_ring_gan(members=2, hidden=8)
    real = sample_ring(200, generator=torch.Generator().manual_seed(0)).view(100, 2, 2)
    history = adversarial_fit(gan, real, steps=2, batch_size=16, lr_g=1e-3, lr_d=1e-3,
                              snapshot_steps=(2,), snapshot_noise=latent_noise(5, gan.latent_dim, torch.Generator()))
    assert history.snapshots[2].shape == (5, 2, 2)


def test_pixel_pca_matches_svd() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(300, 1, 4, 4, generator=g) * torch.linspace(0.1, 2, 16).view(1, 1, 4, 4)
    centre, directions = pixel_pca(images, components=3)
    flat = images.reshape(300, -1).double()
    _, _, vt = torch.linalg.svd(flat - flat.mean(0), full_matrices=False)
    assert torch.allclose(centre, flat.mean(0))
    assert torch.allclose((directions @ vt[:3].T).abs(), torch.eye(3, dtype=f64), atol=1e-8)  # same axes, up to sign
    with pytest.raises(ValueError):
        pixel_pca(images, components=17)


def test_pca_frechet_distance() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(400, 1, 4, 4, generator=g), torch.rand(400, 1, 4, 4, generator=g)
    pca = pixel_pca(a, components=4)
    assert abs(pca_frechet_distance(a, a, pca)) < 1e-8
    assert pca_frechet_distance(a, b, pca) < pca_frechet_distance(a, b + 0.5, pca)
    with pytest.raises(ValueError):
        pca_frechet_distance(a, torch.rand(5, 1, 3, 3), pca)
