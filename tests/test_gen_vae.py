"""Generative lesson 6.2: variational autoencoders (chapters/generative/variational-autoencoders.ipynb).

The code is dlbook/models/vae.py, the derivations chapters/generative/elbo-derivation.md. Each proof
of the lesson is repeated here: the Gaussian KL against torch.distributions (float64, < 1e-8) and a
Monte Carlo estimate (within 4 standard errors), the hand-written reparameterisation gradient
against autograd (< 1e-8) and both estimators' means against the exact gradient, their variances
against the closed forms, the discretised logistic against PyTorch's logistic CDF; each with the
planted bug that the same check must reject. Then unit tests of every public function.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Independent, Normal, TransformedDistribution, Uniform, kl_divergence
from torch.distributions.transforms import AffineTransform, SigmoidTransform

from dlbook.gradients import rel_error
from dlbook.models.vae import (
    VAE,
    bits_per_dim,
    decode_mean,
    discretized_logistic_log_prob,
    encode_mean,
    estimator_variance,
    gaussian_kl,
    gaussian_log_prob,
    iwae_bound,
    kl_monte_carlo,
    latent_traversal,
    likelihood_bounds,
    log_importance_weights,
    logistic_clip_mean,
    negative_elbo,
    pathwise_grads,
    quadratic_expected_grads,
    quadratic_objective,
    quadratic_problem,
    reconstruct,
    reparameterize,
    sample_vae,
    score_function_grads,
    score_variance_closed_form,
    tile_images,
    train_vae,
    vae_step,
)

f64 = torch.float64
LEVELS = torch.arange(256, dtype=f64) / 255
HALF = 0.5 / 255


def gaussians(seed: int = 0, d: int = 4) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(4, d, generator=gen, dtype=f64))


def torch_kl(mu_q, logvar_q, mu_p, logvar_p) -> torch.Tensor:
    def normal(mu, logvar):
        return Independent(Normal(mu, (0.5 * logvar).exp()), 1)

    return kl_divergence(normal(mu_q, logvar_q), normal(mu_p, logvar_p))


def kl_without_half(mu_q, logvar_q, mu_p, logvar_p):
    """Planted bug: the 1/2 forgotten."""
    return (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1).sum(-1)


def kl_log_sigma(mu_q, logvar_q, mu_p, logvar_p):
    """Planted bug: log sigma where log sigma^2 belongs."""
    return 0.5 * (0.5 * (logvar_p - logvar_q) + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1).sum(-1)


# --------------------------------------------------------------------------- the Gaussian KL


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kl_equals_torch_distributions(seed: int) -> None:
    mu_q, mu_p, logvar_q, logvar_p = gaussians(seed)
    assert rel_error(gaussian_kl(mu_q, logvar_q, mu_p, logvar_p), torch_kl(mu_q, logvar_q, mu_p, logvar_p)) < 1e-8
    zeros = torch.zeros_like(mu_q)
    assert rel_error(gaussian_kl(mu_q, logvar_q), torch_kl(mu_q, logvar_q, zeros, zeros)) < 1e-8
    for bug in (kl_without_half, kl_log_sigma):
        assert rel_error(bug(mu_q, logvar_q, mu_p, logvar_p), torch_kl(mu_q, logvar_q, mu_p, logvar_p)) > 1e-3


def test_kl_batched_and_broadcast_prior() -> None:
    gen = torch.Generator().manual_seed(3)
    mu, logvar = torch.randn(2, 5, 3, generator=gen, dtype=f64)
    mu_p, logvar_p = torch.randn(2, 3, generator=gen, dtype=f64)  # one p for the whole batch
    kl = gaussian_kl(mu, logvar, mu_p, logvar_p)
    assert kl.shape == (5,)
    expected = torch_kl(mu, logvar, mu_p.expand(5, 3), logvar_p.expand(5, 3))
    assert rel_error(kl, expected) < 1e-8
    assert (gaussian_kl(mu, logvar) >= 0).all()
    assert gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 3)).abs().max() == 0  # q = prior: no KL
    # only one of mu_p, logvar_p given: the other is 0
    assert rel_error(gaussian_kl(mu, logvar, mu_p=mu_p), gaussian_kl(mu, logvar, mu_p, torch.zeros(3, dtype=f64))) < 1e-12


def test_kl_matches_monte_carlo_and_rejects_the_bugs() -> None:
    mu_q, mu_p, logvar_q, logvar_p = gaussians(0, 4)
    gen = torch.Generator().manual_seed(0)
    zeros = torch.zeros_like(mu_q)
    for params, closed in (((mu_q, logvar_q, mu_p, logvar_p), gaussian_kl(mu_q, logvar_q, mu_p, logvar_p)),
                           ((mu_q, logvar_q, zeros, zeros), gaussian_kl(mu_q, logvar_q))):
        mc, se = kl_monte_carlo(*params, 200_000, generator=gen)
        assert abs(closed.item() - mc) < 4 * se, f"closed form {closed.item():.4f}, Monte Carlo {mc:.4f} ± {se:.4f}"
        for bug in (kl_without_half, kl_log_sigma):
            assert abs(bug(*params).item() - mc) > 4 * se, f"{bug.__name__} not caught"


def test_kl_bad_shapes() -> None:
    with pytest.raises(ValueError, match="broadcast"):
        gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="broadcast"):
        gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(5), torch.zeros(5))
    with pytest.raises(ValueError, match="one distribution"):
        kl_monte_carlo(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3), torch.zeros(3), 10,
                       generator=torch.Generator())
    with pytest.raises(ValueError, match="n_samples"):
        kl_monte_carlo(torch.zeros(3), torch.zeros(3), torch.zeros(3), torch.zeros(3), 1, generator=torch.Generator())


def test_gaussian_log_prob_equals_torch() -> None:
    mu, logvar, z, _ = gaussians(4, 6)
    expected = Independent(Normal(mu, (0.5 * logvar).exp()), 1).log_prob(z)
    assert rel_error(gaussian_log_prob(z, mu, logvar), expected) < 1e-12
    assert rel_error(gaussian_log_prob(z), Independent(Normal(torch.zeros(6, dtype=f64), 1.0), 1).log_prob(z)) < 1e-12


# --------------------------------------------------------------------------- reparameterisation


def test_reparameterize_value_shapes_and_errors() -> None:
    mu, logvar = torch.tensor([1.0, -2.0]), torch.tensor([0.0, math.log(4.0)])
    assert torch.equal(reparameterize(mu, logvar, torch.tensor([1.0, 1.0])), torch.tensor([2.0, 0.0]))
    assert reparameterize(mu, logvar, torch.zeros(7, 2)).shape == (7, 2)  # several samples at once
    with pytest.raises(ValueError, match="broadcast"):
        reparameterize(mu, logvar, torch.zeros(3))


def random_quadratic(seed: int = 1, d: int = 5, s: int = 8) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    mu, logvar, c = torch.randn(3, d, generator=gen, dtype=f64)
    a = torch.rand(d, generator=gen, dtype=f64) + 0.5
    eps = torch.randn(s, d, generator=gen, dtype=f64)
    return mu, logvar, a, c, eps


def autograd_pathwise(mu, logvar, a, c, eps) -> dict[str, torch.Tensor]:
    mu_leaf, logvar_leaf = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
    loss = quadratic_objective(reparameterize(mu_leaf, logvar_leaf, eps), a, c).mean()
    g_mu, g_logvar = torch.autograd.grad(loss, [mu_leaf, logvar_leaf])
    return {"mu": g_mu, "logvar": g_logvar}


@pytest.mark.parametrize("seed", [1, 2])
def test_pathwise_gradient_equals_autograd(seed: int) -> None:
    mu, logvar, a, c, eps = random_quadratic(seed)
    auto = autograd_pathwise(mu, logvar, a, c, eps)
    hand = {k: v.mean(0) for k, v in pathwise_grads(mu, logvar, eps, a, c).items()}
    for name in ("mu", "logvar"):
        assert rel_error(hand[name], auto[name]) < 1e-8, name


def test_pathwise_log_sigma_bug_is_caught() -> None:
    mu, logvar, a, c, eps = random_quadratic(1)
    auto = autograd_pathwise(mu, logvar, a, c, eps)
    sigma = torch.exp(0.5 * logvar)
    grad_z = a * (reparameterize(mu, logvar, eps) - c)
    bug = (grad_z * sigma * eps).mean(0)  # dz/dlogvar taken as sigma * eps
    assert rel_error(bug, auto["logvar"]) > 1e-3


def test_both_estimators_are_unbiased() -> None:
    mu, logvar, a, c, _ = random_quadratic(1)
    eps = torch.randn(200_000, 5, generator=torch.Generator().manual_seed(7), dtype=f64)
    exact = quadratic_expected_grads(mu, logvar, a, c)
    # the exact gradient itself, by autograd through the closed-form expectation
    mu_leaf, logvar_leaf = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
    expectation = 0.5 * (a * ((mu_leaf - c) ** 2 + logvar_leaf.exp())).sum()
    auto = dict(zip(("mu", "logvar"), torch.autograd.grad(expectation, [mu_leaf, logvar_leaf])))
    for name in ("mu", "logvar"):
        assert rel_error(exact[name], auto[name]) < 1e-12
    for estimator in (pathwise_grads, score_function_grads):
        estimates = estimator(mu, logvar, eps, a, c)
        for name in ("mu", "logvar"):
            se = estimates[name].std(0) / math.sqrt(len(eps))
            z = ((estimates[name].mean(0) - exact[name]).abs() / se).max()
            assert z < 4, f"{estimator.__name__} {name}: mean {z:.1f} standard errors from the exact gradient"


def test_variances_match_the_closed_forms_and_pathwise_is_lower() -> None:
    gen = torch.Generator().manual_seed(2)
    for d in (1, 16):
        v = estimator_variance(quadratic_problem(d), 1, 30_000, generator=gen)
        assert abs(v["pathwise"] - 1) < 0.05
        assert abs(v["score"] / score_variance_closed_form(d) - 1) < 0.15
        assert v["pathwise"] < v["score"]
    v4 = estimator_variance(quadratic_problem(16), 4, 5_000, generator=gen)  # S samples divide both by S
    assert abs(v4["pathwise"] - 0.25) < 0.03


def test_score_variance_closed_form_special_cases() -> None:
    for d in (1, 2, 7, 64):
        assert score_variance_closed_form(d, delta=0.0) == pytest.approx((d + 2) * (d + 4) / 4)
        assert score_variance_closed_form(d, delta=1.0) == pytest.approx((2 * d + 3) * (d + 2) / 2)


def test_quadratic_problem_and_estimator_errors() -> None:
    p = quadratic_problem(3, delta=2.0)
    assert torch.allclose(p["mu"] - p["c"], torch.full((3,), 2.0, dtype=f64), rtol=0, atol=1e-12)
    assert torch.equal(quadratic_problem(3)["mu"], quadratic_problem(3)["mu"])  # seeded
    with pytest.raises(ValueError, match="dim"):
        quadratic_problem(0)
    with pytest.raises(ValueError, match="n_repeats"):
        estimator_variance(p, 1, 1, generator=torch.Generator())


# --------------------------------------------------------------------------- the discretised logistic


def torch_level_probs(m: float, log_s: float) -> torch.Tensor:
    uniform = Uniform(torch.tensor(0.0, dtype=f64), torch.tensor(1.0, dtype=f64))
    logistic = TransformedDistribution(uniform, [SigmoidTransform().inv, AffineTransform(m, math.exp(log_s))])
    upper = torch.where(LEVELS > 1 - HALF, torch.ones_like(LEVELS), logistic.cdf(LEVELS + HALF))
    lower = torch.where(LEVELS < HALF, torch.zeros_like(LEVELS), logistic.cdf(LEVELS - HALF))
    return upper - lower


@pytest.mark.parametrize("m, log_s", [(0.3, -3.0), (0.0, -7.0), (0.9, -1.0), (-0.5, 0.5), (0.5, 3.0)])
def test_discretized_logistic_is_a_distribution_equal_to_torch(m: float, log_s: float) -> None:
    probs = discretized_logistic_log_prob(LEVELS, torch.tensor(m, dtype=f64), torch.tensor(log_s, dtype=f64)).exp()
    assert abs(probs.sum().item() - 1) < 1e-12
    assert rel_error(probs, torch_level_probs(m, log_s)) < 1e-8
    bug = torch.sigmoid((LEVELS + HALF - m) / math.exp(log_s)) - torch.sigmoid((LEVELS - HALF - m) / math.exp(log_s))
    assert rel_error(bug, torch_level_probs(m, log_s)) > 1e-3  # the tail-less planted bug


def test_discretized_logistic_is_stable_where_the_naive_difference_is_not() -> None:
    # a very wide logistic: sigmoid(a) - sigmoid(b) cancels in float32, the log form does not
    x = torch.full((3,), 128 / 255)
    lp = discretized_logistic_log_prob(x, torch.zeros(3), torch.full((3,), 8.0))
    expected = math.log(1 / 255) - 8.0 - 2 * math.log(2)  # bin width times the density at the centre, ~ 1 / (4 s)
    assert torch.isfinite(lp).all() and abs(lp[0].item() - expected) < 1e-3
    mean = torch.tensor([0.5, -30.0, 30.0], requires_grad=True)
    lp = discretized_logistic_log_prob(torch.tensor([0.5, 0.0, 1.0]), mean, torch.full((3,), -7.0))
    lp.sum().backward()
    assert torch.isfinite(lp).all() and torch.isfinite(mean.grad).all()
    assert lp[1].item() > -1e-6 and lp[2].item() > -1e-6  # all the mass on the end levels
    with pytest.raises(ValueError, match="broadcast"):
        discretized_logistic_log_prob(torch.zeros(3), torch.zeros(4), torch.zeros(3))


def test_logistic_clip_mean_is_the_discretised_mean() -> None:
    for m, log_s in [(0.3, -3.0), (-0.2, -1.0), (0.9, 0.5), (1.5, -2.0), (0.5, -7.0)]:
        probs = discretized_logistic_log_prob(LEVELS, torch.tensor(m, dtype=f64), torch.tensor(log_s, dtype=f64)).exp()
        exact = (probs * LEVELS).sum().item()
        assert abs(logistic_clip_mean(torch.tensor(m, dtype=f64), torch.tensor(log_s, dtype=f64)).item() - exact) < HALF


# --------------------------------------------------------------------------- the model


def tiny_data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=gen).float() / 255
    return images, torch.randint(0, 10, (n,), generator=gen)


def test_vae_shapes_and_conditioning_errors() -> None:
    x, y = tiny_data(5)
    model = VAE(latent_dim=3, hidden=16)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (5, 3)
    mean, log_scale = model.decode(mu)
    assert mean.shape == log_scale.shape == (5, 1, 28, 28) and log_scale.min() >= -7
    with pytest.raises(ValueError, match="unconditional"):
        model.encode(x, y)
    with pytest.raises(ValueError, match="shape"):
        model.encode(x.view(5, 784))
    cond = VAE(latent_dim=3, hidden=16, n_classes=10)
    assert cond.encode(x, y)[0].shape == (5, 3)
    with pytest.raises(ValueError, match="pass labels"):
        cond.encode(x)
    with pytest.raises(ValueError, match="labels must have shape"):
        cond.encode(x, y[:3])
    with pytest.raises(ValueError):
        VAE(latent_dim=0)


def test_negative_elbo_terms_and_reproducibility() -> None:
    x, y = tiny_data(6)
    torch.manual_seed(0)
    model = VAE(latent_dim=4, hidden=16, n_classes=10)
    terms = negative_elbo(model, x, y, n_samples=3, generator=torch.Generator().manual_seed(1), return_terms=True)
    assert all(t.shape == (6,) for t in terms.values())
    assert torch.allclose(terms["nelbo"], terms["recon"] + terms["kl"])
    assert (terms["recon"] > 0).all() and (terms["kl"] >= 0).all()  # -log of probabilities, a KL
    again = negative_elbo(model, x, y, n_samples=3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again, terms["nelbo"])
    # the KL term is the closed form of the encoder's Gaussian
    mu, logvar = model.encode(x, y)
    assert torch.allclose(terms["kl"], gaussian_kl(mu, logvar))
    loss = vae_step(model, (x, y))
    assert loss.dim() == 0 and loss.requires_grad
    with pytest.raises(ValueError, match="n_samples"):
        negative_elbo(model, x, y, n_samples=0)


def test_iwae_bound_and_likelihood_bounds() -> None:
    log_w = torch.randn(16, 5, generator=torch.Generator().manual_seed(0), dtype=f64) * 30 - 2000
    bound = iwae_bound(log_w)
    assert rel_error(bound, torch.log(torch.exp(log_w + 2000).mean(0)) - 2000) < 1e-12  # no underflow
    assert (bound >= log_w.mean(0)).all()
    assert torch.equal(iwae_bound(log_w[:1]), log_w[0])
    x, _ = tiny_data(7)
    torch.manual_seed(0)
    model = VAE(latent_dim=2, hidden=16)
    b = likelihood_bounds(model, x, k=5, generator=torch.Generator().manual_seed(0), batch_size=3)
    assert all(v.shape == (7,) for v in b.values())
    assert (b["iwae"] >= b["elbo_mc"] - 1e-3).all()
    b1 = likelihood_bounds(model, x, k=1, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(b1["iwae"], b1["elbo_mc"])
    w = log_importance_weights(model, x, k=3, generator=torch.Generator().manual_seed(0))
    assert w["log_w"].shape == w["log_px"].shape == (3, 7) and w["kl"].shape == (7,)
    with pytest.raises(ValueError, match="k must"):
        log_importance_weights(model, x, k=0, generator=torch.Generator())


def test_bits_per_dim() -> None:
    assert bits_per_dim(784 * math.log(256)) == pytest.approx(8.0)  # uniform over the 256 levels
    assert bits_per_dim(torch.tensor(2 * math.log(2)), dims=2) == pytest.approx(1.0)


# --------------------------------------------------------------------------- the chapter's contract


def test_train_vae_returns_eval_model_and_reproduces() -> None:
    x, y = tiny_data(96)
    config = {"latent_dim": 2, "hidden": 16, "epochs": 1, "batch_size": 32, "lr": 1e-3}
    cpu = torch.device("cpu")
    model, seconds = train_vae(x, config, device=cpu, seed=3)
    again, _ = train_vae(x, config, device=cpu, seed=3)
    assert not model.training and seconds >= 0 and isinstance(model, VAE)
    for (name, p), q in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(p, q), name
    cond, _ = train_vae(x, {**config, "n_classes": 10}, labels=y, device=cpu)
    assert cond.n_classes == 10


def test_train_vae_rejects_bad_arguments() -> None:
    x, y = tiny_data(8)
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="unknown"):
        train_vae(x, {"latnet_dim": 2}, device=cpu)
    with pytest.raises(ValueError, match="pass labels"):
        train_vae(x, {"n_classes": 10, "epochs": 1}, device=cpu)
    with pytest.raises(ValueError, match="n_classes is 0"):
        train_vae(x, {"epochs": 1}, labels=y, device=cpu)
    with pytest.raises(ValueError, match="labels for"):
        train_vae(x, {"n_classes": 10, "epochs": 1}, labels=y[:3], device=cpu)
    with pytest.raises(ValueError, match="shape"):
        train_vae(x.view(8, 784), {"epochs": 1}, device=cpu)


def test_sample_vae_contract() -> None:
    torch.manual_seed(0)
    model = VAE(latent_dim=3, hidden=16).eval()
    images = sample_vae(model, 5, generator=torch.Generator().manual_seed(0))
    assert images.shape == (5, 1, 28, 28) and images.dtype == torch.float32 and images.device.type == "cpu"
    assert images.min() >= 0 and images.max() <= 1
    assert torch.equal(images, sample_vae(model, 5, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="n must"):
        sample_vae(model, 0, generator=torch.Generator())
    with pytest.raises(ValueError, match="unconditional"):
        sample_vae(model, 2, generator=torch.Generator(), labels=torch.tensor([0, 1]))
    cond = VAE(latent_dim=3, hidden=16, n_classes=10).eval()
    labels = torch.tensor([0, 3, 9])
    assert sample_vae(cond, 3, generator=torch.Generator(), labels=labels).shape == (3, 1, 28, 28)
    with pytest.raises(ValueError, match="pass labels"):
        sample_vae(cond, 3, generator=torch.Generator())
    with pytest.raises(ValueError, match="shape"):
        sample_vae(cond, 3, generator=torch.Generator(), labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="lie in"):
        sample_vae(cond, 2, generator=torch.Generator(), labels=torch.tensor([0, 10]))
    # the label changes the image: the decoder reads it
    z = torch.randn(2, 3, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(decode_mean(cond, z, torch.tensor([0, 0])), decode_mean(cond, z, torch.tensor([1, 1])))


def test_encode_reconstruct_traverse_and_tile() -> None:
    x, _ = tiny_data(5)
    torch.manual_seed(0)
    model = VAE(latent_dim=3, hidden=16)
    codes = encode_mean(model, x, batch_size=2)
    assert codes.shape == (5, 3)
    assert torch.allclose(codes, model.encode(x)[0].detach())
    assert reconstruct(model, x).shape == (5, 1, 28, 28)
    traversal = latent_traversal(model, codes[:2], 1, [-1.0, 0.0, 1.0])
    assert traversal.shape == (2, 3, 1, 28, 28)
    z = codes[:1].clone()
    z[0, 1] = 1.0
    assert torch.allclose(traversal[0, 2], decode_mean(model, z)[0])
    with pytest.raises(ValueError, match="dim"):
        latent_traversal(model, codes, 3, [0.0])
    grid = tile_images(x, 2, pad=1)
    assert grid.shape == (3 * 29 + 1, 2 * 29 + 1)
    assert torch.equal(grid[1:29, 30:58], x[1, 0])
    with pytest.raises(ValueError, match="shape"):
        tile_images(x[:, 0], 2)
