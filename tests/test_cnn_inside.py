"""CNN lesson 9 (looking inside a CNN): saliency and Grad-CAM, checked against autograd in float64.

The code is dlbook/scratch/gradcam.py; the notebook is chapters/cnn/looking-inside-cnns.ipynb.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dlbook.scratch.gradcam as gradcam
from dlbook.gradients import rel_error
from dlbook.scratch.gradcam import (
    autograd_channel_weights,
    cam_channel_weights,
    check_gradcam_weights,
    grad_cam,
    saliency,
    smooth_saliency,
)


def gap_net(seed: int = 0) -> nn.Sequential:
    """conv-BN-ReLU-pool-conv-ReLU -> global average pool -> linear: the lesson's architecture, small."""
    torch.manual_seed(seed)
    features = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
    )
    model = nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    model.train()  # non-trivial running statistics, then eval for the checks
    with torch.no_grad():
        model(torch.randn(32, 1, 16, 16))
    return model.eval()


def inputs(n: int = 5, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, size, size, generator=gen), torch.arange(n) % 10


@pytest.mark.parametrize("layer_index", [2, 4, 5])
def test_gradcam_weights_match_autograd_float64(layer_index: int) -> None:
    model, (x, y) = gap_net(), inputs()
    report = check_gradcam_weights(model, model[0][layer_index], x, y)
    report.assert_ok()


def test_gradcam_weights_equal_the_cam_closed_form() -> None:
    """ReLU -> GAP -> Linear after A: alpha_k^c = W_ck / Z (eq-inside-cam-weights), Z = 8 x 8 positions."""
    model, (x, y) = gap_net(), inputs()
    alpha = autograd_channel_weights(model, model[0][5], x, y)
    expected = cam_channel_weights(model[3], y, positions=8 * 8).double()
    assert rel_error(alpha, expected) < 1e-8
    # ... and Grad-CAM is then the class activation map divided by Z
    result = grad_cam(model.double(), model[0][5], x.double(), y)
    cam = F.relu(torch.einsum("nk,nkij->nij", model[3].weight[y], result.activations)) / 64
    assert rel_error(result.raw, cam) < 1e-8


def test_gradcam_shapes_and_hooks_are_removed() -> None:
    model, (x, y) = gap_net(), inputs()
    layer = model[0][5]
    result = grad_cam(model, layer, x, y)
    assert result.cam.shape == (5, 16, 16) and result.raw.shape == (5, 8, 8)
    assert result.weights.shape == (5, 8) and result.activations.shape == result.gradients.shape == (5, 8, 8, 8)
    assert (result.cam >= 0).all() and (result.raw >= 0).all()
    assert not layer._forward_hooks and not layer._backward_hooks, "hooks must be removed"
    assert not model.training, "the model's mode must be restored"
    model.train()
    grad_cam(model, layer, x, 3)
    assert model.training


def test_gradcam_weights_of_a_single_image_do_not_depend_on_the_batch() -> None:
    model, (x, y) = gap_net(), inputs()
    batch = grad_cam(model, model[0][5], x, y).weights
    alone = grad_cam(model, model[0][5], x[2:3], y[2:3]).weights
    assert rel_error(batch[2:3], alone) < 1e-6


def test_summed_instead_of_averaged_gradients_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A planted bug: alpha = sum (not mean) of dy/dA, off by the factor Z = 64. The check must fail."""
    model, (x, y) = gap_net(), inputs()
    monkeypatch.setattr(gradcam, "channel_weights", lambda g: g.sum(dim=(2, 3)))
    report = check_gradcam_weights(model, model[0][5], x, y)
    assert not report.ok and report.errors["alpha"] > 0.9, str(report)
    with pytest.raises(AssertionError):
        report.assert_ok()


def test_gradients_of_the_wrong_class_are_caught() -> None:
    model, (x, y) = gap_net(), inputs()
    hooked = grad_cam(model.double(), model[0][5], x.double(), (y + 1) % 10).weights
    assert rel_error(hooked, autograd_channel_weights(model, model[0][5], x, y)) > 0.1


def test_layer_must_belong_to_the_model() -> None:
    model, (x, y) = gap_net(), inputs()
    with pytest.raises(ValueError, match="submodule"):
        check_gradcam_weights(model, nn.ReLU(), x, y)


def test_saliency_of_a_linear_model_is_its_weight() -> None:
    """y = W vec(x): dy^c/dx = W_c, so the saliency is |W_c| as an image (eq-inside-saliency)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 5, 4)).double()
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    sal = saliency(model, x, torch.tensor([1, 3]))
    assert sal.shape == (2, 6, 5)
    w = model[1].weight.detach().view(4, 3, 6, 5)
    assert rel_error(sal[0], w[1].abs().amax(0)) < 1e-12
    assert rel_error(sal[1], w[3].abs().amax(0)) < 1e-12


def test_saliency_matches_per_image_autograd() -> None:
    model, (x, y) = gap_net(), inputs()
    sal = saliency(model, x, y)
    assert sal.shape == (5, 16, 16) and (sal >= 0).all()
    xi = x[1:2].clone().requires_grad_(True)
    model(xi)[0, y[1]].backward()
    assert rel_error(sal[1], xi.grad[0].abs().amax(0)) < 1e-6


def test_smooth_saliency() -> None:
    model, (x, y) = gap_net(), inputs()
    plain = saliency(model, x, y)
    torch.testing.assert_close(smooth_saliency(model, x, y, samples=3, sigma=0.0), plain)
    a = smooth_saliency(model, x, y, samples=8, sigma=0.5, seed=1)
    b = smooth_saliency(model, x, y, samples=8, sigma=0.5, seed=1)
    assert a.shape == (5, 16, 16) and torch.equal(a, b), "SmoothGrad must be deterministic for a seed"
    assert not torch.allclose(a, plain), "noise should change the map"
    assert not model.training
    # for a linear model every noisy gradient is W_c: SmoothGrad equals the plain saliency
    lin = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 10)).eval()
    torch.testing.assert_close(smooth_saliency(lin, x, y, samples=4, sigma=2.0), saliency(lin, x, y))
