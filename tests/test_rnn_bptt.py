"""RNN lessons 1 and 2: the forward loop, backpropagation through time, truncated BPTT.

The derivation is chapters/rnn/bptt-derivation.md; the code is dlbook/scratch/rnn.py. Each check the
notebooks (rnn-basics.ipynb, bptt.ipynb) run is repeated here, plus planted bugs the checks must catch.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dlbook.scratch.rnn as R
from dlbook.gradients import compare, rel_error

f64 = torch.float64


# --- forward ----------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_first", [False, True])
def test_rnn_forward_equals_nn_rnn(batch_first: bool) -> None:
    torch.manual_seed(0)
    rnn = nn.RNN(5, 7, batch_first=batch_first).double()
    x = torch.randn(4, 6, 5, dtype=f64)  # (T, B, F) or (B, T, F)
    h0 = torch.randn(1, 6 if not batch_first else 4, 7, dtype=f64)
    out, h_n = rnn(x, h0)
    x_tm = x.transpose(0, 1) if batch_first else x  # the scratch loop is time-major
    b_h = rnn.bias_ih_l0 + rnn.bias_hh_l0
    mine, h_last = R.rnn_forward(x_tm, rnn.weight_ih_l0, rnn.weight_hh_l0, b_h, h0[0])
    mine = mine.transpose(0, 1) if batch_first else mine
    assert rel_error(mine, out) < 1e-12 and rel_error(h_last, h_n[0]) < 1e-12
    assert torch.equal(out[:, -1] if batch_first else out[-1], h_n[0]), "output's last step is h_n"
    one_bias = R.rnn_forward(x_tm, rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, h0[0])[0]
    assert rel_error(one_bias, out.transpose(0, 1) if batch_first else out) > 1e-3, "both biases count"


def test_stacked_rnn_forward_equals_two_layer_nn_rnn() -> None:
    torch.manual_seed(1)
    rnn = nn.RNN(3, 5, num_layers=3).double()
    x, h0 = torch.randn(8, 2, 3, dtype=f64), torch.randn(3, 2, 5, dtype=f64)
    out, h_n = rnn(x, h0)
    mine, mine_h = R.stacked_rnn_forward(x, R.rnn_layer_weights(rnn), h0)
    assert mine_h.shape == (3, 2, 5)
    assert rel_error(mine, out) < 1e-12 and rel_error(mine_h, h_n) < 1e-12


def test_int_ids_equal_one_hot_inputs() -> None:
    params, ids, y, h0 = R.random_rnn_problem(T=6, B=3, F_in=7, ids=True)
    one_hot = F.one_hot(ids, 7).double()
    a = R.rnn_forward(ids, params.W_xh, params.W_hh, params.b_h, h0)[0]
    b = R.rnn_forward(one_hot, params.W_xh, params.W_hh, params.b_h, h0)[0]
    assert rel_error(a, b) < 1e-14
    ga, gb = R.rnn_bptt(params, ids, y, h0)[1], R.rnn_bptt(params, one_hot, y, h0)[1]
    compare(ga, gb, tolerance=1e-13).assert_ok()


@pytest.mark.parametrize(("f", "h", "layers"), [(65, 128, 1), (32, 64, 2), (1, 16, 3)])
def test_param_count_by_hand(f: int, h: int, layers: int) -> None:
    from torchinfo import summary

    rnn = nn.RNN(f, h, num_layers=layers)
    assert R.rnn_param_count(f, h, layers) == sum(p.numel() for p in rnn.parameters())
    assert R.rnn_param_count(f, h, layers) == summary(rnn, verbose=0).total_params
    assert R.rnn_param_count(f, h, layers, two_biases=False) == R.rnn_param_count(f, h, layers) - layers * h


def test_params_from_torch_roundtrip() -> None:
    torch.manual_seed(2)
    rnn, head = nn.RNN(4, 3).double(), nn.Linear(3, 5).double()
    params = R.params_from_torch(rnn, head)
    x = torch.randn(5, 2, 4, dtype=f64)
    assert rel_error(head(rnn(x)[0]), R.rnn_forward(x, params.W_xh, params.W_hh, params.b_h)[0] @ params.W_ho.T
                     + params.b_o) < 1e-12
    assert params.numel() == sum(p.numel() for p in (*rnn.parameters(), *head.parameters())) - 3
    with pytest.raises(ValueError):
        R.params_from_torch(nn.RNN(4, 3, num_layers=2), head)


# --- BPTT against autograd --------------------------------------------------------------------


@pytest.mark.parametrize("ids", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_bptt_equals_autograd(ids: bool, reduction: str) -> None:
    report = R.check_rnn_bptt(ids=ids, reduction=reduction, seed=3)
    assert set(report.errors) == {*R.PARAM_NAMES, "h0", "loss"}
    report.assert_ok()


def test_bptt_single_step_and_long_sequence() -> None:
    R.check_rnn_bptt(T=1, B=1, seed=4).assert_ok()
    R.check_rnn_bptt(T=60, B=2, H=8, seed=5).assert_ok()


def test_bptt_equals_nn_rnn_autograd() -> None:
    """Through the library: nn.RNN + nn.Linear + F.cross_entropy; both of nn.RNN's biases get db_h."""
    torch.manual_seed(6)
    rnn, head = nn.RNN(65, 16).double(), nn.Linear(16, 65).double()
    gen = torch.Generator().manual_seed(6)
    ids, y = torch.randint(65, (12, 4), generator=gen), torch.randint(65, (12, 4), generator=gen)
    out, _ = rnn(F.one_hot(ids, 65).double())
    F.cross_entropy(head(out).reshape(-1, 65), y.reshape(-1)).backward()
    _, grads, _ = R.rnn_bptt(R.params_from_torch(rnn, head), ids, y)
    compare(
        {"W_xh": grads["W_xh"], "W_hh": grads["W_hh"], "b_ih": grads["b_h"], "b_hh": grads["b_h"],
         "W_ho": grads["W_ho"], "b_o": grads["b_o"]},
        {"W_xh": rnn.weight_ih_l0.grad, "W_hh": rnn.weight_hh_l0.grad, "b_ih": rnn.bias_ih_l0.grad,
         "b_hh": rnn.bias_hh_l0.grad, "W_ho": head.weight.grad, "b_o": head.bias.grad},
    ).assert_ok()


