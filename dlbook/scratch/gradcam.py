"""Looking inside a trained CNN: saliency maps and Grad-CAM (CNN lesson 9).

For an input image x and the score (logit) y^c of class c:

* **Saliency** (Simonyan et al., 2014): the magnitude of the input gradient, maximised over the
  colour channels,  M_ij = max_ch |dy^c / dx_{ch,i,j}|                          (eq-inside-saliency)
* **SmoothGrad** (Smilkov et al., 2017): the same, from the input gradient averaged over noisy copies
  x + eps, eps ~ N(0, sigma^2), which cancels the pixel-to-pixel noise of ReLU-network gradients
  M~_ij = max_ch |(1/n) sum_s dy^c / dx_{ch,i,j} (x + eps_s)|                  (eq-inside-smoothgrad)
* **Grad-CAM** (Selvaraju et al., 2017) on a conv layer's activations A (K channels, Z = H'W'
  positions): channel weights are the global-average-pooled gradients
  alpha_k^c = (1/Z) sum_ij dy^c / dA_kij                                         (eq-inside-gradcam-weights)
  and the map is  L^c = ReLU(sum_k alpha_k^c A_k), upsampled to the input size  (eq-inside-gradcam-map).
* For a network that ends in ReLU -> global average pooling -> Linear(W, b) right after A,
  y^c = sum_k W_ck (1/Z) sum_ij A_kij + b_c, so alpha_k^c = W_ck / Z exactly and Grad-CAM is the
  class activation map (CAM) divided by Z                                        (eq-inside-cam-weights).

:func:`grad_cam` reads A and dy/dA with a forward hook and a full backward hook on the layer;
:func:`check_gradcam_weights` recomputes the weights without any backward hook (the layer's output
is replaced by a float64 leaf tensor and differentiated with ``torch.autograd.grad``) and compares.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..gradients import GradientReport, compare

Tensor = torch.Tensor


def _scores(model: nn.Module, x: Tensor, target: Tensor | int) -> tuple[Tensor, Tensor]:
    """Logits (N, C) and the target classes as a (N,) long tensor."""
    logits = model(x)
    target = torch.as_tensor(target, device=logits.device).long().expand(len(logits))
    return logits, target


def saliency(model: nn.Module, x: Tensor, target: Tensor | int) -> Tensor:
    """max over channels of |d y^target / d x|: (N,C,H,W) -> (N,H,W) (eq-inside-saliency).

    The model is put in eval mode (batch-norm statistics must not depend on the batch); the
    scores of different images are independent, so one backward of their sum gives every map.
    """
    was_training = model.training
    model.eval()
    x = x.detach().clone().requires_grad_(True)
    logits, target = _scores(model, x, target)
    (grad,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), x)
    model.train(was_training)
    return grad.abs().amax(dim=1)


def smooth_saliency(
    model: nn.Module, x: Tensor, target: Tensor | int, samples: int = 32, sigma: float = 0.5, seed: int = 0
) -> Tensor:
    """SmoothGrad: max over channels of |mean over ``samples`` noisy copies of d y^target / d x|
    (eq-inside-smoothgrad); ``sigma`` is in the units of ``x``. Equals :func:`saliency` for sigma = 0."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros_like(x)
    target = torch.as_tensor(target, device=x.device).long().expand(len(x))
    for _ in range(samples):
        noise = sigma * torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
        noisy = (x.detach() + noise).requires_grad_(True)
        (grad,) = torch.autograd.grad(model(noisy).gather(1, target[:, None]).sum(), noisy)
        total += grad
    model.train(was_training)
    return (total / samples).abs().amax(dim=1)


def channel_weights(grads: Tensor) -> Tensor:
    """alpha_k = (1/Z) sum_ij dy/dA_kij: global average pooling of (N,K,H,W) -> (N,K) (eq-inside-gradcam-weights)."""
    return grads.mean(dim=(2, 3))


