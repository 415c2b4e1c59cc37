"""A vanilla (Elman) RNN: forward loop, backpropagation through time by hand, truncated BPTT.

RNN lessons 1 and 2 (``chapters/rnn/rnn-basics.ipynb``, ``chapters/rnn/bptt.ipynb``); the equations
are derived in ``chapters/rnn/bptt-derivation.md``, whose labels the docstrings cite.

Conventions follow ``nn.RNN``: a sequence batch is time-major, ``x`` of shape (T, B, F); weights are
stored as ``nn.RNN``/``nn.Linear`` store them, ``W_xh`` (H, F), ``W_hh`` (H, H), ``W_ho`` (V, H). With
row vectors (one row per sequence of the batch) the recurrence of eq. (eq-rnn-hidden) reads

    h_t = tanh(x_t W_xh^T + h_{t-1} W_hh^T + b_h)      (B, H)
    o_t = h_t W_ho^T + b_o                             (B, V)

``nn.RNN`` keeps two biases, ``bias_ih`` and ``bias_hh``; they are only ever added, so
``b_h = bias_ih + bias_hh``. A character input may be given as int64 ids (T, B) instead of one-hot
rows: ``x_t W_xh^T`` is then column ``W_xh[:, x_t]``, the same number without the (T, B, F) tensor.

No autograd is used in the forward cache or the backward pass; :func:`check_rnn_bptt` and the tests
in ``tests/test_rnn_bptt.py`` prove them against ``torch.autograd`` in float64.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..gradients import GradientReport, compare, gradcheck64
from .mlp import log_softmax  # the stable log-sum-exp form, one implementation (ann chapter)

Tensor = torch.Tensor
PARAM_NAMES = ("W_xh", "W_hh", "b_h", "W_ho", "b_o")


# --------------------------------------------------------------------------- parameters


@dataclass
class RNNParams:
    """The five tensors of a one-layer RNN with a linear read-out (eqs. eq-rnn-hidden, eq-rnn-output)."""

    W_xh: Tensor  # (H, F)  input -> hidden, nn.RNN's weight_ih_l0
    W_hh: Tensor  # (H, H)  hidden -> hidden, nn.RNN's weight_hh_l0
    b_h: Tensor  # (H,)    bias_ih_l0 + bias_hh_l0
    W_ho: Tensor  # (V, H)  hidden -> output, nn.Linear's weight
    b_o: Tensor  # (V,)    nn.Linear's bias

    def as_dict(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> RNNParams:
        return RNNParams(**{k: v.to(device=device, dtype=dtype) for k, v in self.as_dict().items()})

    @property
    def hidden_size(self) -> int:
        return self.W_hh.shape[0]

    def numel(self) -> int:
        return sum(v.numel() for v in self.as_dict().values())


def init_rnn_params(
    input_size: int,
    hidden_size: int,
    output_size: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> RNNParams:
    """Uniform(-1/sqrt(H), 1/sqrt(H)) for every tensor, as ``nn.RNN`` initialises itself.

    The read-out uses the same bound (``nn.Linear`` would use 1/sqrt(H) too, for fan-in H).
    """
    bound = 1.0 / math.sqrt(hidden_size)

    def uniform(*shape: int) -> Tensor:
        return (torch.rand(*shape, generator=generator, dtype=dtype) * 2 - 1) * bound

    return RNNParams(
        W_xh=uniform(hidden_size, input_size),
        W_hh=uniform(hidden_size, hidden_size),
        b_h=uniform(hidden_size),
        W_ho=uniform(output_size, hidden_size),
        b_o=uniform(output_size),
    )


def params_from_torch(rnn: nn.RNN, head: nn.Linear) -> RNNParams:
    """Copy a one-layer ``nn.RNN`` (tanh) and its ``nn.Linear`` read-out; the two RNN biases are summed."""
    if rnn.num_layers != 1 or rnn.bidirectional or rnn.nonlinearity != "tanh":
        raise ValueError("params_from_torch copies a one-layer, one-directional tanh nn.RNN")
    with torch.no_grad():
        b_h = rnn.bias_ih_l0 + rnn.bias_hh_l0 if rnn.bias else rnn.weight_hh_l0.new_zeros(rnn.hidden_size)
        return RNNParams(
            W_xh=rnn.weight_ih_l0.detach().clone(),
            W_hh=rnn.weight_hh_l0.detach().clone(),
            b_h=b_h.detach().clone(),
            W_ho=head.weight.detach().clone(),
            b_o=head.bias.detach().clone(),
        )


def rnn_layer_weights(rnn: nn.RNN) -> list[tuple[Tensor, Tensor, Tensor]]:
    """``[(W_xh, W_hh, b_h)]`` for each layer of a one-directional tanh ``nn.RNN`` (b_h = b_ih + b_hh)."""
    if rnn.bidirectional or rnn.nonlinearity != "tanh":
        raise ValueError("rnn_layer_weights reads a one-directional tanh nn.RNN")
    layers = []
    for layer in range(rnn.num_layers):
        w_ih, w_hh = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")
        b_h = (getattr(rnn, f"bias_ih_l{layer}") + getattr(rnn, f"bias_hh_l{layer}")) if rnn.bias else w_hh.new_zeros(len(w_hh))
        layers.append((w_ih.detach(), w_hh.detach(), b_h.detach()))
    return layers


def rnn_param_count(input_size: int, hidden_size: int, num_layers: int = 1, two_biases: bool = True) -> int:
    """Parameters of a stacked tanh RNN (eq. eq-rnn-param-count): layer 1 sees F inputs, the others H.

    Each layer has W_xh (H x input), W_hh (H x H) and one bias of H, or two (PyTorch's b_ih and b_hh).
    """
    n_bias = 2 if two_biases else 1
    first = hidden_size * input_size + hidden_size * hidden_size + n_bias * hidden_size
    rest = hidden_size * hidden_size + hidden_size * hidden_size + n_bias * hidden_size
    return first + (num_layers - 1) * rest


# --------------------------------------------------------------------------- forward


def input_projection(x: Tensor, W_xh: Tensor) -> Tensor:
    """x_t W_xh^T for every step at once, (T, B, H): a matrix product, or a column lookup for int ids."""
    if x.dtype in (torch.int64, torch.int32):
        return W_xh.T[x]  # one-hot x_t picks column W_xh[:, x_t]
    return x @ W_xh.T


def rnn_forward(x: Tensor, W_xh: Tensor, W_hh: Tensor, b_h: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One RNN layer over a sequence: eq. (eq-rnn-hidden), a Python loop over time.

    ``x``: (T, B, F) floats or (T, B) int ids; ``h0``: (B, H), zeros by default.
    Returns ``(output, h_T)``: all hidden states (T, B, H) and the last one (B, H), which is what
    ``nn.RNN`` returns as ``output`` and (for one layer) ``h_n[0]``.
    """
    xw = input_projection(x, W_xh) + b_h  # the input does not depend on h: project all steps at once
    T, B, H = xw.shape
    h = torch.zeros(B, H, dtype=xw.dtype, device=xw.device) if h0 is None else h0
    states = []
    for t in range(T):  # the only sequential part: h_t needs h_{t-1}
        h = torch.tanh(xw[t] + h @ W_hh.T)
        states.append(h)
    return torch.stack(states), h


def stacked_rnn_forward(
    x: Tensor, layers: Sequence[tuple[Tensor, Tensor, Tensor]], h0: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """A stack of RNN layers, as ``nn.RNN(num_layers=L)``: layer l reads the hidden states of layer l-1.

    ``h0``: (L, B, H) or None. Returns ``(output, h_n)``: the top layer's states (T, B, H) and the
    last state of every layer (L, B, H).
    """
    finals = []
    for layer, (W_xh, W_hh, b_h) in enumerate(layers):
        x, h_last = rnn_forward(x, W_xh, W_hh, b_h, None if h0 is None else h0[layer])
        finals.append(h_last)
    return x, torch.stack(finals)


# --------------------------------------------------------------------------- loss and BPTT


@dataclass
class BPTTCache:
    """What the backward pass needs: the inputs, every hidden state (h_0 included) and the softmax."""

    x: Tensor  # (T, B, F) floats or (T, B) ids
    hs: Tensor  # (T + 1, B, H): hs[0] = h_0, hs[t] = h_t
    probs: Tensor  # (T, B, V): softmax(o_t)
    y: Tensor  # (T, B) int64 targets
    scale: float  # 1 for a summed loss, 1 / (T B) for the mean


def rnn_lm_forward(
    params: RNNParams, x: Tensor, y: Tensor, h0: Tensor | None = None, reduction: str = "mean"
) -> tuple[Tensor, BPTTCache]:
    """Loss of next-step prediction, eq. (eq-bptt-loss), and the cache for :func:`rnn_lm_backward`.

    ``L = sum_t sum_b -log softmax(o_t)[b, y_t[b]]``, times 1/(T B) when ``reduction="mean"`` (the
    default of ``F.cross_entropy``).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', not {reduction!r}")
    states, _ = rnn_forward(x, params.W_xh, params.W_hh, params.b_h, h0)
    T, B, H = states.shape
    h_first = torch.zeros(B, H, dtype=states.dtype, device=states.device) if h0 is None else h0
    hs = torch.cat([h_first[None], states])
    logp = log_softmax(states @ params.W_ho.T + params.b_o)  # eq-rnn-output for all steps at once
    scale = 1.0 / (T * B) if reduction == "mean" else 1.0
    loss = -logp.gather(-1, y[..., None]).sum() * scale
    return loss, BPTTCache(x=x, hs=hs, probs=logp.exp(), y=y, scale=scale)


def tanh_backward(grad_h: Tensor, h: Tensor) -> Tensor:
    """dL/da from dL/dh through h = tanh(a): tanh'(a) = 1 - h^2 (eq. eq-bptt-da)."""
    return grad_h * (1 - h * h)


def through_time(grad_a_next: Tensor, W_hh: Tensor) -> Tensor:
    """The recurrent term of eq. (eq-bptt-delta): dL/dh_t gets (dL/da_{t+1}) W_hh from step t + 1."""
    return grad_a_next @ W_hh


def rnn_lm_backward(params: RNNParams, cache: BPTTCache, input_grad: bool = False) -> dict[str, Tensor]:
    """Backpropagation through time by hand: eqs. (eq-bptt-dout) to (eq-bptt-grad-h0).

    Returns the gradients of the five parameters and of ``h0``, keyed as ``RNNParams`` plus ``"h0"``;
    with ``input_grad=True`` (float inputs only) also ``"x"``, dL/dx_t = (dL/da_t) W_xh.
    """
    hs, probs, y = cache.hs, cache.probs, cache.y
    T = probs.shape[0]
    d_out = probs.clone()  # eq-bptt-dout: dL/do_t = (p_t - onehot(y_t)) * scale
    d_out.scatter_add_(-1, y[..., None], -torch.ones_like(y[..., None], dtype=probs.dtype))
    d_out *= cache.scale
    grads = {
        "W_ho": torch.einsum("tbv,tbh->vh", d_out, hs[1:]),  # eq-bptt-grad-who: sum over t of d_out^T h_t
        "b_o": d_out.sum(dim=(0, 1)),  # eq-bptt-grad-bo
    }
    d_h_out = d_out @ params.W_ho  # (T, B, H): the part of dL/dh_t that comes through o_t
    d_a = torch.empty_like(hs[1:])  # dL/da_t for the pre-activation a_t of every step
    d_a_next = torch.zeros_like(hs[0])  # nothing comes back from step T + 1
    for t in reversed(range(T)):  # the only sequential part of the backward pass
        delta = d_h_out[t] + through_time(d_a_next, params.W_hh)  # eq-bptt-delta
        d_a[t] = tanh_backward(delta, hs[t + 1])  # eq-bptt-da
        d_a_next = d_a[t]
    grads["W_hh"] = torch.einsum("tbh,tbk->hk", d_a, hs[:-1])  # eq-bptt-grad-whh: sum_t da_t^T h_{t-1}
    if cache.x.dtype in (torch.int64, torch.int32):  # eq-bptt-grad-wxh, one-hot x_t: add da_t into column x_t
        F_in = params.W_xh.shape[1]
        d_wxh_t = torch.zeros(F_in, d_a.shape[-1], dtype=d_a.dtype, device=d_a.device)
        d_wxh_t.index_add_(0, cache.x.reshape(-1), d_a.reshape(-1, d_a.shape[-1]))
        grads["W_xh"] = d_wxh_t.T.contiguous()
    else:
        grads["W_xh"] = torch.einsum("tbh,tbf->hf", d_a, cache.x)  # eq-bptt-grad-wxh
    grads["b_h"] = d_a.sum(dim=(0, 1))  # eq-bptt-grad-bh
    grads["h0"] = through_time(d_a[0], params.W_hh)  # eq-bptt-grad-h0
    if input_grad:
        grads["x"] = d_a @ params.W_xh  # what an embedding or a lower layer below would receive
    return {k: grads[k] for k in (*PARAM_NAMES, "h0", "x") if k in grads}


def rnn_bptt(
    params: RNNParams, x: Tensor, y: Tensor, h0: Tensor | None = None, reduction: str = "mean"
) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """Forward cache + backward pass: ``(loss, grads, h_T)``, with no autograd."""
    loss, cache = rnn_lm_forward(params, x, y, h0, reduction)
    return loss, rnn_lm_backward(params, cache), cache.hs[-1]


# --------------------------------------------------------------------------- truncated BPTT


@dataclass
class TBPTTResult:
    """Truncated BPTT over a whole sequence: the loss, the summed chunk gradients, the last state,
    and for every chunk after the first the gradient dL_chunk/dh at its start, which truncation drops."""

    loss: Tensor
    grads: dict[str, Tensor]
    h_T: Tensor
    boundary_grads: list[Tensor]


def truncated_bptt(
    params: RNNParams, x: Tensor, y: Tensor, k: int, h0: Tensor | None = None, reduction: str = "mean"
) -> TBPTTResult:
    """Truncated BPTT (eq. eq-bptt-truncated): chunks of ``k`` steps, h carried forward, not backward.

    The forward pass is the full sequence's (the last state of a chunk starts the next one), but the
    backward pass of each chunk stops at its first step: what ``h = h.detach()`` does in autograd
    code. With ``k >= T`` this is :func:`rnn_bptt`. ``grads["h0"]`` is the first chunk's.
    """
    if k < 1:
        raise ValueError(f"truncation length must be >= 1, got {k}")
    T, B = y.shape
    scale = 1.0 / (T * B) if reduction == "mean" else 1.0
    h = h0
    total, grads, boundary = None, None, []
    for start in range(0, T, k):
        # Each chunk's summed loss; the whole-sequence scale is applied once, at the end.
        loss, g, h = rnn_bptt(params, x[start : start + k], y[start : start + k], h, reduction="sum")
        if grads is None:
            total, grads = loss, g
        else:
            total = total + loss
            boundary.append(g["h0"] * scale)  # would flow into the previous chunk; truncation drops it
            grads = {name: grads[name] + g[name] for name in PARAM_NAMES} | {"h0": grads["h0"]}
    return TBPTTResult(total * scale, {name: v * scale for name, v in grads.items()}, h, boundary)


# --------------------------------------------------------------------------- checks


def rnn_lm_loss_autograd(
    x: Tensor, y: Tensor, h0: Tensor, W_xh: Tensor, W_hh: Tensor, b_h: Tensor, W_ho: Tensor, b_o: Tensor,
    reduction: str = "mean",
) -> Tensor:
    """The same loss written with plain torch ops and ``F.cross_entropy``, for autograd to differentiate."""
    h, logits = h0, []
    xw = input_projection(x, W_xh)
    for t in range(xw.shape[0]):
        h = torch.tanh(xw[t] + h @ W_hh.T + b_h)
        logits.append(h @ W_ho.T + b_o)
    o = torch.stack(logits)
    return F.cross_entropy(o.reshape(-1, o.shape[-1]), y.reshape(-1), reduction=reduction)


def random_rnn_problem(
    T: int = 7, B: int = 3, F_in: int = 5, H: int = 4, V: int = 6, seed: int = 0, ids: bool = False,
    weight_scale: float = 1.0,
) -> tuple[RNNParams, Tensor, Tensor, Tensor]:
    """Float64 params, inputs (one-hot-free floats, or int ids with ``ids=True``), int targets and h0."""
    gen = torch.Generator().manual_seed(seed)
    params = init_rnn_params(F_in, H, V, generator=gen, dtype=torch.float64)
    params = RNNParams(**{k: v * weight_scale for k, v in params.as_dict().items()})
    x = torch.randint(F_in, (T, B), generator=gen) if ids else torch.randn(T, B, F_in, generator=gen, dtype=torch.float64)
    y = torch.randint(V, (T, B), generator=gen)
    h0 = 0.5 * torch.randn(B, H, generator=gen, dtype=torch.float64)
    return params, x, y, h0


def autograd_reference(
    params: RNNParams, x: Tensor, y: Tensor, h0: Tensor, reduction: str = "mean"
) -> tuple[Tensor, dict[str, Tensor]]:
    """Loss and gradients (params and h0) from ``torch.autograd`` through :func:`rnn_lm_loss_autograd`."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in (params.as_dict() | {"h0": h0}).items()}
    loss = rnn_lm_loss_autograd(x, y, reduction=reduction, **leaves)
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return loss.detach(), dict(zip(leaves, grads))


def check_rnn_bptt(
    T: int = 9, B: int = 3, F_in: int = 5, H: int = 4, V: int = 6, seed: int = 0, ids: bool = False,
    reduction: str = "mean",
) -> GradientReport:
    """Relative error of every hand-written gradient (and the loss) against autograd, in float64."""
    params, x, y, h0 = random_rnn_problem(T, B, F_in, H, V, seed, ids)
    loss, grads, _ = rnn_bptt(params, x, y, h0, reduction)
    ref_loss, ref = autograd_reference(params, x, y, h0, reduction)
    return compare(grads | {"loss": loss}, ref | {"loss": ref_loss})


class RNNLossFunction(torch.autograd.Function):
    """``loss = f(x, h0, W_xh, W_hh, b_h, W_ho, b_o)`` whose backward is :func:`rnn_lm_backward`,
    so that ``torch.autograd.gradcheck`` can test it against finite differences."""

    @staticmethod
    def forward(ctx, y, x, h0, W_xh, W_hh, b_h, W_ho, b_o):  # noqa: D102
        params = RNNParams(W_xh, W_hh, b_h, W_ho, b_o)
        loss, cache = rnn_lm_forward(params, x, y, h0, reduction="mean")
        ctx.params, ctx.cache = params, cache
        return loss

    @staticmethod
    def backward(ctx, grad_loss):  # noqa: D102
        g = rnn_lm_backward(ctx.params, ctx.cache, input_grad=ctx.needs_input_grad[1])
        d_x = grad_loss * g["x"] if "x" in g else None
        return (None, d_x, grad_loss * g["h0"], *(grad_loss * g[name] for name in PARAM_NAMES))


def gradcheck_rnn(T: int = 4, B: int = 2, F_in: int = 3, H: int = 3, V: int = 4, seed: int = 1) -> bool:
    """Central finite differences against the hand-written backward for every input, via gradcheck64."""
    params, x, y, h0 = random_rnn_problem(T, B, F_in, H, V, seed)
    return gradcheck64(lambda *args: RNNLossFunction.apply(y, *args), [x, h0, *params.as_dict().values()])


# --------------------------------------------------------------------------- data for truncated BPTT


def batchify(ids: Tensor, n_streams: int) -> Tensor:
    """Cut one id stream into ``n_streams`` contiguous streams side by side: (T_total, B), time-major.

    Stream b is characters ``[b N, (b + 1) N)`` of the text, so consecutive chunks of rows continue
    each other and the hidden state can be carried from one chunk to the next.
    """
    n = len(ids) // n_streams
    return ids[: n * n_streams].reshape(n_streams, n).T.contiguous()


def tbptt_chunks(streams: Tensor, k: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Consecutive (input, target) chunks of ``k`` steps, (k, B) each; the target is the next character."""
    for start in range(0, streams.shape[0] - 1, k):
        stop = min(start + k, streams.shape[0] - 1)
        yield streams[start:stop], streams[start + 1 : stop + 1]


@torch.no_grad()
def stream_nll(params: RNNParams, ids: Tensor, n_streams: int = 1, k: int = 256) -> float:
    """Mean negative log-likelihood (nats per character) of predicting each next id of a stream,
    with the hidden state carried through the whole stream (eq. eq-bptt-bpc divides it by ln 2)."""
    streams = batchify(ids, n_streams)
    h, total, count = None, 0.0, 0
    for x, y in tbptt_chunks(streams, k):
        loss, cache = rnn_lm_forward(params, x, y, h, reduction="sum")
        h = cache.hs[-1]
        total, count = total + float(loss), count + y.numel()
    return total / count


def unigram_bits_per_char(train_ids: Tensor, eval_ids: Tensor, vocab_size: int) -> float:
    """Cross-entropy in bits per character of a model that ignores context: the training frequencies
    (add-one smoothed so that a character unseen in training costs a finite number of bits)."""
    counts = torch.bincount(train_ids, minlength=vocab_size).double() + 1
    log2p = torch.log2(counts / counts.sum())
    return float(-log2p[eval_ids].mean())


def long_range_terms(
    params: RNNParams, x: Tensor, k: int, boundary_grads: Sequence[Tensor], h0: Tensor | None = None
) -> dict[str, Tensor]:
    """What truncation drops, by autograd: sum over chunks c >= 1 of (dL_c/dh_{s_c}) (dh_{s_c}/dtheta),
    the paths from a chunk's losses back through its first state into the earlier chunks.

    ``full BPTT = truncated BPTT + long_range_terms`` (eq. eq-bptt-truncated); tested in
    ``tests/test_rnn_bptt.py``. The states h_{s_c} are recomputed with autograd on the full graph.
    """
    T, B = x.shape[:2]
    h_init = torch.zeros(B, params.hidden_size, dtype=params.W_hh.dtype) if h0 is None else h0
    leaves = {n: v.detach().clone().requires_grad_(True) for n, v in (params.as_dict() | {"h0": h_init}).items()}
    states, _ = rnn_forward(x, leaves["W_xh"], leaves["W_hh"], leaves["b_h"], leaves["h0"])
    starts = list(range(k, T, k))  # chunk c >= 1 starts from h_{s_c} = states[s_c - 1]
    if len(starts) != len(boundary_grads):
        raise ValueError(f"{len(boundary_grads)} boundary gradients for {len(starts)} chunk boundaries")
    if not starts:
        return {n: torch.zeros_like(v) for n, v in leaves.items()}
    hs = torch.stack([states[s - 1] for s in starts])
    grads = torch.autograd.grad(hs, list(leaves.values()), grad_outputs=torch.stack(list(boundary_grads)),
                                allow_unused=True)
    return {n: torch.zeros_like(v) if g is None else g for (n, v), g in zip(leaves.items(), grads)}
