"""A bidirectional LSTM built from two one-directional LSTMs, and variable-length batches.

Lesson: chapters/rnn/bidirectional-and-packing.ipynb. A bidirectional layer runs one LSTM over
the sequence left to right and a second one, with its own weights, right to left, then
concatenates the two hidden states at every step (eq-birnn-concat). Here the second LSTM is
literally a one-directional ``nn.LSTM`` run on the reversed sequence, with the weights copied from
``nn.LSTM(bidirectional=True)`` (its ``*_reverse`` parameters), so the two can be compared number by
number: outputs, final states and every gradient.

In a right-padded batch "reversed" must mean *each sequence's own* ``length`` steps reversed, with
the padding left at the end (:func:`reverse_padded`); flipping the whole padded row would start
the backward direction on padding. :func:`run_lstm_masked` advances each sequence only while
``t < length``, which is what a ``PackedSequence`` makes ``nn.LSTM`` do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..gradients import GradientReport, rel_error

#: the four tensors of one LSTM layer and direction; ``nn.LSTM`` suffixes them ``_l0`` / ``_l0_reverse``.
LSTM_TENSORS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
#: float32 and float64 agreement required between the two-LSTM construction and ``nn.LSTM``.
TOLERANCES = {torch.float32: 1e-6, torch.float64: 1e-10}

State = tuple[Tensor, Tensor]


def split_bidirectional(bi: nn.LSTM) -> tuple[nn.LSTM, nn.LSTM]:
    """Two one-directional LSTMs holding copies of a one-layer bidirectional LSTM's weights.

    The forward LSTM gets ``weight_ih_l0`` ... ``bias_hh_l0`` (eq-birnn-forward), the backward one
    ``weight_ih_l0_reverse`` ... (eq-birnn-backward): separate weights, same shapes.
    """
    if not bi.bidirectional or bi.num_layers != 1 or bi.proj_size:
        raise ValueError("split_bidirectional expects nn.LSTM(bidirectional=True, num_layers=1, proj_size=0)")
    param = next(bi.parameters())
    halves = []
    for suffix in ("_l0", "_l0_reverse"):
        one = nn.LSTM(bi.input_size, bi.hidden_size, bias=bi.bias, batch_first=bi.batch_first)
        one = one.to(device=param.device, dtype=param.dtype)
        with torch.no_grad():
            for name in LSTM_TENSORS if bi.bias else LSTM_TENSORS[:2]:
                getattr(one, f"{name}_l0").copy_(getattr(bi, f"{name}{suffix}"))
        halves.append(one)
    return halves[0], halves[1]


def reverse_padded(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse the first ``lengths[b]`` steps of every row of a batch-first ``(B, T, ...)`` tensor.

    Step ``t`` of row ``b`` comes from step ``L_b - 1 - t`` when ``t < L_b`` and stays in place
    otherwise, so the padding remains at the end. The map is its own inverse.
    """
    B, T = x.shape[:2]
    t = torch.arange(T, device=x.device).expand(B, T)
    L = lengths.to(x.device).view(B, 1)
    source = torch.where(t < L, L - 1 - t, t)
    source = source.view(B, T, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, source)


def run_lstm_masked(lstm: nn.LSTM, x: Tensor, lengths: Tensor) -> tuple[Tensor, State]:
    """One direction over a right-padded batch ``(B, T, E)``, one step at a time.

    A sequence's state advances only while ``t < length`` and is frozen afterwards, so ``(h_n, c_n)``
    are the states after each sequence's *own* last step; outputs at padded steps are 0, as
    ``pad_packed_sequence`` returns them. This is what packing does, written as a loop.
    """
    B, T = x.shape[:2]
    h = x.new_zeros(1, B, lstm.hidden_size)
    c = x.new_zeros(1, B, lstm.hidden_size)
    valid = torch.arange(T, device=x.device) < lengths.to(x.device).view(B, 1)  # (B, T)
    outputs = []
    for t in range(T):
        _, (h_new, c_new) = lstm(x[:, t : t + 1], (h, c))
        keep = valid[:, t].view(1, B, 1)
        h, c = torch.where(keep, h_new, h), torch.where(keep, c_new, c)
        outputs.append(torch.where(keep[0], h_new[0], torch.zeros_like(h_new[0])))
    return torch.stack(outputs, dim=1), (h, c)


