"""Time series for the forecasting lessons: yearly sunspot numbers, shipped with statsmodels."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Series:
    """A univariate yearly series with its time axis."""

    name: str
    years: Tensor  # float64 (N,)
    values: Tensor  # float32 (N,)
    unit: str

    def __len__(self) -> int:
        return len(self.values)


def load_sunspots() -> Series:
    """Yearly mean sunspot numbers, 1700–2008 (309 values), from ``statsmodels.datasets``.

    Offline by construction: the data ship inside the statsmodels wheel.
    """
    try:
        from statsmodels.datasets import sunspots
    except ImportError as exc:  # pragma: no cover - statsmodels is in requirements.txt
        raise ImportError("the sunspot series needs statsmodels: pip install -r requirements.txt") from exc
    frame = sunspots.load_pandas().data
    return Series(
        "sunspots",
        torch.tensor(frame["YEAR"].to_numpy(), dtype=torch.float64),
        torch.tensor(frame["SUNACTIVITY"].to_numpy(), dtype=torch.float32),
        "yearly mean sunspot number",
    )


def make_windows(values: Tensor, window: int, horizon: int = 1) -> tuple[Tensor, Tensor]:
    """Sliding windows for supervised forecasting.

    Returns inputs (N, window, 1) and targets (N, horizon): window ``i`` reads
    ``values[i:i+window]`` and predicts the next ``horizon`` values.
    """
    if window < 1 or horizon < 1:
        raise ValueError("window and horizon must be at least 1")
    n = len(values) - window - horizon + 1
    if n < 1:
        raise ValueError(f"a series of {len(values)} values is too short for window {window} + horizon {horizon}")
    starts = torch.arange(n)
    x = values[starts[:, None] + torch.arange(window)]
    y = values[starts[:, None] + window + torch.arange(horizon)]
    return x.unsqueeze(-1), y
