"""Augmentation on the device: random crops and flips drawn per image, for batches already on the GPU.

Used by ``chapters/cnn/training-cnns.ipynb`` (the CNN training recipe) and the speed recipe;
``chapters/cnn/data-augmentation.ipynb`` teaches the ``torchvision.transforms.v2`` pipelines this
replaces when the whole dataset lives on the device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


class RandomCropFlip(nn.Module):
    """Random crop after zero padding + random horizontal flip, per image, on the device, train mode only.

    Put it first in an ``nn.Sequential`` with the network: ``fit`` calls ``model.train()`` and
    ``evaluate`` calls ``model.eval()``, so like dropout it augments training batches and is the
    identity at evaluation. Each image gets its own offset in ``[0, 2 * padding]`` in both axes and
    its own coin for the flip: ``torchvision.transforms.v2`` applied to a batch tensor would draw
    one crop for the whole batch. ``fill=0`` pads with the channel mean when inputs are standardised.
    """

    def __init__(self, padding: int = 4, flip: bool = True, fill: float = 0.0) -> None:
        super().__init__()
        self.padding, self.flip, self.fill = padding, flip, fill

    def extra_repr(self) -> str:
        return f"padding={self.padding}, flip={self.flip}, fill={self.fill}"

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or (self.padding == 0 and not self.flip):
            return x
        n, c, h, w = x.shape
        channels_last = c > 1 and x.is_contiguous(memory_format=torch.channels_last)
        if self.padding:
            p = self.padding
            padded = F.pad(x, (p, p, p, p), value=self.fill)
            dy = torch.randint(0, 2 * p + 1, (n, 1), device=x.device)
            dx = torch.randint(0, 2 * p + 1, (n, 1), device=x.device)
            rows = (dy + torch.arange(h, device=x.device))[:, None, :, None]  # (n, 1, h, 1)
            cols = (dx + torch.arange(w, device=x.device))[:, None, None, :]  # (n, 1, 1, w)
            batch = torch.arange(n, device=x.device)[:, None, None, None]
            chan = torch.arange(c, device=x.device)[None, :, None, None]
            x = padded[batch, chan, rows, cols]
        if self.flip:
            coin = torch.rand(n, device=x.device) < 0.5
            x = torch.where(coin[:, None, None, None], x.flip(3), x)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x
