"""Variational autoencoders (generative chapter, lesson 6.2): the ELBO's pieces and a small VAE.

The equations are derived on ``chapters/generative/elbo-derivation.md`` (labels ``eq-gen-vaed-*``)
and used in ``chapters/generative/variational-autoencoders.ipynb`` (labels ``eq-gen-vae-*``):

* the evidence lower bound, ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z))   (eq-gen-vae-elbo)
* the KL divergence of two diagonal Gaussians, and against N(0, I)         (eq-gen-vae-kl, eq-gen-vae-kl-std)
* the reparameterisation z = mu + exp(logvar / 2) * eps                     (eq-gen-vae-reparam)
* its pathwise gradient and the score-function (REINFORCE) gradient of
  E_q[f(z)] for the quadratic f(z) = 1/2 sum_j a_j (z_j - c_j)^2           (eq-gen-vae-pathwise, eq-gen-vae-score)
  and the closed-form variance of both when sigma = 1                        (eq-gen-vaed-var-score)
* the discretised logistic likelihood of 8-bit pixels                        (eq-gen-vae-dlogistic)
  and the mean image it implies                                              (eq-gen-vae-pixel-mean)
* the importance-weighted bound (IWAE) on log p(x)                           (eq-gen-vae-iwae)
* bits per dimension, -ELBO / (784 ln 2)                                     (eq-gen-vae-bpd)

The model is a multilayer perceptron encoder and decoder (fast on one CPU core). Setting
``n_classes > 0`` makes it a conditional VAE: a one-hot label is concatenated to the encoder's
input and to the decoder's latent input, so ``sample_vae(..., labels=y)`` draws images of class y.

Images are float32 (N, 1, 28, 28) in [0, 1] at every public boundary; the pixels of Fashion-MNIST
are multiples of 1/255, the values of 8-bit grey levels, which the discretised likelihood models.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor

IMAGE_SHAPE = (1, 28, 28)
LOG_SCALE_MIN = -7.0  # the decoder's smallest logistic log-scale (PixelCNN++'s bound): keeps densities finite
DEFAULT_CONFIG: dict[str, Any] = {
    "latent_dim": 16, "hidden": 512, "n_classes": 0, "epochs": 10, "batch_size": 128, "lr": 1e-3,
}


def _broadcast(*tensors: Tensor, what: str) -> None:
    try:
        torch.broadcast_shapes(*(t.shape for t in tensors))
    except RuntimeError as exc:
        shapes = ", ".join(str(tuple(t.shape)) for t in tensors)
        raise ValueError(f"{what}: shapes {shapes} do not broadcast") from exc


# --- the Gaussian pieces -------------------------------------------------------------------------


def gaussian_kl(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor | None = None, logvar_p: Tensor | None = None) -> Tensor:
    """KL(N(mu_q, diag exp(logvar_q)) || N(mu_p, diag exp(logvar_p))), summed over the last axis.

    Closed form (eq-gen-vae-kl), one term per latent coordinate j:

        1/2 * sum_j [ logvar_p - logvar_q + (exp(logvar_q) + (mu_q - mu_p)^2) / exp(logvar_p) - 1 ].

    ``mu_p`` and ``logvar_p`` default to 0, the standard normal prior N(0, I), which gives
    (eq-gen-vae-kl-std) 1/2 * sum_j [ mu_q^2 + exp(logvar_q) - logvar_q - 1 ]. Shapes broadcast;
    the result has the broadcast shape without its last axis (one KL per distribution).
    """
    if mu_p is None and logvar_p is None:
        _broadcast(mu_q, logvar_q, what="gaussian_kl")
        return 0.5 * (mu_q.pow(2) + logvar_q.exp() - logvar_q - 1.0).sum(-1)
    mu_p = torch.zeros_like(mu_q) if mu_p is None else mu_p
    logvar_p = torch.zeros_like(logvar_q) if logvar_p is None else logvar_p
    _broadcast(mu_q, logvar_q, mu_p, logvar_p, what="gaussian_kl")
    ratio = (logvar_q.exp() + (mu_q - mu_p).pow(2)) * torch.exp(-logvar_p)
    return 0.5 * (logvar_p - logvar_q + ratio - 1.0).sum(-1)


def gaussian_log_prob(z: Tensor, mu: Tensor | None = None, logvar: Tensor | None = None) -> Tensor:
    """log N(z; mu, diag exp(logvar)), summed over the last axis (standard normal by default)."""
    mu = torch.zeros_like(z) if mu is None else mu
    logvar = torch.zeros_like(z) if logvar is None else logvar
    _broadcast(z, mu, logvar, what="gaussian_log_prob")
    return -0.5 * (math.log(2 * math.pi) + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(-1)


def kl_monte_carlo(
    mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor, logvar_p: Tensor, n_samples: int, *, generator: torch.Generator
) -> tuple[float, float]:
    """Monte Carlo estimate of KL(q || p) = E_q[log q(z) - log p(z)] for one pair of diagonal
    Gaussians (1-D parameter vectors), and its standard error std / sqrt(n_samples)."""
    if mu_q.dim() != 1:
        raise ValueError(f"kl_monte_carlo takes one distribution (1-D parameters), not shape {tuple(mu_q.shape)}")
    if n_samples < 2:
        raise ValueError(f"n_samples must be at least 2 for a standard error, not {n_samples}")
    eps = torch.randn(n_samples, mu_q.numel(), generator=generator, dtype=mu_q.dtype)
    z = reparameterize(mu_q, logvar_q, eps)
    log_ratio = gaussian_log_prob(z, mu_q, logvar_q) - gaussian_log_prob(z, mu_p, logvar_p)
    return float(log_ratio.mean()), float(log_ratio.std() / math.sqrt(n_samples))


def reparameterize(mu: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
    """z = mu + exp(logvar / 2) * eps (eq-gen-vae-reparam): a sample of N(mu, diag exp(logvar))
    written as a differentiable function of the parameters and of noise eps ~ N(0, I).

    ``eps`` may carry extra leading axes (several samples per distribution); shapes broadcast.
    """
    _broadcast(mu, logvar, eps, what="reparameterize")
    return mu + torch.exp(0.5 * logvar) * eps


# --- the two gradient estimators on a quadratic objective ----------------------------------------


def quadratic_objective(z: Tensor, a: Tensor, c: Tensor) -> Tensor:
    """f(z) = 1/2 * sum_j a_j (z_j - c_j)^2 over the last axis (eq-gen-vae-quadratic)."""
    return 0.5 * (a * (z - c).pow(2)).sum(-1)


def quadratic_expected_grads(mu: Tensor, logvar: Tensor, a: Tensor, c: Tensor) -> dict[str, Tensor]:
    """The exact gradient of E_{z ~ N(mu, diag exp(logvar))}[f(z)] = 1/2 sum_j a_j ((mu_j - c_j)^2 +
    exp(logvar_j)): d/dmu = a (mu - c), d/dlogvar = a exp(logvar) / 2 (eq-gen-vae-quadratic-grad)."""
    return {"mu": a * (mu - c), "logvar": 0.5 * a * logvar.exp()}


def pathwise_grads(mu: Tensor, logvar: Tensor, eps: Tensor, a: Tensor, c: Tensor) -> dict[str, Tensor]:
    """The reparameterisation (pathwise) gradient of f(z), z = mu + sigma eps, per sample
    (eq-gen-vae-pathwise), written by hand: with grad_z f = a (z - c),

        d f / d mu     = grad_z f,
        d f / d logvar = grad_z f * (sigma * eps / 2)     (dz/dlogvar = sigma eps / 2).

    ``eps`` is (S, D) for S samples; each returned tensor is (S, D), one estimate per sample.
    """
    sigma = torch.exp(0.5 * logvar)
    grad_z = a * (reparameterize(mu, logvar, eps) - c)
    return {"mu": grad_z, "logvar": grad_z * 0.5 * sigma * eps}


def score_function_grads(mu: Tensor, logvar: Tensor, eps: Tensor, a: Tensor, c: Tensor) -> dict[str, Tensor]:
    """The score-function (REINFORCE, likelihood-ratio) gradient f(z) * grad log q(z), per sample
    (eq-gen-vae-score): for z = mu + sigma eps,

        d log q / d mu     = (z - mu) / sigma^2 = eps / sigma,
        d log q / d logvar = ((z - mu)^2 / sigma^2 - 1) / 2 = (eps^2 - 1) / 2.

    It needs f's values only, never its gradient. Shapes as in :func:`pathwise_grads`.
    """
    sigma = torch.exp(0.5 * logvar)
    f = quadratic_objective(reparameterize(mu, logvar, eps), a, c).unsqueeze(-1)
    return {"mu": f * eps / sigma, "logvar": f * 0.5 * (eps.pow(2) - 1.0)}


def quadratic_problem(dim: int, *, delta: float = 1.0, seed: int = 0, dtype: torch.dtype = torch.float64
                      ) -> dict[str, Tensor]:
    """The lesson's test problem: a = 1, sigma = 1 (logvar = 0), mu drawn from N(0, I) and
    c = mu - delta, so that every mu_j - c_j = delta and the variances have a closed form."""
    if dim < 1:
        raise ValueError(f"dim must be at least 1, not {dim}")
    mu = torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return {"mu": mu, "logvar": torch.zeros(dim, dtype=dtype), "a": torch.ones(dim, dtype=dtype), "c": mu - delta}


def estimator_variance(problem: Mapping[str, Tensor], n_samples: int, n_repeats: int, *,
                       generator: torch.Generator) -> dict[str, float]:
    """The variance of the two estimators of d E[f] / d mu, each averaging ``n_samples`` samples,
    measured over ``n_repeats`` independent repeats and averaged over the D coordinates of mu."""
    if n_samples < 1 or n_repeats < 2:
        raise ValueError(f"need n_samples >= 1 and n_repeats >= 2, not {n_samples} and {n_repeats}")
    mu, logvar, a, c = problem["mu"], problem["logvar"], problem["a"], problem["c"]
    eps = torch.randn(n_repeats, n_samples, mu.numel(), generator=generator, dtype=mu.dtype)
    result = {}
    for name, estimator in (("pathwise", pathwise_grads), ("score", score_function_grads)):
        means = estimator(mu, logvar, eps, a, c)["mu"].mean(1)  # (n_repeats, D): one S-sample average per repeat
        result[name] = float(means.var(0).mean())
    return result


def score_variance_closed_form(dim: int, delta: float = 1.0) -> float:
    """Var of one score-function sample of d E[f] / d mu_1 on :func:`quadratic_problem`
    (eq-gen-vaed-var-score); the pathwise estimator's is exactly 1 there (eq-gen-vaed-var-path)."""
    d2, m = delta**2, dim - 1
    second = (d2**2 + 18 * d2 + 15 + 2 * (d2 + 3) * m * (1 + d2) + m * (2 + 4 * d2) + m**2 * (1 + d2) ** 2) / 4
    return second - d2


