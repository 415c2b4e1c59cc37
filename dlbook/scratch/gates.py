"""LSTM and GRU cells from their equations, in PyTorch's conventions, provably equal to nn.LSTM / nn.GRU.

The equations are derived in chapters/rnn/gates-derivation.md; the labels in the docstrings below
(``eq-gates-...``) point there. Weights are stored exactly as PyTorch stores them, so loading a
trained ``nn.LSTM``/``nn.GRU`` (or ``nn.LSTMCell``/``nn.GRUCell``) is a copy, not a translation:

* LSTM: ``weight_ih`` (4H, I) and ``weight_hh`` (4H, H) stack the rows of the input gate ``i``,
  the forget gate ``f``, the candidate ``g`` and the output gate ``o``, in that order; two biases
  ``bias_ih`` and ``bias_hh`` (4H each) are both added (only their sum matters).
* GRU: ``weight_ih`` (3H, I) and ``weight_hh`` (3H, H) stack the reset gate ``r``, the update gate
  ``z`` and the candidate ``n``; the reset gate multiplies ``W_hn h + b_hn`` *after* the matrix
  product, which differs from Cho et al. (2014), who reset ``h`` before it (``reset_after=False``).

The source article's ``LSTMCell`` could not be constructed: its ``reset_parameters`` read
``self.hidden_size``, which ``__init__`` never set. :class:`LSTMCellScratch` sets it and stacks the
twelve per-gate tensors of the original into PyTorch's four.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from dlbook.gradients import GradientReport, compare

LSTM_GATES = "ifgo"  # PyTorch's row order in weight_ih / weight_hh / biases
GRU_GATES = "rzn"


class LSTMStep(NamedTuple):
    """One LSTM step: the new state and the four gate activations, each (B, H)."""

    h: Tensor
    c: Tensor
    i: Tensor
    f: Tensor
    g: Tensor
    o: Tensor


class GRUStep(NamedTuple):
    """One GRU step: the new hidden state and the gate activations, each (B, H)."""

    h: Tensor
    r: Tensor
    z: Tensor
    n: Tensor


def _affine(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    out = x @ weight.T
    return out if bias is None else out + bias


def lstm_cell(
    x: Tensor, h: Tensor, c: Tensor, weight_ih: Tensor, weight_hh: Tensor,
    bias_ih: Tensor | None = None, bias_hh: Tensor | None = None, gate_order: str = LSTM_GATES,
) -> LSTMStep:
    """One LSTM step, eqs. (eq-gates-lstm-preact) to (eq-gates-lstm-h).

    x (B, I), h and c (B, H); weight_ih (4H, I), weight_hh (4H, H), biases (4H,). The pre-activations
    of all four gates come from two matrix products; ``gate_order`` names which gate each block of H
    rows belongs to. PyTorch's order is ``"ifgo"``; any other order reads the same weights wrongly
    (the planted bug of the tests).
    """
    if sorted(gate_order) != sorted(LSTM_GATES):
        raise ValueError(f"gate_order must be a permutation of {LSTM_GATES!r}, got {gate_order!r}")
    pre = _affine(x, weight_ih, bias_ih) + _affine(h, weight_hh, bias_hh)  # (B, 4H), eq-gates-lstm-preact
    blocks = dict(zip(gate_order, pre.chunk(4, dim=1)))
    i = torch.sigmoid(blocks["i"])  # input gate: how much of the candidate to write
    f = torch.sigmoid(blocks["f"])  # forget gate: how much of the old cell to keep
    g = torch.tanh(blocks["g"])  # candidate values in (-1, 1)
    o = torch.sigmoid(blocks["o"])  # output gate: how much of the cell to expose
    c_new = f * c + i * g  # eq-gates-lstm-c: the additive cell update
    h_new = o * torch.tanh(c_new)  # eq-gates-lstm-h
    return LSTMStep(h_new, c_new, i, f, g, o)


def gru_cell(
    x: Tensor, h: Tensor, weight_ih: Tensor, weight_hh: Tensor,
    bias_ih: Tensor | None = None, bias_hh: Tensor | None = None, reset_after: bool = True,
) -> GRUStep:
    """One GRU step, eqs. (eq-gates-gru-r) to (eq-gates-gru-h).

    x (B, I), h (B, H); weight_ih (3H, I), weight_hh (3H, H), biases (3H,), rows in the order r, z, n.
    ``reset_after=True`` is PyTorch's (and cuDNN's) candidate
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``; ``reset_after=False`` is Cho et al.'s original
    ``n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)``, a different function of the same weights.
    """
    H = h.shape[1]
    gi = _affine(x, weight_ih, bias_ih)  # (B, 3H): input contributions of r, z, n
    w_hr, w_hz, w_hn = weight_hh.split(H, dim=0)
    b_hr, b_hz, b_hn = bias_hh.split(H) if bias_hh is not None else (None, None, None)
    x_r, x_z, x_n = gi.chunk(3, dim=1)
    r = torch.sigmoid(x_r + _affine(h, w_hr, b_hr))  # eq-gates-gru-r
    z = torch.sigmoid(x_z + _affine(h, w_hz, b_hz))  # eq-gates-gru-z
    if reset_after:
        n = torch.tanh(x_n + r * _affine(h, w_hn, b_hn))  # eq-gates-gru-n (PyTorch)
    else:
        n = torch.tanh(x_n + _affine(r * h, w_hn, b_hn))  # eq-gates-gru-n-cho (Cho et al. 2014)
    h_new = (1 - z) * n + z * h  # eq-gates-gru-h: z = 1 copies the old state
    return GRUStep(h_new, r, z, n)


class _GatedCell(nn.Module):
    """Shared storage: PyTorch's four parameter names and its U(-1/sqrt(H), 1/sqrt(H)) initialisation."""

    n_gates: int

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True) -> None:
        super().__init__()
        # The seed article's LSTMCell forgot these two lines, so reset_parameters() raised AttributeError.
        self.input_size = input_size
        self.hidden_size = hidden_size
        G = self.n_gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(G, input_size))
        self.weight_hh = nn.Parameter(torch.empty(G, hidden_size))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(G))
            self.bias_hh = nn.Parameter(torch.empty(G))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)  # PyTorch's default for every RNN weight and bias
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias_ih is not None}"