def manual_bidirectional_lstm(
    forward: nn.LSTM, backward: nn.LSTM, x: Tensor, lengths: Tensor | None = None
) -> tuple[Tensor, State]:
    """Bidirectional LSTM from two one-directional ones (batch-first), eq. (eq-birnn-concat).

    Without ``lengths``: ``forward`` reads ``x``, ``backward`` reads ``x.flip(1)`` and its outputs are
    flipped back, so position ``t`` holds ``[h_fwd_t ; h_bwd_t]``. With ``lengths`` (a right-padded
    batch): each sequence is reversed within its own length (:func:`reverse_padded`) and both
    directions stop at the sequence's end (:func:`run_lstm_masked`).
    Returns ``output (B, T, 2H)`` and ``(h_n, c_n)``, each ``(2, B, H)``: forward first, as ``nn.LSTM``.
    """
    if lengths is None:
        out_f, (h_f, c_f) = forward(x)
        out_b, (h_b, c_b) = backward(x.flip(1))
        out_b = out_b.flip(1)  # backward output for step t was produced at reversed step T-1-t
    else:
        out_f, (h_f, c_f) = run_lstm_masked(forward, x, lengths)
        out_b, (h_b, c_b) = run_lstm_masked(backward, reverse_padded(x, lengths), lengths)
        out_b = reverse_padded(out_b, lengths)
    return torch.cat([out_f, out_b], dim=-1), (torch.cat([h_f, h_b]), torch.cat([c_f, c_b]))


