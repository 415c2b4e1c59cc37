"""Fusion lesson: reading digit strings with a CRNN and CTC (chapters/fusion/crnn-ctc.ipynb).

The data generator (dlbook/data/digit_strings.py: determinism, shapes, labels, bad arguments) and
dlbook/models/crnn.py: the CTC alpha/beta recursions against F.ctc_loss and autograd in float64,
the brute-force sum over all paths, planted bugs that the checks must catch, greedy decoding and
the model's shapes.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import dlbook.models.crnn as crnn
from dlbook.data.digit_strings import (
    BLANK,
    DIGIT,
    NUM_CLASSES,
    labels_to_text,
    make_digit_strings,
    text_to_labels,
)
from dlbook.gradients import gradcheck64, rel_error

f64 = torch.float64


def _fake_digits(m: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """m "digits": digit d is a 28x28 image whose ink (a filled block) has brightness (d + 1) / 10,
    so each pasted digit can be recognised in a strip by its value."""
    labels = torch.arange(m) % 10
    images = torch.zeros(m, 1, DIGIT, DIGIT)
    images[:, :, 6:22, 8:20] = ((labels + 1) / 10.0)[:, None, None, None]
    return images, labels


# --- the data generator ----------------------------------------------------------------------

def test_same_arguments_same_strips_and_seed_matters() -> None:
    digits, labels = _fake_digits()
    a = make_digit_strings(digits, labels, 20, seed=3, noise_std=0.1)
    b = make_digit_strings(digits, labels, 20, seed=3, noise_std=0.1)
    c = make_digit_strings(digits, labels, 20, seed=4, noise_std=0.1)
    for name in ("images", "targets", "lengths", "spans"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.images, c.images)


def test_shapes_dtypes_and_label_encoding() -> None:
    digits, labels = _fake_digits()
    data = make_digit_strings(digits, labels, 50, height=32, width=140, min_len=2, max_len=4, seed=0)
    assert data.images.shape == (50, 1, 32, 140) and data.images.dtype == torch.float32
    assert data.targets.shape == (50, 4) and data.targets.dtype == torch.int64
    assert data.lengths.dtype == torch.int64 and data.spans.shape == (50, 4, 2)
    assert set(data.lengths.tolist()) <= {2, 3, 4} and len(set(data.lengths.tolist())) > 1
    valid = torch.arange(4) < data.lengths[:, None]
    assert (data.targets[valid] >= 1).all() and (data.targets[valid] <= 10).all()
    assert (data.targets[~valid] == BLANK).all() and (data.spans[~valid] == -1).all()
    assert all(len(t) == int(n) for t, n in zip(data.texts, data.lengths))
    # frames inside the strip, left to right, 28 px wide
    spans = data.spans[valid]
    assert (spans[:, 0] >= 0).all() and (spans[:, 1] <= 140).all()
    assert (spans[:, 1] - spans[:, 0] == DIGIT).all()


def test_labels_match_the_pasted_digits() -> None:
    """Each slot's frame holds the ink of the digit its label names (no jitter, no overlap)."""
    digits, labels = _fake_digits()
    data = make_digit_strings(digits, labels, 40, width=150, gaps=(0, 2), jitter=0, seed=1)
    for i in range(len(data)):
        for j in range(int(data.lengths[i])):
            x0, x1 = data.spans[i, j].tolist()
            ink = data.images[i, 0, :, x0:x1].max().item()
            assert abs(ink - int(data.targets[i, j]) / 10.0) < 1e-6, (i, j)
    assert data.images[:, 0].max() <= 1.0


def test_text_round_trip() -> None:
    assert text_to_labels("301") == [4, 1, 2] and labels_to_text([4, 1, 2]) == "301"
    with pytest.raises(ValueError):
        labels_to_text([0, 3])
    with pytest.raises(ValueError):
        text_to_labels("3a")