# --- the likelihood of 8-bit pixels ----------------------------------------------------------------


def discretized_logistic_log_prob(x: Tensor, mean: Tensor, log_scale: Tensor, n_bits: int = 8) -> Tensor:
    """log P(x) per pixel under a logistic(mean, scale) discretised to the 2^n_bits grey levels
    k / (2^n_bits - 1) of [0, 1] (eq-gen-vae-dlogistic), elementwise.

    A level's probability is the logistic's mass on its bin, x +- h with h = 1 / (2 (2^n_bits - 1));
    the first and last levels also take the tails beyond 0 and 1, so the probabilities of all the
    levels sum to 1. With a = (x + h - mean) / s and b = (x - h - mean) / s, the interior mass is
    sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - exp(b - a)), computed in logs so that no
    subtraction of nearly equal numbers happens (eq-gen-vaed-dlogistic-stable).
    """
    _broadcast(x, mean, log_scale, what="discretized_logistic_log_prob")
    levels = 2**n_bits - 1
    half = 0.5 / levels
    inv_s = torch.exp(-log_scale)
    a = (x + half - mean) * inv_s
    b = (x - half - mean) * inv_s
    log_cdf_a = F.logsigmoid(a)  # log P(X <= x + h): the lowest level's mass
    log_sf_b = F.logsigmoid(-b)  # log P(X > x - h): the highest level's mass
    # a - b = 2 h / s > 0, so log(1 - exp(b - a)) = log(-expm1(b - a)) is finite
    log_mid = log_cdf_a + log_sf_b + torch.log(-torch.expm1(b - a))
    low = x < half  # x == 0 on the grid
    high = x > 1 - half  # x == 1
    return torch.where(low, log_cdf_a, torch.where(high, log_sf_b, log_mid))


