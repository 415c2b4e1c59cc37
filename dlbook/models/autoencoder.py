"""Autoencoders on Fashion-MNIST (generative lesson 6.1, chapters/generative/autoencoders.ipynb).

An autoencoder maps an image $x$ to a code $z = f(x)$ of $k$ numbers and back, $\\hat x = g(z)$,
and is trained to make $\\hat x$ close to $x$ in squared error. This module holds

* :class:`PCA` / :func:`fit_pca`: the optimum of the *linear* autoencoder, from
  ``torch.linalg.svd`` (Eckart-Young, ``eq-gen-ae-eckart-young``; the value of the optimum is
  ``eq-gen-ae-optimum``);
* :class:`LinearAutoencoder` and :func:`train_linear_autoencoder`: $\\hat x = W_d W_e x$ on
  centred data, trained with :func:`dlbook.train.fit` (``eq-gen-ae-linear``);
* :func:`principal_angles`: the angles between two column spaces from scratch, QR then SVD
  (``eq-gen-ae-cosines`` for the cosines, ``eq-gen-ae-sines`` for the sines);
* :class:`MLPAutoencoder`: the nonlinear autoencoder, with the code Gaussian its sampler draws from;
* the corruptions: :func:`add_gaussian_noise` (denoising, ``eq-gen-ae-denoising``) and the masked
  autoencoder's :func:`random_patch_mask`, :func:`patchify`, :func:`mask_images` and
  :func:`masked_patch_loss` (``eq-gen-ae-masked``), with the :func:`fit` steps that use them;
* :func:`reconstruction_mse`, :func:`encode_images` and :func:`train_linear_probe` (codes as
  features for a logistic regression);
* the chapter's trainer/sampler contract: :func:`train_autoencoder` and
  :func:`sample_autoencoder`, which decodes draws from a Gaussian fitted to the training codes
  (``eq-gen-ae-code-gaussian``).

Images are float32 ``(N, 1, 28, 28)`` in ``[0, 1]`` at every public boundary.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..train import EarlyStopping, accuracy, evaluate, fit

Tensor = torch.Tensor
IMAGE_SHAPE = (1, 28, 28)
PIXELS = 28 * 28


def check_images(images: Tensor, name: str = "images") -> None:
    """Raise ``ValueError`` unless ``images`` is a float ``(N, 1, 28, 28)`` tensor in ``[0, 1]``."""
    if not isinstance(images, Tensor) or not images.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor")
    if images.dim() != 4 or tuple(images.shape[1:]) != IMAGE_SHAPE or len(images) == 0:
        raise ValueError(f"{name} must have shape (N, 1, 28, 28) with N >= 1, not {tuple(images.shape)}")
    if images.min() < 0 or images.max() > 1:
        raise ValueError(f"{name} must lie in [0, 1] (load_fashion_mnist(normalize=False) gives such pixels)")


# --- PCA: the linear autoencoder's optimum --------------------------------------------------------


@dataclass
class PCA:
    """Principal components of a set of images: ``mean`` (d,), ``components`` (d, k) with orthonormal
    columns (the top-k right singular vectors of the centred data) and the singular values of the
    centred data, all of them (eq-gen-ae-eckart-young)."""

    mean: Tensor
    components: Tensor
    singular_values: Tensor

    @property
    def k(self) -> int:
        return self.components.shape[1]

    def encode(self, images: Tensor) -> Tensor:
        """Codes ``(N, k)``: the centred, flattened images projected on the components."""
        return (images.reshape(len(images), -1) - self.mean) @ self.components

    def decode(self, codes: Tensor, clip: bool = False) -> Tensor:
        """Images ``(N, 1, 28, 28)`` from codes; ``clip=True`` clips to the pixel range [0, 1]."""
        flat = codes @ self.components.T + self.mean
        out = flat.reshape(len(codes), *IMAGE_SHAPE)
        return out.clamp(0, 1) if clip else out

    def reconstruct(self, images: Tensor, clip: bool = False) -> Tensor:
        """The orthogonal projection of each image on the principal subspace (plus the mean)."""
        return self.decode(self.encode(images), clip=clip)

    def truncate(self, k: int) -> PCA:
        """The same PCA keeping the first ``k`` components."""
        if not 1 <= k <= self.k:
            raise ValueError(f"k must be in 1..{self.k}, not {k}")
        return PCA(self.mean, self.components[:, :k], self.singular_values)


def fit_pca(images: Tensor, k: int) -> PCA:
    """PCA with ``k`` components of ``images`` (any shape ``(N, ...)``), via ``torch.linalg.svd``
    of the centred data matrix ``X = U S V^T``: the components are the first ``k`` columns of V."""
    flat = images.reshape(len(images), -1)
    if not 1 <= k <= min(flat.shape):
        raise ValueError(f"k must be in 1..{min(flat.shape)} for data of shape {tuple(flat.shape)}, not {k}")
    mean = flat.mean(0)
    _, s, vh = torch.linalg.svd(flat - mean, full_matrices=False)
    return PCA(mean, vh[:k].T.contiguous(), s)


def pca_optimum(singular_values: Tensor, k: int, n_values: int) -> float:
    """The least squared error per entry a rank-``k`` reconstruction can reach,
    ``sum_{i > k} s_i^2 / n_values`` (eq-gen-ae-optimum), for a data matrix of ``n_values`` entries."""
    if not 0 <= k <= len(singular_values):
        raise ValueError(f"k must be in 0..{len(singular_values)}, not {k}")
    return float((singular_values[k:].double() ** 2).sum() / n_values)


# --- the linear autoencoder ------------------------------------------------------------------------


class LinearAutoencoder(nn.Module):
    """$\\hat x = W_d W_e x$ without biases, for centred data (eq-gen-ae-linear).

    ``encoder.weight`` is $W_e$ (k, d) and ``decoder.weight`` is $W_d$ (d, k): the columns of
    $W_d$ span the subspace the reconstructions live in. ``init="orthogonal"`` starts both from
    random orthonormal matrices (Saxe et al. 2014): with PyTorch's default uniform initialisation
    the product $W_d W_e$ starts tiny, near the saddle point at zero, and Adam needs many more
    epochs to leave it. Measured on 5,000 Fashion-MNIST images with k = 8, lr 1e-2 and the
    one-cycle schedule of :func:`train_linear_autoencoder`: after 20 epochs the largest principal
    angle to the PCA subspace was 14.4 degrees from the default start and 1.2 from an orthogonal one.
    """

    def __init__(self, d: int, k: int, init: str = "orthogonal") -> None:
        super().__init__()
        if not 1 <= k <= d:
            raise ValueError(f"need 1 <= k <= d, got k={k}, d={d}")
        if init not in ("orthogonal", "default"):
            raise ValueError(f"init must be 'orthogonal' or 'default', not {init!r}")
        self.encoder = nn.Linear(d, k, bias=False)
        self.decoder = nn.Linear(k, d, bias=False)
        if init == "orthogonal":
            nn.init.orthogonal_(self.encoder.weight)
            nn.init.orthogonal_(self.decoder.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


def train_linear_autoencoder(
    centred: Tensor, k: int, *, epochs: int = 10, lr: float = 1e-2, batch_size: int = 128, seed: int = 0,
    init: str = "orthogonal", device: torch.device | None = None, progress: bool = False,
) -> tuple[LinearAutoencoder, Any]:
    """Train a :class:`LinearAutoencoder` on centred rows ``(N, d)`` with squared error and Adam,
    the learning rate following a one-cycle schedule (warm up, then anneal to ~0, so the last
    steps settle instead of jittering around the optimum). Returns ``(model, history)``."""
    if centred.dim() != 2:
        raise ValueError(f"centred must be a matrix (N, d), not shape {tuple(centred.shape)}")
    if centred.mean(0).abs().max() > 1e-3 * max(centred.abs().max().item(), 1e-12):
        raise ValueError("the rows must be centred (subtract the training mean): eq-gen-ae-linear has no bias")
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, not {epochs}")
    torch.manual_seed(seed)
    model = LinearAutoencoder(centred.shape[1], k, init=init)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * math.ceil(len(centred) / batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.3)
    history = fit(model, (centred, centred), optimizer=optimizer, epochs=epochs, loss_fn=F.mse_loss,
                  batch_size=batch_size, scheduler=scheduler, scheduler_step="batch", seed=seed,
                  device=device, progress=progress)
    return model.cpu().eval(), history


# --- principal angles ------------------------------------------------------------------------------


def orthonormal_basis(a: Tensor, rtol: float = 1e-10) -> Tensor:
    """An orthonormal basis ``(d, k)`` of the column space of ``a`` ``(d, k)``, from its reduced QR
    factorisation. Raises ``ValueError`` when the columns are (numerically) linearly dependent."""
    if a.dim() != 2 or a.shape[1] == 0 or a.shape[1] > a.shape[0]:
        raise ValueError(f"need a (d, k) matrix with 1 <= k <= d, not shape {tuple(a.shape)}")
    q, r = torch.linalg.qr(a, mode="reduced")
    diag = r.diagonal().abs()
    if diag.min() <= rtol * diag.max():
        raise ValueError("the columns are linearly dependent: they span fewer than k dimensions")
    return q


def principal_angles(a: Tensor, b: Tensor) -> Tensor:
    """The principal angles (radians, largest first, as ``scipy.linalg.subspace_angles``) between
    the column spaces of ``a`` (d, k_a) and ``b`` (d, k_b); there are ``min(k_a, k_b)`` of them.

    With orthonormal bases $Q_A$, $Q_B$ the cosines are the singular values of $Q_A^\\top Q_B$
    (eq-gen-ae-cosines) and the sines those of $Q_B - Q_A Q_A^\\top Q_B$ (eq-gen-ae-sines). An
    angle below 45 degrees is taken from its sine: $\\arccos$ is ill-conditioned near 1 (a cosine
    off by $10^{-16}$ moves a tiny angle by $10^{-8}$), $\\arcsin$ is not near 0. (SciPy picks the
    formula from the cosines listed in the opposite order to its angles, so where small and large
    angles mix it takes some small ones from their cosines; the values agree to about $10^{-10}$.)
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"a and b must be matrices with the same number of rows, not {tuple(a.shape)}, {tuple(b.shape)}")
    qa, qb = orthonormal_basis(a), orthonormal_basis(b)
    if qa.shape[1] < qb.shape[1]:
        qa, qb = qb, qa  # the residual below is of the smaller basis against the larger space
    cross = qa.T @ qb
    cosines = torch.linalg.svdvals(cross)  # descending: smallest angle first
    sines = torch.linalg.svdvals(qb - qa @ cross)  # descending: largest angle first
    from_cos = torch.arccos(cosines.flip(0).clamp(-1, 1))  # largest angle first
    from_sin = torch.arcsin(sines.clamp(-1, 1))
    return torch.where(sines**2 < 0.5, from_sin, from_cos)