@pytest.mark.parametrize("kwargs, message", [
    ({"width": 100}, "need"),  # 5 digits at gap -4 need 124 px
    ({"height": 20}, "height"),
    ({"min_len": 3, "max_len": 2}, "min_len"),
    ({"gaps": (-2, -6)}, "gaps"),
    ({"jitter": -1}, "jitter"),
])
def test_bad_arguments_give_clear_errors(kwargs: dict, message: str) -> None:
    digits, labels = _fake_digits()
    with pytest.raises(ValueError, match=message):
        make_digit_strings(digits, labels, 5, **kwargs)


def test_bad_digits_give_clear_errors() -> None:
    digits, labels = _fake_digits()
    with pytest.raises(ValueError, match="labels"):
        make_digit_strings(digits, labels[:-1], 5)
    with pytest.raises(ValueError, match="normalize"):
        make_digit_strings(digits * 3 - 1, labels, 5)
    with pytest.raises(ValueError, match="28"):
        make_digit_strings(torch.zeros(4, 20, 20), labels[:4], 5)


def test_load_digit_strings_on_real_mnist(mirror) -> None:
    """Train strips from the train digits, held-out strips from the disjoint validation digits."""
    from dlbook.data import load_mnist
    from dlbook.data.digit_strings import load_digit_strings

    train, val = load_digit_strings(40, 20, "quick", seed=0)
    assert train.images.shape == (40, 1, 28, 128) and val.images.shape == (20, 1, 28, 128)
    splits = load_mnist("quick", normalize=False)
    again = make_digit_strings(*splits.train.tensors, 40, seed=0)
    assert torch.equal(train.images, again.images) and train.texts == again.texts
    held_out = make_digit_strings(*splits.val.tensors, 20, seed=1)
    assert torch.equal(val.images, held_out.images) and val.texts == held_out.texts
    assert 0.0 <= train.images.min() and train.images.max() <= 1.0


# --- CTC from scratch ------------------------------------------------------------------------

def test_collapse_and_extended_label() -> None:
    assert crnn.ctc_collapse([3, 3, 0, 1, 0, 0, 1, 4, 4]) == [3, 1, 1, 4]
    assert crnn.ctc_collapse([1, 1, 1]) == [1] and crnn.ctc_collapse([0, 0]) == []
    assert crnn.extend_with_blanks(torch.tensor([2, 2, 5])).tolist() == [0, 2, 0, 2, 0, 5, 0]
    skips = crnn.allowed_skips(crnn.extend_with_blanks(torch.tensor([2, 2, 5])))
    assert skips.tolist() == [False, False, False, False, False, True, False]


@pytest.mark.parametrize("seed", [0, 1])
def test_ctc_matches_torch_in_float64(seed: int) -> None:
    report = crnn.check_ctc(seed=seed)
    assert set(report.errors) == {"loss (alpha recursion)", "dL/dlogits (alpha-beta)",
                                  "dL/dlogits (autograd through alpha)"}
    report.assert_ok()


def test_ragged_batch_with_padding_and_short_inputs() -> None:
    report = crnn.check_ctc(T=9, N=3, C=6, seed=2, targets=[[5, 5, 5, 5], [1, 2], [3]])
    report.assert_ok()


@pytest.mark.parametrize("target", [[2], [2, 2], [1, 3, 1]])
def test_brute_force_sum_over_paths_equals_recursion_and_torch(target: list[int]) -> None:
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 4, generator=gen, dtype=f64)
    log_probs = logits.log_softmax(-1)
    total, paths = crnn.ctc_brute_force(log_probs.exp(), target)
    assert paths and all(crnn.ctc_collapse(p) == target for p in paths)
    mine = crnn.ctc_nll(log_probs, torch.tensor(target))
    torch_nll = F.ctc_loss(log_probs[:, None], torch.tensor([target]), torch.tensor([4]),
                           torch.tensor([len(target)]), reduction="sum")
    assert abs(total - torch.exp(-mine).item()) < 1e-12 * max(total, 1e-300)
    assert rel_error(mine, torch_nll) < 1e-12