# --- the model ----------------------------------------------------------------------------------


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class VAE(nn.Module):
    """An MLP variational autoencoder with a diagonal-Gaussian encoder q(z|x) = N(mu, diag sigma^2),
    the prior N(0, I), and a discretised-logistic decoder p(x|z) over the 256 grey levels.

    ``encode`` gives (mu, logvar), each (N, latent_dim); ``decode`` gives the logistic's mean and
    log-scale per pixel, each (N, 1, 28, 28). With ``n_classes > 0`` both take one-hot labels too
    (a conditional VAE, Sohn et al. 2015): q(z|x, y) and p(x|z, y), with the same prior.
    """

    def __init__(self, latent_dim: int = 16, hidden: int = 512, n_classes: int = 0) -> None:
        super().__init__()
        if latent_dim < 1 or hidden < 1 or n_classes < 0:
            raise ValueError(f"need latent_dim >= 1, hidden >= 1, n_classes >= 0; got {latent_dim}, {hidden}, {n_classes}")
        self.latent_dim, self.hidden, self.n_classes = latent_dim, hidden, n_classes
        pixels = math.prod(IMAGE_SHAPE)
        self.encoder = _mlp([pixels + n_classes, hidden, hidden // 2, 2 * latent_dim])
        self.decoder = _mlp([latent_dim + n_classes, hidden // 2, hidden, 2 * pixels])

    def _with_labels(self, h: Tensor, labels: Tensor | None) -> Tensor:
        if self.n_classes == 0:
            if labels is not None:
                raise ValueError("this VAE is unconditional (n_classes=0): pass no labels")
            return h
        if labels is None:
            raise ValueError(f"this is a conditional VAE (n_classes={self.n_classes}): pass labels")
        if labels.shape != (len(h),):
            raise ValueError(f"labels must have shape ({len(h)},), not {tuple(labels.shape)}")
        return torch.cat([h, F.one_hot(labels.long(), self.n_classes).to(h.dtype)], dim=1)

    def encode(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(mu, logvar) of q(z | x[, y]) for images x of shape (N, 1, 28, 28)."""
        if tuple(x.shape[1:]) != IMAGE_SHAPE:
            raise ValueError(f"images must have shape (N, 1, 28, 28), not {tuple(x.shape)}")
        out = self.encoder(self._with_labels(x.flatten(1), labels))
        return out.chunk(2, dim=1)

    def decode(self, z: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The decoder's logistic (mean, log_scale) per pixel, each (N, 1, 28, 28)."""
        out = self.decoder(self._with_labels(z, labels))
        mean, log_scale = out.view(len(z), 2, *IMAGE_SHAPE).unbind(1)
        return mean, log_scale.clamp_min(LOG_SCALE_MIN)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """The per-image negative ELBO with one reparameterised sample (see :func:`negative_elbo`)."""
        return negative_elbo(self, x, labels)


def negative_elbo(model: VAE, x: Tensor, labels: Tensor | None = None, *, n_samples: int = 1,
                  generator: torch.Generator | None = None, return_terms: bool = False
                  ) -> Tensor | dict[str, Tensor]:
    """-ELBO per image in nats (eq-gen-vae-elbo): -E_q[log p(x|z)] + KL(q(z|x) || N(0, I)).

    The expectation is estimated with ``n_samples`` reparameterised samples per image (noise from
    ``generator`` on the CPU, or torch's global generator); the KL is the closed form
    (eq-gen-vae-kl-std). ``return_terms=True`` returns ``{"nelbo", "recon", "kl"}``, each (N,),
    with ``recon`` = -E_q[log p(x|z)].
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, not {n_samples}")
    mu, logvar = model.encode(x, labels)
    eps = torch.randn((n_samples, *mu.shape), generator=generator, dtype=mu.dtype,
                      device="cpu" if generator is not None else mu.device).to(mu.device)
    z = reparameterize(mu, logvar, eps).flatten(0, 1)  # (S * N, latent), sample-major
    rep = None if labels is None else labels.repeat(n_samples)
    mean, log_scale = model.decode(z, rep)
    log_px = discretized_logistic_log_prob(x.repeat(n_samples, 1, 1, 1), mean, log_scale).flatten(1).sum(1)
    recon = -log_px.view(n_samples, len(x)).mean(0)
    kl = gaussian_kl(mu, logvar)
    nelbo = recon + kl
    return {"nelbo": nelbo, "recon": recon, "kl": kl} if return_terms else nelbo


@torch.no_grad()
def log_importance_weights(model: VAE, x: Tensor, labels: Tensor | None = None, *, k: int,
                           generator: torch.Generator) -> dict[str, Tensor]:
    """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x) for K samples z_k ~ q(z|x) per image,
    shape (K, N), with the decoder's log p(x|z_k) alone (``log_px``, also (K, N)) and the
    closed-form KL (N,), so that the ELBO and the IWAE bound use the same samples."""
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    mu, logvar = model.encode(x, labels)
    eps = torch.randn((k, *mu.shape), generator=generator, dtype=mu.dtype).to(mu.device)
    z = reparameterize(mu, logvar, eps)  # (K, N, latent)
    rep = None if labels is None else labels.repeat(k)
    mean, log_scale = model.decode(z.flatten(0, 1), rep)
    log_px = discretized_logistic_log_prob(x.repeat(k, 1, 1, 1), mean, log_scale).flatten(1).sum(1).view(k, len(x))
    log_w = log_px + gaussian_log_prob(z) - gaussian_log_prob(z, mu, logvar)
    return {"log_w": log_w, "log_px": log_px, "kl": gaussian_kl(mu, logvar)}


def iwae_bound(log_w: Tensor) -> Tensor:
    """log (1/K) sum_k w_k from log-weights of shape (K, N), stably (eq-gen-vae-iwae): (N,)."""
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


@torch.no_grad()
def likelihood_bounds(model: VAE, images: Tensor, labels: Tensor | None = None, *, k: int,
                      generator: torch.Generator, batch_size: int = 500) -> dict[str, Tensor]:
    """Per-image bounds on log p(x) in nats, on the CPU, each (N,), from the same K samples:

    * ``elbo``: E_q[log p(x|z)] (the mean over the K samples) minus the closed-form KL;
    * ``elbo_mc``: the mean of the K log-weights (the KL estimated by the same samples);
    * ``iwae``: log (1/K) sum_k w_k, which is >= ``elbo_mc`` image by image (Jensen) and
      >= the ELBO in expectation (Burda et al. 2016).
    """
    model.eval()
    device = next(model.parameters()).device
    out: dict[str, list[Tensor]] = {"elbo": [], "elbo_mc": [], "iwae": []}
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device)
        y = None if labels is None else labels[start:start + batch_size].to(device)
        w = log_importance_weights(model, x, y, k=k, generator=generator)
        out["elbo"].append((w["log_px"].mean(0) - w["kl"]).cpu())
        out["elbo_mc"].append(w["log_w"].mean(0).cpu())
        out["iwae"].append(iwae_bound(w["log_w"]).cpu())
    return {name: torch.cat(parts) for name, parts in out.items()}


def bits_per_dim(nats_per_image: float | Tensor, dims: int = math.prod(IMAGE_SHAPE)) -> float:
    """Nats per image -> bits per pixel: nats / (dims * ln 2) (eq-gen-vae-bpd). A model that spreads its mass evenly
    over the 256 grey levels scores 8 bits per dimension."""
    return float(nats_per_image) / (dims * math.log(2))


# --- training and sampling: the chapter's contract ----------------------------------------------------


def vae_step(model: nn.Module, batch: Sequence[Tensor]) -> Tensor:
    """:func:`dlbook.train.fit`'s step: the batch's mean negative ELBO (a ready scalar loss).

    A batch is ``(images,)`` or, for a conditional VAE, ``(images, labels)``.
    """
    x = batch[0]
    labels = batch[1] if len(batch) > 1 else None
    return model(x, labels).mean()


def train_vae(train_images: Tensor, config: Mapping[str, Any], *, labels: Tensor | None = None,
              device: torch.device | None = None, seed: int = 0, progress: bool = False) -> tuple[VAE, float]:
    """Train a :class:`VAE` with :func:`dlbook.train.fit` and :func:`vae_step`; return the model in
    eval mode and the training seconds.

    ``config`` keys (defaults): ``latent_dim`` (16), ``hidden`` (512, the wider hidden layer),
    ``n_classes`` (0: unconditional; > 0 needs ``labels`` and trains a conditional VAE),
    ``epochs`` (10), ``batch_size`` (128), ``lr`` (1e-3, Adam). ``train_images`` are (N, 1, 28, 28)
    in [0, 1] on the 8-bit grid.
    """
    from ..runtime import device as default_device
    from ..runtime import seed_everything
    from ..train import fit

    unknown = set(config) - set(DEFAULT_CONFIG)
    if unknown:
        raise ValueError(f"unknown VAE config keys {sorted(unknown)}; known: {sorted(DEFAULT_CONFIG)}")
    cfg = {**DEFAULT_CONFIG, **config}
    if tuple(train_images.shape[1:]) != IMAGE_SHAPE:
        raise ValueError(f"train_images must have shape (N, 1, 28, 28), not {tuple(train_images.shape)}")
    if cfg["n_classes"] > 0 and labels is None:
        raise ValueError(f"n_classes={cfg['n_classes']} trains a conditional VAE: pass labels")
    if cfg["n_classes"] == 0 and labels is not None:
        raise ValueError("labels given but n_classes is 0: set config['n_classes'] for a conditional VAE")
    if labels is not None and len(labels) != len(train_images):
        raise ValueError(f"{len(labels)} labels for {len(train_images)} images")
    device = device or default_device()
    seed_everything(seed)
    model = VAE(cfg["latent_dim"], cfg["hidden"], cfg["n_classes"]).to(device)
    data = (train_images,) if labels is None else (train_images, labels)
    start = time.perf_counter()
    fit(model, data, optimizer=torch.optim.Adam(model.parameters(), lr=cfg["lr"]), epochs=cfg["epochs"],
        batch_size=cfg["batch_size"], step=vae_step, device=device, seed=seed, progress=progress, amp=False)
    return model.eval(), time.perf_counter() - start


def _latent_device(model: VAE) -> torch.device:
    return next(model.parameters()).device


def logistic_clip_mean(mean: Tensor, log_scale: Tensor) -> Tensor:
    """E[clip(X, 0, 1)] for X ~ logistic(mean, exp(log_scale)), elementwise (eq-gen-vae-pixel-mean):

        E[clip(X, 0, 1)] = int_0^1 P(X > t) dt = 1 - s * (softplus((1 - mean) / s) - softplus(-mean / s)).

    The discretised logistic of :func:`discretized_logistic_log_prob` is clip(X, 0, 1) rounded to
    the nearest grey level, so its mean is within half a grey level (1/510) of this one.
    """
    s = log_scale.exp()
    return 1.0 - s * (F.softplus((1.0 - mean) / s) - F.softplus(-mean / s))


@torch.no_grad()
def decode_mean(model: VAE, z: Tensor, labels: Tensor | None = None) -> Tensor:
    """The mean image of p(x | z[, y]), (N, 1, 28, 28) float32 in [0, 1] on the CPU
    (:func:`logistic_clip_mean` of the decoder's outputs).

    The mean, not a draw: a draw adds independent noise to every pixel, which the factorised
    decoder cannot correlate, so pictures of a VAE show the mean, as is usual.
    """
    model.eval()
    device = _latent_device(model)
    mean, log_scale = model.decode(z.to(device), None if labels is None else labels.to(device))
    return logistic_clip_mean(mean, log_scale).clamp(0.0, 1.0).float().cpu()


@torch.no_grad()
def sample_vae(model: VAE, n: int, *, generator: torch.Generator, labels: Tensor | None = None) -> Tensor:
    """n images from the prior: z ~ N(0, I) (drawn on the CPU with ``generator``), decoded to the
    mean image of p(x | z) (:func:`decode_mean`), in [0, 1]; (n, 1, 28, 28) float32 on the CPU. A conditional VAE needs ``labels``
    of shape (n,), the class to draw for each image."""
    if n < 1:
        raise ValueError(f"n must be at least 1, not {n}")
    if labels is not None:
        labels = torch.as_tensor(labels).long()
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), not {tuple(labels.shape)}")
        if model.n_classes and (labels.min() < 0 or labels.max() >= model.n_classes):
            raise ValueError(f"labels must lie in 0..{model.n_classes - 1}")
    z = torch.randn(n, model.latent_dim, generator=generator)
    return decode_mean(model, z, labels)


@torch.no_grad()
def encode_mean(model: VAE, images: Tensor, labels: Tensor | None = None, batch_size: int = 1000) -> Tensor:
    """The posterior means mu(x) of q(z|x), (N, latent_dim) on the CPU."""
    model.eval()
    device = _latent_device(model)
    parts = []
    for start in range(0, len(images), batch_size):
        y = None if labels is None else labels[start:start + batch_size].to(device)
        parts.append(model.encode(images[start:start + batch_size].to(device), y)[0].cpu())
    return torch.cat(parts)


@torch.no_grad()
def reconstruct(model: VAE, images: Tensor, labels: Tensor | None = None) -> Tensor:
    """Images decoded from their posterior mean: decode_mean(encode_mean(x)), (N, 1, 28, 28)."""
    return decode_mean(model, encode_mean(model, images, labels), labels)


@torch.no_grad()
def latent_traversal(model: VAE, z0: Tensor, dim: int, values: Sequence[float]) -> Tensor:
    """Decode each latent of ``z0`` (R, latent_dim) with coordinate ``dim`` set to each of
    ``values``: (R, len(values), 1, 28, 28), one row per starting latent."""
    if not 0 <= dim < z0.shape[1]:
        raise ValueError(f"dim must lie in 0..{z0.shape[1] - 1}, not {dim}")
    z = z0[:, None, :].repeat(1, len(values), 1)
    z[:, :, dim] = torch.as_tensor(list(values), dtype=z.dtype)
    return decode_mean(model, z.flatten(0, 1)).view(len(z0), len(values), *IMAGE_SHAPE)


def tile_images(images: Tensor, ncols: int, pad: int = 2, fill: float = 1.0) -> Tensor:
    """Images (N, 1, H, W) as one (rows * (H + pad) + pad, ncols * (W + pad) + pad) array for a
    single ``imshow`` (much faster than one matplotlib axis per image), padded with ``fill``."""
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"images must have shape (N, 1, H, W), not {tuple(images.shape)}")
    if ncols < 1:
        raise ValueError(f"ncols must be at least 1, not {ncols}")
    n, _, h, w = images.shape
    rows = math.ceil(n / ncols)
    canvas = torch.full((rows * (h + pad) + pad, ncols * (w + pad) + pad), fill, dtype=torch.float32)
    for i, image in enumerate(images.detach().float().cpu()):
        r, c = divmod(i, ncols)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = image[0]
    return canvas
