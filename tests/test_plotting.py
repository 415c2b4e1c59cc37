import matplotlib.pyplot as plt
import torch

from dlbook.plotting import plot_history, plot_layer_histograms, plot_layer_stats, show_images
from dlbook.train import History


def _labels(fig):
    return [(ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes if ax.has_data()]


def test_plot_history_draws_loss_and_metric_with_labels():
    h = History([{"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "train_acc": 0.5, "val_acc": 0.6} for e in (1, 2, 3)])
    fig = plot_history(h, title="demo")
    labelled = _labels(fig)
    assert len(labelled) == 2 and all(t and x and y for t, x, y in labelled)
    assert fig._suptitle.get_text() == "demo"
    assert len(fig.axes[0].lines) == 2  # train and val
    plt.close(fig)


def test_show_images_handles_gray_and_colour():
    fig = show_images(torch.rand(5, 1, 8, 8), labels=list("abcde"), ncols=4)
    assert [ax.get_title() for ax in fig.axes[:5]] == list("abcde")
    plt.close(fig)
    fig = show_images(torch.rand(3, 3, 8, 8))
    assert sum(ax.has_data() for ax in fig.axes) == 3
    plt.close(fig)


def test_layer_histograms_and_stats():
    fig = plot_layer_histograms({"layer 1": torch.randn(100), "layer 2": torch.randn(100) * 2}, ncols=2)
    assert all(x == "value" and y == "count" for _, x, y in _labels(fig))
    plt.close(fig)
    fig = plot_layer_stats({"a": [1.0, 0.1, 0.01], "b": [1.0, 1.0, 1.0]}, title="t", ylabel="std")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and len(ax.lines) == 2 and ax.get_xlabel() == "layer"
    plt.close(fig)
