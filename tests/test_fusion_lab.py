"""The fusion lab (``solutions/fusion`` -> ``labs/fusion``): clean, in sync with its release, graded as intended.

The grading checks of ``tests/test_rnn_lab.py``, for the ``fusion`` assignment (the notebook checks
of ``tests/test_lab_sync.py`` cover every lab folder). One ``grade fusion`` batch, in a temporary
copy of the course (``labs/`` and ``grading/`` of the repository are never touched), grades three
submissions: the solution, the lab as released, and one with *every* exercise half right in the
way its hidden tests are meant to catch. The last one shows
that each exercise's partial credit is real: each passes its visible test and fails its hidden
one. A second half-right answer to exercise 4 is checked in-process (visible test passed,
hidden failed). The same batch checks that ``labs/fusion`` is in sync with ``solutions/fusion``.
"""

from __future__ import annotations

from lab_checks import EveryExerciseHalfRight, Lab

LAB = Lab("fusion", "fusion-lab.ipynb")

# Half-right answers: each passes the exercise's visible test (the simple case) and fails its hidden
# tests (the general case the statement describes).

# 1. The padding zeroed after the softmax instead of masked before it: right while there is no padding,
# else the weights of the real positions sum to less than 1.
EX1_MASK_AFTER_SOFTMAX = """def additive_attention(query, annotations, W, U, b, v, mask=None):
    scores = torch.tanh(annotations @ W.T + (query @ U.T).unsqueeze(1) + b) @ v
    alpha = torch.softmax(scores, dim=1)
    if mask is not None:
        alpha = alpha * mask  # should mask the scores before the softmax: the valid weights no longer sum to 1
    return torch.einsum("bl,bld->bd", alpha, annotations), alpha
"""

# 2. The state is not passed to the LSTM cell, which then starts from h = c = 0 at every step: right at
# the first step only.
EX2_STATE_NOT_PASSED = """def decoder_step(emb, state, annotations, mask, attend, cell, out):
    h_prev, c_prev = state
    context, alpha = attend(h_prev, annotations, mask)
    h, c = cell(torch.cat([emb, context], dim=1))  # should pass (h_prev, c_prev): without it the cell starts from zero
    return out(h), (h, c), alpha
"""

# 3. No care for queries that may attend to nothing: softmax of a row of -inf is nan. Right as long as
# every query has an allowed key.
EX3_NAN_ROWS = """def scaled_dot_product_attention(q, k, v, mask=None, causal=False):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        scores = scores.masked_fill(~torch.ones(scores.shape[-2:], dtype=torch.bool).tril(), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # a row with no allowed key is 0/0 = nan: should be made 0
    return weights @ v, weights
"""

# 4a. The blanks removed before the repeats are merged: "1 _ 1" becomes "1". Right unless a label is
# repeated across a blank (a double digit).
EX4_BLANKS_FIRST = """def ctc_greedy_decode(log_probs, lengths, blank=0):
    best = log_probs.argmax(dim=2).T
    decoded = []
    for b in range(best.shape[0]):
        path = [c for c in best[b, : lengths[b]].tolist() if c != blank]  # drops the blanks first...
        decoded.append([c for i, c in enumerate(path) if i == 0 or c != path[i - 1]])  # ...so "1 _ 1" merges into "1"
    return decoded
"""

# 4b. Every frame decoded, the padding after each sequence's length too: right when all use the whole T.
EX4_IGNORES_LENGTHS = """def ctc_greedy_decode(log_probs, lengths, blank=0):
    decoded = []
    for path in log_probs.argmax(dim=2).T:  # should stop at lengths[b]: the frames after it are padding
        decoded.append([c for c in torch.unique_consecutive(path).tolist() if c != blank])
    return decoded
"""