# --- the nonlinear autoencoder ---------------------------------------------------------------------


class MLPAutoencoder(nn.Module):
    """Encoder 784 -> ``hidden`` -> ``code_size`` (ReLU between), decoder ``code_size`` -> ``hidden``
    -> 784 with a sigmoid, so reconstructions are pixels in [0, 1].

    The buffers ``code_mean`` (k,) and ``code_cov`` (k, k) hold the Gaussian fitted to the
    training codes (eq-gen-ae-code-gaussian, :func:`fit_code_gaussian`); ``class_mean`` (C, k) and
    ``class_cov`` (C, k, k) one per class when labels were given; ``code_count`` is how many codes
    the Gaussian was fitted to (0: not fitted, the model cannot sample).
    """

    def __init__(self, code_size: int = 16, hidden: int = 256) -> None:
        super().__init__()
        if code_size < 1 or hidden < 1:
            raise ValueError(f"code_size and hidden must be positive, got {code_size}, {hidden}")
        self.code_size, self.hidden = code_size, hidden
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(PIXELS, hidden), nn.ReLU(), nn.Linear(hidden, code_size))
        self.decoder = nn.Sequential(nn.Linear(code_size, hidden), nn.ReLU(), nn.Linear(hidden, PIXELS), nn.Sigmoid(),
                                     nn.Unflatten(1, IMAGE_SHAPE))
        self.register_buffer("code_mean", torch.zeros(code_size))
        self.register_buffer("code_cov", torch.eye(code_size))
        self.register_buffer("code_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("class_mean", None)
        self.register_buffer("class_cov", None)

    def encode(self, images: Tensor) -> Tensor:
        return self.encoder(images)

    def decode(self, codes: Tensor) -> Tensor:
        return self.decoder(codes)

    def forward(self, images: Tensor) -> Tensor:
        return self.decode(self.encode(images))


@torch.no_grad()
def encode_images(model: nn.Module, images: Tensor, batch_size: int = 2048) -> Tensor:
    """The codes ``(N, k)`` of ``images`` on the CPU (the model in eval mode, no gradients)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    codes = torch.cat([model.encode(images[i : i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)])
    model.train(was_training)
    return codes


@torch.no_grad()
def reconstruction_mse(reconstruct: Callable[[Tensor], Tensor], images: Tensor, target: Tensor | None = None,
                       batch_size: int = 2048) -> float:
    """Mean squared error per pixel of ``reconstruct(images)`` against ``target`` (default: the images
    themselves), in batches, accumulated by ``torchmetrics.MeanSquaredError``."""
    from torchmetrics import MeanSquaredError  # here: torchmetrics costs a second at import

    target = images if target is None else target
    if target.shape != images.shape:
        raise ValueError(f"target shape {tuple(target.shape)} differs from images {tuple(images.shape)}")
    metric = MeanSquaredError()
    for i in range(0, len(images), batch_size):
        out = reconstruct(images[i : i + batch_size])
        metric.update(out.detach().float().cpu().reshape(-1), target[i : i + batch_size].float().reshape(-1))
    return float(metric.compute())


def model_reconstruct(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """``images -> model(images)`` on the model's device, in eval mode (for :func:`reconstruction_mse`)."""
    device = next(model.parameters()).device
    model.eval()
    return lambda x: model(x.to(device))


# --- corruptions: denoising and masking ------------------------------------------------------------


def add_gaussian_noise(images: Tensor, std: float, generator: torch.Generator | None = None) -> Tensor:
    """$\\tilde x = x + \\sigma \\varepsilon$, $\\varepsilon \\sim N(0, I)$ (eq-gen-ae-denoising).

    The noise is drawn on the CPU from ``generator`` (identical on every device) and not clipped:
    the encoder sees pixels outside [0, 1], the target stays the clean image."""
    if std < 0:
        raise ValueError(f"std must be non-negative, not {std}")
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype)
    return images + std * noise.to(images.device)


