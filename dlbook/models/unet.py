"""A small U-Net and the overlap metrics of dense prediction (CNN lesson 6).

``UNetSmall`` follows the shape of the U-Net (Ronneberger et al., 2015) at toy scale: an encoder of
(conv-BN-ReLU) x 2 blocks halved by max pooling, a decoder that doubles the resolution with a
transposed convolution and concatenates the encoder's feature map of the same size (the *skip
connection*) before its own conv block, and a 1 x 1 convolution to per-pixel logits. Inputs of any
size work: where pooling floored an odd size, the upsampled map is padded back to the skip's size.
``skips=False`` builds the same network without the concatenations (the lesson's ablation).

The metrics implement, for boolean masks A (prediction) and B (truth),

* IoU (Jaccard) = |A ∩ B| / |A ∪ B|                  (eq-seg-iou)
* Dice (F1)     = 2 |A ∩ B| / (|A| + |B|)             (eq-seg-dice)
* box IoU of axis-aligned boxes (x1, y1, x2, y2)      (eq-seg-box-iou)

Two empty masks agree perfectly: both metrics return 1 there instead of 0/0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


def conv_block(in_ch: int, out_ch: int) -> nn.Sequential:
    """Two 3 x 3 'same' convolutions, each followed by batch norm and ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(),
        nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(),
    )


class UNetSmall(nn.Module):
    """Encoder-decoder with concatenated skip connections; output (N, out_ch, H, W) logits.

    ``widths=(16, 32, 64)`` gives two pooling steps (H -> H/2 -> H/4) with 16 and 32 channels at
    the two upper levels and 64 at the bottleneck.
    """

    def __init__(self, in_ch: int = 1, out_ch: int = 1, widths: Sequence[int] = (16, 32, 64), skips: bool = True):
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"widths needs at least two levels, got {tuple(widths)}")
        self.skips = skips
        self.down = nn.ModuleList()
        prev = in_ch
        for w in widths:
            self.down.append(conv_block(prev, w))
            prev = w
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.decode = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(prev, w, kernel_size=2, stride=2))
            self.decode.append(conv_block(2 * w if skips else w, w))
            prev = w
        self.head = nn.Conv2d(prev, out_ch, kernel_size=1)

    def forward(self, x: Tensor, block_bias: Sequence[Tensor] | None = None) -> Tensor:
        """``block_bias``: optional tensors added to each conv block's output, the encoder's blocks
        first, then the decoder's (broadcast, e.g. (N, C, 1, 1)); how a diffusion model's time
        step conditions this network (``dlbook.models.diffusion.TimeUNet``)."""
        n_blocks = len(self.down) + len(self.decode)
        if block_bias is not None and len(block_bias) != n_blocks:
            raise ValueError(f"block_bias needs one tensor per conv block ({n_blocks}), got {len(block_bias)}")
        biases = iter(block_bias) if block_bias is not None else None
        saved = []
        for i, block in enumerate(self.down):
            x = block(x)
            if biases is not None:
                x = x + next(biases)
            if i < len(self.down) - 1:
                saved.append(x)
                x = self.pool(x)
        for up, block in zip(self.up, self.decode):
            skip = saved.pop()
            x = up(x)
            # An odd size was floored by pooling: pad the upsampled map (right/bottom) back.
            x = F.pad(x, (0, skip.shape[-1] - x.shape[-1], 0, skip.shape[-2] - x.shape[-2]))
            x = block(torch.cat([skip, x], dim=1) if self.skips else x)
            if biases is not None:
                x = x + next(biases)
        return self.head(x)


def _as_bool(mask: Tensor) -> Tensor:
    if mask.dtype == torch.bool:
        return mask
    if mask.is_floating_point() and ((mask != 0) & (mask != 1)).any():
        raise ValueError("masks must be boolean or 0/1; threshold logits or probabilities first")
    return mask != 0


def _overlap(pred: Tensor, true: Tensor, per_image: bool) -> tuple[Tensor, Tensor, Tensor]:
    pred, true = _as_bool(pred), _as_bool(true)
    if pred.shape != true.shape:
        raise ValueError(f"mask shapes differ: {tuple(pred.shape)} vs {tuple(true.shape)}")
    dims = tuple(range(1, pred.dim())) if per_image else tuple(range(pred.dim()))
    inter = (pred & true).sum(dims).double()
    return inter, pred.sum(dims).double(), true.sum(dims).double()


def iou(pred_mask: Tensor, true_mask: Tensor, per_image: bool = False) -> Tensor:
    """|A ∩ B| / |A ∪ B| (eq-seg-iou) over all pixels, or per image (first dim) with ``per_image``.

    Pooled over all pixels it equals ``torchmetrics``' ``BinaryJaccardIndex``; 1 for two empty masks.
    """
    inter, a, b = _overlap(pred_mask, true_mask, per_image)
    union = a + b - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def dice(pred_mask: Tensor, true_mask: Tensor, per_image: bool = False) -> Tensor:
    """2 |A ∩ B| / (|A| + |B|) (eq-seg-dice); equals 2 IoU / (1 + IoU). 1 for two empty masks."""
    inter, a, b = _overlap(pred_mask, true_mask, per_image)
    total = a + b
    return torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total))


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every pair of boxes (x1, y1, x2, y2), x2 > x1, y2 > y1: (N,4), (M,4) -> (N,M) (eq-seg-box-iou).

    The intersection is the box [max x1, min x2] x [max y1, min y2], empty when either side is negative.
    """
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    top_left = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (bottom_right - top_left).clamp_min(0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2[None, :] - inter)
