"""Fusion lesson: MLP vs CNN vs LSTM vs Transformer at one parameter budget
(chapters/fusion/architecture-comparison.ipynb).

The code is dlbook/models/sequence_classifiers.py: the four classifiers, the hand formulas for their
parameters (checked against ``numel``) and forward multiply-accumulates (checked against
``FlopCounterMode``, with a planted bug that must be caught), the width-for-budget search, the
padding guarantees of every model and the latency timer.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import dlbook.models.sequence_classifiers as sc

NAMES = sc.MODEL_NAMES
VOCAB, E = 60, 16


def _ids(lengths: tuple[int, ...], steps: int | None = None, seed: int = 1) -> torch.Tensor:
    """Right-padded random word ids (never 0, the pad id) with the given lengths."""
    gen = torch.Generator().manual_seed(seed)
    steps = steps or max(lengths)
    ids = torch.randint(2, VOCAB, (len(lengths), steps), generator=gen)
    ids[torch.arange(steps) >= torch.tensor(lengths)[:, None]] = 0
    return ids


# --------------------------------------------------------------------------- parameter budgets


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("width", [1, 7, 40])
def test_param_formula_matches_numel(name: str, width: int) -> None:
    model = sc.build_model(name, VOCAB, E, width, num_classes=3)
    assert sc.encoder_parameters(model) == sc.param_formula(name, E, width, num_classes=3)
    assert sc.count_parameters(model) == sc.encoder_parameters(model) + VOCAB * E


@pytest.mark.parametrize(("name", "options"), [
    ("CNN", {"kernel_sizes": (2, 5)}), ("LSTM", {"bidirectional": True}),
    ("Transformer", {"layers": 1}), ("Transformer", {"layers": 3, "heads": 2}),
])
def test_param_formula_follows_the_options(name: str, options: dict) -> None:
    model = sc.build_model(name, VOCAB, E, 12, **options)
    formula_args = sc.shape_args(options)  # heads do not change the count
    assert sc.encoder_parameters(model) == sc.param_formula(name, E, 12, **formula_args)


def test_width_for_budget_is_the_closest_width() -> None:
    for name in NAMES:
        count = lambda w, name=name: sc.param_formula(name, 32, w)  # noqa: E731
        for budget in (12_000, 30_000, 54_321):
            w = sc.width_for_budget(count, budget)
            brute = min(range(1, 2_000), key=lambda v: (abs(count(v) - budget), v))
            assert abs(count(w) - budget) == abs(count(brute) - budget), (name, budget, w, brute)


def test_width_for_budget_rejects_impossible_budgets() -> None:
    count = lambda w: 100 * w + 50  # noqa: E731
    with pytest.raises(ValueError, match="below the smallest"):
        sc.width_for_budget(count, 10)
    with pytest.raises(ValueError, match="needs a width above"):
        sc.width_for_budget(count, 10**9, hi=100)
    with pytest.raises(ValueError, match="unknown model"):
        sc.param_formula("GRU", 32, 8)


@pytest.mark.parametrize(("embed_dim", "budget"), [(16, 10_000), (32, 10_000), (64, 100_000)])
def test_build_matched_budgets_agree_within_ten_percent(embed_dim: int, budget: int) -> None:
    models = sc.build_matched(VOCAB, embed_dim, budget, options={"Transformer": {"layers": 1}})
    assert list(models) == list(NAMES)
    counts = {name: sc.encoder_parameters(m) for name, m in models.items()}
    for name, n in counts.items():
        assert abs(n - budget) <= 0.1 * budget, f"{name}: {n:,} parameters for a budget of {budget:,}"
    assert max(counts.values()) <= 1.1 * min(counts.values())
    # the same embedding in all four: same seed, same table
    tables = [m.embedding.weight for m in models.values()]
    assert all(torch.equal(t, tables[0]) for t in tables)


# --------------------------------------------------------------------------- shapes and padding


@pytest.fixture(params=NAMES)
def model64(request) -> torch.nn.Module:
    torch.manual_seed(0)
    return sc.build_model(request.param, VOCAB, E, 12, num_classes=3).double().eval()


def test_forward_shape(model64) -> None:
    ids = _ids((7, 3, 1, 5))
    logits = model64(ids)
    assert logits.shape == (4, 3) and logits.dtype == torch.float64 and torch.isfinite(logits).all()


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_extra_padding_changes_no_logit(model64, grad: bool) -> None:
    # no_grad lets nn.TransformerEncoderLayer take its fused fast path: both paths must ignore padding
    ids = _ids((7, 3, 1, 5))
    padded = torch.cat([ids, torch.zeros(4, 9, dtype=torch.long)], dim=1)
    with torch.set_grad_enabled(grad):
        a, b = model64(ids), model64(padded)
    assert torch.allclose(a, b, rtol=0, atol=1e-12), f"{type(model64).__name__}: {(a - b).abs().max():.1e}"


def test_a_sentence_gets_the_same_logits_alone_and_in_a_batch(model64) -> None:
    ids = _ids((7, 3, 1, 5))
    batch = model64(ids)
    for i, length in enumerate((7, 3, 1, 5)):
        alone = model64(ids[i : i + 1, :length])
        assert torch.allclose(alone, batch[i : i + 1], rtol=0, atol=1e-12)


def test_cnn_max_pool_without_the_mask_would_see_padding() -> None:
    """Planted bug: max over *all* time steps. A filter whose ReLU(bias) beats every real window
    then reports the padding (a window of zeros gives exactly ReLU(bias)); the masked pool does not."""
    torch.manual_seed(0)
    model = sc.TextCNN(VOCAB, E, 4).double().eval()
    with torch.no_grad():  # real windows negative (positive words, negative weights), bias positive
        model.embedding.weight.abs_()
        model.convs[0].weight.fill_(-1.0)
        model.convs[0].bias.fill_(5.0)
    ids = _ids((3,))
    padded = torch.cat([ids, torch.zeros(1, 6, dtype=torch.long)], dim=1)

    def unmasked(x_ids: torch.Tensor) -> torch.Tensor:
        x = model.embed(x_ids)[0].transpose(1, 2)
        k, conv = model.kernel_sizes[0], model.convs[0]
        return F.relu(conv(F.pad(x, (0, k - 1)))).amax(dim=2)

    assert torch.equal(unmasked(ids), torch.zeros(1, 4, dtype=torch.float64))
    assert torch.equal(unmasked(padded), torch.full((1, 4), 5.0, dtype=torch.float64))
    assert torch.equal(model.features(ids), model.features(padded))


@pytest.mark.parametrize("bidirectional", [False, True], ids=["padded", "packed-bidirectional"])
def test_lstm_uses_the_last_valid_state(bidirectional: bool) -> None:
    torch.manual_seed(0)
    model = sc.LSTMClassifier(VOCAB, E, 5, bidirectional=bidirectional).double().eval()
    ids = _ids((6, 2))
    out, _ = model.lstm(model.embedding(ids[1:, :2]))  # the short sentence alone, no padding
    H = 5
    last = torch.cat([out[:, -1, :H], out[:, 0, H:]], dim=-1) if bidirectional else out[:, -1]
    assert torch.allclose(model(ids)[1:], model.classifier(last), atol=1e-12)


def test_transformer_rejects_sequences_longer_than_its_positions() -> None:
    model = sc.TransformerClassifier(VOCAB, E, 8, max_len=10)
    with pytest.raises(ValueError, match="max_len"):
        model(_ids((11,)))


def test_helpers() -> None:
    ids = _ids((4, 1, 2), steps=5)
    assert sc.lengths_from_ids(ids).tolist() == [4, 1, 2]
    x = torch.arange(30, dtype=torch.float64).view(3, 5, 2)
    x[0, 4] = float("nan")  # padding may hold anything
    mask = sc.length_mask(torch.tensor([4, 1, 2]), 5)
    mean = sc.masked_mean(x, mask)
    assert torch.allclose(mean[0], x[0, :4].mean(0)) and torch.allclose(mean[1], x[1, 0])
    pe = sc.sinusoidal_positions(7, 5)
    assert pe.shape == (7, 5) and torch.allclose(pe[0], torch.tensor([0.0, 1, 0, 1, 0]))
    assert math.isclose(pe[3, 2].item(), math.sin(3 / 10000 ** (2 / 5)), rel_tol=1e-6)


# --------------------------------------------------------------------------- compute and latency


@pytest.mark.parametrize("name", NAMES)
def test_forward_macs_match_the_flop_counter(name: str) -> None:
    torch.manual_seed(0)
    model = sc.build_model(name, VOCAB, E, 10)
    for n in (5, 24):
        counted = sc.counted_forward_flops(model, _ids((n, n)))
        assert counted == 2 * 2 * sc.forward_macs(name, n, E, 10), (name, n)


def test_packed_lstm_pays_only_for_real_words() -> None:
    torch.manual_seed(0)
    ids = _ids((9, 2, 5), steps=12)
    per_step = sc.forward_macs("LSTM", 1, E, 10) - 10 * 2  # one step of one direction, no classifier
    packed = sc.LSTMClassifier(VOCAB, E, 10, bidirectional=True)
    assert sc.counted_forward_flops(packed, ids) == 2 * (2 * 16 * per_step + 3 * 2 * 10 * 2)  # 16 real words
    padded = sc.LSTMClassifier(VOCAB, E, 10)
    assert sc.counted_forward_flops(padded, ids) == 2 * (3 * 12 * per_step + 3 * 10 * 2)  # 3 x 12 steps


def test_flop_check_catches_a_missing_attention_term() -> None:
    """Planted bug: the Transformer formula without the 2 n^2 d of Q K^T and weights @ V."""
    torch.manual_seed(0)
    model = sc.build_model("Transformer", VOCAB, E, 10)
    n = 24
    counted = sc.counted_forward_flops(model, _ids((n,)))
    wrong = 2 * (sc.forward_macs("Transformer", n, E, 10) - 2 * (2 * n * n * E))
    assert abs(counted - wrong) / counted > 0.1


def test_measure_latency() -> None:
    model = sc.build_model("CNN", VOCAB, E, 6).train()
    seconds = sc.measure_latency(model, _ids((5, 3)), "cpu", warmup=1, repeats=3)
    assert 0 < seconds < 1 and not model.training