@dataclass
class GradCAM:
    """The map (N,H,W) at input resolution, the raw map (N,H',W') at the layer's resolution, the
    channel weights alpha (N,K), the activations A (N,K,H',W') and their gradients dy/dA."""

    cam: Tensor
    raw: Tensor
    weights: Tensor
    activations: Tensor
    gradients: Tensor


def grad_cam(model: nn.Module, layer: nn.Module, x: Tensor, target: Tensor | int) -> GradCAM:
    """Grad-CAM of ``layer`` (an ``nn.Module`` whose output is the (N,K,H',W') map A) for ``target``.

    The layer's output must not be modified in place by the next module (``nn.ReLU(inplace=True)``),
    which is what a full backward hook requires. Implements eq-inside-gradcam-weights and -map.
    """
    store: dict[str, Tensor] = {}

    def keep_activation(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        store["A"] = output.detach()

    def keep_gradient(module: nn.Module, grad_in: tuple[Tensor, ...], grad_out: tuple[Tensor, ...]) -> None:
        store["dA"] = grad_out[0].detach()

    was_training = model.training
    model.eval()
    handles = [layer.register_forward_hook(keep_activation), layer.register_full_backward_hook(keep_gradient)]
    try:
        x = x.detach().clone().requires_grad_(True)  # a full backward hook needs a graph to hang on
        logits, target = _scores(model, x, target)
        logits.gather(1, target[:, None]).sum().backward()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    weights = channel_weights(store["dA"])
    raw = F.relu((weights[:, :, None, None] * store["A"]).sum(dim=1))
    cam = F.interpolate(raw[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return GradCAM(cam, raw, weights, store["A"], store["dA"])


def autograd_channel_weights(model: nn.Module, layer: nn.Module, x: Tensor, target: Tensor | int) -> Tensor:
    """The Grad-CAM weights computed without backward hooks, in float64.

    A float64 copy of the model runs once to record A; a second run replaces the layer's output by
    a leaf tensor equal to A (a forward hook may return a new output), so ``torch.autograd.grad``
    gives dy/dA directly. Its spatial mean is alpha (eq-inside-gradcam-weights).
    """
    model64 = copy.deepcopy(model).double().eval()
    layer64 = dict(model64.named_modules())[_name_of(model, layer)]
    x64 = x.detach().double()
    record: dict[str, Tensor] = {}
    handle = layer64.register_forward_hook(lambda m, i, out: record.setdefault("A", out.detach().clone()))
    with torch.no_grad():
        model64(x64)
    handle.remove()
    leaf = record["A"].requires_grad_(True)
    handle = layer64.register_forward_hook(lambda m, i, out: leaf)
    try:
        logits, target = _scores(model64, x64, target)
        (grads,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), leaf)
    finally:
        handle.remove()
    return grads.mean(dim=(2, 3))


def cam_channel_weights(head: nn.Linear, target: Tensor | int, positions: int) -> Tensor:
    """alpha_k^c = W_ck / Z for a ReLU -> global-average-pool -> ``head`` ending (eq-inside-cam-weights):
    (K,) for an int target, (N,K) for a (N,) tensor of targets."""
    return head.weight.detach()[torch.as_tensor(target).long()] / positions


def _name_of(model: nn.Module, layer: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is layer:
            return name
    raise ValueError("layer is not a submodule of model")


def check_gradcam_weights(model: nn.Module, layer: nn.Module, x: Tensor, target: Tensor | int) -> GradientReport:
    """Hook-based Grad-CAM weights (run in float64) against :func:`autograd_channel_weights`."""
    model64 = copy.deepcopy(model).double()
    layer64 = dict(model64.named_modules())[_name_of(model, layer)]
    hooked = grad_cam(model64, layer64, x.double(), target).weights
    return compare({"alpha": hooked}, {"alpha": autograd_channel_weights(model, layer, x, target)})
