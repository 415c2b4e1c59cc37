"""RNN lesson 4: LSTM and GRU cells from their equations, and the long-range sequence tasks.

The derivation is chapters/rnn/gates-derivation.md, the lesson chapters/rnn/lstm-and-gru.ipynb; the
code is dlbook/scratch/gates.py and dlbook/data/sequences.py. Every check the notebook runs is
repeated here, plus planted bugs (wrong gate order, Cho et al.'s reset gate) that the checks must catch.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import dlbook.scratch.gates as gates
from dlbook.data.sequences import ADDING_BASELINE_MSE, CopySpec, adding_problem, copy_problem
from dlbook.gradients import gradcheck64, rel_error

f64 = torch.float64


# --- equal to nn.LSTM / nn.GRU ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_scratch_equals_torch(kind: str, dtype: torch.dtype) -> None:
    """Outputs, h_n (c_n) and the gradients w.r.t. input, initial state and every parameter."""
    report = gates.compare_with_torch(kind, dtype, batch=3, seq_len=9, input_size=4, hidden_size=6)
    expected = {"output", "h_n", "d x", "d h0", "d weight_ih", "d weight_hh", "d bias_ih", "d bias_hh"}
    if kind == "lstm":
        expected |= {"c_n", "d c0"}
    assert set(report.errors) == expected
    assert report.tolerance == (1e-10 if dtype == f64 else 1e-6)
    report.assert_ok()


@pytest.mark.parametrize("gate_order", ["ifog", "figo", "oigf"])
def test_planted_bug_wrong_lstm_gate_order(gate_order: str) -> None:
    report = gates.compare_with_torch("lstm", f64, gate_order=gate_order)
    assert not report.ok
    assert report.errors["output"] > 1e-2, report


def test_planted_bug_cho_reset_gate() -> None:
    """Cho et al.'s candidate W_hn (r * h) is a different function of the same weights."""
    report = gates.compare_with_torch("gru", f64, reset_after=False)
    assert not report.ok
    assert report.errors["output"] > 1e-2, report


def test_invalid_gate_order_is_refused() -> None:
    with pytest.raises(ValueError, match="permutation"):
        gates.compare_with_torch("lstm", gate_order="iffo")


@pytest.mark.parametrize("bias", [True, False])
def test_cells_equal_torch_cells(bias: bool) -> None:
    torch.manual_seed(1)
    x = torch.randn(4, 3, dtype=f64)
    h, c = torch.randn(4, 5, dtype=f64), torch.randn(4, 5, dtype=f64)
    lstm = nn.LSTMCell(3, 5, bias=bias).double()
    mine = gates.copy_from_torch(gates.LSTMCellScratch(3, 5, bias=bias), lstm)
    for a, b in zip(mine(x, (h, c)), lstm(x, (h, c))):
        assert rel_error(a, b) < 1e-12
    gru = nn.GRUCell(3, 5, bias=bias).double()
    mine_gru = gates.copy_from_torch(gates.GRUCellScratch(3, 5, bias=bias), gru)
    assert rel_error(mine_gru(x, h), gru(x, h)) < 1e-12


def test_time_major_layout_and_default_state() -> None:
    """batch_first=False and a missing initial state behave like nn.LSTM / nn.GRU."""
    torch.manual_seed(2)
    x = torch.randn(6, 2, 3, dtype=f64)  # (T, B, I)
    for torch_cls, scratch_cls in ((nn.LSTM, gates.LSTMScratch), (nn.GRU, gates.GRUScratch)):
        ref = torch_cls(3, 4).double()
        mine = gates.copy_from_torch(scratch_cls(3, 4), ref)
        out_ref, _ = ref(x)
        out_mine, _ = mine(x)
        assert out_mine.shape == (6, 2, 4)
        assert rel_error(out_mine, out_ref) < 1e-12


def test_gradcheck_cells() -> None:
    gen = torch.Generator().manual_seed(3)
    B, I, H = 2, 3, 2

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=f64)

    assert gradcheck64(lambda *a: tuple(gates.lstm_cell(*a)[:2]),
                       [r(B, I), r(B, H), r(B, H), r(4 * H, I), r(4 * H, H), r(4 * H), r(4 * H)])
    assert gradcheck64(lambda *a: gates.gru_cell(*a).h,
                       [r(B, I), r(B, H), r(3 * H, I), r(3 * H, H), r(3 * H), r(3 * H)])