class LSTMCellScratch(_GatedCell):
    """The corrected LSTM cell: ``forward(x, (h, c)) -> (h, c)``, like ``nn.LSTMCell``."""

    n_gates = 4

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, gate_order: str = LSTM_GATES):
        super().__init__(input_size, hidden_size, bias)
        self.gate_order = gate_order  # "ifgo" = PyTorch; anything else is a deliberate bug

    def step(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None) -> LSTMStep:
        if state is None:
            zeros = x.new_zeros(x.shape[0], self.hidden_size)
            state = (zeros, zeros)
        return lstm_cell(x, *state, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, self.gate_order)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        out = self.step(x, state)
        return out.h, out.c


class GRUCellScratch(_GatedCell):
    """A GRU cell: ``forward(x, h) -> h``, like ``nn.GRUCell`` (``reset_after=False``: Cho et al.)."""

    n_gates = 3

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, reset_after: bool = True):
        super().__init__(input_size, hidden_size, bias)
        self.reset_after = reset_after

    def step(self, x: Tensor, h: Tensor | None = None) -> GRUStep:
        if h is None:
            h = x.new_zeros(x.shape[0], self.hidden_size)
        return gru_cell(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, self.reset_after)

    def forward(self, x: Tensor, h: Tensor | None = None) -> Tensor:
        return self.step(x, h).h


