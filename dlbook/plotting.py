"""Figures the chapters share: training curves, image grids, activation/gradient histograms.

Every function returns the ``Figure`` so notebooks can tweak or save it, and every axis is
labelled: a figure without units is not a result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from .train import History


def plot_history(history: History, title: str = "Training curves", metric: str | None = None) -> Figure:
    """Loss (left) and, if recorded, a metric such as ``acc`` (right) per epoch, train vs val."""
    keys = history.keys()
    if metric is None:
        candidates = [k.removeprefix("val_") for k in keys if k.startswith("val_") and k != "val_loss"]
        metric = candidates[0] if candidates else None
    panels = ["loss"] + ([metric] if metric else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    epochs = history["epoch"]
    for ax, name in zip(axes[0], panels):
        for split, style in (("train", "-o"), ("val", "-s")):
            values = history[f"{split}_{name}"]
            if values:
                ax.plot(epochs[: len(values)], values, style, label=split, markersize=4)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name if name != "loss" else "loss (nats)")
        ax.set_title(f"{name} per epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def show_images(
    images: torch.Tensor,
    labels: Sequence[object] | None = None,
    ncols: int = 8,
    title: str = "Samples",
    cmap: str = "gray",
) -> Figure:
    """A grid of images (N,H,W), (N,1,H,W) or (N,3,H,W), each titled with its label."""
    images = images.detach().cpu()
    if images.dim() == 4:
        images = images.permute(0, 2, 3, 1)
        if images.shape[-1] == 1:
            images = images[..., 0]
    n = len(images)
    nrows = max(1, int(np.ceil(n / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.4 * ncols, 1.6 * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            img = images[i].float()
            if img.dim() == 3:  # colour: rescale to [0,1] for imshow
                img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-12)
            ax.imshow(img.numpy(), cmap=cmap if img.dim() == 2 else None)
            if labels is not None:
                ax.set_title(str(labels[i]), fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_layer_histograms(
    values: Mapping[str, torch.Tensor],
    title: str = "Distribution per layer",
    xlabel: str = "value",
    bins: int = 60,
    ncols: int = 4,
) -> Figure:
    """One histogram per named tensor (activations or gradients of successive layers)."""
    names = list(values)
    nrows = max(1, int(np.ceil(len(names) / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.5 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        data = values[name].detach().float().flatten().cpu().numpy()
        ax.hist(data, bins=bins, color="tab:blue", alpha=0.8)
        ax.set_title(f"{name}\nstd {data.std():.2e}", fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("count")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_layer_stats(
    stats: Mapping[str, Sequence[float]],
    title: str,
    ylabel: str,
    log: bool = True,
) -> Figure:
    """A line per series (e.g. per initialisation) of a statistic against layer depth."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, series in stats.items():
        ax.plot(range(1, len(series) + 1), series, marker=".", label=name)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    return fig