def test_copy_from_torch_refuses_what_it_cannot_copy() -> None:
    with pytest.raises(TypeError):
        gates.copy_from_torch(gates.LSTMScratch(3, 4), nn.GRU(3, 4))
    with pytest.raises(ValueError, match="one unidirectional layer"):
        gates.copy_from_torch(gates.LSTMScratch(3, 4), nn.LSTM(3, 4, num_layers=2))
    with pytest.raises(ValueError, match="one unidirectional layer"):
        gates.copy_from_torch(gates.GRUScratch(3, 4), nn.GRU(3, 4, bidirectional=True))
    with pytest.raises(ValueError, match="sizes differ"):
        gates.copy_from_torch(gates.LSTMCellScratch(3, 5), nn.LSTMCell(3, 4))
    with pytest.raises(ValueError, match="batch_first"):
        gates.copy_from_torch(gates.GRUScratch(3, 4, batch_first=True), nn.GRU(3, 4))


# --- the seed article's cell, corrected ---------------------------------------------------------


def test_corrected_cell_constructs_and_initialises_like_pytorch() -> None:
    """The seed LSTMCell raised AttributeError (hidden_size never set); ours sets it and uses U(-1/sqrt H, ...)."""
    cell = gates.LSTMCellScratch(7, 16)
    assert cell.hidden_size == 16 and cell.input_size == 7
    bound = 1 / math.sqrt(16)
    for p in cell.parameters():
        assert p.abs().max() <= bound
        assert p.std() > bound / 4  # filled, not left as zeros or uninitialised memory
    assert cell.weight_ih.shape == (64, 7) and cell.weight_hh.shape == (64, 16)


@pytest.mark.parametrize("I,H", [(2, 32), (10, 7), (1, 1)])
def test_parameter_counts(I: int, H: int) -> None:
    assert gates.lstm_param_count(I, H) == sum(p.numel() for p in nn.LSTM(I, H).parameters())
    assert gates.gru_param_count(I, H) == sum(p.numel() for p in nn.GRU(I, H).parameters())
    assert gates.lstm_param_count(I, H) == sum(p.numel() for p in gates.LSTMCellScratch(I, H).parameters())
    assert gates.gru_param_count(I, H) == sum(p.numel() for p in gates.GRUCellScratch(I, H).parameters())
    assert gates.lstm_param_count(2, 32) == 4608


# --- the gradient path through the cell state ---------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_state_jacobians_by_hand(seed: int) -> None:
    gates.check_lstm_state_jacobian(seed=seed).assert_ok()
    gates.check_gru_state_jacobian(seed=seed).assert_ok()


def test_planted_bug_jacobian_without_gate_terms() -> None:
    """dc_t/dh_{t-1} is not zero: dropping the terms through the gates must be caught."""
    gen = torch.Generator().manual_seed(0)
    H, I = 4, 3
    x, h, c = (torch.randn(n, generator=gen, dtype=f64) for n in (I, H, H))
    w = [torch.randn(*s, generator=gen, dtype=f64) for s in ((4 * H, I), (4 * H, H), (4 * H,), (4 * H,))]
    mine = gates.lstm_state_jacobian(x, h, c, *w)
    auto = torch.autograd.functional.jacobian(lambda hp: gates.lstm_cell(x[None], hp[None], c[None], *w).c[0], h)
    assert rel_error(mine["dc/dh"], auto) < 1e-12
    assert rel_error(torch.zeros_like(auto), auto) > 0.5


def test_constant_error_carousel() -> None:
    """Forget gate saturated at 1, input gate at 0: c_T = c_0 and dc_T/dc_0 = I over 40 steps."""
    torch.manual_seed(0)
    H = 3
    lstm = gates.LSTMScratch(2, H, batch_first=True).double()
    with torch.no_grad():
        lstm.cell.bias_ih[:H] = -1000.0  # i = sigmoid(-1000) = 0 in float64: write nothing
        lstm.cell.bias_ih[H:2 * H] = 1000.0  # f = sigmoid(1000) = 1: keep everything
    x = torch.randn(1, 40, 2, dtype=f64)
    c0 = torch.randn(1, 1, H, dtype=f64)
    h0 = torch.zeros(1, 1, H, dtype=f64)
    jac = torch.autograd.functional.jacobian(lambda c: lstm(x, (h0, c))[1][1], c0).reshape(H, H)
    assert rel_error(jac, torch.eye(H, dtype=f64)) < 1e-12
    # the same network with PyTorch's default forget bias (f ~ 0.5) forgets geometrically
    with torch.no_grad():
        lstm.cell.bias_ih[H:2 * H] = 0.0
        lstm.cell.bias_hh[H:2 * H] = 0.0
        lstm.cell.weight_hh[H:2 * H] = 0.0
        lstm.cell.weight_ih[H:2 * H] = 0.0
    jac_half = torch.autograd.functional.jacobian(lambda c: lstm(x, (h0, c))[1][1], c0).reshape(H, H)
    torch.testing.assert_close(jac_half, 0.5**40 * torch.eye(H, dtype=f64), rtol=1e-12, atol=0)