def packed_lstm(lstm: nn.LSTM, x: Tensor, lengths: Tensor) -> tuple[Tensor, State]:
    """``nn.LSTM`` on a right-padded batch through ``pack_padded_sequence(enforce_sorted=False)``.

    The output is padded back to ``x``'s length ``T`` with zeros; ``h_n``/``c_n`` come back in the
    batch's original order (PyTorch un-sorts them).
    """
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    out, state = lstm(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return out, state


def random_lstm_problem(
    dtype: torch.dtype = torch.float64,
    lengths: Sequence[int] | None = None,
    batch: int = 3,
    steps: int = 7,
    input_size: int = 5,
    hidden: int = 4,
    seed: int = 0,
) -> tuple[nn.LSTM, Tensor, Tensor | None]:
    """A seeded ``nn.LSTM(bidirectional=True)`` and an input ``(B, T, E)``; with ``lengths``, the
    steps beyond each length are set to a non-zero padding value (as an embedding bias would be)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():  # seeded weights without disturbing the caller's random stream
        torch.manual_seed(seed)
        bi = nn.LSTM(input_size, hidden, batch_first=True, bidirectional=True).to(dtype)
    x = torch.randn(batch, steps, input_size, generator=gen, dtype=dtype)
    if lengths is None:
        return bi, x, None
    L = torch.as_tensor(list(lengths), dtype=torch.long)
    if len(L) != batch or int(L.max()) > steps or int(L.min()) < 1:
        raise ValueError(f"lengths {L.tolist()} must be {batch} values in 1..{steps}")
    pad = torch.arange(steps) >= L[:, None]
    return bi, x.masked_fill(pad[..., None], 0.5), L


def check_manual_bilstm(
    dtype: torch.dtype = torch.float64, lengths: Sequence[int] | None = None, seed: int = 0
) -> GradientReport:
    """Relative error of :func:`manual_bidirectional_lstm` against ``nn.LSTM(bidirectional=True)``.

    Compares the output, ``h_n``, ``c_n``, the input gradient and the gradients of all eight weight
    tensors, for the loss ``sum(R1*out) + sum(R2*h_n) + sum(R3*c_n)`` with fixed random ``R``. With
    ``lengths`` (a padded batch) the reference runs through :func:`packed_lstm`.
    """
    bi, x, L = random_lstm_problem(dtype, lengths, seed=seed)
    fwd, bwd = split_bidirectional(bi)
    # library parameter name -> the manual LSTM's tensor that must receive the same gradient
    weights = {f"{n}{s}": getattr(m, f"{n}_l0") for s, m in (("_l0", fwd), ("_l0_reverse", bwd)) for n in LSTM_TENSORS}
    runs = {}
    for name in ("manual", "library"):
        xi = x.clone().requires_grad_(True)
        if name == "manual":
            out, (h, c) = manual_bidirectional_lstm(fwd, bwd, xi, L)
        else:
            out, (h, c) = bi(xi) if L is None else packed_lstm(bi, xi, L)
        runs[name] = (xi, out, h, c)
    gen = torch.Generator().manual_seed(seed + 1)
    R = [torch.randn(t.shape, generator=gen, dtype=dtype) for t in runs["library"][1:]]
    grads = {}
    for name, (xi, out, h, c) in runs.items():
        loss = sum((r * t).sum() for r, t in zip(R, (out, h, c)))
        params = list(weights.values()) if name == "manual" else [getattr(bi, k) for k in weights]
        grads[name] = torch.autograd.grad(loss, [xi, *params])
    errors = {key: rel_error(runs["manual"][i], runs["library"][i]) for i, key in ((1, "output"), (2, "h_n"), (3, "c_n"))}
    for key, g_manual, g_library in zip(["d input", *(f"d {k}" for k in weights)], grads["manual"], grads["library"]):
        errors[key] = rel_error(g_manual, g_library)
    return GradientReport(errors, TOLERANCES[dtype])


def compare_with_alone(lstm: nn.LSTM, x: Tensor, lengths: Tensor, packed: bool = True) -> dict[str, Tensor]:
    """Per sequence, the largest |difference| between running the padded batch and running that
    sequence alone, without padding.

    ``packed=True`` runs the batch through :func:`packed_lstm`; ``packed=False`` feeds the padded batch
    straight to ``lstm``. Keys: ``"forward output"``, ``"backward output"`` (valid steps only),
    ``"h_n forward"``, ``"h_n backward"``, ``"c_n forward"``, ``"c_n backward"``; each a ``(B,)`` tensor.
    """
    H = lstm.hidden_size
    with torch.no_grad():
        out, (h, c) = packed_lstm(lstm, x, lengths) if packed else lstm(x)
        rows: dict[str, list[float]] = {k: [] for k in (
            "forward output", "backward output", "h_n forward", "h_n backward", "c_n forward", "c_n backward")}
        for b, L in enumerate(lengths.tolist()):
            out1, (h1, c1) = lstm(x[b : b + 1, :L])
            diff = (out[b, :L] - out1[0]).abs()
            rows["forward output"].append(float(diff[:, :H].max()))
            rows["backward output"].append(float(diff[:, H:].max()))
            for key, batch_state, alone in (("h_n", h, h1), ("c_n", c, c1)):
                for d, direction in enumerate(("forward", "backward")):
                    rows[f"{key} {direction}"].append(float((batch_state[d, b] - alone[d, 0]).abs().max()))
    return {k: torch.tensor(v) for k, v in rows.items()}


# --------------------------------------------------------------------------- batching by length


def random_batches(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """Shuffle ``0..n-1`` and cut into batches: lengths within a batch are whatever they happen to be."""
    return list(torch.randperm(n, generator=generator).split(batch_size))


def bucketed_batches(
    lengths: Tensor, batch_size: int, generator: torch.Generator, bucket: int = 50
) -> list[Tensor]:
    """Batches of similar length that are still random: shuffle, cut into chunks of ``bucket``
    batches, sort each chunk by length, cut it into batches, then shuffle the order of the batches."""
    order = torch.randperm(len(lengths), generator=generator)
    batches: list[Tensor] = []
    for chunk in order.split(batch_size * bucket):
        by_length = chunk[torch.argsort(lengths[chunk], stable=True)]
        batches += list(by_length.split(batch_size))
    shuffle = torch.randperm(len(batches), generator=generator)
    return [batches[int(i)] for i in shuffle]


def sorted_batches(lengths: Tensor, batch_size: int) -> list[Tensor]:
    """All sequences sorted by length, then cut: the least padding, but every epoch the same batches."""
    return list(torch.argsort(lengths, stable=True).split(batch_size))


def padding_fraction(lengths: Tensor, batches: Sequence[Tensor]) -> Tensor:
    """Per batch, the fraction of the padded ``(B, T_max)`` grid that is padding: ``1 - sum L / (B T_max)``."""
    fractions = []
    for idx in batches:
        L = lengths[idx].double()
        fractions.append(1.0 - L.sum() / (len(L) * L.max()))
    return torch.stack(fractions)