def test_one_label_three_frames_has_six_alignments() -> None:
    probs = torch.full((3, 11), 1 / 11, dtype=f64)
    total, paths = crnn.ctc_brute_force(probs, [2])
    assert len(paths) == 6 and abs(total - 6 / 11**3) < 1e-15
    assert crnn.ctc_brute_force(probs, [2, 2])[1] == [(2, 0, 2)]  # "11" needs the blank between


def test_impossible_label_has_infinite_loss_like_torch() -> None:
    # "11" needs 3 frames (1 - 1), only 2 are given
    log_probs = torch.randn(2, 4, dtype=f64, generator=torch.Generator().manual_seed(9)).log_softmax(-1)
    mine = crnn.ctc_nll(log_probs, torch.tensor([1, 1]))
    theirs = F.ctc_loss(log_probs[:, None], torch.tensor([[1, 1]]), torch.tensor([2]), torch.tensor([2]),
                        reduction="sum")
    assert torch.isinf(mine) and torch.isinf(theirs)


def test_every_frame_accounts_for_all_paths() -> None:
    """eq-ctc-occupancy: sum_s alpha_t(s) beta_t(s) / y_t(l'_s) = p(l|x) at every frame t."""
    log_probs = torch.randn(7, 5, dtype=f64, generator=torch.Generator().manual_seed(3)).log_softmax(-1)
    target = torch.tensor([1, 1, 3])
    alpha, beta = crnn.ctc_alpha(log_probs, target), crnn.ctc_beta(log_probs, target)
    ext = crnn.extend_with_blanks(target)
    per_frame = torch.logsumexp(alpha + beta - log_probs[:, ext], dim=1)
    assert (per_frame + crnn.ctc_nll(log_probs, target)).abs().max() < 1e-12


def test_gradcheck_through_the_recursion() -> None:
    logits = torch.randn(6, 4, dtype=f64, generator=torch.Generator().manual_seed(4))
    assert gradcheck64(lambda u: crnn.ctc_nll(u.log_softmax(-1), torch.tensor([1, 1, 2])), [logits])


def test_torch_ctc_gradient_is_for_the_logits_not_the_log_probs() -> None:
    """F.ctc_loss returns y - gamma for log_probs (pytorch/pytorch#52241): right only behind log_softmax."""
    log_probs = torch.randn(6, 1, 4, dtype=f64, generator=torch.Generator().manual_seed(6)).log_softmax(-1)
    leaf = log_probs.clone().requires_grad_(True)
    loss = F.ctc_loss(leaf, torch.tensor([[1, 2]]), torch.tensor([6]), torch.tensor([2]), reduction="sum")
    (torch_grad,) = torch.autograd.grad(loss, leaf)
    y_minus_gamma = crnn.ctc_grad_logits(log_probs[:, 0], torch.tensor([1, 2]))
    assert rel_error(torch_grad[:, 0], y_minus_gamma) < 1e-12
    minus_gamma = y_minus_gamma - log_probs[:, 0].exp()  # the true gradient w.r.t. free log-probs
    assert rel_error(torch_grad[:, 0], minus_gamma) > 0.1


# --- planted bugs ----------------------------------------------------------------------------

def _skip_between_equal_labels(extended: torch.Tensor, blank: int) -> torch.Tensor:
    """Planted bug 1: the skip allowed into every label state, also between equal labels."""
    skip = torch.zeros(len(extended), dtype=torch.bool)
    skip[2:] = extended[2:] != blank
    return skip


def test_planted_bug_skip_between_equal_labels_is_caught_only_on_repeats() -> None:
    with_repeats = crnn.check_ctc(skip_rule=_skip_between_equal_labels)
    assert not with_repeats.ok and with_repeats.errors["loss (alpha recursion)"] > 1e-2
    # labels without repeats never meet the case, so the buggy rule is then harmless
    no_repeats = crnn.check_ctc(skip_rule=_skip_between_equal_labels,
                                targets=[[1, 2], [3], [2, 3, 4], [4, 1]])
    no_repeats.assert_ok()
    # "11" in 3 frames: the only true alignment is 1-1; the bug adds paths that read as "1"
    probs = torch.randn(3, 4, dtype=f64, generator=torch.Generator().manual_seed(8)).softmax(-1)
    truth, _ = crnn.ctc_brute_force(probs, [1, 1])
    buggy = torch.exp(-crnn.ctc_nll(probs.log(), torch.tensor([1, 1]), skip_rule=_skip_between_equal_labels))
    assert buggy.item() > truth * 1.01


