"""A one-stage object detector from its parts, each written out and checked against a library.

The lesson ``chapters/cnn/object-detection.ipynb`` proves every piece equal to its reference:

* :func:`encode_boxes` / :func:`decode_boxes`: the box parametrisation relative to an anchor
  (eq-det-encode), equal to ``torchvision.models.detection._utils.BoxCoder`` with weights (1,1,1,1);
* :func:`make_anchors` and :func:`match_anchors`: reference boxes on the feature grid, and which
  ground-truth box each one is trained to predict (IoU from :func:`dlbook.models.unet.box_iou`);
* :class:`TinyDetector` and :func:`detection_loss`: an SSD-style head on a small backbone, with
  cross-entropy over 10 digits + background (hard negatives mined 3:1) and smooth L1 on the offsets;
* :func:`greedy_nms` (equal to ``torchvision.ops.nms``) and :func:`detect` (decode, score
  threshold, ``torchvision.ops.batched_nms``);
* :func:`roi_align` (equal to ``torchvision.ops.roi_align``, values and gradients);
* :func:`evaluate_detections` / :func:`mean_average_precision`: COCO-style average precision by
  hand, equal to ``torchmetrics.detection.MeanAveragePrecision`` on the same predictions.

Boxes are ``(x1, y1, x2, y2)`` pixel corners throughout, as in ``torchvision.ops``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .models.unet import box_iou

Tensor = torch.Tensor
COCO_IOUS = tuple(np.linspace(0.5, 0.95, 10).tolist())  # COCO's IoU thresholds 0.50:0.05:0.95
RECALL_LEVELS = np.linspace(0.0, 1.0, 101)  # COCO's recall levels, float64 as in pycocotools


# --- boxes relative to anchors -----------------------------------------------------------------------


def _centre_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode_boxes(boxes: Tensor, anchors: Tensor) -> Tensor:
    """Offsets ``(t_x, t_y, t_w, t_h)`` of ``boxes`` relative to ``anchors`` (both (..., 4) corners),
    eq-det-encode: centre shifts in units of the anchor's size, log size ratios. Scale-free, so one
    regressor serves small and large anchors alike."""
    x, y, w, h = _centre_size(boxes)
    xa, ya, wa, ha = _centre_size(anchors)
    return torch.stack([(x - xa) / wa, (y - ya) / ha, torch.log(w / wa), torch.log(h / ha)], -1)


def decode_boxes(deltas: Tensor, anchors: Tensor, max_log_ratio: float = math.log(1000.0 / 16)) -> Tensor:
    """The inverse of :func:`encode_boxes` (eq-det-decode): corners from offsets and anchors.

    ``t_w`` and ``t_h`` are clamped at ``max_log_ratio`` (torchvision's ``bbox_xform_clip``) so an
    untrained head cannot overflow ``exp``; the clamp is inactive for any box encoded from real data.
    """
    xa, ya, wa, ha = _centre_size(anchors)
    x = deltas[..., 0] * wa + xa
    y = deltas[..., 1] * ha + ya
    w = torch.exp(deltas[..., 2].clamp(max=max_log_ratio)) * wa
    h = torch.exp(deltas[..., 3].clamp(max=max_log_ratio)) * ha
    return torch.stack([x - 0.5 * w, y - 0.5 * h, x + 0.5 * w, y + 0.5 * h], -1)


def make_anchors(grid: tuple[int, int], stride: int, shapes: list[tuple[float, float]]) -> Tensor:
    """Anchors ``(H*W*A, 4)`` centred on every cell of an ``H x W`` feature grid of ``stride`` pixels,
    one per ``(width, height)`` in ``shapes``, ordered (row, column, shape) like the head's output.

    Cell ``(i, j)`` covers pixels ``[j*stride, (j+1)*stride)``, so its centre is ``(j + 0.5) * stride``.
    """
    h, w = grid
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) * stride
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    sizes = torch.tensor(shapes, dtype=torch.float32)  # (A, 2) as (width, height)
    centres = torch.stack([cx, cy], -1)[:, :, None, :]  # (H, W, 1, 2)
    half = sizes[None, None] / 2
    return torch.cat([centres - half, centres + half], -1).reshape(-1, 4)


def match_anchors(anchors: Tensor, gt_boxes: Tensor, iou_threshold: float = 0.5) -> Tensor:
    """Index of the ground-truth box each anchor is trained on, ``-1`` for background (eq-det-match).

    An anchor takes the box it overlaps most when that IoU is at least ``iou_threshold``; then each
    box also claims its single best anchor, whatever the IoU, so that no box goes unmatched (the
    rule of Faster R-CNN's RPN and SSD). ``gt_boxes`` is (G, 4) for one image -> (A,), or
    (N, G, 4) for a batch -> (N, A); NaN rows (absent digits) are ignored.
    """
    single = gt_boxes.dim() == 2
    boxes = gt_boxes[None] if single else gt_boxes
    n, g = boxes.shape[:2]
    if g == 0:  # no boxes at all: every anchor is background
        matched = torch.full((n, len(anchors)), -1, dtype=torch.int64)
        return matched[0] if single else matched
    present = ~boxes.isnan().any(-1)  # (N, G)
    iou = box_iou(boxes.reshape(-1, 4).nan_to_num(0.0), anchors).view(n, g, len(anchors))  # (N, G, A)
    iou = iou.masked_fill(~present[..., None], -1.0)  # an absent box never matches
    best_iou, best_gt = iou.max(1)  # (N, A): each anchor's best box
    matched = torch.where(best_iou >= iou_threshold, best_gt, -1)
    img, box = present.nonzero(as_tuple=True)
    matched[img, iou.argmax(2)[img, box]] = box  # each box's best anchor, even below the threshold
    return matched[0] if single else matched


def build_targets(anchors: Tensor, boxes: Tensor, labels: Tensor, iou_threshold: float = 0.5) -> tuple[Tensor, Tensor, Tensor]:
    """Training targets for every canvas, computed once before training: class ``(N, A)`` int64
    (0 background, ``digit + 1`` otherwise), encoded offsets ``(N, A, 4)`` (zeros on background
    anchors), and the matched box index ``(N, A)`` of :func:`match_anchors` (-1 for background).
    Canvases are matched 1,024 at a time, so the (N, G, A) IoU tensor stays small."""
    matched = torch.cat([match_anchors(anchors, chunk, iou_threshold) for chunk in boxes.split(1024)])
    pos = matched >= 0
    safe = matched.clamp_min(0)
    classes = torch.where(pos, labels.gather(1, safe) + 1, 0)
    gt = boxes.gather(1, safe[..., None].expand(-1, -1, 4))  # (N, A, 4) the matched box per anchor
    offsets = torch.where(pos[..., None], encode_boxes(gt.nan_to_num(1.0), anchors.expand_as(gt)), 0.0)
    return classes, offsets, matched


# --- the detector ------------------------------------------------------------------------------------


def _block(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class TinyDetector(nn.Module):
    """An SSD-style one-stage detector: a stride-4 conv backbone (two stride-2 convolutions, cheaper
    than convolving at full resolution and pooling), then one 3x3 conv head that
    predicts, for each of ``num_anchors`` anchors per cell, ``num_classes + 1`` logits (class 0 is
    background) and 4 box offsets. Dilated convolutions widen the receptive field (63 pixels) to
    cover a digit and its neighbours without a coarser grid. Output: logits ``(N, H*W*A, C+1)``, offsets ``(N, H*W*A, 4)``."""

    def __init__(self, num_anchors: int, num_classes: int = 10, width: int = 32, head_kernel: int = 3) -> None:
        super().__init__()
        self.num_anchors, self.num_classes = num_anchors, num_classes
        self.backbone = nn.Sequential(
            _block(1, width // 2, stride=2), _block(width // 2, width, stride=2),
            _block(width, width), _block(width, width, dilation=2), _block(width, width, dilation=4),
        )
        self.cls_head = nn.Conv2d(width, num_anchors * (num_classes + 1), head_kernel, padding=head_kernel // 2)
        self.box_head = nn.Conv2d(width, num_anchors * 4, head_kernel, padding=head_kernel // 2)
        nn.init.zeros_(self.box_head.weight)
        nn.init.zeros_(self.box_head.bias)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        f = self.backbone(images)
        n = len(images)
        logits = self.cls_head(f).permute(0, 2, 3, 1).reshape(n, -1, self.num_classes + 1)
        offsets = self.box_head(f).permute(0, 2, 3, 1).reshape(n, -1, 4)
        return logits, offsets


def detection_loss(logits: Tensor, offsets: Tensor, target_classes: Tensor, target_offsets: Tensor,
                   neg_ratio: int = 3, beta: float = 1.0 / 9) -> Tensor:
    """SSD's multibox loss (eq-det-loss): cross-entropy on the positive anchors and on the
    ``neg_ratio`` times as many hardest negatives of each image, plus smooth L1 on the positives'
    offsets, both divided by the number of positives.

    Hard-negative mining keeps the thousands of easy background anchors from swamping the loss.
    """
    ce = F.cross_entropy(logits.flatten(0, 1), target_classes.flatten(), reduction="none").view_as(target_classes)
    pos = target_classes > 0
    n_pos = pos.sum(1, keepdim=True)
    neg_loss = ce.detach().masked_fill(pos, -math.inf)
    rank = neg_loss.argsort(1, descending=True).argsort(1)  # 0 = hardest negative
    hard_neg = rank < neg_ratio * n_pos.clamp_min(1)
    n = n_pos.sum().clamp_min(1)
    cls_loss = ce[pos | hard_neg].sum() / n
    box_loss = F.smooth_l1_loss(offsets[pos], target_offsets[pos], beta=beta, reduction="sum") / n
    return cls_loss + box_loss


@torch.no_grad()
def detect(model: nn.Module, images: Tensor, anchors: Tensor, *, score_threshold: float = 0.05,
           iou_threshold: float = 0.5, max_detections: int = 100, batch_size: int = 256) -> list[dict[str, Tensor]]:
    """Detections per image as ``{"boxes", "scores", "labels"}`` (the format torchmetrics takes):
    softmax scores of each digit class at every anchor, decoded boxes, candidates above
    ``score_threshold``, then per-class NMS (``torchvision.ops.batched_nms``) and the top
    ``max_detections`` by score. Labels are digits 0..9."""
    from torchvision.ops import batched_nms

    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        logits, offsets = model(images[start:start + batch_size].to(device))
        probs = logits.float().softmax(-1)[..., 1:].cpu()  # drop background
        boxes = decode_boxes(offsets.float().cpu(), anchors)
        for p, b in zip(probs, boxes):
            anchor_idx, label = (p > score_threshold).nonzero(as_tuple=True)
            cand_boxes, cand_scores = b[anchor_idx], p[anchor_idx, label]
            keep = batched_nms(cand_boxes, cand_scores, label, iou_threshold)[:max_detections]
            out.append({"boxes": cand_boxes[keep], "scores": cand_scores[keep], "labels": label[keep]})
    return out


# --- non-maximum suppression -------------------------------------------------------------------------


def greedy_nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Indices of the boxes greedy non-maximum suppression keeps, by decreasing score: take the
    highest-scoring box, drop every remaining box whose IoU with it exceeds ``iou_threshold``,
    repeat. A plain loop (fine for tens of boxes); ``torchvision.ops.nms`` is the fast kernel."""
    order = scores.argsort(descending=True)
    keep = []
    while len(order):
        best, order = order[0], order[1:]
        keep.append(best.item())
        overlaps = box_iou(boxes[best][None], boxes[order])[0]
        order = order[overlaps <= iou_threshold]  # drop the boxes that overlap the kept one too much
    return torch.tensor(keep, dtype=torch.int64)


# --- RoIAlign ----------------------------------------------------------------------------------------


def bilinear(feature: Tensor, y: Tensor, x: Tensor) -> Tensor:
    """Bilinear interpolation of ``feature`` (C, H, W) at points ``y``, ``x`` (same shape S):
    (C, *S). Points more than one pixel outside the map give 0; points within a pixel of the
    border are clamped onto it (Mask R-CNN's convention, which torchvision follows)."""
    _, h, w = feature.shape
    outside = (y < -1.0) | (y > h) | (x < -1.0) | (x > w)
    y, x = y.clamp_min(0), x.clamp_min(0)
    y0, x0 = y.floor().long().clamp_max(h - 1), x.floor().long().clamp_max(w - 1)
    y = torch.where(y0 >= h - 1, y0.to(y.dtype), y)  # on the last row: no interpolation downwards
    x = torch.where(x0 >= w - 1, x0.to(x.dtype), x)
    y1, x1 = (y0 + 1).clamp_max(h - 1), (x0 + 1).clamp_max(w - 1)
    ly, lx = y - y0, x - x0
    hy, hx = 1 - ly, 1 - lx
    value = (hy * hx * feature[:, y0, x0] + hy * lx * feature[:, y0, x1]
             + ly * hx * feature[:, y1, x0] + ly * lx * feature[:, y1, x1])
    return torch.where(outside, torch.zeros((), dtype=feature.dtype), value)


def roi_align(features: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = True) -> Tensor:
    """RoIAlign (eq-det-roialign): each box cut into ``output_size`` bins, each bin the mean of a
    ``sampling_ratio x sampling_ratio`` grid of bilinearly interpolated points (adaptive
    ``ceil(bin size)`` when ``sampling_ratio <= 0``). No rounding anywhere, unlike RoI pooling.

    ``features`` (N, C, H, W); ``rois`` (K, 5) rows ``(batch index, x1, y1, x2, y2)`` in input
    pixels, scaled by ``spatial_scale``; ``aligned=True`` shifts by half a pixel so that pixel
    centres sit at integer + 0.5. Returns (K, C, *output_size). Differentiable by autograd.
    """
    ph, pw = output_size
    offset = 0.5 if aligned else 0.0
    out = []
    for roi in rois:
        feature = features[int(roi[0])]
        x1, y1, x2, y2 = (roi[1:] * spatial_scale - offset).unbind()
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:  # the original Mask R-CNN code forced boxes at least one pixel wide
            roi_w, roi_h = roi_w.clamp_min(1.0), roi_h.clamp_min(1.0)
        bin_h, bin_w = roi_h / ph, roi_w / pw
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h.item() / ph)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w.item() / pw)
        iy = (torch.arange(ph, dtype=rois.dtype)[:, None] * bin_h
              + (torch.arange(gh, dtype=rois.dtype)[None, :] + 0.5) * bin_h / gh + y1)  # (ph, gh)
        ix = (torch.arange(pw, dtype=rois.dtype)[:, None] * bin_w
              + (torch.arange(gw, dtype=rois.dtype)[None, :] + 0.5) * bin_w / gw + x1)  # (pw, gw)
        y = iy[:, :, None, None].expand(ph, gh, pw, gw)
        x = ix[None, None].expand(ph, gh, pw, gw)
        samples = bilinear(feature, y, x)  # (C, ph, gh, pw, gw)
        out.append(samples.sum((2, 4)) / max(gh * gw, 1))
    return torch.stack(out) if out else features.new_zeros(0, features.shape[1], ph, pw)