def test_gradcheck_finite_differences() -> None:
    assert R.gradcheck_rnn()


def test_input_gradient() -> None:
    params, x, y, h0 = R.random_rnn_problem(seed=7)
    _, cache = R.rnn_lm_forward(params, x, y, h0)
    mine = R.rnn_lm_backward(params, cache, input_grad=True)["x"]
    x_leaf = x.clone().requires_grad_(True)
    loss = R.rnn_lm_loss_autograd(x_leaf, y, h0, **params.as_dict())
    (ref,) = torch.autograd.grad(loss, [x_leaf])
    assert rel_error(mine, ref) < 1e-8


# --- planted bugs -----------------------------------------------------------------------------


def test_forgetting_tanh_derivative_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug: dL/da_t = dL/dh_t, as if h = a (no (1 - h^2) factor)."""
    monkeypatch.setattr(R, "tanh_backward", lambda grad_h, h: grad_h)
    report = R.check_rnn_bptt(seed=8)
    assert not report.ok
    for name in ("W_xh", "W_hh", "b_h", "h0"):
        assert report.errors[name] > 1e-2, str(report)
    assert report.errors["W_ho"] < 1e-12 and report.errors["b_o"] < 1e-12, "the read-out is unaffected"


def test_dropping_recurrent_term_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug: delta_t = W_ho^T (p_t - y_t) only, each step treated as independent."""
    params, x, y, h0 = R.random_rnn_problem(seed=9)
    k1 = R.truncated_bptt(params, x, y, k=1, h0=h0).grads  # before the patch
    monkeypatch.setattr(R, "through_time", lambda grad_a_next, W_hh: torch.zeros_like(grad_a_next))
    report = R.check_rnn_bptt(seed=9)
    assert report.errors["W_hh"] > 1e-2 and report.errors["W_xh"] > 1e-2, str(report)
    _, buggy, _ = R.rnn_bptt(params, x, y, h0)
    # ... and what it computes is exactly truncated BPTT with chunks of one step.
    compare({n: buggy[n] for n in R.PARAM_NAMES}, {n: k1[n] for n in R.PARAM_NAMES}, 1e-12).assert_ok()


