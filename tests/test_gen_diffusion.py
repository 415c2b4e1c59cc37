"""Generative lesson 4: diffusion models (chapters/generative/diffusion.ipynb).

The code is dlbook/models/diffusion.py. The proofs of the lesson are repeated here in float64: the
closed form q(x_t | x_0) against the iterated one-step chain (statistically, and exactly with the
composed noise), the posterior q(x_{t-1} | x_t, x_0) against Gaussian conditioning of the chain's
joint distribution, the two forms of its mean, and the reverse step's mean; each with a planted
bug that the same check must reject. Then unit tests of every public function.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dlbook.gradients import rel_error
from dlbook.models.diffusion import (
    DDPM,
    NoisePredictionStep,
    TimeUNet,
    betas_from_alphas_cumprod,
    composition_coefficients,
    cosine_beta_schedule,
    denoising_error_by_t,
    forward_chain,
    linear_beta_schedule,
    make_alphas_cumprod,
    make_betas,
    p_mean_variance,
    p_sample_step,
    posterior_by_conditioning,
    posterior_mean_from_eps,
    posterior_mean_variance,
    predict_x0,
    q_sample,
    q_step,
    sample_chain,
    sample_ddpm,
    sinusoidal_embedding,
    train_ddpm,
)

f64 = torch.float64
SCHEDULES = {"linear": linear_beta_schedule(50), "cosine": cosine_beta_schedule(50)}


def tiny_images(n: int = 64, seed: int = 0) -> torch.Tensor:
    """Clothing-like toy images in [0, 1]: a bright rectangle of random size on a dark frame."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, 28, 28)
    for i in range(n):
        h, w = torch.randint(8, 20, (2,), generator=gen).tolist()
        images[i, 0, 14 - h // 2:14 + h // 2, 14 - w // 2:14 + w // 2] = torch.rand((), generator=gen) * 0.5 + 0.5
    return images


# --------------------------------------------------------------------------- schedules


def test_linear_schedule_is_ho_et_al_at_t_1000_and_rescaled_elsewhere() -> None:
    betas = linear_beta_schedule(1000)
    assert betas.shape == (1000,) and betas.dtype == f64
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    short = linear_beta_schedule(200)
    assert short[0].item() == pytest.approx(5e-4) and short[-1].item() == pytest.approx(0.1)
    # the rescaling keeps the signal left at the end about the same
    assert make_alphas_cumprod(short)[-1].item() == pytest.approx(make_alphas_cumprod(betas)[-1].item(), rel=0.3)


def test_cosine_schedule_follows_its_definition() -> None:
    T, s = 100, 0.008
    betas = cosine_beta_schedule(T, s=s)
    assert betas.shape == (T,) and (betas > 0).all() and (betas <= 0.999).all()
    abar = make_alphas_cumprod(betas)
    t = torch.arange(T + 1, dtype=f64)
    f = torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    unclipped = betas < 0.999
    expected = (f / f[0])[1:][unclipped]
    assert rel_error(abar[1:][unclipped], expected) < 1e-12


def test_schedule_arguments_are_checked() -> None:
    for bad in (lambda: linear_beta_schedule(1), lambda: cosine_beta_schedule(1), lambda: linear_beta_schedule(10),
                lambda: cosine_beta_schedule(10, max_beta=1.0), lambda: make_betas("quadratic", 10),
                lambda: make_alphas_cumprod(torch.tensor([0.1, 1.0])), lambda: make_alphas_cumprod(torch.zeros(2, 2))):
        with pytest.raises(ValueError):
            bad()


def test_alphas_cumprod_and_betas_round_trip() -> None:
    betas = SCHEDULES["linear"]
    abar = make_alphas_cumprod(betas)
    assert abar.shape == (51,) and abar[0] == 1 and (abar[1:] < abar[:-1]).all()
    back = betas_from_alphas_cumprod(abar)
    assert back[0] == 0 and rel_error(back[1:], betas) < 1e-12
    assert make_betas("cosine", 50).equal(SCHEDULES["cosine"])


# --------------------------------------------------------------------------- proof: q(x_t | x_0)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_iterated_chain_matches_the_closed_form_within_its_standard_errors(name: str) -> None:
    abar = make_alphas_cumprod(SCHEDULES[name])
    x0 = torch.tensor([-1.0, 0.2, 1.0], dtype=f64)
    M = 4000
    xs, noises = forward_chain(x0, abar, M, generator=torch.Generator().manual_seed(0))
    assert xs.shape == (51, M, 3) and noises.shape == (50, M, 3) and xs[0].equal(x0.expand(M, 3))
    mean, var = xs.mean(1)[1:], xs.var(1)[1:]
    claim_mean, claim_var = abar.sqrt()[1:, None] * x0, (1 - abar)[1:, None]
    wrong_var = SCHEDULES[name].cumsum(0)[:, None]  # planted bug: per-step variances summed

    def worst(v: torch.Tensor) -> float:
        z_mean = (mean - claim_mean).abs() / (v / M).sqrt()
        z_var = (var - v).abs() / (v * math.sqrt(2 / (M - 1)))
        return float(torch.maximum(z_mean, z_var).max())

    assert worst(claim_var) < 5
    assert worst(wrong_var) > 5


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_q_sample_with_the_composed_noise_is_the_chain_exactly(name: str) -> None:
    abar = make_alphas_cumprod(SCHEDULES[name])
    C = composition_coefficients(abar)
    assert C.shape == (50, 50) and (C.triu(1) == 0).all()
    assert rel_error((C**2).sum(1), 1 - abar[1:]) < 1e-12
    x0 = torch.rand(1, 6, 6, dtype=f64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    xs, noises = forward_chain(x0, abar, 2, generator=torch.Generator().manual_seed(2))
    eps_bar = torch.einsum("ts,s...->t...", C, noises) / (1 - abar[1:]).sqrt().view(-1, 1, 1, 1, 1)
    closed = torch.stack([q_sample(x0.expand(2, -1, -1, -1), t, eps_bar[t - 1], abar) for t in range(1, 51)])
    assert rel_error(closed, xs[1:]) < 1e-12
    # planted bug: the composed noise scaled by sqrt(sum of betas) instead of sqrt(1 - abar)
    wrong = torch.einsum("ts,s...->t...", C, noises) / SCHEDULES[name].cumsum(0).sqrt().view(-1, 1, 1, 1, 1)
    bugged = torch.stack([q_sample(x0.expand(2, -1, -1, -1), t, wrong[t - 1], abar) for t in range(1, 51)])
    assert rel_error(bugged, xs[1:]) > 1e-3


# --------------------------------------------------------------------------- proof: the posterior


def _swapped(x0, xt, t, abar):
    """Planted bug: the coefficients of x0 and x_t exchanged."""
    a_t, a_prev = abar[t], abar[t - 1]
    alpha = a_t / a_prev
    c0, ct = a_prev.sqrt() * (1 - alpha) / (1 - a_t), alpha.sqrt() * (1 - a_prev) / (1 - a_t)
    return ct * x0 + c0 * xt


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_posterior_equals_gaussian_conditioning_and_bugs_are_rejected(name: str) -> None:
    abar = make_alphas_cumprod(SCHEDULES[name])
    gen = torch.Generator().manual_seed(3)
    x0 = torch.rand(3, 1, 5, 5, generator=gen, dtype=f64) * 2 - 1
    worst_mean = worst_var = worst_eps = 0.0
    bug_mean = bug_var = 0.0
    for t in range(1, 51):
        eps = torch.randn(x0.shape, generator=gen, dtype=f64)
        xt = q_sample(x0, t, eps, abar)
        ref_mean, ref_var = posterior_by_conditioning(x0, xt, t, abar)
        mean, var = posterior_mean_variance(x0, xt, t, abar)
        worst_mean = max(worst_mean, rel_error(mean, ref_mean))
        worst_var = max(worst_var, rel_error(var.reshape(()), ref_var))
        worst_eps = max(worst_eps, rel_error(posterior_mean_from_eps(xt, eps, t, abar), mean))
        bug_mean = max(bug_mean, rel_error(_swapped(x0, xt, t, abar), ref_mean))
        bug_var = max(bug_var, rel_error((1 - abar[t] / abar[t - 1]).reshape(()), ref_var))  # beta_t for beta-tilde_t
    assert worst_mean < 1e-8 and worst_var < 1e-8 and worst_eps < 1e-8
    assert bug_mean > 1e-3 and bug_var > 1e-3


def test_posterior_at_t_1_is_the_clean_image_and_per_example_t_works() -> None:
    abar = make_alphas_cumprod(SCHEDULES["cosine"])
    gen = torch.Generator().manual_seed(4)
    x0 = torch.rand(4, 1, 3, 3, generator=gen, dtype=f64)
    xt = torch.randn(4, 1, 3, 3, generator=gen, dtype=f64)
    mean, var = posterior_mean_variance(x0, xt, 1, abar)
    assert rel_error(mean, x0) < 1e-12 and var.abs().item() < 1e-15
    t = torch.tensor([1, 7, 20, 50])
    mean, var = posterior_mean_variance(x0, xt, t, abar)
    assert var.shape == (4, 1, 1, 1)
    for i, ti in enumerate(t.tolist()):
        m_i, v_i = posterior_mean_variance(x0[i], xt[i], ti, abar)
        assert rel_error(mean[i], m_i) < 1e-14 and abs(float(var[i]) - float(v_i)) < 1e-15


def test_predict_x0_inverts_q_sample() -> None:
    abar = make_alphas_cumprod(SCHEDULES["linear"])
    gen = torch.Generator().manual_seed(5)
    x0, eps = torch.rand(2, 1, 4, 4, generator=gen, dtype=f64), torch.randn(2, 1, 4, 4, generator=gen, dtype=f64)
    t = torch.tensor([3, 40])
    assert rel_error(predict_x0(q_sample(x0, t, eps, abar), eps, t, abar), x0) < 1e-12


def test_forward_functions_check_their_arguments() -> None:
    abar = make_alphas_cumprod(SCHEDULES["linear"])
    x = torch.zeros(2, 1, 4, 4, dtype=f64)
    assert q_sample(x + 0.3, 0, torch.randn_like(x), abar).equal(x + 0.3)  # t = 0 is the clean image
    for bad in (lambda: q_sample(x, 51, x, abar), lambda: q_sample(x, -1, x, abar), lambda: q_sample(x, 1.5, x, abar),
                lambda: q_sample(x, torch.tensor([1, 2, 3]), x, abar), lambda: q_sample(x, 1, x[:1], abar),
                lambda: q_step(x, 0, x, abar), lambda: posterior_mean_variance(x, x, 0, abar),
                lambda: posterior_mean_variance(x, x[:1], 2, abar), lambda: posterior_mean_from_eps(x, x, 0, abar),
                lambda: posterior_by_conditioning(x, x, 0, abar), lambda: forward_chain(x, abar, 0, generator=torch.Generator())):
        with pytest.raises(ValueError):
            bad()


def test_q_step_is_the_one_step_forward_process() -> None:
    abar = make_alphas_cumprod(SCHEDULES["cosine"])
    betas = SCHEDULES["cosine"]
    x, eps = torch.rand(3, dtype=f64), torch.randn(3, dtype=f64)
    assert rel_error(q_step(x, 10, eps, abar), (1 - betas[9]).sqrt() * x + betas[9].sqrt() * eps) < 1e-12
    assert rel_error(q_step(x, 1, eps, abar), q_sample(x, 1, eps, abar)) < 1e-12


# --------------------------------------------------------------------------- the model and the reverse step


def _tiny_model(num_classes: int = 0, T: int = 20) -> DDPM:
    torch.manual_seed(0)
    return DDPM(cosine_beta_schedule(T), widths=(4, 8), time_dim=8, num_classes=num_classes)


def test_time_unet_shapes_and_conditioning() -> None:
    net = TimeUNet(widths=(4, 8, 16), time_dim=8)
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([1, 5, 9])
    assert net(x, t).shape == (3, 1, 28, 28)
    assert not torch.allclose(net(x, t), net(x, t + 3)), "the output must depend on t"
    cond = TimeUNet(widths=(4, 8), time_dim=8, num_classes=10)
    assert cond(x, t, torch.tensor([0, 1, 2])).shape == (3, 1, 28, 28)
    with pytest.raises(ValueError):
        cond(x, t)


def test_sinusoidal_embedding() -> None:
    e = sinusoidal_embedding(torch.tensor([0, 1, 100]), 8)
    assert e.shape == (3, 8) and e.dtype == torch.float32
    assert torch.equal(e[0], torch.cat([torch.zeros(4), torch.ones(4)]))
    assert sinusoidal_embedding(torch.tensor([3]), 4, dtype=f64).dtype == f64
    with pytest.raises(ValueError):
        sinusoidal_embedding(torch.tensor([1]), 7)


def test_model_carries_its_schedule() -> None:
    model = _tiny_model()
    assert model.T == 20 and model.alphas_cumprod.shape == (21,) and model.betas.shape == (21,)
    state = model.state_dict()
    assert "alphas_cumprod" in state and "betas" in state
    assert rel_error(model.alphas_cumprod.double(), make_alphas_cumprod(cosine_beta_schedule(20))) < 1e-6


def test_reverse_step_mean_is_the_eps_form_and_bug_is_rejected() -> None:
    model = _tiny_model().double().eval()
    abar = make_alphas_cumprod(cosine_beta_schedule(20))
    model.alphas_cumprod = abar.clone()
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(6), dtype=f64)
    for t in (1, 10, 20):
        mean, var, x0_hat = p_mean_variance(model, x, t, clip_x0=False)
        with torch.no_grad():
            eps = model(x, torch.full((2,), t))
        expected = posterior_mean_from_eps(x, eps, t, abar)
        assert rel_error(mean, expected) < 1e-8
        assert rel_error(x0_hat, predict_x0(x, eps, t, abar)) < 1e-12
        # planted bug: the mean with the forward step's sqrt(alpha_t) x_t only, the noise term dropped
        assert t == 1 or rel_error((abar[t] / abar[t - 1]).sqrt() * x, expected) > 1e-3
    clipped = p_mean_variance(model, x * 50, 10)[2]
    assert clipped.abs().max() <= 1
    # no noise at t = 1: the step is its mean
    step = p_sample_step(model, x, 1, generator=torch.Generator().manual_seed(0), clip_x0=False)
    assert rel_error(step, p_mean_variance(model, x, 1, clip_x0=False)[0]) < 1e-14
    with pytest.raises(ValueError):
        p_sample_step(model, x, 0, generator=torch.Generator())
    with pytest.raises(ValueError):
        p_sample_step(model, x, 21, generator=torch.Generator())


def test_noise_prediction_step_forms_x_t_with_q_sample() -> None:
    class Echo(nn.Module):
        """A stand-in model that returns its input x_t and remembers t."""

        num_classes = 0

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("alphas_cumprod", make_alphas_cumprod(cosine_beta_schedule(30)).float())

        @property
        def T(self) -> int:
            return 30

        def forward(self, xt, t, labels=None):
            self.t = t
            return xt

    echo, images = Echo(), tiny_images(8)
    step = NoisePredictionStep(torch.Generator().manual_seed(0))
    out, noise = step(echo, (images,))
    assert out.shape == noise.shape == images.shape
    assert echo.t.min() >= 1 and echo.t.max() <= 30 and echo.t.dtype == torch.int64
    assert torch.allclose(out, q_sample(images * 2 - 1, echo.t, noise, echo.alphas_cumprod), atol=1e-6)
    again, noise2 = NoisePredictionStep(torch.Generator().manual_seed(0))(echo, (images,))
    assert again.equal(out) and noise2.equal(noise)


# --------------------------------------------------------------------------- trainer and sampler


def test_train_ddpm_is_reproducible_and_returns_an_eval_model() -> None:
    images = tiny_images(64)
    config = {"T": 10, "widths": (4, 8), "time_dim": 8, "max_steps": 3, "batch_size": 16}
    model, seconds = train_ddpm(images, config, device=torch.device("cpu"), seed=1)
    again, _ = train_ddpm(images, config, device=torch.device("cpu"), seed=1)
    other, _ = train_ddpm(images, config, device=torch.device("cpu"), seed=2)
    assert isinstance(model, DDPM) and not model.training and seconds > 0 and model.T == 10
    state, state2, state3 = model.state_dict(), again.state_dict(), other.state_dict()
    assert all(state[k].equal(state2[k]) for k in state)
    assert not all(state[k].equal(state3[k]) for k in state)


def test_train_ddpm_checks_its_inputs() -> None:
    images = tiny_images(8)
    cfg = {"T": 10, "widths": (4, 8), "time_dim": 8, "max_steps": 1}
    for bad in (lambda: train_ddpm(images, {**cfg, "epoch": 2}), lambda: train_ddpm(images * 2, cfg),
                lambda: train_ddpm(images[:, 0], cfg), lambda: train_ddpm(images, {**cfg, "schedule": "sigmoid"}),
                lambda: train_ddpm(images, cfg, labels=torch.zeros(3, dtype=torch.long))):
        with pytest.raises(ValueError):
            bad()


def test_sample_ddpm_contract() -> None:
    model = _tiny_model().eval()
    a = sample_ddpm(model, 3, generator=torch.Generator().manual_seed(0))
    b = sample_ddpm(model, 3, generator=torch.Generator().manual_seed(0))
    c = sample_ddpm(model, 3, generator=torch.Generator().manual_seed(1))
    assert a.shape == (3, 1, 28, 28) and a.dtype == torch.float32 and a.device.type == "cpu"
    assert a.min() >= 0 and a.max() <= 1
    assert a.equal(b) and not a.equal(c)
    assert sample_ddpm(model, 2, generator=torch.Generator(), labels=torch.tensor([1, 2])).shape == (2, 1, 28, 28)
    with pytest.raises(ValueError):
        sample_ddpm(model, 0, generator=torch.Generator())


def test_sample_chain_keeps_the_requested_states() -> None:
    model = _tiny_model().eval()
    x0, snaps = sample_chain(model, 2, generator=torch.Generator().manual_seed(0), keep=(20, 10, 0))
    assert sorted(snaps) == [0, 10, 20] and snaps[0].equal(x0.cpu())
    start = torch.randn((2, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    assert snaps[20].equal(start), "x_T is the generator's first draw"


def test_class_conditional_model_needs_labels() -> None:
    images, labels = tiny_images(32), torch.arange(32) % 4
    cfg = {"T": 8, "widths": (4, 8), "time_dim": 8, "max_steps": 2, "batch_size": 16}
    model, _ = train_ddpm(images, cfg, labels=labels, device=torch.device("cpu"))
    assert model.num_classes == 4
    out = sample_ddpm(model, 2, generator=torch.Generator().manual_seed(0), labels=torch.tensor([0, 3]))
    assert out.shape == (2, 1, 28, 28)
    with pytest.raises(ValueError):
        sample_ddpm(model, 2, generator=torch.Generator())
    with pytest.raises(ValueError):
        sample_ddpm(model, 2, generator=torch.Generator(), labels=torch.tensor([0, 1, 2]))


def test_denoising_error_by_t() -> None:
    model = _tiny_model().eval()
    images = tiny_images(10)
    errs = denoising_error_by_t(model, images, [1, 10, 20], generator=torch.Generator().manual_seed(0), batch_size=4)
    again = denoising_error_by_t(model, images, [1, 10, 20], generator=torch.Generator().manual_seed(0), batch_size=4)
    assert set(errs) == {"eps_mse", "x0_mse"} and errs["eps_mse"].shape == (3,) and (errs["x0_mse"] >= 0).all()
    assert errs["eps_mse"].equal(again["eps_mse"])
    with pytest.raises(ValueError):
        denoising_error_by_t(model, images * 3, [1], generator=torch.Generator())
