"""Generative adversarial networks (lesson 6.3): the losses, the optimal discriminator, a DCGAN and
the ring of Gaussians on which GANs drop modes.

The equations are derived on ``chapters/generative/gan-derivation.md``:

* the value of the game, V(D, G) = E_p[log D(x)] + E_z[log(1 - D(G(z)))]           (eq-gand-value)
* the optimal discriminator, D*(x) = p(x) / (p(x) + q(x)) = sigmoid(log p - log q)  (eq-gand-dstar,
  eq-gand-dstar-logit)
* the generator's objective at D*, V(D*, q) = 2 JSD(p || q) - log 4                 (eq-gand-jsd)
* the losses from logits l, with -log sigmoid(l) = softplus(-l) and
  -log(1 - sigmoid(l)) = softplus(l)                     (eq-gand-softplus, eq-gand-d-loss, eq-gand-g-losses)
* their gradients: d/dl of the saturating loss log(1 - sigmoid(l)) is -sigmoid(l), of the
  non-saturating loss -log sigmoid(l) it is -(1 - sigmoid(l))                       (eq-gand-grads)
* a sample belongs to a mode of the ring when within 3 standard deviations of its centre, which
  holds for a fraction 1 - exp(-9/2) of that mode's own samples                     (eq-gand-3sigma)

The networks are the DCGAN recipe of Radford et al. (2016) at Fashion-MNIST's 28 x 28: a generator
of transposed convolutions with batch norm and ReLU ending in tanh (so it works in [-1, 1]), a
discriminator of strided convolutions with LeakyReLU, both initialised from N(0, 0.02). With labels
the pair is conditional: the generator reads a one-hot label beside the noise (Mirza & Osindero,
2014) and the discriminator adds a learned projection of the label onto its features (Miyato &
Koyama, 2018). At the chapter's public boundary images are float32 (N, 1, 28, 28) in [0, 1]:
:func:`train_gan` and :func:`sample_gan` convert.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..runtime import device as default_device
from ..sample_quality import frechet_distance, gaussian_stats
from .autoencoder import check_images  # the chapter's image convention, checked in one place

Tensor = torch.Tensor

# --- the losses, from logits (eq-gand-softplus) ----------------------------------------------------


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The discriminator's loss -V from logits: mean of -log D(x) over real plus mean of
    -log(1 - D(G(z))) over fake, written as softplus(-l) and softplus(l) (eq-gand-d-loss).

    ``real_logits`` and ``fake_logits`` are the discriminator's outputs before the sigmoid, any
    shapes (each averaged over its own elements). softplus never forms sigmoid(l), so a confident
    discriminator (:math:`|l|` in the hundreds) gives a finite loss where log(sigmoid(l)) would be -inf.
    """
    _check_logits(real_logits, "real_logits")
    _check_logits(fake_logits, "fake_logits")
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits: Tensor, non_saturating: bool = True) -> Tensor:
    """The generator's loss from the discriminator's logits on fakes (eq-gand-g-losses).

    ``non_saturating=True``: mean of -log D(G(z)) = softplus(-l), the loss GANs train with.
    ``non_saturating=False``: mean of log(1 - D(G(z))) = -softplus(l), the minimax game's own
    generator objective, whose gradient vanishes when the discriminator is confident (eq-gand-grads).
    """
    _check_logits(fake_logits, "fake_logits")
    if non_saturating:
        return F.softplus(-fake_logits).mean()
    return -F.softplus(fake_logits).mean()


def generator_loss_grad(fake_logits: Tensor, non_saturating: bool = True) -> Tensor:
    """d generator_loss / d fake_logits in closed form (eq-gand-grads), the 1/N of the mean included.

    Saturating: -sigmoid(l) / N, which goes to 0 as the discriminator rejects the fake (l -> -inf).
    Non-saturating: -(1 - sigmoid(l)) / N, which goes to -1/N there: the generator still learns.
    """
    _check_logits(fake_logits, "fake_logits")
    s = torch.sigmoid(fake_logits)
    return (-(1.0 - s) if non_saturating else -s) / fake_logits.numel()