# --- average precision -------------------------------------------------------------------------------


@dataclass
class PRCurve:
    """One class at one IoU threshold: ``recall`` and ``precision`` after each detection (by
    decreasing score), the 101-point ``ap``, and ``n_gt`` ground-truth boxes (``ap`` is NaN if 0)."""

    recall: np.ndarray
    precision: np.ndarray
    ap: float
    n_gt: int


def match_image(boxes: Tensor, scores: Tensor, gt_boxes: Tensor, iou_thresholds: tuple[float, ...]) -> np.ndarray:
    """Which detections of one image and one class are true positives, at each IoU threshold:
    bool (T, D), detections taken by decreasing score. Each detection takes the unmatched
    ground-truth box it overlaps most, if that IoU reaches the threshold (COCO's greedy rule)."""
    order = np.argsort(-scores.numpy(), kind="mergesort")
    tp = np.zeros((len(iou_thresholds), len(order)), dtype=bool)
    if len(gt_boxes) == 0 or len(order) == 0:
        return tp
    iou = box_iou(boxes[order].double(), gt_boxes.double()).numpy()  # (D, G)
    thresholds = np.minimum(np.asarray(iou_thresholds), 1 - 1e-10)[:, None]  # (T, 1)
    taken = np.zeros((len(iou_thresholds), len(gt_boxes)), dtype=bool)  # (T, G)
    rows = np.arange(len(iou_thresholds))
    for d in range(len(order)):  # every threshold at once: one pass over the detections
        candidates = np.where(taken, -1.0, iou[d][None, :])
        g = candidates.argmax(1)
        hit = candidates[rows, g] >= thresholds[:, 0]
        taken[rows[hit], g[hit]] = True
        tp[hit, d] = True
    return tp


