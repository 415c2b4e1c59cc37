"""The RNN lab (``solutions/rnn`` -> ``labs/rnn``): clean, in sync with its release, graded as intended.

The grading checks of ``tests/test_cnn_lab.py``, for the ``rnn`` assignment (the notebook checks
of ``tests/test_lab_sync.py`` cover every lab folder). One ``grade rnn`` batch, in a temporary
copy of the course (``labs/`` and ``grading/`` of the repository are never touched), grades three
submissions: the solution, the lab as released, and one with *every* exercise half right in the
way its hidden tests are meant to catch. The last one shows
that each exercise's partial credit is real: each passes its visible test and fails its hidden
one. A second half-right answer to exercise 2 is checked in-process (visible test passed,
hidden failed). The same batch checks that ``labs/rnn`` is in sync with ``solutions/rnn``.
"""

from __future__ import annotations

from lab_checks import EveryExerciseHalfRight, Lab

LAB = Lab("rnn", "rnn-lab.ipynb")

# Half-right answers: each passes the exercise's visible test (the simple case) and fails its hidden
# tests (the general case the statement describes).

# 1. `h_prev @ W_hh` runs (W_hh is square) but multiplies by W_hh^T: invisible while h_prev = 0.
EX1_UNTRANSPOSED = """def rnn_step(x_t, h_prev, W_xh, W_hh, b):
    return torch.tanh(h_prev @ W_hh + x_t @ W_xh.T + b)  # should be W_hh.T
"""

# 2a. The backward loop stops one step early: the first step's term delta_1 h_0^T is lost, which
# only shows when h_0 != 0.
EX2_FORGETS_H0 = """def bptt_grad_W_hh(x, h0, W_xh, W_hh, b, dh):
    hs = []
    h = h0
    for x_t in x:
        h = torch.tanh(h @ W_hh.T + x_t @ W_xh.T + b)
        hs.append(h)
    grad = torch.zeros_like(W_hh)
    from_next = torch.zeros_like(h0)
    for t in reversed(range(1, len(x))):  # stops at the second step: the first step's term uses h0
        delta = (dh[t] + from_next) * (1 - hs[t] ** 2)
        grad += delta.T @ hs[t - 1]
        from_next = delta @ W_hh
    return grad
"""

# 2b. Only the last step's loss is back-propagated: right for a loss on h_T, wrong for a per-step loss.
EX2_LAST_STEP_ONLY = """def bptt_grad_W_hh(x, h0, W_xh, W_hh, b, dh):
    hs = [h0]
    for x_t in x:
        hs.append(torch.tanh(hs[-1] @ W_hh.T + x_t @ W_xh.T + b))
    grad = torch.zeros_like(W_hh)
    g = dh[-1]  # should add dh[t - 1] at every step
    for t in range(len(x), 0, -1):
        delta = g * (1 - hs[t] ** 2)
        grad += delta.T @ hs[t - 1]
        g = delta @ W_hh
    return grad
"""

# 3. The LSTM of 1997, without a forget gate: c = c_prev + i * g. Right whenever c_prev = 0.
EX3_NO_FORGET_GATE = """def lstm_cell(x, h_prev, c_prev, W_ih, W_hh, b_ih, b_hh):
    i, f, g, o = (x @ W_ih.T + b_ih + h_prev @ W_hh.T + b_hh).chunk(4, dim=1)
    c = c_prev + torch.sigmoid(i) * torch.tanh(g)  # should be sigmoid(f) * c_prev + ...
    return torch.sigmoid(o) * torch.tanh(c), c
"""

# 4. Each tensor clipped on its own instead of the global norm: right for a single parameter.
EX4_PER_TENSOR = """def clip_grad_norm(parameters, max_norm):
    norms = []
    for p in parameters:
        if p.grad is None:
            continue
        norm = p.grad.norm()
        norms.append(norm)
        if norm > max_norm:  # should compare (and rescale by) the norm of all gradients together
            p.grad.mul_(max_norm / (norm + 1e-6))
    return torch.stack(norms).norm()
"""

# 5. The backward half taken at the last valid step too: right for one-directional RNNs only.
EX5_BACKWARD_AT_END = """def last_valid_state(outputs, lengths, bidirectional=False):
    return outputs[torch.arange(outputs.shape[0]), lengths - 1]  # the backward direction ends at t = 0
"""

# 6. The bands spread from 0 Hz instead of from f_min: right whenever f_min = 0.
EX6_IGNORES_F_MIN = """def mel_filterbank(n_mels, n_fft, sample_rate, f_min=0.0, f_max=None, normalize=False):
    f_max = sample_rate / 2 if f_max is None else f_max
    top = 2595.0 * math.log10(1.0 + f_max / 700.0)
    edges = 700.0 * (10.0 ** (torch.linspace(0.0, top, n_mels + 2, dtype=torch.float64) / 2595.0) - 1.0)
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    weights = torch.clamp(torch.minimum((freqs - lower) / (centre - lower), (upper - freqs) / (upper - centre)), min=0.0)
    return weights * (2.0 / (upper - lower)) if normalize else weights
"""

HALF_RIGHT = {
    "ex1-solution": EX1_UNTRANSPOSED,
    "ex2-solution": EX2_LAST_STEP_ONLY,
    "ex3-solution": EX3_NO_FORGET_GATE,
    "ex4-solution": EX4_PER_TENSOR,
    "ex5-solution": EX5_BACKWARD_AT_END,
    "ex6-solution": EX6_IGNORES_F_MIN,
}


class TestRnnLab(EveryExerciseHalfRight):
    """Exercise 2 forgets the first step's term: its visible test (h_0 = 0) passes and its hidden test fails (checked in-process)."""

    lab = LAB
    exercises = 6
    partial = {"ex2-solution": EX2_FORGETS_H0}
    partial_exercise = "ex2"
    half_right = HALF_RIGHT

