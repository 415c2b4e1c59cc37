"""Adapting a pretrained network to a new task: the tools of ``chapters/cnn/transfer-learning.ipynb``.

One job: take a network trained on one task and make it useful for another.

* :func:`freeze` / :func:`count_trainable`: which parameters the optimizer may change.
* :class:`FrozenBatchNorm`: a wrapper whose ``train()`` keeps chosen BatchNorm layers in eval
  mode, because :func:`dlbook.train.fit` calls ``model.train()`` every epoch and would otherwise
  switch a frozen layer's statistics back to batch statistics.
* :func:`discriminative_param_groups`: optimizer parameter groups whose learning rate shrinks by
  a constant factor per block from the head down (Howard & Ruder 2018, "discriminative
  fine-tuning"); :func:`sgd_step_by_hand` is the update written out, for the proof.
* :func:`extract_features` and :func:`softmax_regression_grad`: the linear probe is multinomial
  logistic regression on frozen features (eq-transfer-probe-grad).
* :func:`fold_batchnorm`: BatchNorm with frozen statistics is an affine map that folds into the
  convolution before it (eq-transfer-bn-fold).
* :func:`labelled_subset` and :func:`stratified_parts`: ``k`` labelled examples per class, seeded,
  for learning curves, drawn from a pool disjoint from the validation and test parts.
* :func:`cached_state`: pretrain once, then load the weights from the course cache.
* :func:`load_resnet18` and :func:`gray_conv_from_rgb`: torchvision's ImageNet ResNet-18 from a
  local file (hash-checked, never downloaded unless asked), adapted to one-channel input.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .data.download import cache_dir

Tensor = torch.Tensor

# --- freezing ------------------------------------------------------------------------------------


def freeze(module: nn.Module, frozen: bool = True) -> int:
    """Set ``requires_grad = not frozen`` on every parameter of ``module``; return how many values.

    A frozen parameter gets no gradient, so the optimizer leaves it unchanged (and backward skips
    the work of computing its gradient).
    """
    n = 0
    for p in module.parameters():
        p.requires_grad_(not frozen)
        n += p.numel()
    return n


def count_trainable(module: nn.Module) -> int:
    """Number of parameter values the optimizer can change (``requires_grad`` is set)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _is_frozen(module: nn.Module) -> bool:
    params = list(module.parameters())
    return bool(params) and not any(p.requires_grad for p in params)


class FrozenBatchNorm(nn.Module):
    """Wrap ``model`` so that ``train()`` leaves BatchNorm layers in eval mode where they are frozen.

    A BatchNorm layer in training mode normalises with the *batch's* statistics and updates its
    running averages, even when its parameters have ``requires_grad=False``. That silently changes
    a "frozen" layer. This wrapper keeps in eval mode (fixed running statistics):

    * every BatchNorm layer whose parameters are all frozen, always;
    * with ``all_bn=True``, every BatchNorm layer (statistics frozen, scale and shift still trained).

    The forward pass is ``model``'s; ``self.model`` is the wrapped network.
    """

    def __init__(self, model: nn.Module, all_bn: bool = False) -> None:
        super().__init__()
        self.model, self.all_bn = model, all_bn

    def train(self, mode: bool = True) -> FrozenBatchNorm:
        super().train(mode)
        if mode:
            for m in self.model.modules():
                if isinstance(m, _BatchNorm) and (self.all_bn or _is_frozen(m)):
                    m.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


# --- discriminative learning rates ----------------------------------------------------------------