def random_patch_mask(n: int, grid: int, ratio: float, generator: torch.Generator | None = None) -> Tensor:
    """A boolean mask ``(n, grid * grid)``, True where a patch is masked: exactly
    ``round(ratio * grid**2)`` patches of each image, chosen uniformly at random (the ranks of
    uniform noise, as in He et al. 2022)."""
    patches = grid * grid
    n_masked = round(ratio * patches)
    if not 0 < n_masked < patches:
        raise ValueError(f"ratio {ratio} masks {n_masked} of {patches} patches; need at least one masked and one visible")
    if n < 1:
        raise ValueError(f"n must be positive, not {n}")
    noise = torch.rand(n, patches, generator=generator)
    rank = noise.argsort(dim=1).argsort(dim=1)  # each patch's rank among its image's patches
    return rank < n_masked


def _grid(images: Tensor, patch: int) -> int:
    if images.dim() != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"need square images (N, C, H, H), not {tuple(images.shape)}")
    if patch < 1 or images.shape[-1] % patch:
        raise ValueError(f"patch {patch} does not divide the image side {images.shape[-1]}")
    return images.shape[-1] // patch


def patchify(images: Tensor, patch: int) -> Tensor:
    """``(N, C, H, H)`` -> ``(N, P, C * patch * patch)`` with ``P = (H / patch)^2`` patches in row-major
    order: a reshape and a permute, no copy of any pixel into two patches."""
    g = _grid(images, patch)
    n, c = images.shape[:2]
    return images.reshape(n, c, g, patch, g, patch).permute(0, 2, 4, 1, 3, 5).reshape(n, g * g, c * patch * patch)