def interpolated_ap(recall: np.ndarray, precision: np.ndarray, levels: np.ndarray = RECALL_LEVELS) -> float:
    """eq-det-ap: the mean over recall ``levels`` of the best precision at that recall or beyond
    (the first detection whose recall reaches the level, on the monotone envelope; 0 if none does)."""
    envelope = np.maximum.accumulate(precision[::-1])[::-1]  # best precision at this recall or beyond
    idx = np.searchsorted(recall, levels, side="left")
    q = np.zeros(len(levels))
    q[idx < len(envelope)] = envelope[idx[idx < len(envelope)]]
    return float(q.mean())


def precision_recall(scores: np.ndarray, tp: np.ndarray, n_gt: int, levels: np.ndarray = RECALL_LEVELS) -> PRCurve:
    """Precision and recall after each detection (all images pooled, sorted by score) and COCO's
    101-point interpolated AP (:func:`interpolated_ap`)."""
    if n_gt == 0:
        return PRCurve(np.zeros(0), np.zeros(0), float("nan"), 0)
    order = np.argsort(-scores, kind="mergesort")
    tps = np.cumsum(tp[order])
    fps = np.cumsum(~tp[order])
    recall = tps / n_gt
    precision = tps / (tps + fps + np.spacing(1))
    return PRCurve(recall, precision, interpolated_ap(recall, precision, levels), n_gt)