def probability_form_losses(real_logits: Tensor, fake_logits: Tensor) -> dict[str, Tensor]:
    """The textbook losses written with probabilities D = sigmoid(l), for comparison only.

    Returns ``{"discriminator", "saturating", "non_saturating"}``. Mathematically equal to
    :func:`discriminator_loss` and :func:`generator_loss`; numerically, sigmoid(l) rounds to
    exactly 1 (or 0) at large :math:`|l|` (l > 17 in float32) and the log of 1 - 1 is -inf.
    """
    d_real, d_fake = torch.sigmoid(real_logits), torch.sigmoid(fake_logits)
    return {"discriminator": -(torch.log(d_real).mean() + torch.log(1 - d_fake).mean()),
            "saturating": torch.log(1 - d_fake).mean(),
            "non_saturating": -torch.log(d_fake).mean()}


def _check_logits(logits: Tensor, name: str) -> None:
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor of logits, got {type(logits).__name__}"
                         + (f" of {logits.dtype}" if isinstance(logits, Tensor) else ""))
    if logits.numel() == 0:
        raise ValueError(f"{name} is empty")


# --- the optimal discriminator on known densities (eq-gand-dstar, eq-gand-jsd) ---------------------


@dataclass(frozen=True)
class Mixture1D:
    """A 1-D Gaussian mixture with known density, in float64 NumPy: ``log_prob`` and ``sample``."""

    weights: tuple[float, ...]
    means: tuple[float, ...]
    stds: tuple[float, ...]

    def __post_init__(self) -> None:
        if not (len(self.weights) == len(self.means) == len(self.stds)) or not self.weights:
            raise ValueError("weights, means and stds need the same, non-zero length")
        if min(self.stds) <= 0 or min(self.weights) <= 0 or abs(sum(self.weights) - 1) > 1e-12:
            raise ValueError("stds and weights must be positive and the weights sum to 1")

    def log_prob(self, x: np.ndarray | float) -> np.ndarray:
        """log density at ``x`` (float64), by log-sum-exp over the components."""
        x = np.asarray(x, dtype=np.float64)[..., None]
        w, mu, sd = (np.asarray(v, dtype=np.float64) for v in (self.weights, self.means, self.stds))
        comp = np.log(w) - 0.5 * ((x - mu) / sd) ** 2 - np.log(sd) - 0.5 * math.log(2 * math.pi)
        top = comp.max(-1, keepdims=True)
        return (top + np.log(np.exp(comp - top).sum(-1, keepdims=True)))[..., 0]

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` float32 samples, shape (n, 1), drawn with the seeded torch ``generator``."""
        if n < 1:
            raise ValueError(f"n must be positive, not {n}")
        which = torch.multinomial(torch.tensor(self.weights, dtype=torch.float64), n, replacement=True,
                                  generator=generator)
        mu = torch.tensor(self.means, dtype=torch.float64)[which]
        sd = torch.tensor(self.stds, dtype=torch.float64)[which]
        return (mu + sd * torch.randn(n, generator=generator, dtype=torch.float64)).float()[:, None]


def optimal_discriminator_logit(log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """The optimal discriminator's logit, log p(x) - log q(x) (eq-gand-dstar): D* = sigmoid of it."""
    return np.asarray(log_p, dtype=np.float64) - np.asarray(log_q, dtype=np.float64)


def optimal_discriminator(log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """D*(x) = p / (p + q) (eq-gand-dstar), computed as sigmoid(log p - log q) so that it stays
    exact where both densities underflow."""
    logit = optimal_discriminator_logit(log_p, log_q)
    return np.exp(-np.logaddexp(0.0, -logit))


def gan_value(d_logit: Callable[[np.ndarray], np.ndarray], p: Mixture1D, q: Mixture1D,
              lo: float = -30.0, hi: float = 30.0) -> float:
    """V(D, q) = int p log D + q log(1 - D) dx (eq-gand-value) by adaptive quadrature, for a
    discriminator given by its logit function; log D = -softplus(-l), log(1 - D) = -softplus(l).

    ``scipy.integrate.quad`` with absolute and relative tolerances of 1e-13 on [lo, hi] (the
    densities must be negligible outside), split at the mixtures' means so that quad sees the peaks.
    """
    from scipy.integrate import quad

    def integrand(x: float) -> float:
        logit = float(d_logit(np.array([x]))[0])
        p_x, q_x = math.exp(float(p.log_prob(x))), math.exp(float(q.log_prob(x)))
        return -p_x * float(np.logaddexp(0.0, -logit)) - q_x * float(np.logaddexp(0.0, logit))

    points = sorted({m for m in (*p.means, *q.means) if lo < m < hi})
    value, _ = quad(integrand, lo, hi, points=points, epsabs=1e-13, epsrel=1e-13, limit=500)
    return float(value)


# --- networks --------------------------------------------------------------------------------------


def dcgan_init(module: nn.Module) -> None:
    """DCGAN's initialisation (Radford et al., 2016): conv weights N(0, 0.02), batch-norm scales
    N(1, 0.02) and shifts 0. Apply with ``model.apply(dcgan_init)``."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class DCGANGenerator(nn.Module):
    """Noise (B, latent_dim) -> images (B, 1, 28, 28) in [-1, 1]: 1 x 1 -> 7 x 7 -> 14 x 14 -> 28 x 28.

    Transposed convolutions with batch norm and ReLU, ``2 * width`` then ``width`` channels, and tanh
    at the output (no batch norm there: DCGAN's rule). With ``num_classes`` the one-hot label is
    concatenated to the noise.
    """

    def __init__(self, latent_dim: int = 64, width: int = 32, num_classes: int | None = None) -> None:
        super().__init__()
        if latent_dim < 1 or width < 1:
            raise ValueError(f"latent_dim and width must be positive, got {latent_dim} and {width}")
        self.latent_dim, self.num_classes = latent_dim, num_classes
        self.net = nn.Sequential(
            nn.ConvTranspose2d(latent_dim + (num_classes or 0), 2 * width, 7, 1, 0, bias=False),
            nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.ConvTranspose2d(width, 1, 4, 2, 1), nn.Tanh(),
        )

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        z = _with_labels(z, labels, self.num_classes)
        return self.net(z[:, :, None, None])


class DCGANDiscriminator(nn.Module):
    """Images (B, 1, 28, 28) in [-1, 1] -> logits (B,): strided 4 x 4 convolutions 28 -> 14 -> 7,
    LeakyReLU(0.2), batch norm on the second layer only (not on the input layer: DCGAN's rule), and
    a 7 x 7 convolution to one logit. With ``num_classes`` a learned class embedding is dotted with
    the 7 x 7 features and added to the logit (the projection discriminator)."""

    def __init__(self, width: int = 32, num_classes: int | None = None) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be positive, got {width}")
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * width), nn.LeakyReLU(0.2),
        )
        self.head = nn.Conv2d(2 * width, 1, 7)
        self.embed = nn.Embedding(num_classes, 2 * width * 49) if num_classes else None

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        h = self.features(x)
        logit = self.head(h).flatten()
        if self.embed is not None:
            if labels is None:
                raise ValueError("this discriminator is conditional: pass labels")
            logit = logit + (self.embed(labels) * h.flatten(1)).sum(1)
        elif labels is not None:
            raise ValueError("this discriminator is not conditional: labels must be None")
        return logit


class MLPDiscriminator(nn.Module):
    """Points (B, in_dim) -> logits (B,): ``layers`` hidden layers of ``hidden`` ELU units.

    The 1-D experiment's discriminator. ELU is smooth, like the log density ratio this network
    estimates (eq-gand-dstar-logit); on the lesson's densities (3 seeds, the same number of steps)
    its worst error against the lesson's tolerance was smaller than with LeakyReLU, whose logit
    is piecewise linear.
    """

    def __init__(self, in_dim: int = 1, hidden: int = 32, layers: int = 2) -> None:
        super().__init__()
        if min(in_dim, hidden, layers) < 1:
            raise ValueError("in_dim, hidden and layers must be positive")
        dims = [in_dim] + [hidden] * layers
        blocks: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            blocks += [nn.Linear(a, b), nn.ELU()]
        self.net = nn.Sequential(*blocks, nn.Linear(hidden, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


class EnsembleLinear(nn.Module):
    """``members`` independent linear layers applied at once: (S, B, in) -> (S, B, out) by one
    batched matrix product. Each member is initialised as ``nn.Linear`` would be."""

    def __init__(self, members: int, in_features: int, out_features: int) -> None:
        super().__init__()
        bound = 1 / math.sqrt(in_features)  # nn.Linear's default: U(-1/sqrt(in), 1/sqrt(in)) for both
        self.weight = nn.Parameter(torch.empty(members, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, out_features).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


def _ensemble_mlp(members: int, dims: Sequence[int], activation: Callable[[], nn.Module]) -> list[nn.Module]:
    blocks: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        blocks.append(EnsembleLinear(members, a, b))
        if i < len(dims) - 2:
            blocks.append(activation())
    return blocks


class RingGenerator(nn.Module):
    """``members`` independent MLP generators trained side by side: noise (B, members x latent_dim)
    -> points (B, members, out_dim). Member s reads its own slice of the noise, so the members are
    independent runs that share only the loop (and the clock)."""

    def __init__(self, members: int = 1, latent_dim: int = 2, hidden: int = 64, out_dim: int = 2,
                 layers: int = 2) -> None:
        super().__init__()
        if min(members, latent_dim, hidden, out_dim, layers) < 1:
            raise ValueError("members, latent_dim, hidden, out_dim and layers must be positive")
        self.members, self.member_latent = members, latent_dim
        self.latent_dim, self.num_classes = members * latent_dim, None
        self.net = nn.Sequential(*_ensemble_mlp(members, [latent_dim] + [hidden] * layers + [out_dim], nn.ReLU))

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if labels is not None:
            raise ValueError("the ring generator is not conditional: labels must be None")
        z = z.view(len(z), self.members, self.member_latent).transpose(0, 1)  # (S, B, latent)
        return self.net(z).transpose(0, 1)  # (B, S, out)


class RingDiscriminator(nn.Module):
    """``members`` independent MLP discriminators: points (B, members, in_dim) -> logits (B, members),
    with LeakyReLU(0.2) hidden layers."""

    def __init__(self, members: int = 1, in_dim: int = 2, hidden: int = 64, layers: int = 2) -> None:
        super().__init__()
        if min(members, in_dim, hidden, layers) < 1:
            raise ValueError("members, in_dim, hidden and layers must be positive")
        self.members, self.num_classes = members, None
        self.net = nn.Sequential(*_ensemble_mlp(members, [in_dim] + [hidden] * layers + [1], lambda: nn.LeakyReLU(0.2)))

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        if labels is not None:
            raise ValueError("the ring discriminator is not conditional: labels must be None")
        if x.dim() != 3 or x.shape[1] != self.members:
            raise ValueError(f"expected points (B, {self.members}, dim), got {tuple(x.shape)}")
        return self.net(x.transpose(0, 1)).squeeze(-1).transpose(0, 1)  # (B, S)


def _with_labels(z: Tensor, labels: Tensor | None, num_classes: int | None) -> Tensor:
    if num_classes:
        if labels is None:
            raise ValueError("this generator is conditional: pass labels")
        if labels.shape != (len(z),):
            raise ValueError(f"labels must have shape ({len(z)},), got {tuple(labels.shape)}")
        return torch.cat([z, F.one_hot(labels.long(), num_classes).to(z.dtype)], dim=1)
    if labels is not None:
        raise ValueError("this generator is not conditional: labels must be None")
    return z


class GAN(nn.Module):
    """A generator and its discriminator, with what training recorded.

    ``history`` holds the :class:`GANHistory` of the last :func:`adversarial_fit` (``None`` before).
    """

    def __init__(self, generator: nn.Module, discriminator: nn.Module) -> None:
        super().__init__()
        self.generator, self.discriminator = generator, discriminator
        self.history: GANHistory | None = None

    @property
    def latent_dim(self) -> int:
        return int(self.generator.latent_dim)

    @property
    def num_classes(self) -> int | None:
        return self.generator.num_classes


# --- the alternating loop --------------------------------------------------------------------------


@dataclass
class GANHistory:
    """Per generator step: the two losses and the discriminator's mean probability on real and on
    fake samples (the fake one from the discriminator step, before the generator moved); snapshots
    of the generator's output on fixed noise at chosen steps; training seconds (snapshots excluded)."""

    step: list[int] = field(default_factory=list)
    d_loss: list[float] = field(default_factory=list)
    g_loss: list[float] = field(default_factory=list)
    d_real: list[float] = field(default_factory=list)
    d_fake: list[float] = field(default_factory=list)
    snapshots: dict[int, Tensor] = field(default_factory=dict)
    seconds: float = 0.0


def latent_noise(n: int, latent_dim: int, generator: torch.Generator) -> Tensor:
    """Standard normal noise (n, latent_dim) drawn on the CPU with a seeded generator (the same on
    every device)."""
    return torch.randn(n, latent_dim, generator=generator)


def adversarial_fit(
    gan: GAN,
    real: Tensor,
    *,
    steps: int,
    batch_size: int = 64,
    lr_g: float = 2e-4,
    lr_d: float = 2e-4,
    betas: tuple[float, float] = (0.5, 0.999),
    d_steps: int = 1,
    non_saturating: bool = True,
    labels: Tensor | None = None,
    snapshot_steps: Sequence[int] = (),
    snapshot_noise: Tensor | None = None,
    snapshot_labels: Tensor | None = None,
    device: torch.device | None = None,
    seed: int = 0,
    progress: bool = False,
) -> GANHistory:
    """Train ``gan`` by alternating ``d_steps`` discriminator updates and one generator update.

    Why not :func:`dlbook.train.fit`: ``fit`` runs "one loss, backward, one optimiser step" on
    one model. A GAN has two models, two optimisers and two losses that pull in opposite
    directions; the discriminator's loss must see the fakes *detached* (its step must not move the
    generator), the generator's loss goes through the discriminator without updating it, and the
    two alternate with a ratio (``d_steps``) that is itself a hyper-parameter. Folding that into
    ``fit``'s step function would hide one of the two optimisers inside a closure; a loop of its
    own says what happens in which order.

    ``real``: the whole training set, (N, ...) in the generator's range (DCGAN: [-1, 1]); each
    discriminator step takes the next ``batch_size`` of a seeded shuffle (reshuffled each pass).
    ``labels``: (N,) class ids for a conditional pair (fakes get uniformly drawn labels).
    ``snapshot_steps``: generator steps after which ``generator(snapshot_noise)`` is stored in
    eval mode (step 0 = before training). Adam with ``betas`` for both, DCGAN's recipe by default.
    """
    if steps < 1 or batch_size < 1 or d_steps < 1:
        raise ValueError(f"steps, batch_size and d_steps must be positive, got {steps}, {batch_size}, {d_steps}")
    if len(real) < batch_size:
        raise ValueError(f"batch_size {batch_size} is larger than the {len(real)} training examples")
    if (labels is not None) != bool(gan.num_classes):
        raise ValueError("pass labels exactly when the GAN is conditional (num_classes set)")
    if labels is not None and labels.shape != (len(real),):
        raise ValueError(f"labels must have shape ({len(real)},), got {tuple(labels.shape)}")
    if snapshot_steps and snapshot_noise is None:
        raise ValueError("snapshot_steps need snapshot_noise")
    device = device or next(gan.parameters()).device
    gan.to(device).train()
    G, D = gan.generator, gan.discriminator
    # The fused Adam kernel (CPU and CUDA) is the same update in fewer launches: measured 15 % off
    # a step of the ring's small GANs, whose time is mostly per-operation overhead.
    fused = True if device.type in ("cpu", "cuda") else None
    opt_g = torch.optim.Adam(G.parameters(), lr=lr_g, betas=betas, fused=fused)
    opt_d = torch.optim.Adam(D.parameters(), lr=lr_d, betas=betas, fused=fused)
    rng = torch.Generator().manual_seed(seed)
    real = real.to(device)
    labels = labels.to(device) if labels is not None else None
    history = GANHistory()
    order, cursor = torch.randperm(len(real), generator=rng), 0

    def next_real() -> tuple[Tensor, Tensor | None]:
        nonlocal order, cursor
        if cursor + batch_size > len(order):  # a new pass: reshuffle (the tail of the old one is dropped)
            order, cursor = torch.randperm(len(real), generator=rng), 0
        idx = order[cursor:cursor + batch_size].to(device)
        cursor += batch_size
        return real[idx], (labels[idx] if labels is not None else None)

    def fake_labels() -> Tensor | None:
        if not gan.num_classes:
            return None
        return torch.randint(gan.num_classes, (batch_size,), generator=rng).to(device)

    def snapshot(step: int) -> None:
        if step in snapshot_steps:
            was = G.training
            G.eval()
            with torch.no_grad():
                y = snapshot_labels.to(device) if snapshot_labels is not None else None
                history.snapshots[step] = G(snapshot_noise.to(device), y).float().cpu()
            G.train(was)

    snapshot(0)
    elapsed = 0.0
    for step in tqdm(range(1, steps + 1), desc="GAN steps", disable=not progress):
        start = time.perf_counter()
        for _ in range(d_steps):
            x, y = next_real()
            y_fake = fake_labels()
            with torch.no_grad():  # the discriminator's step must not reach the generator
                fake = G(latent_noise(batch_size, gan.latent_dim, rng).to(device), y_fake)
            real_logits, fake_logits = D(x, y), D(fake, y_fake)
            d_loss = discriminator_loss(real_logits, fake_logits)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        y_fake = fake_labels()
        g_logits = D(G(latent_noise(batch_size, gan.latent_dim, rng).to(device), y_fake), y_fake)
        g_loss = generator_loss(g_logits, non_saturating)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()  # also fills D's gradients; opt_d.zero_grad clears them before D's next step
        opt_g.step()
        with torch.no_grad():
            history.step.append(step)
            history.d_loss.append(d_loss.item())
            history.g_loss.append(g_loss.item())
            history.d_real.append(torch.sigmoid(real_logits).mean().item())
            history.d_fake.append(torch.sigmoid(fake_logits).mean().item())
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed += time.perf_counter() - start
        snapshot(step)
    history.seconds = elapsed
    gan.history = history
    return history


def generator_gradient_norms(
    gan: GAN,
    real: Tensor,
    *,
    checkpoints: Sequence[int] = (0, 5, 20),
    batch_size: int = 64,
    lr: float = 2e-4,
    betas: tuple[float, float] = (0.5, 0.999),
    seed: int = 0,
) -> list[dict[str, float]]:
    """Train only the discriminator of ``gan`` against its untrained generator and, after each
    number of discriminator steps in ``checkpoints``, measure the generator's gradient under both
    losses (eq-gand-grads) on the same fixed batch of noise.

    Returns one row per checkpoint: ``d_steps``, ``d_fake`` (the mean D(G(z)) on that batch),
    ``sat`` and ``ns`` (the global L2 norms of d loss / d theta_G, saturating and non-saturating).
    ``real`` is in the generator's range. The generator's weights never change; its batch norm
    uses batch statistics (training mode), as during training.
    """
    if not checkpoints or sorted(checkpoints) != list(checkpoints) or checkpoints[0] < 0:
        raise ValueError(f"checkpoints must be non-negative and increasing, got {tuple(checkpoints)}")
    if gan.num_classes:
        raise ValueError("generator_gradient_norms measures an unconditional GAN")
    device = next(gan.parameters()).device
    G, D = gan.generator.train(), gan.discriminator.train()
    opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=betas)
    rng = torch.Generator().manual_seed(seed)
    z_fixed = latent_noise(batch_size, gan.latent_dim, rng).to(device)
    rows: list[dict[str, float]] = []
    done = 0
    for target in checkpoints:
        for _ in range(target - done):
            x = real[torch.randint(len(real), (batch_size,), generator=rng)].to(device)
            with torch.no_grad():
                fake = G(latent_noise(batch_size, gan.latent_dim, rng).to(device))
            loss = discriminator_loss(D(x), D(fake))
            opt_d.zero_grad(set_to_none=True)
            loss.backward()
            opt_d.step()
        done = target
        row: dict[str, float] = {"d_steps": float(target)}
        for name, non_saturating in (("sat", False), ("ns", True)):
            logits = D(G(z_fixed))
            grads = torch.autograd.grad(generator_loss(logits, non_saturating), list(G.parameters()))
            row[name] = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
        row["d_fake"] = float(torch.sigmoid(logits.detach()).mean())
        rows.append(row)
    return rows


# --- the chapter's trainer and sampler contract ----------------------------------------------------

DEFAULT_CONFIG: dict[str, Any] = {
    "steps": None,          # generator steps; None: epochs x (N // batch_size)
    "epochs": 1,            # passes over the training images, used when steps is None
    "batch_size": 64,
    "latent_dim": 64,
    "width": 32,            # channels of the last hidden layer of both networks (2 x width before it)
    "lr": 2e-4,             # Adam, both networks (DCGAN)
    "betas": (0.5, 0.999),  # Adam's betas (DCGAN: with the default beta1 = 0.9 training oscillated)
    "d_steps": 1,           # discriminator steps per generator step
    "non_saturating": True,
    "snapshot_steps": (),   # generator steps at which to store samples of fixed noise
    "snapshot_count": 16,   # how many fixed noise vectors
}


def gan_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``DEFAULT_CONFIG`` updated with ``config``; an unknown key raises ValueError (a typo would
    otherwise silently train with the default)."""
    unknown = set(config) - set(DEFAULT_CONFIG)
    if unknown:
        raise ValueError(f"unknown GAN config keys {sorted(unknown)}; known: {sorted(DEFAULT_CONFIG)}")
    return {**DEFAULT_CONFIG, **config}


def build_dcgan(latent_dim: int = 64, width: int = 32, num_classes: int | None = None) -> GAN:
    """A DCGAN pair for 28 x 28 images with DCGAN's initialisation (uses the global torch RNG)."""
    gan = GAN(DCGANGenerator(latent_dim, width, num_classes), DCGANDiscriminator(width, num_classes))
    gan.apply(dcgan_init)
    return gan


def train_gan(
    train_images: Tensor,
    config: Mapping[str, Any],
    *,
    labels: Tensor | None = None,
    device: torch.device | None = None,
    seed: int = 0,
    progress: bool = False,
) -> tuple[GAN, float]:
    """Train a DCGAN on ``train_images`` (float32 (N, 1, 28, 28) in [0, 1]); return the trained
    :class:`GAN` in eval mode and the training seconds.

    ``config`` keys, with their defaults in :data:`DEFAULT_CONFIG`: ``steps`` (generator steps;
    ``None`` means ``epochs`` passes of ``N // batch_size`` steps), ``epochs`` (1), ``batch_size``
    (64), ``latent_dim`` (64), ``width`` (32), ``lr`` (2e-4, both networks), ``betas``
    ((0.5, 0.999)), ``d_steps`` (1), ``non_saturating`` (True), ``snapshot_steps`` (()) and
    ``snapshot_count`` (16). With ``labels`` ((N,) class ids 0..9) the GAN is conditional and
    :func:`sample_gan` then takes labels too. The images are mapped to [-1, 1] for the tanh
    generator; the model's ``history`` holds the losses and snapshots (in [0, 1]). ``device``
    defaults to :func:`dlbook.runtime.device` (the best accelerator); ``seed`` fixes the initial
    weights, the batches and the noise; ``progress`` shows a tqdm bar over the steps.
    """
    check_images(train_images, "train_images")
    cfg = gan_config(config)
    num_classes = None
    if labels is not None:
        if labels.shape != (len(train_images),):
            raise ValueError(f"labels must have shape ({len(train_images)},), got {tuple(labels.shape)}")
        num_classes = 10
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError("labels must be class ids in 0..9")
    steps = cfg["steps"] if cfg["steps"] is not None else cfg["epochs"] * (len(train_images) // cfg["batch_size"])
    torch.manual_seed(seed)  # the initial weights
    gan = build_dcgan(cfg["latent_dim"], cfg["width"], num_classes)
    noise_rng = torch.Generator().manual_seed(seed + 1)
    snap_noise = latent_noise(cfg["snapshot_count"], cfg["latent_dim"], noise_rng)
    snap_labels = torch.arange(cfg["snapshot_count"]) % num_classes if num_classes else None
    device = device or default_device()
    history = adversarial_fit(
        gan, train_images * 2 - 1, steps=int(steps), batch_size=cfg["batch_size"], lr_g=cfg["lr"], lr_d=cfg["lr"],
        betas=tuple(cfg["betas"]), d_steps=cfg["d_steps"], non_saturating=cfg["non_saturating"], labels=labels,
        snapshot_steps=tuple(cfg["snapshot_steps"]), snapshot_noise=snap_noise, snapshot_labels=snap_labels,
        device=device, seed=seed, progress=progress)
    history.snapshots = {k: to_unit_interval(v) for k, v in history.snapshots.items()}
    return gan.eval(), history.seconds


def to_unit_interval(images: Tensor) -> Tensor:
    """[-1, 1] (tanh) -> [0, 1], clamped against rounding."""
    return ((images + 1) / 2).clamp_(0, 1)


@torch.no_grad()
def sample_gan(model: GAN, n: int, *, generator: torch.Generator, labels: Tensor | None = None) -> Tensor:
    """``n`` images from a trained GAN: float32 (n, 1, 28, 28) in [0, 1] on the CPU.

    The noise (and, for a conditional GAN called without ``labels``, uniformly drawn labels) come
    from the seeded CPU ``generator``, so the same seed gives the same images on every device. The
    generator runs in eval mode (batch norm with its running statistics).
    """
    if n < 1:
        raise ValueError(f"n must be positive, not {n}")
    if labels is not None and not model.num_classes:
        raise ValueError("this GAN is not conditional: labels must be None")
    if labels is not None and labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    z = latent_noise(n, model.latent_dim, generator)
    if model.num_classes and labels is None:
        labels = torch.randint(model.num_classes, (n,), generator=generator)
    device = next(model.parameters()).device
    G = model.generator
    was = G.training
    G.eval()
    images = G(z.to(device), labels.to(device) if labels is not None else None)
    G.train(was)
    return to_unit_interval(images.float().cpu())


def pixel_pca(images: Tensor, components: int = 16) -> tuple[Tensor, Tensor]:
    """The mean (D,) and the top ``components`` principal directions (components, D) of the
    flattened ``images``, in float64, from the eigenvectors of their covariance matrix."""
    flat = images.reshape(len(images), -1).double()
    if not 1 <= components <= flat.shape[1]:
        raise ValueError(f"components must be in 1..{flat.shape[1]}, got {components}")
    centre = flat.mean(0)
    centred = flat - centre
    _, vectors = torch.linalg.eigh(centred.T @ centred)  # eigenvalues ascending: the last are the top
    return centre, vectors[:, -components:].flip(1).T.contiguous()


def pca_frechet_distance(reference: Tensor, samples: Tensor, pca: tuple[Tensor, Tensor]) -> float:
    """The Frechet distance between Gaussians fitted to two image sets in the space of a
    :func:`pixel_pca` (float64):

        ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)),

    computed by lesson 6.5's :func:`dlbook.sample_quality.frechet_distance` (the chapter's one
    implementation of the equation). A cheap stand-in, in pixel space, for that lesson's
    feature-space distance: 0 for identical statistics, larger the more the means and covariances
    differ.
    """
    centre, directions = pca
    stats = []
    for images in (reference, samples):
        flat = images.reshape(len(images), -1).double()
        if flat.shape[1] != centre.numel():
            raise ValueError(f"images of {flat.shape[1]} pixels do not match the PCA's {centre.numel()}")
        stats.append(gaussian_stats((flat - centre) @ directions.T))
    return frechet_distance(*stats[0], *stats[1])


# --- the ring of Gaussians and mode counting -------------------------------------------------------


def ring_centres(modes: int = 8, radius: float = 2.0) -> Tensor:
    """The ``modes`` centres, evenly spaced on a circle of ``radius``: (modes, 2)."""
    if modes < 1 or radius <= 0:
        raise ValueError(f"modes and radius must be positive, got {modes} and {radius}")
    angle = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
    return (radius * torch.stack([angle.cos(), angle.sin()], dim=1)).float()


def sample_ring(n: int, *, modes: int = 8, radius: float = 2.0, std: float = 0.02,
                generator: torch.Generator) -> Tensor:
    """``n`` points (n, 2) from an equal mixture of Gaussians of standard deviation ``std`` on the
    ring (the benchmark of Metz et al., 2017 and Srivastava et al., 2017)."""
    if n < 1 or std <= 0:
        raise ValueError(f"n and std must be positive, got {n} and {std}")
    which = torch.randint(modes, (n,), generator=generator)
    return ring_centres(modes, radius)[which] + std * torch.randn(n, 2, generator=generator)


@dataclass(frozen=True)
class ModeCoverage:
    """``counts[k]``: samples within 3 std of centre k; ``modes_covered``: modes whose count
    reaches ``min_share`` of the fair share n / modes; ``high_quality``: the fraction of all samples
    within 3 std of some centre."""

    counts: tuple[int, ...]
    modes_covered: int
    high_quality: float
    min_share: float


def mode_coverage(samples: Tensor, centres: Tensor, std: float, min_share: float = 0.25) -> ModeCoverage:
    """Count, for each centre, the samples within 3 ``std`` of it, and the modes covered.

    A sample belongs to a mode when it lies within 3 std of its centre (99 % of a 2-D Gaussian's mass
    lies within 3.03 std); a mode is covered when it holds at least ``min_share`` of the
    ``len(samples) / modes`` samples a perfect generator would put there.
    """
    if samples.dim() != 2 or samples.shape[1] != centres.shape[1]:
        raise ValueError(f"samples must be (n, {centres.shape[1]}), got {tuple(samples.shape)}")
    if not 0 < min_share <= 1 or std <= 0:
        raise ValueError(f"need 0 < min_share <= 1 and std > 0, got {min_share} and {std}")
    dist = torch.cdist(samples.double(), centres.double())
    near, which = dist.min(dim=1)
    good = near <= 3 * std
    counts = torch.bincount(which[good], minlength=len(centres))
    fair = len(samples) / len(centres)
    return ModeCoverage(tuple(int(c) for c in counts), int((counts >= min_share * fair).sum()),
                        float(good.double().mean()), min_share)


def build_ring_gan(members: int = 1, latent_dim: int = 2, hidden: int = 64) -> GAN:
    """``members`` independent small MLP GANs for the ring, trained side by side by one
    :func:`adversarial_fit` (PyTorch's default initialisation from the global RNG). Their real
    data are (N, members, 2): each member its own sample of the ring.

    The losses average over the members, so each member's gradient is 1/members of what it would be
    alone; Adam's update does not depend on the gradient's scale (up to its epsilon), so each member
    trains as it would in a run of its own, for little more than the price of one run.
    """
    return GAN(RingGenerator(members, latent_dim, hidden, 2), RingDiscriminator(members, 2, hidden))
