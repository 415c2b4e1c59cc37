"""Fusion lesson: reading spoken digit strings (chapters/fusion/spoken-digit-strings.ipynb).

The generator (dlbook/data/spoken_strings.py: determinism, disjoint speakers, gaps, loudness, labels,
bad arguments) on fake recordings; CTC prefix beam search (dlbook/models/ctc_beam.py) against the
brute-force label probabilities, the alpha recursion and F.ctc_loss, with planted bugs; the path
beam at width 1 against greedy decoding; the features against librosa; the digit error rate
against torchmetrics.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dlbook.data.digit_strings import BLANK
from dlbook.data.spoken_strings import make_spoken_string_split, make_spoken_strings
from dlbook.gradients import rel_error
from dlbook.models import ctc_beam
from dlbook.models.crnn import CRNN, ctc_nll, greedy_decode
from dlbook.models.spoken_ctc import (
    UtteranceBatches,
    cmvn,
    decode,
    digit_error_rate,
    edit_distance,
    predict_log_probs,
    utterance_features,
)

SPEAKERS = ["ann", "bob", "cy"]


def _fake_recordings(takes: int = 2) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """Recording of digit d by speaker k (take t): a constant wave of value (d + 1) / 16 + k / 1000,
    40 + 10 d + t samples long, so each pasted clip can be recognised by its value and length."""
    waves, digits, speakers = [], [], []
    for k, s in enumerate(SPEAKERS):
        for d in range(10):
            for t in range(takes):
                waves.append(np.full(40 + 10 * d + t, (d + 1) / 16 + k / 1000, dtype=np.float32))
                digits.append(d)
                speakers.append(s)
    return waves, np.array(digits), speakers


# --- the generator ----------------------------------------------------------------------------

def test_same_arguments_same_strings_and_seed_matters() -> None:
    w, d, s = _fake_recordings()
    a = make_spoken_strings(w, d, s, 30, seed=3)
    b = make_spoken_strings(w, d, s, 30, seed=3)
    c = make_spoken_strings(w, d, s, 30, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a.waves, b.waves))
    for name in ("targets", "lengths", "spans"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.speakers == b.speakers
    assert not all(len(x) == len(y) and np.array_equal(x, y) for x, y in zip(a.waves, c.waves))


def test_labels_lengths_gaps_and_loudness() -> None:
    """Every span holds one recording of its labelled digit by the utterance's speaker, scaled by a
    gain inside the range; silences between them lie inside gap_s; padding is the blank."""
    w, d, s = _fake_recordings()
    rate = 1000
    data = make_spoken_strings(w, d, s, 60, sample_rate=rate, min_len=2, max_len=4, gap_s=(0.01, 0.03),
                               edge_s=(0.0, 0.02), gain_db=(-6, 6), seed=1)
    assert data.targets.shape == (60, 4) and data.targets.dtype == torch.int64
    assert set(data.lengths.tolist()) == {2, 3, 4}
    valid = torch.arange(4) < data.lengths[:, None]
    assert (data.targets[~valid] == BLANK).all() and (data.spans[~valid] == -1).all()
    gains = []
    for i in range(len(data)):
        k = SPEAKERS.index(data.speakers[i])
        n = int(data.lengths[i])
        for j in range(n):
            a, b = data.spans[i, j].tolist()
            digit = int(data.targets[i, j]) - 1
            clip = data.waves[i][a:b]
            assert b - a in (40 + 10 * digit, 41 + 10 * digit), (i, j)  # one of its two takes
            assert np.ptp(clip) < 1e-6, "a span holds exactly one recording"
            gains.append(20 * math.log10(clip[0] / ((digit + 1) / 16 + k / 1000)))
            if j:
                gap = a - data.spans[i, j - 1, 1].item()
                assert 10 <= gap <= 30, gap
        assert data.spans[i, 0, 0] <= 20 and len(data.waves[i]) - data.spans[i, n - 1, 1] <= 20
        # outside the spans: silence
        mask = np.ones(len(data.waves[i]), bool)
        for j in range(n):
            mask[data.spans[i, j, 0] : data.spans[i, j, 1]] = False
        assert not data.waves[i][mask].any()
    assert -6 - 1e-4 <= min(gains) < -3 and 3 < max(gains) <= 6 + 1e-4, "loudness varies over the range"
    assert all(len(t) == int(n) for t, n in zip(data.texts, data.lengths))


def test_held_out_speakers_are_disjoint_from_training_speakers() -> None:
    w, d, s = _fake_recordings()
    train, val = make_spoken_string_split(w, d, s, ["cy"], 40, 20, seed=0)
    assert set(train.speakers) == {"ann", "bob"} and set(val.speakers) == {"cy"}
    # the held-out waves carry cy's value offset (k = 2), never the others'
    for i in range(len(val)):
        a, _ = val.spans[i, 0].tolist()
        digit = int(val.targets[i, 0]) - 1
        ratio = val.waves[i][a] / ((digit + 1) / 16 + 2 / 1000)
        assert 0.5 - 1e-3 < ratio < 2 + 1e-3
    with pytest.raises(ValueError, match="known speaker"):
        make_spoken_string_split(w, d, s, ["zed"], 4, 4)
    with pytest.raises(ValueError, match="nobody"):
        make_spoken_string_split(w, d, s, SPEAKERS, 4, 4)


@pytest.mark.parametrize("kwargs, message", [
    ({"min_len": 3, "max_len": 2}, "min_len"),
    ({"gap_s": (0.2, 0.1)}, "gap_s"),
    ({"edge_s": (-0.1, 0.1)}, "edge_s"),
    ({"gain_db": (3, -3)}, "gain_db"),
])
def test_bad_arguments_give_clear_errors(kwargs: dict, message: str) -> None:
    w, d, s = _fake_recordings()
    with pytest.raises(ValueError, match=message):
        make_spoken_strings(w, d, s, 5, **kwargs)


def test_bad_recordings_give_clear_errors() -> None:
    w, d, s = _fake_recordings()
    with pytest.raises(ValueError, match="one digit and one speaker"):
        make_spoken_strings(w, d[:-1], s, 5)
    keep = [i for i in range(len(w)) if not (s[i] == "bob" and d[i] == 7)]
    with pytest.raises(ValueError, match="'bob' has no recording of digit"):
        make_spoken_strings([w[i] for i in keep], d[keep], [s[i] for i in keep], 5)


# --- prefix beam search: exact on small cases -------------------------------------------------

def _log_probs(T: int, C: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (2 * torch.randn(T, C, generator=gen, dtype=torch.float64)).log_softmax(-1)


@pytest.mark.parametrize("T, C, seed", [(4, 4, 0), (5, 3, 1), (3, 11, 2), (6, 3, 3), (5, 4, 4)])
def test_unpruned_beam_gives_every_label_its_exact_probability(T: int, C: int, seed: int) -> None:
    lp = _log_probs(T, C, seed)
    brute = ctc_beam.ctc_label_probs_brute_force(lp.exp())
    found = ctc_beam.ctc_prefix_beam_search(lp, beam=None)
    assert {label for label, _ in found} == set(brute), "the beam must hold exactly the reachable labels"
    scores = torch.tensor([score for _, score in found], dtype=torch.float64)
    exact = torch.tensor([brute[label] for label, _ in found], dtype=torch.float64).log()
    assert rel_error(scores, exact) < 1e-12
    # the same numbers from the alpha recursion and from F.ctc_loss
    labelled = [(label, score) for label, score in found if label]
    alpha = torch.tensor([-float(ctc_nll(lp, torch.tensor(label))) for label, _ in labelled], dtype=torch.float64)
    library = torch.stack([-F.ctc_loss(lp[:, None], torch.tensor([label]), torch.tensor([T]),
                                       torch.tensor([len(label)]), reduction="sum") for label, _ in labelled])
    ours = torch.tensor([score for _, score in labelled], dtype=torch.float64)
    assert rel_error(ours, alpha) < 1e-12 and rel_error(ours, library) < 1e-10
    # the best label of the beam is the brute-force most likely labelling
    assert found[0][0] == max(brute, key=brute.get)


@pytest.mark.parametrize("seed", range(20))
def test_path_beam_of_width_one_is_greedy_decoding(seed: int) -> None:
    lp = _log_probs(7, 5, seed)
    path_label, path_score = ctc_beam.ctc_path_beam_search(lp, beam=1)[0]
    assert list(path_label) == greedy_decode(lp[:, None])[0]
    assert abs(path_score - float(lp.max(-1).values.sum())) < 1e-12, "the best path's probability"


def test_prefix_beam_of_width_one_is_not_greedy_and_a_wide_beam_is_never_worse() -> None:
    differ = 0
    for seed in range(200):
        lp = _log_probs(3, 3, seed)
        brute = ctc_beam.ctc_label_probs_brute_force(lp.exp())
        greedy = tuple(greedy_decode(lp[:, None])[0])
        one = ctc_beam.ctc_prefix_beam_search(lp, beam=1)[0][0]
        best = ctc_beam.ctc_prefix_beam_search(lp, beam=None)[0][0]
        differ += one != greedy
        assert brute[best] >= brute[greedy] - 1e-15 and brute[best] >= brute[one] - 1e-15
    assert differ > 0


def _buggy_step(repeat_from_total: bool = False, blank_from_blank_only: bool = False):
    """prefix_step with one planted bug: a repeated label extending the prefix from all its paths
    (``1 1`` would read ``11``), or a blank continuing only the paths that already end in a blank."""

    def step(beams, log_y, blank=BLANK):
        out: dict = {}

        def add(prefix, which, value):
            if value == float("-inf"):
                return
            entry = out.setdefault(prefix, [float("-inf")] * 2)
            entry[which] = ctc_beam.logaddexp(entry[which], value)

        for prefix, (pb, pnb) in beams.items():
            total = ctc_beam.logaddexp(pb, pnb)
            for c, lp in enumerate(log_y):
                if c == blank:
                    add(prefix, 0, (pb if blank_from_blank_only else total) + lp)
                elif prefix and c == prefix[-1]:
                    add(prefix, 1, pnb + lp)
                    add(prefix + (c,), 1, (total if repeat_from_total else pb) + lp)
                else:
                    add(prefix + (c,), 1, total + lp)
        return {p: tuple(v) for p, v in out.items()}

    return step


def test_the_test_copy_without_bugs_is_right() -> None:
    lp = _log_probs(5, 3, 1)
    assert ctc_beam.ctc_prefix_beam_search(lp, None, step=_buggy_step()) == ctc_beam.ctc_prefix_beam_search(lp, None)


@pytest.mark.parametrize("bug", [{"repeat_from_total": True}, {"blank_from_blank_only": True}])
def test_planted_bugs_are_caught_by_the_brute_force(bug: dict) -> None:
    lp = _log_probs(5, 3, 1)
    brute = ctc_beam.ctc_label_probs_brute_force(lp.exp())
    found = ctc_beam.ctc_prefix_beam_search(lp, beam=None, step=_buggy_step(**bug))
    errors = [abs(math.exp(score) - brute.get(label, 0.0)) / max(brute.get(label, 0.0), 1e-300)
              for label, score in found]
    assert max(errors) > 1e-3, "the bug must change some label's probability"


# --- features, batches, metric --------------------------------------------------------------

def test_features_are_the_audio_lessons_log_mel_normalised_per_band() -> None:
    from dlbook.audio import log_mel_spectrogram

    w, d, s = _fake_recordings()
    data = make_spoken_strings(w, d, s, 3, seed=0)
    data.waves = [(0.1 * np.random.default_rng(i).standard_normal(len(x))).astype(np.float32) + x
                  for i, x in enumerate(data.waves)]
    feats = utterance_features(data, n_fft=256, hop=160, n_mels=32)
    for x, f in zip(data.waves, feats):
        ref = cmvn(log_mel_spectrogram(torch.from_numpy(x), 8000, n_fft=256, hop_length=160, n_mels=32))
        assert f.shape == (32, 1 + len(x) // 160) and rel_error(f, ref) < 1e-5
        assert f.mean(1).abs().max() < 1e-4 and (f.std(1) - 1).abs().max() < 1e-2


def test_digit_error_rate_equals_torchmetrics_and_a_planted_bug_is_caught() -> None:
    from torchmetrics.functional.text import char_error_rate, word_error_rate

    pred = ["123", "", "4455", "90", "7", "31"]
    truth = ["1234", "5", "445", "09", "7", "3111"]
    ours = digit_error_rate(pred, truth)
    assert abs(ours - float(char_error_rate(pred, truth))) < 1e-6
    spaced = [" ".join(t) for t in pred], [" ".join(t) for t in truth]
    assert abs(ours - float(word_error_rate(*spaced))) < 1e-6
    assert edit_distance("kitten", "sitting") == 3

    def no_insertions(a: str, b: str) -> int:  # planted bug: the insertion move is missing
        row = list(range(len(b) + 1))
        for i, ca in enumerate(a, 1):
            prev, row = row, [i]
            for j, cb in enumerate(b, 1):
                row.append(min(prev[j] + 1, prev[j - 1] + (ca != cb)))
        return row[-1]

    buggy = sum(no_insertions(p, t) for p, t in zip(pred, truth)) / sum(map(len, truth))
    assert abs(buggy - float(char_error_rate(pred, truth))) > 0.05


def test_batches_model_and_decoding_fit_together() -> None:
    w, d, s = _fake_recordings()
    data = make_spoken_strings(w, d, s, 10, sample_rate=8000, seed=0)
    feats = [torch.randn(16, 20 + 3 * i) for i in range(10)]
    batches = UtteranceBatches(feats, data.targets, data.lengths, batch_size=4, seed=0)()
    assert sorted(len(b[0]) for b in batches) == [2, 4, 4]
    for x, targets, lengths, frames in batches:
        assert x.shape[-1] == int(frames.max()) and len(targets) == len(lengths) == len(frames)
    model = CRNN(height=16, channels=(4, 8), hidden=8)
    log_probs = predict_log_probs(model, feats)
    assert [lp.shape[0] for lp in log_probs] == [(20 + 3 * i) // 4 for i in range(10)]
    assert len(decode(log_probs)) == len(decode(log_probs, beam=3)) == 10