def evaluate_detections(preds: list[dict[str, Tensor]], targets: list[dict[str, Tensor]], num_classes: int = 10,
                        iou_thresholds: tuple[float, ...] = COCO_IOUS, max_detections: int = 100,
                        recall_levels: np.ndarray = RECALL_LEVELS) -> dict[float, list[PRCurve]]:
    """Per IoU threshold, one :class:`PRCurve` per class, from detections and ground truth in
    torchmetrics' format. Each image keeps its ``max_detections`` best-scoring detections, as COCO does."""
    scores: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    hits: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    n_gt = np.zeros(num_classes, dtype=int)
    for p, t in zip(preds, targets):
        top = p["scores"].argsort(descending=True, stable=True)[:max_detections]
        boxes, sc, labels = p["boxes"][top], p["scores"][top], p["labels"][top]
        n_gt += np.bincount(t["labels"].numpy(), minlength=num_classes)[:num_classes]
        for c in torch.cat([labels, t["labels"]]).unique().tolist():  # only the classes this image has
            mine, gt = labels == c, t["boxes"][t["labels"] == c]
            s = sc[mine].numpy()
            scores[c].append(s[np.argsort(-s, kind="mergesort")])
            hits[c].append(match_image(boxes[mine], sc[mine], gt, iou_thresholds))
    curves: dict[float, list[PRCurve]] = {}
    for t, threshold in enumerate(iou_thresholds):
        curves[threshold] = [precision_recall(np.concatenate(scores[c]) if scores[c] else np.zeros(0),
                                              np.concatenate([h[t] for h in hits[c]]) if hits[c] else np.zeros(0, bool),
                                              int(n_gt[c]), recall_levels) for c in range(num_classes)]
    return curves


def mean_average_precision(curves: dict[float, list[PRCurve]], iou_thresholds: tuple[float, ...] | None = None) -> float:
    """The mean of AP over classes with ground truth and over ``iou_thresholds`` (all of ``curves``
    by default): mAP@0.5 with ``(0.5,)``, COCO's mAP@[.5:.95] with the ten thresholds."""
    chosen = iou_thresholds or tuple(curves)
    aps = [c.ap for t in chosen for c in curves[t] if c.n_gt > 0]
    return float(np.mean(aps)) if aps else float("nan")