def unpatchify(patches: Tensor, patch: int, channels: int = 1) -> Tensor:
    """The inverse of :func:`patchify`: ``(N, P, C * patch * patch)`` -> ``(N, C, H, H)``."""
    n, p, _ = patches.shape
    g = math.isqrt(p)
    if g * g != p or patches.shape[2] != channels * patch * patch:
        raise ValueError(f"cannot unpatchify shape {tuple(patches.shape)} with patch {patch} and {channels} channel(s)")
    return patches.reshape(n, g, g, channels, patch, patch).permute(0, 3, 1, 4, 2, 5).reshape(n, channels, g * patch, g * patch)


def pixel_mask(patch_mask: Tensor, patch: int, channels: int = 1) -> Tensor:
    """The patch mask ``(N, P)`` spread over the pixels: a float ``(N, C, H, H)`` of 1 (masked) and 0."""
    n, p = patch_mask.shape
    spread = patch_mask[:, :, None].float().expand(n, p, channels * patch * patch)
    return unpatchify(spread, patch, channels)


def mask_images(images: Tensor, patch_mask: Tensor, patch: int, fill: float = 0.0) -> Tensor:
    """The encoder's input: the masked patches replaced by ``fill`` (0, black, the background)."""
    g = _grid(images, patch)
    if patch_mask.shape != (len(images), g * g):
        raise ValueError(f"patch_mask must have shape {(len(images), g * g)}, not {tuple(patch_mask.shape)}")
    m = pixel_mask(patch_mask.to(images.device), patch, images.shape[1]).to(images.dtype)
    return images * (1 - m) + fill * m