class LSTMScratch(nn.Module):
    """A one-layer LSTM: a Python loop over time around :class:`LSTMCellScratch`.

    Same interface as ``nn.LSTM(input_size, hidden_size, batch_first=...)``:
    ``forward(x, (h0, c0)) -> (output, (h_n, c_n))`` with output (B, T, H) (batch_first) or (T, B, H),
    and h_n, c_n of shape (1, B, H). After a forward pass ``self.gates`` holds the gate activations
    ``i, f, g, o`` and the cell states ``c``, a dict of (B, T, H) tensors, for inspection.
    """

    def __init__(self, input_size: int, hidden_size: int, batch_first: bool = False, **cell_kwargs) -> None:
        super().__init__()
        self.cell = LSTMCellScratch(input_size, hidden_size, **cell_kwargs)
        self.batch_first = batch_first
        self.gates: dict[str, Tensor] = {}

    def forward(
        self, x: Tensor, state: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        xs = x.unbind(1 if self.batch_first else 0)
        if state is not None:
            state = (state[0][0], state[1][0])  # (1, B, H) -> (B, H)
        steps = []
        for x_t in xs:
            out = self.cell.step(x_t, state)
            state = (out.h, out.c)
            steps.append(out)
        dim = 1 if self.batch_first else 0
        self.gates = {k: torch.stack([getattr(s, k) for s in steps], dim=1).detach() for k in LSTM_GATES + "c"}
        output = torch.stack([s.h for s in steps], dim=dim)
        return output, (state[0].unsqueeze(0), state[1].unsqueeze(0))


class GRUScratch(nn.Module):
    """A one-layer GRU with ``nn.GRU``'s interface: ``forward(x, h0) -> (output, h_n)``."""

    def __init__(self, input_size: int, hidden_size: int, batch_first: bool = False, **cell_kwargs) -> None:
        super().__init__()
        self.cell = GRUCellScratch(input_size, hidden_size, **cell_kwargs)
        self.batch_first = batch_first
        self.gates: dict[str, Tensor] = {}

    def forward(self, x: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        xs = x.unbind(1 if self.batch_first else 0)
        h = None if h0 is None else h0[0]
        steps = []
        for x_t in xs:
            out = self.cell.step(x_t, h)
            h = out.h
            steps.append(out)
        dim = 1 if self.batch_first else 0
        self.gates = {k: torch.stack([getattr(s, k) for s in steps], dim=1).detach() for k in GRU_GATES}
        return torch.stack([s.h for s in steps], dim=dim), h.unsqueeze(0)


_TORCH_KINDS = {LSTMCellScratch: (nn.LSTM, nn.LSTMCell), GRUCellScratch: (nn.GRU, nn.GRUCell)}


def copy_from_torch(scratch: nn.Module, source: nn.Module) -> nn.Module:
    """Load the weights of ``nn.LSTM``/``nn.GRU`` (layer 0) or ``nn.LSTMCell``/``nn.GRUCell`` into ``scratch``.

    ``scratch`` is a cell (:class:`LSTMCellScratch`, :class:`GRUCellScratch`) or a sequence model
    (:class:`LSTMScratch`, :class:`GRUScratch`). The layouts are identical, so this is a copy; it also
    matches dtype and device. Multi-layer, bidirectional and projected (``proj_size``) modules are refused.
    Returns ``scratch``.
    """
    cell = scratch.cell if isinstance(scratch, (LSTMScratch, GRUScratch)) else scratch
    allowed = _TORCH_KINDS.get(type(cell))
    if allowed is None or not isinstance(source, allowed):
        raise TypeError(f"cannot copy a {type(source).__name__} into a {type(scratch).__name__}")
    if isinstance(source, nn.RNNBase):
        if source.num_layers != 1 or source.bidirectional or getattr(source, "proj_size", 0):
            raise ValueError("copy_from_torch handles one unidirectional layer without projection")
        if isinstance(scratch, (LSTMScratch, GRUScratch)) and scratch.batch_first != source.batch_first:
            raise ValueError(f"batch_first differs: scratch {scratch.batch_first}, torch {source.batch_first}")
        suffix = "_l0"
    else:
        suffix = ""
    if (source.input_size, source.hidden_size) != (cell.input_size, cell.hidden_size):
        raise ValueError(f"sizes differ: torch {(source.input_size, source.hidden_size)}, "
                         f"scratch {(cell.input_size, cell.hidden_size)}")
    ref = source.weight_ih_l0 if suffix else source.weight_ih
    cell.to(dtype=ref.dtype, device=ref.device)
    with torch.no_grad():
        for name, p in cell.named_parameters():
            p.copy_(getattr(source, name + suffix))
    return scratch


def lstm_param_count(input_size: int, hidden_size: int) -> int:
    """4 (H (I + H) + 2H): four gates, each with an input matrix, a recurrent matrix and two biases."""
    return 4 * (hidden_size * (input_size + hidden_size) + 2 * hidden_size)


def gru_param_count(input_size: int, hidden_size: int) -> int:
    """3 (H (I + H) + 2H): three blocks (r, z, n), each with two matrices and two biases."""
    return 3 * (hidden_size * (input_size + hidden_size) + 2 * hidden_size)


def lstm_state_jacobian(
    x: Tensor, h: Tensor, c: Tensor, weight_ih: Tensor, weight_hh: Tensor,
    bias_ih: Tensor | None = None, bias_hh: Tensor | None = None,
) -> dict[str, Tensor]:
    """The four blocks of d(h_t, c_t)/d(h_{t-1}, c_{t-1}) for ONE example, by hand, eq. (eq-gates-jacobian).

    x (I,), h and c (H,). Returns ``{"dc/dc": diag(f), "dc/dh": ..., "dh/dc": ..., "dh/dh": ...}``,
    each (H, H), with rows indexing the output and columns the input, like
    ``torch.autograd.functional.jacobian``.
    """
    H = h.shape[0]
    s = lstm_cell(x[None], h[None], c[None], weight_ih, weight_hh, bias_ih, bias_hh)
    i, f, g, o, c_new = s.i[0], s.f[0], s.g[0], s.o[0], s.c[0]
    w_hi, w_hf, w_hg, w_ho = weight_hh.split(H, dim=0)
    tanh_c = torch.tanh(c_new)
    dc_dc = torch.diag(f)  # eq-gates-dc-dc: the only direct path from c_{t-1} to c_t
    # eq-gates-dc-dh: h_{t-1} reaches c_t through the pre-activations of f, i and g
    dc_dh = ((c * f * (1 - f))[:, None] * w_hf + (g * i * (1 - i))[:, None] * w_hi
             + (i * (1 - g**2))[:, None] * w_hg)
    dh_dcnew = o * (1 - tanh_c**2)  # d h_t / d c_t, a diagonal
    dh_dc = dh_dcnew[:, None] * dc_dc  # eq-gates-dh-dc
    dh_dh = (tanh_c * o * (1 - o))[:, None] * w_ho + dh_dcnew[:, None] * dc_dh  # eq-gates-dh-dh
    return {"dc/dc": dc_dc, "dc/dh": dc_dh, "dh/dc": dh_dc, "dh/dh": dh_dh}


def check_lstm_state_jacobian(input_size: int = 3, hidden_size: int = 5, seed: int = 0) -> GradientReport:
    """:func:`lstm_state_jacobian` against ``torch.autograd.functional.jacobian`` in float64."""
    gen = torch.Generator().manual_seed(seed)
    H, I = hidden_size, input_size

    def rand(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    x, h, c = rand(I), rand(H), rand(H)
    w_ih, w_hh, b_ih, b_hh = rand(4 * H, I), rand(4 * H, H), rand(4 * H), rand(4 * H)
    mine = lstm_state_jacobian(x, h, c, w_ih, w_hh, b_ih, b_hh)

    def step(h_prev: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
        s = lstm_cell(x[None], h_prev[None], c_prev[None], w_ih, w_hh, b_ih, b_hh)
        return s.h[0], s.c[0]

    (dh_dh, dh_dc), (dc_dh, dc_dc) = torch.autograd.functional.jacobian(step, (h, c))
    return compare(mine, {"dc/dc": dc_dc, "dc/dh": dc_dh, "dh/dc": dh_dc, "dh/dh": dh_dh})


def gru_state_jacobian(
    x: Tensor, h: Tensor, weight_ih: Tensor, weight_hh: Tensor,
    bias_ih: Tensor | None = None, bias_hh: Tensor | None = None,
) -> Tensor:
    """d h_t / d h_{t-1} of PyTorch's GRU for ONE example, by hand, eq. (eq-gates-gru-jacobian); (H, H).

    diag(z) is the direct path (the GRU's carousel); the rest flows through z, n and r.
    """
    H = h.shape[0]
    s = gru_cell(x[None], h[None], weight_ih, weight_hh, bias_ih, bias_hh)
    r, z, n = s.r[0], s.z[0], s.n[0]
    w_hr, w_hz, w_hn = weight_hh.split(H, dim=0)
    b_hn = bias_hh[2 * H:] if bias_hh is not None else torch.zeros_like(h)
    dz_dh = (z * (1 - z))[:, None] * w_hz
    dr_dh = (r * (1 - r))[:, None] * w_hr
    dn_dh = (1 - n**2)[:, None] * (r[:, None] * w_hn + (w_hn @ h + b_hn)[:, None] * dr_dh)
    return torch.diag(z) + (1 - z)[:, None] * dn_dh + (h - n)[:, None] * dz_dh


def check_gru_state_jacobian(input_size: int = 3, hidden_size: int = 5, seed: int = 0) -> GradientReport:
    """:func:`gru_state_jacobian` against ``torch.autograd.functional.jacobian`` in float64."""
    gen = torch.Generator().manual_seed(seed)
    H, I = hidden_size, input_size

    def rand(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    x, h = rand(I), rand(H)
    w_ih, w_hh, b_ih, b_hh = rand(3 * H, I), rand(3 * H, H), rand(3 * H), rand(3 * H)
    mine = gru_state_jacobian(x, h, w_ih, w_hh, b_ih, b_hh)
    auto = torch.autograd.functional.jacobian(lambda h_prev: gru_cell(x[None], h_prev[None], w_ih, w_hh,
                                                                      b_ih, b_hh).h[0], h)
    return compare({"dh/dh": mine}, {"dh/dh": auto})


def compare_with_torch(
    kind: str, dtype: torch.dtype = torch.float64, batch: int = 3, seq_len: int = 7, input_size: int = 4,
    hidden_size: int = 5, seed: int = 0, tolerance: float | None = None, **cell_kwargs,
) -> GradientReport:
    """Run ``nn.LSTM``/``nn.GRU`` (batch_first) and the scratch copy on the same data; compare everything.

    Compared: the outputs (all h_t), h_n (and c_n), and the gradients of one scalar loss, a random
    weighted sum of all those outputs, w.r.t. the input sequence, the initial state and every
    parameter. ``tolerance`` defaults to 1e-10 in float64 and 1e-6 in float32. ``cell_kwargs`` go to
    the scratch cell (``gate_order=...``, ``reset_after=...``), which is how the tests plant bugs.
    """
    if kind not in ("lstm", "gru"):
        raise ValueError(f"kind must be 'lstm' or 'gru', got {kind!r}")
    if tolerance is None:
        tolerance = 1e-10 if dtype == torch.float64 else 1e-6
    torch.manual_seed(seed)
    torch_cls, scratch_cls = (nn.LSTM, LSTMScratch) if kind == "lstm" else (nn.GRU, GRUScratch)
    reference = torch_cls(input_size, hidden_size, batch_first=True).to(dtype)
    scratch = copy_from_torch(scratch_cls(input_size, hidden_size, batch_first=True, **cell_kwargs), reference)

    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, seq_len, input_size, generator=gen).to(dtype)
    state = [torch.randn(1, batch, hidden_size, generator=gen).to(dtype) for _ in range(2 if kind == "lstm" else 1)]
    out_weights = torch.randn(batch, seq_len, hidden_size, generator=gen).to(dtype)
    end_weights = [torch.randn(1, batch, hidden_size, generator=gen).to(dtype) for _ in state]

    def run(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        xs = x.clone().requires_grad_(True)
        s0 = [s.clone().requires_grad_(True) for s in state]
        output, final = model(xs, tuple(s0) if kind == "lstm" else s0[0])
        final = list(final) if kind == "lstm" else [final]
        loss = (output * out_weights).sum() + sum((f * w).sum() for f, w in zip(final, end_weights))
        params = dict(model.named_parameters())
        grads = torch.autograd.grad(loss, [xs, *s0, *params.values()])
        names = ["h_n", "c_n"][: len(final)]
        values = {"output": output.detach(), **{n: f.detach() for n, f in zip(names, final)}}
        grad_names = ["d x", *(f"d {n[0]}0" for n in names)] + [f"d {n.split('.')[-1].removesuffix('_l0')}"
                                                                for n in params]
        values.update(dict(zip(grad_names, grads)))
        return values, params

    mine, _ = run(scratch)
    theirs, _ = run(reference)
    return compare(mine, theirs, tolerance=tolerance)


# --- the source article's pseudo-cells (seed 004), corrected ----------------------------------


def gate_blocks(cell: nn.LSTMCell | nn.GRUCell) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """Split a PyTorch cell's stacked tensors into per-gate blocks ``W[k]`` (H, I), ``U[k]`` (H, H),
    ``b_ih[k]``, ``b_hh[k]`` (H,), with k in ``i, f, g, o`` (LSTM) or ``r, z, n`` (GRU)."""
    gates = LSTM_GATES if isinstance(cell, nn.LSTMCell) else GRU_GATES
    H = cell.hidden_size
    W, U, b_ih, b_hh = ({k: t.detach()[j * H:(j + 1) * H] for j, k in enumerate(gates)}
                        for t in (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh))
    return W, U, b_ih, b_hh


def seed004_lstm_cell(x: Tensor, h_prev: Tensor, c_prev: Tensor, W: dict[str, Tensor], U: dict[str, Tensor],
                      b: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """The article's ``lstm_cell``, corrected: column vectors x (I,), h, c (H,); ``W``, ``U``, ``b``
    are dicts of per-gate blocks (the printed code read undefined globals ``W_f``, ``U_f``, ...).
    One bias per gate: PyTorch's ``b_ih + b_hh``. Its candidate ``W_c`` is PyTorch's ``g``."""
    f = torch.sigmoid(W["f"] @ x + U["f"] @ h_prev + b["f"])  # forget gate (遗忘门)
    i = torch.sigmoid(W["i"] @ x + U["i"] @ h_prev + b["i"])  # input gate (输入门)
    g = torch.tanh(W["g"] @ x + U["g"] @ h_prev + b["g"])  # candidate (候选状态)
    c = f * c_prev + i * g  # eq-gates-lstm-c
    o = torch.sigmoid(W["o"] @ x + U["o"] @ h_prev + b["o"])  # output gate (输出门)
    return o * torch.tanh(c), c  # eq-gates-lstm-h


def seed004_gru_cell(x: Tensor, h_prev: Tensor, W: dict[str, Tensor], U: dict[str, Tensor], b: dict[str, Tensor],
                     b_hn: Tensor, reset_after: bool = True) -> Tensor:
    """The article's ``gru_cell``, corrected. Its first gate is the **reset** gate r (重置门; the article
    labels it 遗忘门, forget gate, which a GRU does not have). ``b["r"]``, ``b["z"]`` are summed biases,
    ``b["n"]`` the candidate's input bias and ``b_hn`` its recurrent bias. ``reset_after=True`` is
    PyTorch's form (eq-gates-gru-n: r multiplies ``U_n h + b_hn``); ``False`` is Cho et al.'s form
    that the article prints (eq-gates-gru-n-cho: r multiplies h before ``U_n``), another function."""
    r = torch.sigmoid(W["r"] @ x + U["r"] @ h_prev + b["r"])  # reset gate (重置门)
    z = torch.sigmoid(W["z"] @ x + U["z"] @ h_prev + b["z"])  # update gate (更新门)
    if reset_after:
        n = torch.tanh(W["n"] @ x + b["n"] + r * (U["n"] @ h_prev + b_hn))
    else:
        n = torch.tanh(W["n"] @ x + b["n"] + U["n"] @ (r * h_prev) + b_hn)
    return z * h_prev + (1 - z) * n  # eq-gates-gru-h (the article's update rule is PyTorch's)


def check_seed004_cells(input_size: int = 3, hidden_size: int = 5, examples: int = 4, seed: int = 0) -> dict[str, float]:
    """Relative errors, in float64, of the corrected seed-004 cells against ``nn.LSTMCell`` /
    ``nn.GRUCell`` with the same weights, on ``examples`` random inputs and states. Keys: ``lstm h``,
    ``lstm c``, ``gru h`` (PyTorch's form) and ``gru h, Cho's form`` (must *not* agree)."""
    from dlbook.gradients import rel_error

    torch.manual_seed(seed)
    lstm, gru = nn.LSTMCell(input_size, hidden_size).double(), nn.GRUCell(input_size, hidden_size).double()
    gen = torch.Generator().manual_seed(seed + 1)
    x, h, c = (torch.randn(examples, n, generator=gen, dtype=torch.float64)
               for n in (input_size, hidden_size, hidden_size))
    W, U, b_ih, b_hh = gate_blocks(lstm)
    b = {k: b_ih[k] + b_hh[k] for k in LSTM_GATES}
    mine = [seed004_lstm_cell(x[j], h[j], c[j], W, U, b) for j in range(examples)]
    with torch.no_grad():
        h_ref, c_ref = lstm(x, (h, c))
        g_ref = gru(x, h)
    Wg, Ug, bg_ih, bg_hh = gate_blocks(gru)
    bg = {"r": bg_ih["r"] + bg_hh["r"], "z": bg_ih["z"] + bg_hh["z"], "n": bg_ih["n"]}
    gru_torch_form = torch.stack([seed004_gru_cell(x[j], h[j], Wg, Ug, bg, bg_hh["n"]) for j in range(examples)])
    gru_cho_form = torch.stack([seed004_gru_cell(x[j], h[j], Wg, Ug, bg, bg_hh["n"], reset_after=False)
                                for j in range(examples)])
    return {
        "lstm h": rel_error(torch.stack([m[0] for m in mine]), h_ref),
        "lstm c": rel_error(torch.stack([m[1] for m in mine]), c_ref),
        "gru h": rel_error(gru_torch_form, g_ref),
        "gru h, Cho's form": rel_error(gru_cho_form, g_ref),
    }