def test_wrong_weight_in_whh_gradient_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug: dL/dW_hh = sum_t da_t h_t^T (h_t instead of h_{t-1}): only W_hh goes wrong."""
    original = R.rnn_lm_backward

    def shifted(params, cache, input_grad=False):
        grads = original(params, cache, input_grad)
        grads["W_hh"] = grads["W_hh"] + _whh_with_h_t(params, cache)
        return grads

    monkeypatch.setattr(R, "rnn_lm_backward", shifted)
    report = R.check_rnn_bptt(seed=10)
    assert report.errors["W_hh"] > 1e-2 and report.errors["W_xh"] < 1e-12, str(report)


def _whh_with_h_t(params: R.RNNParams, cache: R.BPTTCache) -> torch.Tensor:
    """sum_t da_t (h_t - h_{t-1})^T: added to the correct gradient it replaces h_{t-1} by h_t."""
    d_out = cache.probs.clone()
    d_out.scatter_add_(-1, cache.y[..., None], -torch.ones_like(cache.y[..., None], dtype=f64))
    d_h = (d_out * cache.scale) @ params.W_ho
    d_a, nxt = torch.empty_like(cache.hs[1:]), torch.zeros_like(cache.hs[0])
    for t in reversed(range(d_h.shape[0])):
        nxt = (d_h[t] + nxt @ params.W_hh) * (1 - cache.hs[t + 1] ** 2)
        d_a[t] = nxt
    return torch.einsum("tbh,tbk->hk", d_a, cache.hs[1:] - cache.hs[:-1])


# --- truncated BPTT ---------------------------------------------------------------------------


def autograd_truncated(params: R.RNNParams, x: torch.Tensor, y: torch.Tensor, k: int, h0: torch.Tensor):
    """Independent reference: the usual autograd loop, h.detach() at every chunk boundary."""
    leaves = {n: v.detach().clone().requires_grad_(True) for n, v in params.as_dict().items()}
    h, total = h0, 0.0
    for start in range(0, x.shape[0], k):
        chunk_x, chunk_y = x[start : start + k], y[start : start + k]
        states, h = R.rnn_forward(chunk_x, leaves["W_xh"], leaves["W_hh"], leaves["b_h"], h)
        logits = states @ leaves["W_ho"].T + leaves["b_o"]
        total = total + F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk_y.reshape(-1), reduction="sum")
        h = h.detach()  # truncation: no gradient flows into the previous chunk
    loss = total / y.numel()
    return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))


@pytest.mark.parametrize("k", [12, 13, 50])
def test_truncation_at_least_T_is_full_bptt(k: int) -> None:
    params, x, y, h0 = R.random_rnn_problem(T=12, seed=11)
    loss, full, h_T = R.rnn_bptt(params, x, y, h0)
    result = R.truncated_bptt(params, x, y, k, h0)
    assert result.boundary_grads == []
    assert abs(float(result.loss - loss)) < 1e-14 and rel_error(result.h_T, h_T) == 0
    compare(result.grads, full, tolerance=1e-13).assert_ok()


@pytest.mark.parametrize("k", [1, 3, 5, 11])
def test_short_truncation_drops_exactly_the_long_range_terms(k: int) -> None:
    params, x, y, h0 = R.random_rnn_problem(T=12, seed=12)
    loss, full, h_T = R.rnn_bptt(params, x, y, h0)
    result = R.truncated_bptt(params, x, y, k, h0)
    # The forward pass is never cut: same loss, same last state.
    assert abs(float(result.loss - loss)) < 1e-13 and rel_error(result.h_T, h_T) < 1e-14
    assert len(result.boundary_grads) == math.ceil(12 / k) - 1
    # The recurrent gradients differ ...
    for name in ("W_xh", "W_hh", "b_h"):
        assert rel_error(result.grads[name], full[name]) > 1e-3, f"{name} should change with k = {k}"
    # ... the read-out's do not ...
    compare({n: result.grads[n] for n in ("W_ho", "b_o")}, {n: full[n] for n in ("W_ho", "b_o")}, 1e-12).assert_ok()
    # ... and the difference is exactly the dropped long-range terms of eq. (eq-bptt-truncated).
    dropped = R.long_range_terms(params, x, k, result.boundary_grads, h0)
    compare({n: result.grads[n] + dropped[n] for n in full}, full, tolerance=1e-10).assert_ok()


@pytest.mark.parametrize("k", [1, 4, 7])
def test_truncated_equals_autograd_with_detach(k: int) -> None:
    params, x, y, h0 = R.random_rnn_problem(T=14, seed=13, ids=True)
    mine = R.truncated_bptt(params, x, y, k, h0).grads
    compare({n: mine[n] for n in R.PARAM_NAMES}, autograd_truncated(params, x, y, k, h0)).assert_ok()


def test_truncated_bptt_rejects_bad_k() -> None:
    params, x, y, h0 = R.random_rnn_problem()
    with pytest.raises(ValueError):
        R.truncated_bptt(params, x, y, 0, h0)


# --- streams, evaluation, baseline ------------------------------------------------------------


def test_batchify_and_chunks_cover_the_stream() -> None:
    ids = torch.arange(103)
    streams = R.batchify(ids, 4)
    assert streams.shape == (25, 4)
    assert torch.equal(streams[:, 1], torch.arange(25, 50)), "each column is a contiguous piece of text"
    chunks = list(R.tbptt_chunks(streams, 7))
    assert [len(x) for x, _ in chunks] == [7, 7, 7, 3]
    assert torch.equal(torch.cat([y for _, y in chunks]), streams[1:])
    assert torch.equal(torch.cat([x for x, _ in chunks]), streams[:-1])


def test_stream_nll_does_not_depend_on_chunk_length() -> None:
    params, *_ = R.random_rnn_problem(F_in=6, V=6, seed=14)
    ids = torch.randint(6, (200,), generator=torch.Generator().manual_seed(14))
    a, b = R.stream_nll(params, ids, k=7), R.stream_nll(params, ids, k=1000)
    assert abs(a - b) < 1e-12, "the hidden state is carried across chunks"
    x, y = ids[:-1, None], ids[1:, None]
    assert abs(a - float(R.rnn_lm_loss_autograd(x, y, torch.zeros(1, 4, dtype=f64), **params.as_dict()))) < 1e-12


def test_unigram_bits_per_char() -> None:
    uniform = torch.arange(8).repeat(100)
    assert abs(R.unigram_bits_per_char(uniform, uniform, 8) - 3.0) < 1e-12
    skewed = torch.tensor([0] * 90 + [1] * 10)
    expected = -(0.9 * math.log2(91 / 102) + 0.1 * math.log2(11 / 102))  # add-one smoothing, V = 2
    assert abs(R.unigram_bits_per_char(skewed, skewed, 2) - expected) < 1e-12