# 5. Stops when every sequence has produced <eos>, but keeps what the model says after a sequence's own
# <eos> instead of padding: right for one sequence, or sequences that all end at the same step.
EX5_NO_PAD_AFTER_EOS = """def greedy_decode(step_fn, state, batch_size, bos, eos, max_len, pad=0):
    tokens = torch.full((batch_size, max_len), pad, dtype=torch.long)
    previous = torch.full((batch_size,), bos, dtype=torch.long)
    for t in range(max_len):
        logits, state = step_fn(previous, state)
        previous = logits.argmax(dim=1)
        tokens[:, t] = previous  # should write pad for the sequences that have already ended
        if (tokens == eos).any(dim=1).all():  # stops once every sequence has produced <eos>
            break
    ended = (tokens == eos).any(dim=1)
    first = (tokens == eos).int().argmax(dim=1)
    return tokens, torch.where(ended, first + 1, torch.full_like(first, max_len))
"""

# 6. The sliding window ignored: the cache keeps every position. Right whenever window is None.
EX6_NO_WINDOW = """def kv_cache_step(q, k, v, cache, window=None):
    K, V = k.unsqueeze(2), v.unsqueeze(2)
    if cache is not None:
        K = torch.cat([cache[0], K], dim=2)
        V = torch.cat([cache[1], V], dim=2)
    # should keep only the last `window` positions of K and V
    weights = torch.softmax(torch.einsum("bhd,bhtd->bht", q, K) / math.sqrt(q.shape[-1]), dim=-1)
    return torch.einsum("bht,bhtd->bhd", weights, V), (K, V)
"""

HALF_RIGHT = {
    "ex1-solution": EX1_MASK_AFTER_SOFTMAX,
    "ex2-solution": EX2_STATE_NOT_PASSED,
    "ex3-solution": EX3_NAN_ROWS,
    "ex4-solution": EX4_BLANKS_FIRST,
    "ex5-solution": EX5_NO_PAD_AFTER_EOS,
    "ex6-solution": EX6_NO_WINDOW,
}


class TestFusionLab(EveryExerciseHalfRight):
    """Exercise 4 decodes the padding frames too: its visible test (full lengths) passes and its hidden test fails (checked in-process)."""

    lab = LAB
    exercises = 6
    partial = {"ex4-solution": EX4_IGNORES_LENGTHS}
    partial_exercise = "ex4"
    half_right = HALF_RIGHT


def _solution_function(cell_id: str, name: str):
    """The reference answer of one exercise, executed from ``solutions/fusion`` as released."""
    import math
    from pathlib import Path

    import nbformat
    import torch

    path = Path(__file__).resolve().parents[1] / "solutions" / "fusion" / "fusion-lab.ipynb"
    cell = next(c for c in nbformat.read(path, as_version=4).cells if c.get("id") == cell_id)
    namespace = {"math": math, "torch": torch}
    exec(compile(cell.source, f"{path.name}:{cell_id}", "exec"), namespace)
    return namespace[name]


def test_fully_masked_query_gives_zero_row_and_finite_gradients():
    """Exercise 3 and the self-attention derivation agree: a query with no allowed key gets a zero
    row of weights and a zero output, and backpropagating through it gives finite gradients."""
    import torch

    sdpa = _solution_function("ex3-solution", "scaled_dot_product_attention")
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 4, n, dtype=torch.float64, generator=gen).requires_grad_(True) for n in (8, 8, 3))
    valid = torch.arange(4) < torch.tensor([4, 2])[:, None]  # sequence 1 has two padding positions
    mask = (valid[:, None, :, None] & valid[:, None, None, :])  # padding queries may attend to nothing
    for causal in (False, True):
        output, weights = sdpa(q, k, v, mask, causal)
        empty = ~valid[1]
        assert torch.equal(weights[1][:, empty], torch.zeros_like(weights[1][:, empty])), "a fully masked row must be 0"
        assert torch.equal(output[1][:, empty], torch.zeros_like(output[1][:, empty])), "its output must be 0"
        assert torch.isfinite(output).all() and torch.isfinite(weights).all()
        (output * torch.randn(output.shape, dtype=torch.float64, generator=gen)).sum().backward()
        for name, t in (("q", q), ("k", k), ("v", v)):
            assert torch.isfinite(t.grad).all(), f"dL/d{name} is not finite with a fully masked query (causal={causal})"
            t.grad = None
    # the guard is what makes it finite: without it, the same rows are nan (the derivation's warning)
    scores = (q @ k.transpose(-2, -1)).masked_fill(~mask, float("-inf"))
    assert torch.isnan(torch.softmax(scores, dim=-1)[1][:, empty]).all()
