"""CNN lesson 6 (segmentation and detection): the canvas generator, the U-Net and the overlap metrics.

The code is dlbook/data/canvases.py and dlbook/models/unet.py; the notebook is
chapters/cnn/segmentation-and-detection.ipynb.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.classification import BinaryJaccardIndex
from torchvision.ops import box_iou as tv_box_iou

from dlbook.data.canvases import draw_segments, ink_boxes, load_canvases, make_canvases
from dlbook.models.unet import UNetSmall, box_iou, dice, iou


def fake_digits(m: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Digit-like uint8 images: a bright filled rectangle at a random place in each 28 x 28 frame."""
    gen = torch.Generator().manual_seed(seed)
    digits = torch.zeros(m, 28, 28, dtype=torch.uint8)
    for i in range(m):
        y, x = torch.randint(2, 12, (2,), generator=gen).tolist()
        digits[i, y:y + 12, x:x + 8] = 255
        digits[i, y - 1, x] = 100  # a faint pixel just above: below the 0.5 threshold, so not part of the mask
    return digits, torch.arange(m) % 10


# --- canvases -------------------------------------------------------------------------------------


def test_canvases_are_deterministic_for_a_seed() -> None:
    digits, labels = fake_digits()
    a = make_canvases(digits, labels, 16, seed=3)
    b = make_canvases(digits, labels, 16, seed=3)
    c = make_canvases(digits, labels, 16, seed=4)
    for name in ("images", "masks", "classes", "labels"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(a.boxes.nan_to_num(-1), b.boxes.nan_to_num(-1))
    assert not torch.equal(a.images, c.images), "a different seed must give different canvases"


def test_canvas_shapes_and_dtypes() -> None:
    digits, labels = fake_digits()
    data = make_canvases(digits, labels, 10, size=44, max_digits=2)
    assert data.images.shape == data.masks.shape == data.classes.shape == (10, 1, 44, 44)
    assert data.images.dtype == torch.float32 and data.masks.dtype == torch.bool
    assert data.classes.dtype == torch.int64 and data.boxes.shape == (10, 2, 4) and data.labels.shape == (10, 2)
    x, y = data.dataset().tensors
    assert y.dtype == torch.float32 and set(y.unique().tolist()) <= {0.0, 1.0}
    x, y = data.dataset("classes").tensors
    assert y.shape == (10, 44, 44) and y.dtype == torch.int64
    with pytest.raises(ValueError):
        data.dataset("boxes")


def test_mask_is_exactly_the_thresholded_ink_of_one_digit() -> None:
    """No noise, no clutter, one digit: the mask is the digit's >0.5 pixels at its box, classes = label + 1."""
    digits, labels = fake_digits()
    data = make_canvases(digits, labels, 12, min_digits=1, max_digits=1, noise_std=0.0, clutter=0, seed=1)
    for i in range(12):
        x1, y1, x2, y2 = data.boxes[i, 0].long().tolist()
        assert (x2 - x1, y2 - y1) == (8, 12), "the box must hug the 8 x 12 bright rectangle"
        expected = torch.zeros(40, 40, dtype=torch.bool)
        expected[y1:y2, x1:x2] = True
        assert torch.equal(data.masks[i, 0], expected)
        assert set(data.classes[i, 0].unique().tolist()) == {0, int(data.labels[i, 0]) + 1}
        # without noise the image is the pasted digit itself: 1.0 on the mask, faint pixels off it
        assert torch.all(data.images[i, 0][expected] == 1.0)
        assert ((data.images[i, 0] > 0) & ~expected).sum() == 1


def test_mask_ignores_clutter_and_noise_on_real_mnist(mirror) -> None:
    train, val = load_canvases(64, 32, "quick", seed=0)
    clean = make_canvases(*_quick_train_digits(), 64, noise_std=0.0, clutter=0, seed=0)
    # The same seed draws the same digits and places: clutter and noise change the image only.
    assert torch.equal(train.masks, clean.masks) and torch.equal(train.classes, clean.classes)
    assert not torch.equal(train.images, clean.images)
    # Every canvas has one to three digits, and the mask marks bright pixels of the clean image.
    counts = (train.labels >= 0).sum(1)
    assert counts.min() >= 1 and counts.max() <= 3
    assert torch.equal(clean.masks, clean.images > 0.5)
    assert 0.03 < train.masks.float().mean() < 0.25
    assert not torch.equal(train.images[:32], val.images), "held-out canvases must differ"


def _quick_train_digits() -> tuple[torch.Tensor, torch.Tensor]:
    from dlbook.data import load_mnist

    return load_mnist("quick", normalize=False).train.tensors


def test_digits_overlapping_later_one_wins() -> None:
    a = torch.zeros(1, 28, 28, dtype=torch.uint8)
    a[0, 5:20, 5:20] = 255
    data = make_canvases(torch.cat([a, a]), torch.tensor([3, 7]), 50, size=30, min_digits=2, max_digits=2,
                         noise_std=0.0, clutter=0, seed=0)
    for i in range(50):
        last = data.labels[i, 1] + 1
        x1, y1, x2, y2 = data.boxes[i, 1].long().tolist()
        assert torch.all(data.classes[i, 0, y1:y2, x1:x2] == last)


def test_bad_inputs_are_rejected() -> None:
    digits, labels = fake_digits()
    with pytest.raises(ValueError, match="size"):
        make_canvases(digits, labels, 2, size=20)
    with pytest.raises(ValueError, match="normalize"):
        make_canvases(digits.float(), labels, 2)  # 0..255 floats: not unit range
    with pytest.raises(ValueError):
        make_canvases(digits, labels[:3], 2)


def test_ink_boxes_by_hand() -> None:
    on = torch.zeros(3, 6, 5, dtype=torch.bool)
    on[0, 1:4, 2] = True  # a vertical bar: x in [2, 3), y in [1, 4)
    on[1, 5, 0] = on[1, 0, 4] = True  # two corners: the box spans everything
    expected = torch.tensor([[2.0, 1.0, 3.0, 4.0], [0.0, 0.0, 5.0, 6.0], [0.0, 0.0, 0.0, 0.0]])
    assert torch.equal(ink_boxes(on), expected)


def test_segments_stay_inside_and_are_bright() -> None:
    strokes = draw_segments(8, 40, 3, torch.Generator().manual_seed(0))
    assert strokes.shape == (8, 40, 40)
    on = strokes[strokes > 0]
    assert on.min() >= 0.4 and on.max() <= 1.0
    assert ((strokes > 0).sum((1, 2)) > 10).all(), "every image should have visible strokes"


# --- U-Net ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(40, 40), (33, 47), (29, 31), (17, 16)])
@pytest.mark.parametrize("skips", [True, False])
def test_unet_keeps_the_input_size(size: tuple[int, int], skips: bool) -> None:
    model = UNetSmall(in_ch=1, out_ch=3, widths=(4, 8, 16), skips=skips)
    assert model(torch.randn(2, 1, *size)).shape == (2, 3, *size)


def test_unet_skips_change_the_decoder_inputs() -> None:
    with_skips, without = UNetSmall(widths=(4, 8, 16)), UNetSmall(widths=(4, 8, 16), skips=False)
    assert with_skips.decode[0][0].in_channels == 16 and without.decode[0][0].in_channels == 8
    assert UNetSmall(widths=(4, 8, 16, 32))(torch.randn(1, 1, 24, 24)).shape == (1, 1, 24, 24)
    with pytest.raises(ValueError):
        UNetSmall(widths=(8,))


def test_unet_learns_a_toy_mask_quickly() -> None:
    """Pixels brighter than their neighbourhood: a few Adam steps must beat the all-background guess."""
    torch.manual_seed(0)
    x = torch.randn(16, 1, 20, 20)
    y = (F.avg_pool2d(x, 3, 1, 1) > 0.3).float()
    model = UNetSmall(widths=(4, 8))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert iou(model(x) > 0, y.bool()).item() > 0.5


# --- metrics --------------------------------------------------------------------------------------


def test_iou_and_dice_by_hand() -> None:
    a = torch.tensor([[1, 1, 0, 0]], dtype=torch.bool)
    b = torch.tensor([[0, 1, 1, 0]], dtype=torch.bool)
    assert iou(a, b).item() == pytest.approx(1 / 3)
    assert dice(a, b).item() == pytest.approx(1 / 2)
    assert iou(a, a).item() == 1.0 and iou(a, ~a).item() == 0.0


def test_empty_masks() -> None:
    empty = torch.zeros(2, 1, 5, 5, dtype=torch.bool)
    full = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    assert iou(empty, empty).item() == 1.0 and dice(empty, empty).item() == 1.0
    assert iou(empty, full).item() == 0.0 and dice(full, empty).item() == 0.0
    mixed = torch.stack([empty[0], full[0]])
    torch.testing.assert_close(iou(mixed, full, per_image=True), torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(iou(empty, mixed, per_image=True), torch.tensor([1.0, 0.0], dtype=torch.float64))


def test_iou_equals_torchmetrics_and_dice_relation() -> None:
    gen = torch.Generator().manual_seed(0)
    pred = torch.rand(6, 1, 16, 16, generator=gen) > 0.6
    true = torch.rand(6, 1, 16, 16, generator=gen) > 0.7
    ours = iou(pred, true).item()
    theirs = BinaryJaccardIndex()(pred.int(), true.int()).item()
    assert ours == pytest.approx(theirs, abs=1e-6)
    j = iou(pred, true, per_image=True)
    torch.testing.assert_close(dice(pred, true, per_image=True), 2 * j / (1 + j))
    # 0/1 floats are accepted, probabilities are not
    assert iou(pred.float(), true.float()).item() == pytest.approx(ours)
    with pytest.raises(ValueError, match="threshold"):
        iou(torch.rand(4, 4), true[0, 0, :4, :4])
    with pytest.raises(ValueError, match="shapes"):
        iou(pred, true[:3])


def test_a_wrong_union_is_caught() -> None:
    """A planted bug, union = |A| + |B| (the intersection counted twice), must disagree with torchmetrics."""
    gen = torch.Generator().manual_seed(1)
    pred, true = torch.rand(2, 8, 8, generator=gen) > 0.5, torch.rand(2, 8, 8, generator=gen) > 0.5
    wrong = (pred & true).sum() / (pred.sum() + true.sum())
    reference = BinaryJaccardIndex()(pred.int(), true.int())
    assert abs(wrong - reference) > 0.05
    assert iou(pred, true).item() == pytest.approx(reference.item(), abs=1e-6)


def test_box_iou_matches_torchvision() -> None:
    boxes1 = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 15.0], [20.0, 20.0, 25.0, 30.0]])
    boxes2 = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 10.0, 20.0], [100.0, 100.0, 101.0, 101.0]])
    ours = box_iou(boxes1, boxes2)
    torch.testing.assert_close(ours, tv_box_iou(boxes1, boxes2))
    assert ours[0, 0] == 1.0 and ours[2, 2] == 0.0
    assert ours[1, 0].item() == pytest.approx(25 / 175)  # 5x5 overlap of two 10x10 boxes
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(30, 2, generator=gen, dtype=torch.float64) * 50
    wh = torch.rand(30, 2, generator=gen, dtype=torch.float64) * 20 + 1
    boxes = torch.cat([xy, xy + wh], 1)
    torch.testing.assert_close(box_iou(boxes[:12], boxes[12:]), tv_box_iou(boxes[:12], boxes[12:]))


def test_block_bias_adds_to_each_block_and_zero_bias_changes_nothing():
    torch.manual_seed(0)
    model = UNetSmall(widths=(4, 8, 16)).eval()
    x = torch.randn(2, 1, 12, 12)
    widths = [4, 8, 16, 8, 4]  # encoder blocks, then decoder blocks
    zeros = [torch.zeros(2, w, 1, 1) for w in widths]
    assert torch.equal(model(x, block_bias=zeros), model(x))
    # a bias on the last block only moves the output by the head's 1x1 weights times that bias
    last = [torch.zeros(2, w, 1, 1) for w in widths[:-1]] + [torch.ones(2, 4, 1, 1)]
    shift = model(x, block_bias=last) - model(x)
    expected = model.head.weight.sum().expand_as(shift)
    assert torch.allclose(shift, expected, atol=1e-5)
    with pytest.raises(ValueError, match="one tensor per conv block"):
        model(x, block_bias=zeros[:-1])
