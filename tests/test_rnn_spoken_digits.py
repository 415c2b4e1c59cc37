"""The spoken-digits lesson's building blocks: batched features equal one-by-one features, the
packed recurrent classifier ignores padding (the planted bug, an unpacked one, does not), the
frame-averaging pool uses only the valid frames, and the CNN takes the log-mel image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pad_sequence

from dlbook import audio
from dlbook.data import load_recording
from dlbook.gradients import rel_error
from dlbook.models.speech import LogMelCNN, MeanFeatureClassifier, RNNSpeechClassifier

SR = 8000


def test_batch_features_equal_one_by_one_and_keep_the_input_order():
    waves = [load_recording(d, s, 1) for d, s in ((0, "george"), (9, "lucas"), (4, "nicolas"))]
    for kind, fn in (("mfcc", audio.mfcc), ("log_mel", audio.log_mel_spectrogram)):
        feats, frames = audio.batch_features(waves, SR, kind=kind, chunk=2, dtype=torch.float64)
        assert feats.shape[0] == 3 and frames.tolist() == [audio.n_frames(len(w), 80) for w in waves]
        for i, w in enumerate(waves):
            alone = fn(torch.from_numpy(w.astype(np.float64)), SR).T
            assert rel_error(feats[i, : frames[i]], alone) < 1e-10, f"{kind}: recording {i} differs"
            assert not feats[i, frames[i]:].any(), "frames past the end must be 0"
    with pytest.raises(ValueError, match="kind must be"):
        audio.batch_features(waves, SR, kind="spectrum")


def _padded_problem(dtype=torch.float64):
    torch.manual_seed(0)
    seqs = [torch.randn(n, 13, dtype=dtype) for n in (9, 4, 6)]
    lengths = torch.tensor([9, 4, 6])
    x = pad_sequence(seqs, batch_first=True, padding_value=0.5)  # padding that is not 0, on purpose
    extra = torch.cat([x, torch.full((3, 5, 13), -2.0, dtype=dtype)], dim=1)  # more padding
    return seqs, lengths, x, extra


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_packed_classifier_gives_each_recording_its_alone_result(cell):
    seqs, lengths, x, extra = _padded_problem()
    model = RNNSpeechClassifier(13, 8, cell=cell).double().eval()
    with torch.no_grad():
        batch, padded_more = model(x, lengths), model(extra, lengths)
        alone = torch.cat([model(s[None], torch.tensor([len(s)])) for s in seqs])
    assert rel_error(batch, alone) < 1e-12 and rel_error(padded_more, alone) < 1e-12


def test_planted_bug_unpacked_rnn_reads_the_padding():
    seqs, lengths, x, _ = _padded_problem()
    model = RNNSpeechClassifier(13, 8).double().eval()
    with torch.no_grad():
        alone = torch.cat([model(s[None], torch.tensor([len(s)])) for s in seqs])
        _, h_n = model.rnn(x)  # no packing: the final state comes after the pad frames
        unpacked = model.classifier(h_n[-1])
    assert rel_error(unpacked, alone) > 1e-3


def test_mean_pool_uses_only_valid_frames():
    seqs, lengths, x, extra = _padded_problem()
    pooled = MeanFeatureClassifier.pool(extra, lengths)
    expected = torch.stack([torch.cat([s.mean(0), s.std(0, unbiased=False)]) for s in seqs])
    assert rel_error(pooled, expected) < 1e-12
    wrong = torch.cat([extra.mean(1), extra.std(1, unbiased=False)], dim=-1)  # planted bug: padding averaged in
    assert rel_error(wrong, expected) > 1e-2
    assert MeanFeatureClassifier(13, hidden=16)(x.float(), lengths).shape == (3, 10)


def test_cnn_maps_a_log_mel_image_to_ten_logits():
    assert LogMelCNN(4)(torch.randn(5, 40, 64)).shape == (5, 10)
    with pytest.raises(ValueError, match="cell must be"):
        RNNSpeechClassifier(13, 8, cell="rnn")
