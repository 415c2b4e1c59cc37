"""CNN lesson "A detector, trained and measured": box coding, anchors and matching, the detector's
loss, NMS, RoIAlign and average precision, each proven equal to its library reference, each with a
planted bug that the same comparison must reject.

The code is dlbook/detection.py; the notebook is chapters/cnn/object-detection.ipynb.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.detection import MeanAveragePrecision
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import batched_nms
from torchvision.ops import box_iou as tv_box_iou
from torchvision.ops import nms as tv_nms
from torchvision.ops import roi_align as tv_roi_align

from dlbook.data.canvases import make_canvases
from dlbook.detection import (
    TinyDetector,
    build_targets,
    decode_boxes,
    detect,
    detection_loss,
    encode_boxes,
    evaluate_detections,
    greedy_nms,
    interpolated_ap,
    make_anchors,
    match_anchors,
    mean_average_precision,
    roi_align,
)
from dlbook.gradients import rel_error
from dlbook.models.unet import box_iou

f64 = torch.float64
SHAPES = [(8.0, 20.0), (14.0, 20.0), (20.0, 20.0)]


def random_boxes(n: int, gen: torch.Generator, size: float = 64.0, dtype: torch.dtype = f64) -> torch.Tensor:
    corner = torch.rand(n, 2, generator=gen, dtype=dtype) * size
    return torch.cat([corner, corner + 1 + torch.rand(n, 2, generator=gen, dtype=dtype) * 30], 1)


# --- box coding ------------------------------------------------------------------------------------


def test_decode_inverts_encode_and_both_equal_torchvision_boxcoder() -> None:
    gen = torch.Generator().manual_seed(0)
    boxes, anchors = random_boxes(2000, gen), random_boxes(2000, gen)
    deltas = encode_boxes(boxes, anchors)
    assert rel_error(decode_boxes(deltas, anchors), boxes) < 1e-12
    coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    assert rel_error(deltas, coder.encode_single(boxes, anchors)) < 1e-12
    assert rel_error(decode_boxes(deltas, anchors), coder.decode_single(deltas, anchors)) < 1e-12


def test_hand_example_of_the_encoding() -> None:
    t = encode_boxes(torch.tensor([12.0, 8, 28, 28], dtype=f64), torch.tensor([10.0, 10, 24, 30], dtype=f64))
    assert rel_error(t, torch.tensor([3 / 14, -0.1, math.log(16 / 14), 0.0], dtype=f64)) < 1e-12


def test_planted_bug_size_without_log_is_rejected() -> None:
    gen = torch.Generator().manual_seed(1)
    boxes, anchors = random_boxes(500, gen), random_boxes(500, gen)
    good = encode_boxes(boxes, anchors)
    buggy = good.clone()
    buggy[:, 2:] = (boxes[:, 2:] - boxes[:, :2]) / (anchors[:, 2:] - anchors[:, :2])  # w / w_a, no log
    assert rel_error(decode_boxes(buggy, anchors), boxes) > 1e-3, "the round trip must catch a missing log"


# --- anchors and matching --------------------------------------------------------------------------


def test_anchors_are_centred_on_the_grid_cells_in_row_column_shape_order() -> None:
    anchors = make_anchors((2, 3), 4, SHAPES)
    assert anchors.shape == (2 * 3 * 3, 4)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    assert torch.equal(centres[0], torch.tensor([2.0, 2.0]))  # cell (0, 0)
    assert torch.equal(centres[3], torch.tensor([6.0, 2.0]))  # cell (0, 1): next column, same row
    assert torch.equal(centres[9], torch.tensor([2.0, 6.0]))  # cell (1, 0)
    sizes = anchors[:3, 2:] - anchors[:3, :2]
    assert torch.equal(sizes, torch.tensor(SHAPES))


def test_matcher_iou_equals_torchvision_and_every_box_gets_an_anchor() -> None:
    gen = torch.Generator().manual_seed(2)
    anchors = make_anchors((16, 16), 4, SHAPES)
    boxes = random_boxes(40, gen).float()
    assert rel_error(box_iou(boxes.double(), anchors.double()), tv_box_iou(boxes.double(), anchors.double())) < 1e-12
    # tiny and odd-shaped boxes: below the threshold everywhere, still matched by the best-anchor rule
    odd = torch.tensor([[3.0, 3.0, 5.0, 4.0], [10.0, 30.0, 60.0, 33.0], [40.0, 2.0, 44.0, 62.0]])
    matched = match_anchors(anchors, odd)
    assert tv_box_iou(odd, anchors).amax(1).max() < 0.5
    for g in range(len(odd)):
        assert (matched == g).sum() == 1 and tv_box_iou(odd[g:g + 1], anchors)[0].argmax() == (matched == g).nonzero()[0, 0]


def test_planted_bug_threshold_only_matching_leaves_boxes_unmatched() -> None:
    anchors = make_anchors((16, 16), 4, SHAPES)
    odd = torch.tensor([[3.0, 3.0, 5.0, 4.0], [10.0, 30.0, 60.0, 33.0]])
    best_iou, best_gt = tv_box_iou(odd, anchors).max(0)
    buggy = torch.where(best_iou >= 0.5, best_gt, -1)  # no best-anchor rule
    assert (buggy >= 0).sum() == 0, "without the second rule these boxes have no anchor"
    assert (match_anchors(anchors, odd) >= 0).sum() == 2


def test_batched_matching_equals_one_canvas_at_a_time_and_ignores_absent_boxes() -> None:
    gen = torch.Generator().manual_seed(3)
    anchors = make_anchors((16, 16), 4, SHAPES)
    boxes = random_boxes(5 * 3, gen).float().view(5, 3, 4)
    boxes[1, 2] = float("nan")
    boxes[3] = float("nan")
    batched = match_anchors(anchors, boxes)
    for i in range(5):
        present = ~boxes[i].isnan().any(1)
        single = match_anchors(anchors, boxes[i][present])
        if not present.any():
            assert (single == -1).all() and (batched[i] == -1).all()
            continue
        expected = torch.where(single >= 0, present.nonzero()[:, 0][single.clamp_min(0)], -1)
        assert torch.equal(batched[i], expected)
    assert (batched[3] == -1).all() and not (batched[1] == 2).any()


def test_targets_encode_the_matched_box_and_label() -> None:
    gen = torch.Generator().manual_seed(4)
    anchors = make_anchors((16, 16), 4, SHAPES)
    boxes = random_boxes(6, gen).float().view(2, 3, 4)
    labels = torch.tensor([[3, 7, 1], [0, 9, -1]])
    boxes[1, 2] = float("nan")
    classes, offsets, matched = build_targets(anchors, boxes, labels)
    pos = matched >= 0
    assert torch.equal(classes > 0, pos)
    for i, k in pos.nonzero().tolist():
        g = matched[i, k]
        assert classes[i, k] == labels[i, g] + 1
        assert torch.allclose(decode_boxes(offsets[i, k], anchors[k]), boxes[i, g], atol=1e-4)


# --- detector and loss -----------------------------------------------------------------------------


def test_detector_shapes_and_loss_counts_positives_and_three_times_as_many_hard_negatives() -> None:
    torch.manual_seed(0)
    model = TinyDetector(len(SHAPES), width=8)
    logits, offsets = model(torch.randn(2, 1, 64, 64))
    assert logits.shape == (2, 16 * 16 * 3, 11) and offsets.shape == (2, 16 * 16 * 3, 4)
    classes = torch.zeros(2, 768, dtype=torch.int64)
    classes[0, :4] = 5
    classes[1, 10] = 2
    targets = torch.randn(2, 768, 4)
    loss = detection_loss(logits, offsets, classes, targets)
    # by hand: CE over positives and the 3x hardest negatives per image, smooth L1 on positives, / n_pos
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), classes.flatten(), reduction="none").view(2, 768)
    total = 0.0
    for i, n_pos in enumerate((4, 1)):
        pos = classes[i] > 0
        total += ce[i][pos].sum() + ce[i][~pos].topk(3 * n_pos).values.sum()
    total += torch.nn.functional.smooth_l1_loss(offsets[classes > 0], targets[classes > 0], beta=1 / 9, reduction="sum")
    assert rel_error(loss, total / 5) < 1e-5
    loss.backward()


def test_detect_returns_torchmetrics_format_with_per_class_nms() -> None:
    torch.manual_seed(0)
    anchors = make_anchors((16, 16), 4, SHAPES)
    model = TinyDetector(len(SHAPES), width=8)
    with torch.no_grad():
        model.cls_head.bias.zero_()  # near-uniform softmax: every class above the threshold
    out = detect(model, torch.randn(3, 1, 64, 64), anchors, score_threshold=0.05, max_detections=50)
    assert len(out) == 3
    for d in out:
        assert set(d) == {"boxes", "scores", "labels"} and len(d["boxes"]) <= 50
        assert d["labels"].min() >= 0 and d["labels"].max() <= 9
        assert torch.equal(d["scores"], d["scores"].sort(descending=True).values)
        keep = batched_nms(d["boxes"], d["scores"], d["labels"], 0.5)
        assert len(keep) == len(d["boxes"]), "the kept detections must survive NMS again"


# --- NMS -------------------------------------------------------------------------------------------


def test_greedy_nms_equals_torchvision_on_random_sets() -> None:
    gen = torch.Generator().manual_seed(5)
    for n in (0, 1, 3, 10, 50):
        for _ in range(10):
            boxes = random_boxes(n, gen, dtype=torch.float32)
            scores = torch.rand(n, generator=gen)
            for t in (0.2, 0.5, 0.8):
                assert torch.equal(greedy_nms(boxes, scores, t), tv_nms(boxes, scores, t))


def test_planted_bug_nms_in_input_order_is_rejected() -> None:
    def unsorted_nms(boxes, scores, iou_threshold):  # forgets to sort by score
        order, keep = torch.arange(len(boxes)), []
        while len(order):
            best, order = order[0], order[1:]
            keep.append(best.item())
            order = order[box_iou(boxes[best][None], boxes[order])[0] <= iou_threshold]
        return torch.tensor(keep, dtype=torch.int64)

    gen = torch.Generator().manual_seed(6)
    boxes = random_boxes(30, gen, dtype=torch.float32)
    scores = torch.rand(30, generator=gen)
    assert not torch.equal(unsorted_nms(boxes, scores, 0.3), tv_nms(boxes, scores, 0.3))


# --- RoIAlign --------------------------------------------------------------------------------------


def _rois(gen: torch.Generator, k: int = 12) -> torch.Tensor:
    corner = torch.rand(k, 2, generator=gen, dtype=f64) * 70 - 6
    return torch.cat([torch.randint(0, 2, (k, 1), generator=gen).to(f64), corner,
                      corner + 0.3 + torch.rand(k, 2, generator=gen, dtype=f64) * 30], 1)


@pytest.mark.parametrize("sampling_ratio,aligned", [(1, True), (2, True), (2, False), (-1, True), (-1, False)])
def test_roi_align_equals_torchvision_in_value_and_gradient(sampling_ratio: int, aligned: bool) -> None:
    gen = torch.Generator().manual_seed(7)
    features = torch.randn(2, 3, 16, 16, generator=gen, dtype=f64, requires_grad=True)
    rois = _rois(gen)
    args = ((5, 4), 0.25, sampling_ratio, aligned)
    ours, theirs = roi_align(features, rois, *args), tv_roi_align(features, rois, *args)
    assert rel_error(ours, theirs) < 1e-8
    w = torch.randn(ours.shape, generator=gen, dtype=f64)
    g1, = torch.autograd.grad((ours * w).sum(), features)
    g2, = torch.autograd.grad((theirs * w).sum(), features)
    assert rel_error(g1, g2) < 1e-8


def test_planted_bug_roi_align_without_the_half_pixel_shift_is_rejected() -> None:
    gen = torch.Generator().manual_seed(8)
    features = torch.randn(2, 3, 16, 16, generator=gen, dtype=f64)
    rois = _rois(gen)
    buggy = roi_align(features, rois, (5, 5), 0.25, 2, aligned=False)  # the shift forgotten
    assert rel_error(buggy, tv_roi_align(features, rois, (5, 5), 0.25, 2, aligned=True)) > 1e-3


# --- average precision -----------------------------------------------------------------------------


def _fake_detections(seed: int, n_images: int = 60):
    gen = torch.Generator().manual_seed(seed)
    preds, targets = [], []
    for _ in range(n_images):
        g = int(torch.randint(1, 4, (1,), generator=gen))
        corner = torch.rand(g, 2, generator=gen) * 40
        gt = torch.cat([corner, corner + 8 + torch.rand(g, 2, generator=gen) * 12], 1)
        labels = torch.randint(0, 10, (g,), generator=gen)
        d = int(torch.randint(0, 8, (1,), generator=gen))
        src = torch.randint(0, g, (d,), generator=gen)
        boxes = gt[src] + torch.randn(d, 4, generator=gen) * 2.5
        boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        pl = torch.where(torch.rand(d, generator=gen) < 0.8, labels[src], torch.randint(0, 10, (d,), generator=gen))
        preds.append({"boxes": boxes, "scores": torch.rand(d, generator=gen), "labels": pl})
        targets.append({"boxes": gt, "labels": labels})
    return preds, targets


def _reference(preds, targets):
    metric = MeanAveragePrecision(iou_type="bbox", rec_thresholds=np.linspace(0, 1, 101).tolist(),
                                  iou_thresholds=np.linspace(0.5, 0.95, 10).tolist())
    metric.update(preds, targets)
    return metric.compute()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_by_hand_equals_torchmetrics(seed: int) -> None:
    preds, targets = _fake_detections(seed)
    curves = evaluate_detections(preds, targets)
    ref = _reference(preds, targets)
    assert abs(mean_average_precision(curves, (0.5,)) - ref["map_50"].item()) < 1e-6
    assert abs(mean_average_precision(curves) - ref["map"].item()) < 1e-6
    assert abs(mean_average_precision(curves, (0.75,)) - ref["map_75"].item()) < 1e-6


def test_float32_recall_levels_reproduce_torchmetrics_defaults() -> None:
    preds, targets = _fake_detections(0, n_images=100)
    curves = evaluate_detections(preds, targets, iou_thresholds=(0.5,))
    levels32 = torch.linspace(0, 1, 101).double().numpy()
    by_hand = np.mean([interpolated_ap(c.recall, c.precision, levels32) for c in curves[0.5] if c.n_gt])
    metric = MeanAveragePrecision(iou_type="bbox")
    metric.update(preds, targets)
    assert abs(by_hand - metric.compute()["map_50"].item()) < 1e-6


def test_perfect_detections_score_one_and_ap_hand_example() -> None:
    preds, targets = _fake_detections(3, n_images=10)
    perfect = [{"boxes": t["boxes"], "scores": torch.rand(len(t["boxes"])), "labels": t["labels"]} for t in targets]
    assert mean_average_precision(evaluate_detections(perfect, targets)) == pytest.approx(1.0)
    # one class, 2 true boxes, detections by score: hit, miss, hit -> precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    # envelope 1 up to recall 1/2, 2/3 beyond: AP = (51 * 1 + 50 * 2/3) / 101
    recall, precision = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])
    assert interpolated_ap(recall, precision) == pytest.approx((51 + 50 * 2 / 3) / 101)


def test_planted_bug_ap_without_the_envelope_is_rejected() -> None:
    preds, targets = _fake_detections(1)
    curves = evaluate_detections(preds, targets, iou_thresholds=(0.5,))

    def raw_ap(recall, precision):  # reads the raw precision, not the best one at this recall or beyond
        idx = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")
        q = np.zeros(101)
        q[idx < len(precision)] = precision[idx[idx < len(precision)]]
        return q.mean()

    buggy = np.mean([raw_ap(c.recall, c.precision) for c in curves[0.5] if c.n_gt])
    assert abs(buggy - _reference(preds, targets)["map_50"].item()) > 1e-3


def test_canvas_generator_default_output_unchanged_by_the_detection_settings() -> None:
    """The lesson only passes size/min_digits/max_digits, which make_canvases already had."""
    gen = torch.Generator().manual_seed(0)
    digits = (torch.rand(30, 28, 28, generator=gen) * 255).to(torch.uint8)
    labels = torch.arange(30) % 10
    data = make_canvases(digits, labels, 4, size=64, min_digits=2, max_digits=3, seed=0)
    assert data.images.shape == (4, 1, 64, 64) and data.boxes.shape == (4, 3, 4)
    assert ((data.labels >= 0).sum(1) >= 2).all()