def discriminative_param_groups(blocks: Sequence[nn.Module], lr: float, factor: float) -> list[dict[str, Any]]:
    """Optimizer parameter groups, one per block (input side first): ``lr / factor**depth``.

    The last block (the head) trains at ``lr``, the one below at ``lr / factor``, and so on
    (eq-transfer-disc-lr): early layers hold generic features and should move least. Blocks
    without trainable parameters are left out; ``factor=1`` gives one learning rate for all.
    """
    if factor <= 0:
        raise ValueError(f"factor must be positive, not {factor}")
    groups = []
    for depth, block in enumerate(reversed(list(blocks))):
        params = [p for p in block.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": lr / factor**depth})
    return list(reversed(groups))


@torch.no_grad()
def sgd_step_by_hand(groups: Iterable[Mapping[str, Any]]) -> None:
    """Plain SGD written out (eq-transfer-disc-lr): ``p <- p - lr_g * dL/dp`` for each group ``g``."""
    for group in groups:
        for p in group["params"]:
            if p.grad is not None:
                p.sub_(group["lr"] * p.grad)


# --- the linear probe -----------------------------------------------------------------------------


@torch.no_grad()
def extract_features(encoder: nn.Module, x: Tensor, batch_size: int = 1024,
                     device: torch.device | str = "cpu") -> Tensor:
    """``encoder(x)`` in eval mode, batched, returned on the CPU: features computed once for a probe."""
    was_training = encoder.training
    encoder.eval().to(device)
    out = torch.cat([encoder(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])
    encoder.train(was_training)
    return out


def softmax_regression_grad(features: Tensor, targets: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of the mean cross-entropy of ``softmax(features @ weight.T + bias)`` by hand.

    eq-transfer-probe-grad: with probabilities ``P`` (N, K) and one-hot targets ``Y`` (N, K),
    ``dL/dW = (P - Y).T @ X / N`` (K, D) and ``dL/db = (P - Y).sum(0) / N`` (K,).
    """
    n, k = features.shape[0], weight.shape[0]
    probs = torch.softmax(features @ weight.T + bias, dim=1)
    delta = (probs - nn.functional.one_hot(targets, k).to(probs.dtype)) / n
    return delta.T @ features, delta.sum(0)


# --- BatchNorm folding ----------------------------------------------------------------------------


@torch.no_grad()
def fold_batchnorm(conv: nn.Conv2d, bn: _BatchNorm) -> nn.Conv2d:
    """A new convolution equal to ``bn(conv(x))`` with ``bn`` in eval mode (eq-transfer-bn-fold).

    With frozen statistics BatchNorm is ``y = s * (z - mu) + beta`` with ``s = gamma / sqrt(var + eps)``
    per channel, so ``W' = s * W`` (each output channel scaled) and ``b' = s * (b - mu) + beta``.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("folding needs running statistics (track_running_stats=True)")
    gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_mean)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
    scale = gamma / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                       padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                       padding_mode=conv.padding_mode).to(conv.weight)
    folded.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    folded.bias.copy_(scale * (bias - bn.running_mean) + beta)
    return folded


# --- labelled subsets and cached pretraining ----------------------------------------------------------


def labelled_subset(labels: Tensor, per_class: int, seed: int) -> Tensor:
    """Sorted indices of ``per_class`` examples of every class in ``labels``, drawn with ``seed``.

    Raises if a class has fewer examples than asked for, instead of silently unbalancing the set.
    """
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        if len(idx) < per_class:
            raise ValueError(f"class {c} has only {len(idx)} examples; cannot take {per_class} per class")
        picked.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    return torch.cat(picked).sort().values


def stratified_parts(labels: Tensor, sizes: Sequence[int], seed: int) -> list[Tensor]:
    """Split ``range(len(labels))`` into disjoint parts of about ``sizes`` (the rest is the last part).

    Each class is shuffled with ``seed`` and dealt to the parts in proportion, so every part has
    the classes in the dataset's proportions (within one example per class).
    """
    gen = torch.Generator().manual_seed(seed)
    n = len(labels)
    parts: list[list[Tensor]] = [[] for _ in range(len(sizes) + 1)]
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        start = 0
        for i, size in enumerate(sizes):
            take = round(size * len(idx) / n)
            parts[i].append(idx[start:start + take])
            start += take
        parts[-1].append(idx[start:])
    return [torch.cat(p).sort().values for p in parts]


def config_key(config: Mapping[str, Any]) -> str:
    """A short stable hash of a JSON-able configuration: the cache file name of its weights."""
    text = json.dumps(dict(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_state(model: nn.Module, config: Mapping[str, Any], train: Callable[[nn.Module], Any],
                 folder: str = "transfer") -> tuple[nn.Module, bool]:
    """Load ``model``'s weights from the course cache for ``config``, or ``train(model)`` and save them.

    Returns ``(model, loaded)``. The key is a hash of ``config`` (architecture, data, epochs, seed),
    so a different configuration never picks up stale weights; delete the cache folder to retrain.
    """
    path = cache_dir() / folder / f"source-{config_key(config)}.pt"
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model, True
    train(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(path)
    return model, False


# --- torchvision's ImageNet ResNet-18 ---------------------------------------------------------------

RESNET18_FILE = "resnet18-f37072fd.pth"  # torchvision's IMAGENET1K_V1 weights: name-<sha256 prefix>.pth
RESNET18_URL = f"https://download.pytorch.org/models/{RESNET18_FILE}"
WEIGHTS_VAR = "DLBOOK_RESNET18"  # a path to the .pth file, for machines without the network
_HASH_PREFIX = re.compile(r"-([a-f0-9]{8,})\.pth$")


class MissingWeightsError(FileNotFoundError):
    """The pretrained weights are not on this machine (and downloading was not asked for)."""


def resnet18_candidates(path: str | Path | None = None) -> list[Path]:
    """Where :func:`load_resnet18` looks, in order: ``path``, ``$DLBOOK_RESNET18``, the course
    cache (``<cache>/torchvision/``) and torch hub's own cache (``<torch hub>/checkpoints/``)."""
    found = [Path(path)] if path else []
    if os.environ.get(WEIGHTS_VAR):
        found.append(Path(os.environ[WEIGHTS_VAR]))
    found.append(cache_dir() / "torchvision" / RESNET18_FILE)
    found.append(Path(torch.hub.get_dir()) / "checkpoints" / RESNET18_FILE)
    return [p.expanduser() for p in found]


def check_hash_prefix(path: Path) -> str:
    """Verify a ``name-<prefix>.pth`` file as ``torch.hub`` does: its sha256 must start with the prefix.

    Returns the full sha256; raises ``ValueError`` for a name without a prefix or a mismatch.
    """
    match = _HASH_PREFIX.search(path.name)
    if not match:
        raise ValueError(f"{path.name} has no '-<sha256 prefix>.pth' ending to check it against")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(match.group(1)):
        raise ValueError(f"{path}: sha256 {digest} does not start with {match.group(1)} (corrupt or a "
                         f"different file); delete it and fetch {RESNET18_URL} again")
    return digest


def gray_conv_from_rgb(conv: nn.Conv2d) -> nn.Conv2d:
    """A one-channel copy of an RGB first convolution: weights summed over the colour channels.

    eq-transfer-gray: for a gray image repeated on the three channels, ``conv(repeat(g)) ==
    gray_conv(g)`` exactly, at a third of the first layer's cost.
    """
    gray = nn.Conv2d(1, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                     dilation=conv.dilation, bias=conv.bias is not None).to(conv.weight)
    with torch.no_grad():
        gray.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            gray.bias.copy_(conv.bias)
    return gray


def load_resnet18(path: str | Path | None = None, *, num_classes: int = 10, gray: bool = True,
                  download: bool = False) -> nn.Module:
    """torchvision's ResNet-18 with ImageNet weights from a local file, adapted to a new task.

    Looks in :func:`resnet18_candidates`; the file's sha256 must start with the prefix in its name
    (``f37072fd``). With ``download=True`` a missing file is fetched into the course cache by
    ``torch.hub`` (which checks the same prefix); otherwise a missing file raises
    :class:`MissingWeightsError` saying where to put it. ``gray=True`` replaces the first
    convolution by :func:`gray_conv_from_rgb`; the 1000-class ``fc`` becomes a new
    ``num_classes`` head (random, to be trained).
    """
    from torchvision.models import resnet18  # torchvision costs seconds at import: only when used

    candidates = resnet18_candidates(path)
    weights_file = next((p for p in candidates if p.is_file()), None)
    if weights_file is None and download:
        weights_file = cache_dir() / "torchvision" / RESNET18_FILE
        weights_file.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(RESNET18_URL, str(weights_file), hash_prefix=_HASH_PREFIX.search(RESNET18_FILE).group(1))
    if weights_file is None:
        where = "\n  ".join(str(p) for p in candidates)
        raise MissingWeightsError(
            f"ImageNet ResNet-18 weights ({RESNET18_FILE}) not found; looked in:\n  {where}\n"
            f"Fix: download {RESNET18_URL} on a machine with the network and copy it to one of these "
            f"places (or set {WEIGHTS_VAR}=/path/to/{RESNET18_FILE}), or call load_resnet18(download=True)."
        )
    check_hash_prefix(weights_file)
    model = resnet18(weights=None)
    model.load_state_dict(torch.load(weights_file, map_location="cpu", weights_only=True))
    if gray:
        model.conv1 = gray_conv_from_rgb(model.conv1)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model