def test_gates_are_recorded() -> None:
    lstm = gates.LSTMScratch(2, 4, batch_first=True)
    lstm(torch.randn(3, 5, 2))
    assert set(lstm.gates) == {"i", "f", "g", "o", "c"}
    assert all(v.shape == (3, 5, 4) for v in lstm.gates.values())
    assert ((lstm.gates["f"] > 0) & (lstm.gates["f"] < 1)).all()
    gru = gates.GRUScratch(2, 4, batch_first=True)
    gru(torch.randn(3, 5, 2))
    assert set(gru.gates) == {"r", "z", "n"}


# --- the adding and copy problems ---------------------------------------------------------------


def test_adding_problem_shapes_markers_and_target() -> None:
    x, y = adding_problem(500, 30, seed=4)
    assert x.shape == (500, 30, 2) and y.shape == (500, 1) and x.dtype == torch.float32
    values, markers = x[..., 0].double(), x[..., 1]
    assert ((values >= 0) & (values < 1)).all()
    assert set(markers.unique().tolist()) == {0.0, 1.0}
    assert (markers.sum(1) == 2).all()
    assert (markers[:, :15].sum(1) == 1).all() and (markers[:, 15:].sum(1) == 1).all()
    expected = (values * markers).sum(1, keepdim=True)
    assert rel_error(y.double(), expected) < 1e-6


def test_adding_problem_is_deterministic_by_seed() -> None:
    a, b, c = adding_problem(64, 20, seed=7), adding_problem(64, 20, seed=7), adding_problem(64, 20, seed=8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    gen1, gen2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    first, second = adding_problem(8, 10, seed=gen1), adding_problem(8, 10, seed=gen1)
    assert not torch.equal(first[0], second[0])  # successive draws from one generator are fresh
    assert torch.equal(adding_problem(8, 10, seed=gen2)[0], first[0])


def test_adding_problem_baseline() -> None:
    """Predicting the mean 1.0 gives MSE Var(U1 + U2) = 1/6."""
    _, y = adding_problem(200_000, 4, seed=0, dtype=f64)
    assert abs(y.mean().item() - 1.0) < 0.005
    assert abs(((y - 1.0) ** 2).mean().item() - ADDING_BASELINE_MSE) < 0.002
    assert ADDING_BASELINE_MSE == pytest.approx(2 / 12)


def test_copy_problem() -> None:
    spec = CopySpec(n_symbols=8)
    x, y = copy_problem(50, delay=20, copy_len=5, n_symbols=8, seed=1)
    assert x.shape == y.shape == (50, 30) and x.dtype == torch.int64
    assert ((x[:, :5] >= 1) & (x[:, :5] <= 8)).all()
    assert (x[:, 5 + 19] == spec.delimiter).all() and spec.vocab_size == 10
    assert (x[:, 5:24] == spec.blank).all() and (x[:, 25:] == spec.blank).all()
    assert torch.equal(y[:, -5:], x[:, :5])
    assert (y[:, :-5] == spec.blank).all()
    again, _ = copy_problem(50, delay=20, copy_len=5, n_symbols=8, seed=1)
    other, _ = copy_problem(50, delay=20, copy_len=5, n_symbols=8, seed=2)
    assert torch.equal(x, again) and not torch.equal(x, other)


def test_sequence_generators_validate_arguments() -> None:
    with pytest.raises(ValueError):
        adding_problem(4, 1)
    with pytest.raises(ValueError):
        copy_problem(4, delay=0)


# --- the source article's pseudo-cells (seed 004), corrected ----------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_seed004_cells_equal_torch_cells(seed: int) -> None:
    """The corrected lstm_cell / gru_cell of seed 004 equal nn.LSTMCell / nn.GRUCell in float64;
    the article's own GRU candidate (Cho et al.'s reset-before form) does not."""
    errors = gates.check_seed004_cells(input_size=3, hidden_size=5, examples=4, seed=seed)
    for name in ("lstm h", "lstm c", "gru h"):
        assert errors[name] < 1e-8, f"seed-004 {name} differs from PyTorch's cell: {errors[name]:.1e}"
    assert errors["gru h, Cho's form"] > 1e-3, "Cho's GRU form should differ from PyTorch's"