def masked_patch_loss(output: Tensor, target: Tensor, patch_mask: Tensor, patch: int) -> Tensor:
    """Mean squared error over the pixels of the masked patches only (eq-gen-ae-masked).

    Each patch's error is the mean over its pixels; the loss averages the masked patches' errors,
    which equals the mean over masked pixels because all patches have the same size. Visible
    patches contribute nothing, so the gradient at their outputs is exactly zero.
    """
    if output.shape != target.shape:
        raise ValueError(f"output {tuple(output.shape)} and target {tuple(target.shape)} differ")
    per_patch = ((patchify(output, patch) - patchify(target, patch)) ** 2).mean(dim=2)  # (N, P)
    weights = patch_mask.to(per_patch.dtype)
    if weights.shape != per_patch.shape:
        raise ValueError(f"patch_mask must have shape {tuple(per_patch.shape)}, not {tuple(weights.shape)}")
    if weights.sum() == 0:
        raise ValueError("no patch is masked: the masked loss is undefined")
    return (per_patch * weights).sum() / weights.sum()


class DenoisingStep:
    """A :func:`fit` step for batches ``(x,)``: the model reads $x + \\sigma\\varepsilon$ and is scored
    against the clean $x$ (eq-gen-ae-denoising); fresh noise every batch from ``generator``."""

    def __init__(self, std: float, generator: torch.Generator) -> None:
        self.std, self.generator = std, generator

    def __call__(self, model: nn.Module, batch: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        x = batch[0]
        return model(add_gaussian_noise(x, self.std, self.generator)), x


class MaskedStep:
    """A :func:`fit` step for batches ``(x,)`` returning the ready masked loss (eq-gen-ae-masked): a
    fresh random patch mask per image, the masked image in, the loss on the masked patches only."""

    def __init__(self, patch: int, ratio: float, generator: torch.Generator) -> None:
        self.patch, self.ratio, self.generator = patch, ratio, generator

    def __call__(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        x = batch[0]
        grid = _grid(x, self.patch)
        mask = random_patch_mask(len(x), grid, self.ratio, self.generator).to(x.device)
        return masked_patch_loss(model(mask_images(x, mask, self.patch)), x, mask, self.patch)


def plain_step(model: nn.Module, batch: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
    """The plain autoencoder's :func:`fit` step for batches ``(x,)``: ``(model(x), x)``."""
    x = batch[0]
    return model(x), x


# --- the code Gaussian, the trainer and the sampler ------------------------------------------------


def _gaussian(codes: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and full (maximum-likelihood) covariance of the rows of ``codes``, in float64."""
    c = codes.double()
    mean = c.mean(0)
    centred = c - mean
    return mean, centred.T @ centred / len(c)


@torch.no_grad()
def fit_code_gaussian(model: MLPAutoencoder, images: Tensor, labels: Tensor | None = None) -> MLPAutoencoder:
    """Fit $N(\\mu, \\Sigma)$ to the codes of ``images`` (eq-gen-ae-code-gaussian) and store it in
    the model's buffers; with ``labels`` also one Gaussian per class, for conditional sampling."""
    codes = encode_images(model, images)
    mean, cov = _gaussian(codes)
    device = model.code_mean.device
    model.code_mean = mean.float().to(device)
    model.code_cov = cov.float().to(device)
    model.code_count = torch.tensor(len(codes), device=device)
    if labels is not None:
        if labels.shape != (len(images),):
            raise ValueError(f"labels must have shape ({len(images)},), not {tuple(labels.shape)}")
        classes = int(labels.max()) + 1
        stats = []
        for c in range(classes):
            members = codes[labels.cpu() == c]
            if len(members) < 2:
                raise ValueError(f"class {c} has {len(members)} training images; need at least 2 for a covariance")
            stats.append(_gaussian(members))
        model.class_mean = torch.stack([m for m, _ in stats]).float().to(device)
        model.class_cov = torch.stack([s for _, s in stats]).float().to(device)
    return model


AUTOENCODER_DEFAULTS: dict[str, Any] = {
    "code_size": 16, "hidden": 256, "epochs": 3, "batch_size": 128, "lr": 3e-3,
    "corruption": "none", "noise_std": 0.3, "patch": 7, "mask_ratio": 0.5,
}


def train_autoencoder(
    train_images: Tensor,
    config: Mapping[str, Any],
    *,
    labels: Tensor | None = None,
    device: torch.device | None = None,
    seed: int = 0,
    progress: bool = False,
) -> tuple[nn.Module, float]:
    """Train an :class:`MLPAutoencoder` with :func:`dlbook.train.fit` and fit its code Gaussian.

    ``config`` keys (defaults in brackets): ``code_size`` [16], ``hidden`` [256], ``epochs`` [3],
    ``batch_size`` [128], ``lr`` [3e-3] (Adam, one-cycle schedule), ``corruption`` ["none"]:
    ``"none"`` (plain squared error), ``"gaussian"`` (denoising: input noise of std ``noise_std``
    [0.3], clean target) or ``"mask"`` (masked autoencoder: ``patch`` [7] x ``patch`` patches, a
    fraction ``mask_ratio`` [0.5] masked, loss on the masked patches only). With ``labels`` the
    sampler can also draw per class. Returns the model in eval mode and the training seconds
    (the optimisation and the Gaussian fit).
    """
    check_images(train_images, "train_images")
    unknown = set(config) - set(AUTOENCODER_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}; known: {sorted(AUTOENCODER_DEFAULTS)}")
    cfg = {**AUTOENCODER_DEFAULTS, **config}
    if cfg["corruption"] not in ("none", "gaussian", "mask"):
        raise ValueError(f"corruption must be 'none', 'gaussian' or 'mask', not {cfg['corruption']!r}")
    if cfg["epochs"] < 1 or cfg["batch_size"] < 1 or cfg["lr"] <= 0:
        raise ValueError(f"epochs, batch_size and lr must be positive: {cfg['epochs']}, {cfg['batch_size']}, {cfg['lr']}")
    if labels is not None and labels.shape != (len(train_images),):
        raise ValueError(f"labels must have shape ({len(train_images)},), not {tuple(labels.shape)}")
    generator = torch.Generator().manual_seed(seed + 1)  # the corruption's draws, apart from fit's shuffling
    if cfg["corruption"] == "gaussian":
        step: Callable[..., Any] = DenoisingStep(cfg["noise_std"], generator)
    elif cfg["corruption"] == "mask":
        random_patch_mask(1, _grid(train_images[:1], cfg["patch"]), cfg["mask_ratio"])  # checks patch and ratio
        step = MaskedStep(cfg["patch"], cfg["mask_ratio"], generator)
    else:
        step = plain_step
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = MLPAutoencoder(cfg["code_size"], cfg["hidden"])
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    steps = cfg["epochs"] * math.ceil(len(train_images) / cfg["batch_size"])
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg["lr"], total_steps=steps, pct_start=0.2)
    fit(model, (train_images,), optimizer=optimizer, epochs=cfg["epochs"], loss_fn=F.mse_loss, step=step,
        batch_size=cfg["batch_size"], scheduler=scheduler, scheduler_step="batch", device=device, seed=seed,
        progress=progress)
    fit_code_gaussian(model, train_images, labels)
    seconds = time.perf_counter() - start
    return model.eval(), seconds


@torch.no_grad()
def sample_autoencoder(model: nn.Module, n: int, *, generator: torch.Generator, labels: Tensor | None = None) -> Tensor:
    """``n`` images ``(n, 1, 28, 28)`` float32 in [0, 1] on the CPU: codes drawn from the Gaussian
    fitted to the training codes, $z = \\mu + L\\varepsilon$ with $LL^\\top = \\Sigma$ (Cholesky), decoded.

    With ``labels`` (n,), image i is drawn from its class's Gaussian (the model must have been
    trained with labels). The draws come from ``generator`` on the CPU, so a seed reproduces them.
    """
    if n < 1:
        raise ValueError(f"n must be positive, not {n}")
    if int(getattr(model, "code_count", 0)) == 0:
        raise ValueError("the model has no code Gaussian: train it with train_autoencoder (or call fit_code_gaussian)")
    k = model.code_mean.shape[0]
    if labels is None:
        mean, cov = model.code_mean.cpu().double()[None], model.code_cov.cpu().double()[None]
        index = torch.zeros(n, dtype=torch.long)
    else:
        if model.class_mean is None:
            raise ValueError("this model was trained without labels: it has no per-class Gaussians")
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), not {tuple(labels.shape)}")
        index = labels.cpu().long()
        if index.min() < 0 or index.max() >= len(model.class_mean):
            raise ValueError(f"labels must lie in 0..{len(model.class_mean) - 1}")
        mean, cov = model.class_mean.cpu().double(), model.class_cov.cpu().double()
    # a small jitter keeps the Cholesky factor defined when a code direction is (nearly) constant
    jitter = 1e-6 * cov.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
    chol = torch.linalg.cholesky(cov + jitter[:, None, None] * torch.eye(k, dtype=cov.dtype))
    eps = torch.randn(n, k, generator=generator, dtype=torch.float64)
    codes = torch.empty(n, k, dtype=torch.float64)
    for c in index.unique().tolist():  # one matrix product per Gaussian, not a (n, k, k) stack
        rows = index == c
        codes[rows] = mean[c] + eps[rows] @ chol[c].T
    was_training = model.training
    model.eval()
    device = model.code_mean.device
    images = model.decode(codes.float().to(device)).float().cpu().clamp(0, 1)
    model.train(was_training)
    return images


# --- codes as features: the linear probe -----------------------------------------------------------


class LinearProbe(nn.Module):
    """Logistic regression on fixed features: standardise with the training features' mean and
    std (buffers, not trained), then one linear layer to the class logits."""

    def __init__(self, mean: Tensor, std: Tensor, classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone().clamp_min(1e-6))
        self.linear = nn.Linear(len(mean), classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear((features - self.mean) / self.std)


def train_linear_probe(
    train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor], *, lrs: tuple[float, ...] = (1e-2, 1e-1),
    epochs: int = 10, batch_size: int = 512, patience: int = 3, classes: int = 10, seed: int = 0,
    device: torch.device | None = None,
) -> tuple[LinearProbe, dict[str, float]]:
    """A logistic regression on ``train = (features (N, k), labels (N,))`` with :func:`fit` (Adam),
    one run per learning rate in ``lrs``, each stopped early on validation accuracy with its best
    epoch kept; the run with the best validation accuracy wins. Returns the probe and
    ``{"lr", "epoch", "val_acc"}`` of the chosen run. The test set plays no part."""
    (x, y), (vx, vy) = train, val
    if x.dim() != 2 or vx.dim() != 2 or x.shape[1] != vx.shape[1]:
        raise ValueError(f"features must be matrices with the same width, not {tuple(x.shape)}, {tuple(vx.shape)}")
    if len(x) != len(y) or len(vx) != len(vy):
        raise ValueError("features and labels differ in length")
    if not lrs:
        raise ValueError("lrs must name at least one learning rate")
    mean, std = x.mean(0), x.std(0)
    best: tuple[float, LinearProbe, dict[str, float]] | None = None
    for lr in lrs:
        torch.manual_seed(seed)
        probe = LinearProbe(mean, std, classes)
        stopper = EarlyStopping(monitor="val_acc", mode="max", patience=patience)
        fit(probe, (x, y), val_data=(vx, vy), optimizer=torch.optim.Adam(probe.parameters(), lr=lr), epochs=epochs,
            metrics=accuracy(classes), batch_size=batch_size, callbacks=[stopper], device=device, seed=seed,
            progress=False)
        if best is None or stopper.best > best[0]:
            best = (stopper.best, probe, {"lr": lr, "epoch": float(stopper.best_epoch or 0), "val_acc": stopper.best})
    assert best is not None
    return best[1].eval(), best[2]


def probe_accuracy(probe: LinearProbe, features: Tensor, labels: Tensor, classes: int = 10) -> float:
    """Accuracy of a trained probe on ``(features, labels)`` (the test set, once)."""
    return evaluate(probe, (features, labels), metrics=accuracy(classes),
                    device=next(probe.parameters()).device)["acc"]