def test_planted_bug_forgotten_division_by_y_is_caught() -> None:
    """Planted bug 2: gamma without the 1 / y_t(k) of eq-ctc-posterior."""
    def grad_without_division(log_probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ext = crnn.extend_with_blanks(target)
        alpha, beta = crnn.ctc_alpha(log_probs, target), crnn.ctc_beta(log_probs, target)
        occupancy = (alpha + beta - torch.logsumexp(alpha[-1, -2:], 0)).exp()
        return log_probs.exp() - torch.zeros_like(log_probs).index_add_(1, ext, occupancy)

    log_probs = torch.randn(8, 5, dtype=f64, generator=torch.Generator().manual_seed(7)).log_softmax(-1)
    target = torch.tensor([1, 2, 2])
    leaf = log_probs.clone().requires_grad_(True)
    loss = F.ctc_loss(leaf.log_softmax(-1)[:, None], target[None], torch.tensor([8]), torch.tensor([3]),
                      reduction="sum")
    (reference,) = torch.autograd.grad(loss, leaf)
    assert rel_error(crnn.ctc_grad_logits(log_probs, target), reference) < 1e-12
    assert rel_error(grad_without_division(log_probs, target), reference) > 0.1


# --- the model, decoding, metrics ------------------------------------------------------------

def test_greedy_decode_collapses_repeats_and_drops_blanks() -> None:
    paths = torch.tensor([[3, 3, 0, 3, 0, 0, 5, 5], [0, 0, 0, 0, 0, 0, 0, 0]])  # (N, T)
    log_probs = F.one_hot(paths, NUM_CLASSES).double().transpose(0, 1).log()  # (T, N, C), 0 or -inf
    assert crnn.greedy_decode(log_probs) == [[3, 3, 5], []]
    assert crnn.greedy_decode(log_probs, torch.tensor([3, 8])) == [[3], []]


def test_crnn_shapes_and_log_probabilities() -> None:
    torch.manual_seed(0)
    model = crnn.CRNN(height=28, channels=(4, 8, 8), hidden=6).eval()
    x = torch.rand(3, 1, 28, 128)
    out = model(x)
    assert model.frames(128) == 16 and out.shape == (16, 3, NUM_CLASSES)
    assert torch.allclose(out.exp().sum(-1), torch.ones(16, 3), atol=1e-5)
    # the output at frame t depends on the whole strip (BiLSTM): change the right edge, frame 0 moves
    x2 = x.clone()
    x2[..., -8:] = 1.0
    assert (model(x2)[0] - out[0]).abs().max() > 1e-6


def test_metrics() -> None:
    assert crnn.sequence_accuracy(["12", "3", "45"], ["12", "4", "45"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        crnn.sequence_accuracy([], [])
    digits, labels = _fake_digits()
    data = make_digit_strings(digits, labels, 6, seed=0)
    torch.manual_seed(0)
    result = crnn.evaluate_strings(crnn.CRNN(channels=(4, 8, 8), hidden=6), data)
    assert set(result) == {"seq_acc", "cer", "predicted"} and len(result["predicted"]) == 6
    assert 0.0 <= result["seq_acc"] <= 1.0 and result["cer"] >= 0.0


def test_min_frames_rule() -> None:
    """eq-ctc-min-frames: p(l|x) > 0 exactly when T >= L + number of equal neighbours."""
    for target in ([1, 1, 2], [2, 2, 2], [1, 2, 3]):
        need = len(target) + sum(a == b for a, b in itertools.pairwise(target))
        for T in (need - 1, need):
            nll = crnn.ctc_nll(torch.zeros(T, 4, dtype=f64).log_softmax(-1), torch.tensor(target))
            assert torch.isinf(nll) == (T < need)
