"""Denoising diffusion probabilistic models (DDPM) from scratch (generative lesson 4).

The equations are those of chapters/generative/diffusion-derivation.md (Sohl-Dickstein et al.,
2015; Ho et al., 2020). Time is indexed as in the equations, t = 1..T, and every schedule array is
indexed by t with index 0 standing for the clean image: ``alphas_cumprod[0] = 1`` (ᾱ_0 = 1), so
``q_sample(x0, 0, ...)`` is ``x0`` and ``alphas_cumprod[t]`` is ᾱ_t. One array, ᾱ, carries the
whole schedule: β_t = 1 - ᾱ_t / ᾱ_{t-1}.

* the forward step   q(x_t | x_{t-1}) = N(√α_t x_{t-1}, β_t I)                 (eq-gen-dd-forward)
* its closed form    q(x_t | x_0) = N(√ᾱ_t x_0, (1 - ᾱ_t) I)                    (eq-gen-dd-marginal)
* the posterior      q(x_{t-1} | x_t, x_0) = N(μ̃_t, β̃_t I)                     (eq-gen-dd-posterior)
  with μ̃_t in x_0 and x_t                                                      (eq-gen-dd-post-mean)
  and in x_t and ε                                                              (eq-gen-dd-post-mean-eps)
* the training loss  L_simple = E ||ε - ε_θ(√ᾱ_t x_0 + √(1-ᾱ_t) ε, t)||²        (eq-gen-dd-lsimple)
* the reverse step   x_{t-1} = μ_θ(x_t, t) + σ_t z, σ_t² = β̃_t                (eq-gen-dd-reverse)

Schedules: :func:`linear_beta_schedule` (Ho et al.'s 1e-4 .. 0.02 for T = 1000, rescaled for
other T) and :func:`cosine_beta_schedule` (Nichol & Dhariwal, 2021). The noise predictor is the
course's U-Net (:mod:`dlbook.models.unet`, Ronneberger et al., 2015) with the time step added to
every block as a learned per-channel bias (:class:`TimeUNet`); :class:`DDPM` wraps it with the
schedule as buffers, so a trained model samples on its own. Images are float32 in [0, 1] at the
public boundary (:func:`train_ddpm`, :func:`sample_ddpm`) and in [-1, 1] inside.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime import device as default_device
from ..train import fit
from .unet import UNetSmall

Tensor = torch.Tensor

# --- schedules -------------------------------------------------------------------------------------


def linear_beta_schedule(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """β_1..β_T rising linearly, float64 of shape (T,) (Ho et al., 2020).

    ``beta_start`` and ``beta_end`` are Ho et al.'s values *for T = 1000*; for another T both are
    multiplied by 1000 / T (as in Nichol & Dhariwal's code), which keeps Σβ_t, and so ᾱ_T ≈ e^{-Σβ},
    about the same: x_T is nearly pure noise for any T.
    """
    if T < 2:
        raise ValueError(f"T must be at least 2, got {T}")
    scale = 1000 / T
    start, end = beta_start * scale, beta_end * scale
    if not 0 < start <= end < 1:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1 after scaling by 1000/T; got {start:.3g}, {end:.3g}")
    return torch.linspace(start, end, T, dtype=torch.float64)


def cosine_beta_schedule(T: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """β_1..β_T of the cosine schedule, float64 of shape (T,) (Nichol & Dhariwal, 2021).

    ᾱ_t = f(t) / f(0) with f(t) = cos²((t/T + s) / (1 + s) · π/2), and β_t = 1 - ᾱ_t / ᾱ_{t-1},
    clipped at ``max_beta`` (the last steps would otherwise reach β = 1, a singular posterior).
    ᾱ then falls slowly at both ends instead of reaching ~0 long before t = T.
    """
    if T < 2:
        raise ValueError(f"T must be at least 2, got {T}")
    if not 0 < max_beta < 1:
        raise ValueError(f"max_beta must be in (0, 1), got {max_beta}")
    steps = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos((steps / T + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def make_alphas_cumprod(betas: Tensor) -> Tensor:
    """ᾱ_t = Π_{s≤t} (1 - β_s) for t = 0..T, shape (T + 1,), with ᾱ_0 = 1 (the clean image)."""
    if betas.dim() != 1 or len(betas) < 1:
        raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
    if not ((betas > 0) & (betas < 1)).all():
        raise ValueError("every beta must lie in (0, 1)")
    return torch.cat([betas.new_ones(1), torch.cumprod(1 - betas, dim=0)])


def betas_from_alphas_cumprod(alphas_cumprod: Tensor) -> Tensor:
    """β_t = 1 - ᾱ_t / ᾱ_{t-1}, indexed like ᾱ (index 0 holds β_0 = 0)."""
    return torch.cat([alphas_cumprod.new_zeros(1), 1 - alphas_cumprod[1:] / alphas_cumprod[:-1]])


def _at(values: Tensor, t: int | Tensor, like: Tensor) -> Tensor:
    """``values[t]`` shaped to broadcast against ``like``: a scalar for an int t, else
    t.shape + (1,) * (like.dim() - t.dim()) (one value per example), in ``like``'s dtype."""
    T = len(values) - 1
    t = torch.as_tensor(t, device=values.device)
    if t.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"t must be an integer or an integer tensor, got {t.dtype}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) > T):
        raise ValueError(f"t must lie in 0..{T}, got values in {int(t.min())}..{int(t.max())}")
    if t.dim() > like.dim() or tuple(like.shape[: t.dim()]) != tuple(t.shape):
        raise ValueError(f"t of shape {tuple(t.shape)} does not lead x of shape {tuple(like.shape)}")
    out = values[t].to(device=like.device, dtype=like.dtype)
    return out.reshape(tuple(t.shape) + (1,) * (like.dim() - t.dim()))


# --- the forward process and its posterior ---------------------------------------------------------


def q_step(x_prev: Tensor, t: int | Tensor, noise: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """One forward step x_t = √α_t x_{t-1} + √β_t ε, a sample of q(x_t | x_{t-1}) (eq-gen-dd-forward).

    t in 1..T; α_t = ᾱ_t / ᾱ_{t-1} is read off ``alphas_cumprod`` (shape (T + 1,)).
    """
    if torch.as_tensor(t).min() < 1:
        raise ValueError("the forward step needs t >= 1")
    alpha = _at(alphas_cumprod[1:] / alphas_cumprod[:-1], torch.as_tensor(t) - 1, x_prev)
    return alpha.sqrt() * x_prev + (1 - alpha).sqrt() * noise


def q_sample(x0: Tensor, t: int | Tensor, noise: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) ε, a sample of q(x_t | x_0) in one step (eq-gen-dd-marginal).

    ``t``: an int, or one integer per example (shape (N,) for x0 of shape (N, ...)), in 0..T;
    ``noise``: ε ~ N(0, I), shaped like x0; ``alphas_cumprod``: ᾱ_0..ᾱ_T, shape (T + 1,).
    """
    if noise.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} differs from x0's {tuple(x0.shape)}")
    a = _at(alphas_cumprod, t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def posterior_mean_variance(x0: Tensor, xt: Tensor, t: int | Tensor, alphas_cumprod: Tensor) -> tuple[Tensor, Tensor]:
    """Mean μ̃_t and variance β̃_t of q(x_{t-1} | x_t, x_0) (eq-gen-dd-post-mean, eq-gen-dd-post-var).

    μ̃_t = √ᾱ_{t-1} β_t / (1 - ᾱ_t) · x_0 + √α_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t) · x_t,
    β̃_t = (1 - ᾱ_{t-1}) / (1 - ᾱ_t) · β_t,  for t in 1..T (β̃_1 = 0: x_0 is then known).
    The mean has x0's shape; the variance broadcasts against it (one value per t).
    """
    if x0.shape != xt.shape:
        raise ValueError(f"x0 shape {tuple(x0.shape)} differs from xt's {tuple(xt.shape)}")
    if torch.as_tensor(t).min() < 1:
        raise ValueError("the posterior q(x_{t-1} | x_t, x_0) needs t >= 1")
    t = torch.as_tensor(t)
    a_t, a_prev = _at(alphas_cumprod, t, x0), _at(alphas_cumprod, t - 1, x0)
    alpha = a_t / a_prev
    beta = 1 - alpha
    mean = (a_prev.sqrt() * beta / (1 - a_t)) * x0 + (alpha.sqrt() * (1 - a_prev) / (1 - a_t)) * xt
    variance = (1 - a_prev) / (1 - a_t) * beta
    return mean, variance


def predict_x0(xt: Tensor, eps: Tensor, t: int | Tensor, alphas_cumprod: Tensor) -> Tensor:
    """x_0 = (x_t - √(1 - ᾱ_t) ε) / √ᾱ_t, the closed form (eq-gen-dd-marginal) solved for x_0."""
    a = _at(alphas_cumprod, t, xt)
    return (xt - (1 - a).sqrt() * eps) / a.sqrt()


def posterior_mean_from_eps(xt: Tensor, eps: Tensor, t: int | Tensor, alphas_cumprod: Tensor) -> Tensor:
    """μ̃_t = (x_t - β_t / √(1 - ᾱ_t) · ε) / √α_t, the posterior mean in x_t and ε (eq-gen-dd-post-mean-eps)."""
    t = torch.as_tensor(t)
    if t.min() < 1:
        raise ValueError("the posterior mean needs t >= 1")
    a_t, a_prev = _at(alphas_cumprod, t, xt), _at(alphas_cumprod, t - 1, xt)
    alpha = a_t / a_prev
    return (xt - (1 - alpha) / (1 - a_t).sqrt() * eps) / alpha.sqrt()


# --- references for the proofs ---------------------------------------------------------------------


def forward_chain(x0: Tensor, alphas_cumprod: Tensor, n_chains: int, *, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Run the one-step forward process (eq-gen-dd-forward) T times from the same x0, ``n_chains`` times.

    Returns ``(xs, noises)``: xs of shape ``(T + 1, n_chains, *x0.shape)`` with xs[0] = x0, and the
    ε_1..ε_T drawn, shape ``(T, n_chains, *x0.shape)``, in x0's dtype (float64 for the proofs).
    """
    if n_chains < 1:
        raise ValueError(f"n_chains must be at least 1, got {n_chains}")
    T = len(alphas_cumprod) - 1
    x = x0.expand(n_chains, *x0.shape).clone()
    xs, noises = [x], []
    for t in range(1, T + 1):
        noise = torch.randn(x.shape, generator=generator, dtype=x0.dtype)
        x = q_step(x, t, noise, alphas_cumprod)
        xs.append(x)
        noises.append(noise)
    return torch.stack(xs), torch.stack(noises)


def composition_coefficients(alphas_cumprod: Tensor) -> Tensor:
    """C[t-1, s-1] = √β_s · √(ᾱ_t / ᾱ_s) for s ≤ t (else 0), shape (T, T) (eq-gen-dd-composition).

    x_t = √ᾱ_t x_0 + Σ_s C[t, s] ε_s is the forward chain unrolled; its rows' squares sum to
    1 - ᾱ_t (eq-gen-dd-variance-sum), which is why q(x_t | x_0) has that variance.
    """
    betas = betas_from_alphas_cumprod(alphas_cumprod)[1:]
    a = alphas_cumprod[1:]
    ratio = a[:, None] / a[None, :]  # ᾱ_t / ᾱ_s
    return torch.tril(betas.sqrt()[None, :] * ratio.clamp(max=1).sqrt())


def posterior_by_conditioning(x0: Tensor, xt: Tensor, t: int, alphas_cumprod: Tensor) -> tuple[Tensor, Tensor]:
    """q(x_{t-1} | x_t, x_0) by conditioning the joint Gaussian of the chain (eq-gen-dd-conditioning).

    The reference for :func:`posterior_mean_variance`, sharing none of its algebra: the chain
    x_s = √α_s x_{s-1} + √β_s ε_s is unrolled step by step as the linear map x_s = b_s x_0 + A_s·ε,
    then the joint of (x_{t-1}, x_t) given x_0 (means b x_0, covariances A·A) is conditioned on
    x_t: mean = b_{t-1} x_0 + Cov / Var_t · (x_t - b_t x_0), variance = Var_{t-1} - Cov² / Var_t.
    ``t`` is one int in 1..T; the variance is returned as a 0-dim tensor.
    """
    T = len(alphas_cumprod) - 1
    if not 1 <= t <= T:
        raise ValueError(f"t must lie in 1..{T}, got {t}")
    alphas = alphas_cumprod[1:] / alphas_cumprod[:-1]
    b = alphas_cumprod.new_ones(())
    A = alphas_cumprod.new_zeros(T)  # coefficients of ε_1..ε_T in x_s
    for s in range(1, t + 1):
        b_prev, A_prev = b, A
        unit = alphas_cumprod.new_zeros(T)
        unit[s - 1] = 1.0
        b = alphas[s - 1].sqrt() * b_prev
        A = alphas[s - 1].sqrt() * A_prev + (1 - alphas[s - 1]).sqrt() * unit
    var_t, var_prev, cov = A @ A, A_prev @ A_prev, A_prev @ A
    mean = b_prev * x0 + cov / var_t * (xt - b * x0)
    return mean, var_prev - cov**2 / var_t


# --- the noise predictor ---------------------------------------------------------------------------


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10_000.0, dtype: torch.dtype = torch.float32) -> Tensor:
    """The Transformer's sinusoidal position code of each t: (N,) -> (N, dim), [sin | cos].

    Frequencies run geometrically from 1 to 1/max_period, so both neighbouring and distant steps
    get distinguishable codes (Ho et al. embed t the same way).
    """
    if dim < 2 or dim % 2:
        raise ValueError(f"dim must be an even number >= 2, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=dtype) / half)
    angles = t.to(dtype)[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class TimeUNet(nn.Module):
    """The course's ``UNetSmall`` with the time step (and, optionally, the class) as input.

    The U-Net's own blocks are reused unchanged (``self.unet``: its ``down``, ``up``, ``decode``,
    ``pool`` and ``head``); what is added is the conditioning. t is embedded with
    :func:`sinusoidal_embedding`, passed through a two-layer MLP, and each conv block's output
    gets a per-channel bias computed from that embedding (Ho et al. add it inside each residual
    block the same way). With ``num_classes > 0`` a learned class embedding is added to the time
    embedding. Output: the predicted noise, shaped like the input.
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64), time_dim: int = 32, num_classes: int = 0, in_ch: int = 1):
        super().__init__()
        self.unet = UNetSmall(in_ch=in_ch, out_ch=in_ch, widths=widths)
        self.time_dim = time_dim
        emb = 2 * time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, emb), nn.SiLU(), nn.Linear(emb, emb), nn.SiLU())
        self.num_classes = num_classes
        self.class_emb = nn.Embedding(num_classes, emb) if num_classes > 0 else None
        # one bias per block: the encoder's blocks, then the decoder's (same order as the forward pass)
        block_widths = list(widths) + list(reversed(widths[:-1]))
        self.to_bias = nn.ModuleList(nn.Linear(emb, w) for w in block_widths)

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        e = self.time_mlp(sinusoidal_embedding(t, self.time_dim, dtype=x.dtype))
        if self.class_emb is not None:
            if labels is None:
                raise ValueError("this model is class-conditional: pass labels")
            e = e + self.class_emb(labels)
        return self.unet(x, block_bias=[layer(e)[:, :, None, None] for layer in self.to_bias])


class DDPM(nn.Module):
    """A noise predictor ε_θ(x_t, t) that carries its own schedule.

    ``betas`` (β_1..β_T) become the buffers ``betas`` and ``alphas_cumprod`` (both indexed 0..T,
    float32 so that every device can hold them), so :func:`sample_ddpm` needs only the model.
    ``model(x_t, t, labels)`` returns ε_θ for x_t in [-1, 1]-scaled images and t of shape (N,).
    """

    def __init__(self, betas: Tensor, widths: Sequence[int] = (16, 32, 64), time_dim: int = 32, num_classes: int = 0):
        super().__init__()
        alphas_cumprod = make_alphas_cumprod(betas.double())
        self.register_buffer("alphas_cumprod", alphas_cumprod.float())
        self.register_buffer("betas", betas_from_alphas_cumprod(alphas_cumprod).float())
        self.net = TimeUNet(widths, time_dim, num_classes)

    @property
    def T(self) -> int:
        return len(self.alphas_cumprod) - 1

    @property
    def num_classes(self) -> int:
        return self.net.num_classes

    def forward(self, xt: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.net(xt, t, labels)


class NoisePredictionStep:
    """The batch step of :func:`dlbook.train.fit` for L_simple (eq-gen-dd-lsimple).

    A batch is ``(x0,)`` or ``(x0, labels)`` with x0 in [0, 1]; the step scales it to [-1, 1],
    draws t uniformly from 1..T and ε ~ N(0, I) with its own generator (on the CPU, so a seed
    gives the same draws on every device), forms x_t by :func:`q_sample` and returns
    ``(ε_θ(x_t, t), ε)`` for ``loss_fn = F.mse_loss``. Labels reach the model only when it is
    class-conditional.
    """

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def __call__(self, model: nn.Module, batch: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        x0 = batch[0] * 2 - 1
        n = len(x0)
        t = torch.randint(1, model.T + 1, (n,), generator=self.generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=self.generator).to(x0.device, x0.dtype)
        labels = batch[1] if len(batch) > 1 and model.num_classes > 0 else None
        xt = q_sample(x0, t, noise, model.alphas_cumprod)
        return model(xt, t, labels), noise


# --- sampling --------------------------------------------------------------------------------------


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_labels(model: nn.Module, n: int, labels: Tensor | None) -> Tensor | None:
    if model.num_classes == 0:
        return None  # an unconditional model ignores labels
    if labels is None:
        raise ValueError("this model is class-conditional: pass labels (one class per sample)")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    return labels.to(_model_device(model))


@torch.no_grad()
def p_mean_variance(model: nn.Module, xt: Tensor, t: int, *, labels: Tensor | None = None,
                    clip_x0: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """The model's reverse step p_θ(x_{t-1} | x_t): mean μ_θ, variance σ_t² = β̃_t, and the predicted x̂_0.

    μ_θ is the posterior mean (eq-gen-dd-post-mean) at x̂_0 = (x_t - √(1-ᾱ_t) ε_θ) / √ᾱ_t
    (eq-gen-dd-x0-hat). Unclipped, that equals the ε-form μ_θ of eq-gen-dd-mu-theta exactly;
    ``clip_x0`` first clips x̂_0 to the data range [-1, 1], as Ho et al.'s sampler does.
    """
    T = model.T
    if not 1 <= t <= T:
        raise ValueError(f"t must lie in 1..{T}, got {t}")
    ac = model.alphas_cumprod
    t_vec = torch.full((len(xt),), t, dtype=torch.long, device=xt.device)
    eps = model(xt, t_vec, labels)
    x0_hat = predict_x0(xt, eps, t, ac)
    if clip_x0:
        x0_hat = x0_hat.clamp(-1, 1)
    mean, variance = posterior_mean_variance(x0_hat, xt, t, ac)
    return mean, variance, x0_hat


@torch.no_grad()
def p_sample_step(model: nn.Module, xt: Tensor, t: int, *, generator: torch.Generator,
                  labels: Tensor | None = None, clip_x0: bool = True) -> Tensor:
    """One ancestral step x_t -> x_{t-1} = μ_θ(x_t, t) + σ_t z, σ_t² = β̃_t (eq-gen-dd-reverse).

    The mean and variance are :func:`p_mean_variance`'s. No noise is added at t = 1 (β̃_1 = 0).
    z is drawn on the CPU from ``generator`` (float32, then cast), so a seed gives the same
    samples on every device.
    """
    mean, variance, _ = p_mean_variance(model, xt, t, labels=labels, clip_x0=clip_x0)
    if t == 1:
        return mean
    z = torch.randn(xt.shape, generator=generator).to(xt.device, xt.dtype)
    return mean + variance.sqrt() * z


@torch.no_grad()
def sample_chain(model: nn.Module, n: int, *, generator: torch.Generator, labels: Tensor | None = None,
                 keep: Sequence[int] = (), clip_x0: bool = True) -> tuple[Tensor, dict[int, Tensor]]:
    """Ancestral sampling from x_T ~ N(0, I) down to x_0, in the model's [-1, 1] scale.

    Returns x_0 of shape (n, 1, 28, 28) (the training images' shape: 28 x 28 is assumed) and
    ``{t: x_t}`` (on the CPU) for every t in ``keep`` (t = T is the starting noise, t = 0 the result).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    was_training = model.training
    model.eval()
    dev = _model_device(model)
    labels = _check_labels(model, n, labels)
    x = torch.randn((n, 1, 28, 28), generator=generator).to(dev)
    snapshots = {}
    for t in range(model.T, 0, -1):
        if t in keep:
            snapshots[t] = x.cpu()
        x = p_sample_step(model, x, t, generator=generator, labels=labels, clip_x0=clip_x0)
    if 0 in keep:
        snapshots[0] = x.cpu()
    model.train(was_training)
    return x, snapshots


def sample_ddpm(model: nn.Module, n: int, *, generator: torch.Generator, labels: Tensor | None = None) -> Tensor:
    """n samples as float32 images (n, 1, 28, 28) in [0, 1] on the CPU (the chapter's sampler contract).

    Runs all T reverse steps of :func:`sample_chain` on the model's device. An unconditional model
    ignores ``labels``; a class-conditional one (trained with labels) needs them, shape (n,).
    """
    x0, _ = sample_chain(model, n, generator=generator, labels=labels)
    return ((x0 + 1) / 2).clamp(0, 1).float().cpu()


# --- training and evaluation -----------------------------------------------------------------------

DEFAULT_CONFIG: dict[str, Any] = {
    "T": 200, "schedule": "cosine", "widths": (16, 32, 64), "time_dim": 32,
    "epochs": 1, "max_steps": None, "batch_size": 128, "lr": 2e-3, "grad_clip": 1.0,
}


def _check_images(images: Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"images must have shape (N, 1, H, W), got {tuple(images.shape)}")
    if images.min() < 0 or images.max() > 1:
        raise ValueError("images must lie in [0, 1] (load_fashion_mnist(normalize=False))")


def make_betas(schedule: str, T: int) -> Tensor:
    """β_1..β_T of the named schedule, ``"linear"`` or ``"cosine"``."""
    if schedule == "linear":
        return linear_beta_schedule(T)
    if schedule == "cosine":
        return cosine_beta_schedule(T)
    raise ValueError(f"schedule must be 'linear' or 'cosine', not {schedule!r}")


def train_ddpm(train_images: Tensor, config: Mapping[str, Any], *, labels: Tensor | None = None,
               device: torch.device | None = None, seed: int = 0, progress: bool = False,
               callbacks: Sequence[Any] = ()) -> tuple[DDPM, float]:
    """Train a :class:`DDPM` noise predictor with ``fit`` and L_simple; return (model in eval mode, seconds).

    ``train_images``: float32 (N, 1, H, W) in [0, 1]. ``config`` keys (defaults):
    ``T`` (200) diffusion steps; ``schedule`` ("cosine", or "linear"); ``widths`` ((16, 32, 64))
    and ``time_dim`` (32) of the :class:`TimeUNet`; ``epochs`` (1); ``max_steps`` (None: whole
    epochs); ``batch_size`` (128); ``lr`` (2e-3, Adam); ``grad_clip`` (1.0).
    With ``labels`` (N,) the model is class-conditional (a class embedding added to the time
    embedding) and :func:`sample_ddpm` then needs labels; without, labels play no part.
    ``callbacks`` go to ``fit`` (e.g. a ``StepLog`` for the loss curve). The seconds are fit's
    training time. The seed fixes the initial weights, the batch order and the draws of t and ε.
    """
    unknown = set(config) - set(DEFAULT_CONFIG)
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}; known: {sorted(DEFAULT_CONFIG)}")
    cfg = {**DEFAULT_CONFIG, **config}
    _check_images(train_images)
    num_classes = 0
    if labels is not None:
        if labels.shape != (len(train_images),):
            raise ValueError(f"labels must have shape ({len(train_images)},), got {tuple(labels.shape)}")
        num_classes = int(labels.max()) + 1
    device = device or default_device()
    torch.manual_seed(seed)  # the initial weights
    model = DDPM(make_betas(cfg["schedule"], int(cfg["T"])), tuple(cfg["widths"]), int(cfg["time_dim"]), num_classes)
    data = (train_images,) if labels is None else (train_images, labels)
    start = time.perf_counter()
    history = fit(model, data, optimizer=torch.optim.Adam(model.parameters(), lr=cfg["lr"]), epochs=int(cfg["epochs"]),
                  max_steps=cfg["max_steps"], batch_size=int(cfg["batch_size"]), loss_fn=F.mse_loss,
                  step=NoisePredictionStep(torch.Generator().manual_seed(seed + 1)), grad_clip=cfg["grad_clip"],
                  device=device, seed=seed, progress=progress, callbacks=callbacks)
    seconds = history.last.get("train_seconds", time.perf_counter() - start)
    return model.eval(), float(seconds)


@torch.no_grad()
def denoising_error_by_t(model: DDPM, images: Tensor, ts: Sequence[int], *, generator: torch.Generator,
                         batch_size: int = 1000, labels: Tensor | None = None) -> dict[str, Tensor]:
    """The model's errors at each t in ``ts`` on ``images`` (float32 in [0, 1]), with ε drawn from ``generator``.

    Returns ``{"eps_mse": (len(ts),), "x0_mse": (len(ts),)}``: the mean squared error of ε_θ
    against ε (the L_simple of eq-gen-dd-lsimple at that t), and of the implied x̂_0 against x_0,
    in [0, 1] pixel units (x̂_0 clipped to the data range, as the sampler does).
    """
    _check_images(images)
    was_training = model.training
    model.eval()
    dev = _model_device(model)
    eps_mse, x0_mse = [], []
    for t in ts:
        se_eps, se_x0 = 0.0, 0.0
        for start in range(0, len(images), batch_size):
            x0 = (images[start:start + batch_size] * 2 - 1).to(dev)
            noise = torch.randn(x0.shape, generator=generator).to(dev)
            t_vec = torch.full((len(x0),), int(t), dtype=torch.long, device=dev)
            y = None if labels is None or model.num_classes == 0 else labels[start:start + batch_size].to(dev)
            xt = q_sample(x0, t_vec, noise, model.alphas_cumprod)
            eps = model(xt, t_vec, y)
            x0_hat = predict_x0(xt, eps, t_vec, model.alphas_cumprod).clamp(-1, 1)
            se_eps += float(((eps - noise) ** 2).sum())
            se_x0 += float((((x0_hat - x0) / 2) ** 2).sum())
        eps_mse.append(se_eps / images.numel())
        x0_mse.append(se_x0 / images.numel())
    model.train(was_training)
    return {"eps_mse": torch.tensor(eps_mse), "x0_mse": torch.tensor(x0_mse)}
