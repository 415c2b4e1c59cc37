"""Fusion lesson: CNN + LSTM over frames (chapters/fusion/video-cnn-lstm.ipynb).

The data are dlbook/data/moving_digits.py (clips of a moving MNIST digit, label = left or right,
every clip paired with its own reversal); the models are dlbook/models/video.py (a shared per-frame
CNN, then an LSTM or a mean over time). The tests check the generator (determinism, shapes, labels,
the forward/backward pairing, clear errors) and the two properties the lesson proves: the averaging
model cannot tell a clip from any shuffle of its frames, the LSTM can.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlbook.data.moving_digits import load_moving_digits, make_moving_digits
from dlbook.models import video

f64 = torch.float64


def fake_digits(m: int = 30, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random uint8 'digits' with a blank 2-pixel border (like MNIST) and random classes."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.zeros(m, 28, 28, dtype=torch.uint8)
    images[:, 2:26, 2:26] = torch.randint(1, 256, (m, 24, 24), generator=gen, dtype=torch.uint8)
    return images, torch.randint(0, 10, (m,), generator=gen)


@pytest.fixture(scope="module")
def clips():
    return make_moving_digits(*fake_digits(), 40, seed=3)


# --- the data generator ---------------------------------------------------------------------------


def test_same_arguments_same_clips_and_seed_matters() -> None:
    a = make_moving_digits(*fake_digits(), 12, seed=5)
    b = make_moving_digits(*fake_digits(), 12, seed=5)
    c = make_moving_digits(*fake_digits(), 12, seed=6)
    for name in ("frames", "labels", "positions", "digits", "partner"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.frames, c.frames)


def test_shapes_dtypes_and_balance(clips) -> None:
    n, t, s = 40, 8, 32
    assert clips.frames.shape == (n, t, 1, s, s) and clips.frames.dtype == torch.float32
    assert clips.labels.shape == (n,) and clips.labels.dtype == torch.int64
    assert clips.positions.shape == (n, t, 2) and clips.positions.dtype == torch.int64
    assert clips.digits.shape == (n,) and clips.partner.shape == (n,)
    assert 0 <= clips.frames.min() and clips.frames.max() <= 1
    assert int(clips.labels.sum()) == n // 2, "exactly half the clips move right"
    x, y = clips.dataset().tensors
    assert x is clips.frames and y is clips.labels and len(clips) == n
    other = make_moving_digits(*fake_digits(), 6, frames=5, size=40, digit_size=28, max_speed=3)
    assert other.frames.shape == (6, 5, 1, 40, 40)


def test_pairs_are_the_same_frames_reversed_with_opposite_labels(clips) -> None:
    p = clips.partner
    assert torch.equal(p[p], torch.arange(len(clips))), "partner must be an involution"
    assert (p != torch.arange(len(clips))).all()
    assert torch.equal(clips.frames[p], clips.frames.flip(1)), "a partner holds the same frames, reversed"
    assert torch.equal(clips.labels[p], 1 - clips.labels)
    assert torch.equal(clips.digits[p], clips.digits)
    # As an unordered set the frames are identical: sort each clip's frames by their bytes.
    def as_set(k: int) -> list[bytes]:
        return sorted(f.numpy().tobytes() for f in clips.frames[k])
    assert all(as_set(k) == as_set(int(p[k])) for k in range(len(clips)))


def test_labels_and_positions_describe_the_pixels(clips) -> None:
    steps = clips.positions.diff(dim=1)  # (N, T-1, 2): constant velocity
    assert (steps == steps[:, :1]).all(), "motion must be a straight line at constant speed"
    vx, vy = steps[:, 0, 0], steps[:, 0, 1]
    assert (vx != 0).all() and (vx.abs() <= 2).all() and (vy.abs() <= 2).all()
    assert torch.equal((vx > 0).long(), clips.labels), "label 1 must mean 'moves right'"
    assert clips.positions.min() >= 0 and clips.positions.max() <= 32 - 14
    # The ink sits exactly in the 14x14 square at the recorded corner, and all of it is in the frame.
    frames = clips.frames[:, :, 0]
    inside = torch.zeros_like(frames, dtype=torch.bool)
    for k in range(len(clips)):
        for t in range(frames.shape[1]):
            x, y = clips.positions[k, t].tolist()
            inside[k, t, y : y + 14, x : x + 14] = True
    assert (frames[~inside] == 0).all()
    ink = frames.sum(dim=(2, 3))
    assert torch.allclose(ink, ink[:, :1].expand_as(ink)), "the whole digit must be visible in every frame"


def test_digits_are_shrunk_by_exact_two_by_two_means() -> None:
    images, classes = fake_digits(4)
    clip = make_moving_digits(images, classes, 2, seed=0)
    x, y = clip.positions[0, 0].tolist()
    patch = clip.frames[0, 0, 0, y : y + 14, x : x + 14]
    expected = F.avg_pool2d(images.float()[:, None] / 255, 2)[:, 0]
    assert any(torch.allclose(patch, e, atol=1e-6) for e in expected)


@pytest.mark.parametrize("kwargs, match", [
    ({"n": 7}, "even"),
    ({"n": 0}, "even"),
    ({"frames": 1}, "at least 2 frames"),
    ({"max_speed": 3}, "room"),
    ({"digit_size": 29}, "digit_size"),
    ({"max_speed": 0}, "max_speed"),
])
def test_bad_arguments_raise_clear_errors(kwargs: dict, match: str) -> None:
    images, classes = fake_digits()
    args = {"n": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        make_moving_digits(images, classes, args.pop("n"), **args)


def test_mismatched_or_normalised_digits_are_refused() -> None:
    images, classes = fake_digits()
    with pytest.raises(ValueError, match="labels"):
        make_moving_digits(images, classes[:-1], 4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        make_moving_digits((images.float() - 30) / 80, classes, 4)


def test_train_and_held_out_clips_come_from_disjoint_digits(mirror) -> None:
    from dlbook.data import load_mnist

    train, val = load_moving_digits(20, 20, "quick", digit_size=28, size=40, max_speed=1)
    splits = load_mnist("quick", normalize=False)
    for clips_, own, other in ((train, splits.train, splits.val), (val, splits.val, splits.train)):
        for k in range(0, len(clips_), 3):
            x, y = clips_.positions[k, 0].tolist()
            patch = clips_.frames[k, 0, 0, y : y + 28, x : x + 28]
            in_own = (own.tensors[0][:, 0] == patch).all(dim=(1, 2))
            assert in_own.any() and not (other.tensors[0][:, 0] == patch).all(dim=(1, 2)).any()
            assert clips_.digits[k] == own.tensors[1][in_own][0]


# --- the models -------------------------------------------------------------------------------------


def small_models(dtype=f64) -> tuple[video.CNNLSTMClassifier, video.FrameAverageClassifier]:
    torch.manual_seed(0)
    lstm = video.CNNLSTMClassifier(video.FrameEncoder(dim=16), hidden=12).to(dtype)
    torch.manual_seed(0)
    average = video.FrameAverageClassifier(video.FrameEncoder(dim=16), hidden=20).to(dtype)
    return lstm.eval(), average.eval()


def test_folding_time_into_the_batch_is_the_per_frame_loop(clips) -> None:
    x = clips.frames[:6].to(f64)
    assert video.fold_time(x).shape == (48, 1, 32, 32)
    encoder = small_models()[0].encoder
    folded, looped = video.encode_clips(encoder, x), video.encode_clips_looped(encoder, x)
    assert folded.shape == (6, 8, 16)
    assert (folded - looped).abs().max() < 1e-12
    with pytest.raises(ValueError, match="B, T, C, H, W"):
        video.fold_time(x[0])


def test_averaging_is_invariant_to_shuffling_and_the_lstm_is_not(clips) -> None:
    x = clips.frames[:10].to(f64)
    shuffled = video.shuffle_frames(x, torch.Generator().manual_seed(1))
    assert not torch.equal(shuffled, x)
    assert torch.allclose(shuffled.sum(1), x.sum(1)), "shuffling only reorders frames"
    lstm, average = small_models()
    with torch.no_grad():
        assert (average(shuffled) - average(x)).abs().max() < 1e-12
        assert (average(x.flip(1)) - average(x)).abs().max() < 1e-12
        assert (lstm(x.flip(1)) - lstm(x)).abs().max() > 1e-4, "the LSTM must see the order"


def test_planted_bug_time_weighted_average_is_caught(clips) -> None:
    # A 'mean' with weights that grow over time is no longer a function of the set of frames.
    class RampAverage(video.FrameAverageClassifier):
        def forward(self, x):
            features = video.encode_clips(self.encoder, x)
            w = torch.linspace(0.5, 1.5, x.shape[1], dtype=x.dtype)[None, :, None]
            return self.head((w * features).mean(1))

    torch.manual_seed(0)
    buggy = RampAverage(video.FrameEncoder(dim=16), hidden=20).to(f64).eval()
    x = clips.frames[:10].to(f64)
    with torch.no_grad():
        assert (buggy(x.flip(1)) - buggy(x)).abs().max() > 1e-4


def test_averaging_model_is_right_on_exactly_one_clip_of_each_pair(clips) -> None:
    _, average = small_models()
    x = clips.frames.to(f64)
    with torch.no_grad():
        logits = average(x)
    assert (logits - logits[clips.partner]).abs().max() < 1e-12, "a clip and its reversal look the same"
    accuracy = (logits.argmax(1) == clips.labels).double().mean().item()
    assert accuracy == 0.5
    # ... and its cross-entropy on a paired set can never go below ln 2 (eq-vid-ln2).
    for seed in range(3):
        torch.manual_seed(seed)
        model = video.FrameAverageClassifier(video.FrameEncoder(dim=8), hidden=8).to(f64)
        with torch.no_grad():
            loss = F.cross_entropy(model(x), clips.labels)
        assert loss >= math.log(2) - 1e-12


def test_lstm_model_matches_the_scratch_lstm_loop(clips) -> None:
    lstm, _ = small_models()
    x = clips.frames[:5].to(f64)
    with torch.no_grad():
        reference = lstm(x)
        assert (video.scratch_lstm_logits(lstm, x) - reference).abs().max() < 1e-12
        wrong = video.scratch_lstm_logits(lstm, x, gate_order="figo")  # planted bug: gates swapped
    assert (wrong - reference).abs().max() > 1e-4


def test_parameter_counts_are_matched() -> None:
    for dim, hidden in ((32, 32), (64, 48), (16, 12)):
        h = video.matched_average_hidden(dim, hidden)
        lstm = video.CNNLSTMClassifier(video.FrameEncoder(dim=dim), hidden=hidden)
        average = video.FrameAverageClassifier(video.FrameEncoder(dim=dim), hidden=h)
        a, b = video.count_parameters(lstm), video.count_parameters(average)
        assert abs(a - b) / a < 0.01, (dim, hidden, a, b)
    frozen = nn.Linear(3, 2).requires_grad_(False)
    assert video.count_parameters(frozen) == 0


def test_encoder_needs_a_size_divisible_by_four() -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        video.FrameEncoder(size=30)
