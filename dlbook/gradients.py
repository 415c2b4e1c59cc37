"""Executable proofs: compare hand-derived gradients with ``torch.autograd`` in float64.

Every derivation in the book ends in :func:`compare` (a relative-error report with an assertion)
or :func:`gradcheck64` (finite differences via ``torch.autograd.gradcheck``). The notebooks and
the pytest suite call the same functions, so a derivation is proven in both places.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

TOLERANCE = 1e-8  # float64 agreement the course requires of every hand derivation


def rel_error(actual: torch.Tensor, expected: torch.Tensor, eps: float = 1e-30) -> float:
    """max|a - e| / max(max|a|, max|e|): scale-free, 0 for identical tensors."""
    if actual.shape != expected.shape:
        raise ValueError(f"shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)}")
    a, e = actual.detach().double(), expected.detach().double()
    scale = torch.maximum(a.abs().max(), e.abs().max()).clamp_min(eps)
    return float((a - e).abs().max() / scale)


@dataclass
class GradientReport:
    """Relative error per named gradient; ``ok`` when all are under ``tolerance``."""

    errors: dict[str, float]
    tolerance: float = TOLERANCE

    @property
    def ok(self) -> bool:
        return all(err < self.tolerance for err in self.errors.values())

    @property
    def worst(self) -> tuple[str, float]:
        return max(self.errors.items(), key=lambda kv: kv[1])

    def __str__(self) -> str:
        width = max((len(k) for k in self.errors), default=4)
        lines = [f"{'tensor':<{width}}  relative error  (tolerance {self.tolerance:.0e})"]
        for name, err in self.errors.items():
            lines.append(f"{name:<{width}}  {err:14.2e}  {'ok' if err < self.tolerance else 'FAIL'}")
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle) -> None:  # IPython shows the table, not a dataclass repr
        p.text(str(self))

    def assert_ok(self) -> GradientReport:
        name, err = self.worst
        assert self.ok, f"{name} off by {err:.1e} (tolerance {self.tolerance:.0e})\n{self}"
        return self


def compare(
    manual: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], tolerance: float = TOLERANCE
) -> GradientReport:
    """Relative error of each hand-computed tensor against its autograd counterpart."""
    missing = set(manual) ^ set(reference)
    if missing:
        raise KeyError(f"manual and reference name different tensors: {sorted(missing)}")
    return GradientReport({k: rel_error(manual[k], reference[k]) for k in manual}, tolerance)


def autograd_grads(
    loss_fn: Callable[..., torch.Tensor], params: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Gradients of the scalar ``loss_fn(**params)`` w.r.t. each param, via autograd in float64."""
    leaves = {k: v.detach().double().clone().requires_grad_(True) for k, v in params.items()}
    loss = loss_fn(**leaves)
    if loss.dim() != 0:
        raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return dict(zip(leaves, grads))


def gradcheck64(fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], **kwargs) -> bool:
    """``torch.autograd.gradcheck`` on float64 copies of ``inputs`` (raises with details on failure).

    ``fn`` may be a ``torch.autograd.Function.apply`` with a hand-written backward: gradcheck
    compares that backward with central finite differences.
    """
    leaves = [t.detach().double().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    return torch.autograd.gradcheck(fn, tuple(leaves), eps=1e-6, atol=1e-7, rtol=1e-5, **kwargs)
