"""Forecasting a yearly series: an LSTM forecaster, the classical baselines it must beat, the error
measures, leakage-free scaling and recursive multi-step forecasts.

The lesson is chapters/rnn/sunspot-forecasting.ipynb; its equations are referenced by label:

* ``eq-sunspot-naive``: persistence, y_hat_{t+1} = y_t.
* ``eq-sunspot-seasonal``: seasonal naive with period m (11 years), y_hat_{t+1} = y_{t+1-m}.
* ``eq-sunspot-ar``: the linear AR(p) model fitted by least squares.
* ``eq-sunspot-rmse``, ``eq-sunspot-mae``, ``eq-sunspot-mase``: the error measures.

Series are 1-D tensors indexed by time step; a forecast "for index t" uses only values before t.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from sklearn.preprocessing import StandardScaler
from torch import Tensor, nn

from ..data import make_windows


class LSTMForecaster(nn.Module):
    """Read a window (N, window, 1) with an LSTM; map its last hidden state to (N, horizon).

    Inputs and outputs are on the scaled axis (see :func:`fit_scaler`); the model never sees
    raw sunspot numbers.
    """

    def __init__(self, hidden: int = 32, layers: int = 1, horizon: int = 1, dropout: float = 0.0):
        super().__init__()
        self.lstm = nn.LSTM(1, hidden, num_layers=layers, batch_first=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.head = nn.Linear(hidden, horizon)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])  # the state after the last year of the window summarises it


# ------------------------------------------------------------------------- splitting and scaling


@dataclass
class Split:
    """Boolean masks over the time axis for a chronological train / validation / test split."""

    train: Tensor
    val: Tensor
    test: Tensor


def chronological_split(years: Tensor, train_end: float, val_end: float) -> Split:
    """train: years <= train_end; val: (train_end, val_end]; test: after val_end. No shuffling:
    the model is always tested on years that come after everything it was fitted on."""
    return Split(years <= train_end, (years > train_end) & (years <= val_end), years > val_end)


def fit_scaler(values: Tensor, train_mask: Tensor) -> StandardScaler:
    """A StandardScaler fitted on the training years only.

    Fitting on the whole series would put the test period's mean and spread into the inputs of
    every training window: information from the future (leakage).
    """
    return StandardScaler().fit(values[train_mask].double().numpy().reshape(-1, 1))


def transform(scaler: StandardScaler, values: Tensor) -> Tensor:
    """(values - train mean) / train std, float32, same shape as ``values``."""
    flat = values.double().numpy().reshape(-1, 1)
    return torch.from_numpy(scaler.transform(flat)).float().reshape(values.shape)


def inverse_transform(scaler: StandardScaler, values: Tensor) -> Tensor:
    """Back to sunspot numbers, float64, same shape as ``values``."""
    flat = values.detach().double().numpy().reshape(-1, 1)
    return torch.from_numpy(scaler.inverse_transform(flat)).reshape(values.shape)


def windows_by_target(values: Tensor, window: int, horizon: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`~dlbook.data.make_windows` plus the index of each window's first target, so windows
    can be assigned to train / val / test by the year they *predict* (inputs may reach back into
    an earlier period: those values are known when the forecast is made)."""
    x, y = make_windows(values, window, horizon)
    return x, y, torch.arange(window, window + len(x))


# ------------------------------------------------------------------------- baselines


def naive_forecast(series: Tensor, targets: Tensor) -> Tensor:
    """Persistence (eq-sunspot-naive): the forecast for index t is y_{t-1}."""
    return series[targets - 1]


def seasonal_naive_forecast(series: Tensor, targets: Tensor, period: int = 11) -> Tensor:
    """Seasonal naive (eq-sunspot-seasonal): the forecast for index t is y_{t-period}, the value
    one cycle earlier."""
    if int(targets.min()) < period:
        raise ValueError(f"seasonal naive needs {period} earlier values before every target")
    return series[targets - period]


def ar_design(series: Tensor, p: int, targets: Tensor) -> Tensor:
    """Rows [1, y_{t-1}, ..., y_{t-p}] for each target index t, float64 (M, p + 1)."""
    lags = torch.stack([series[targets - k] for k in range(1, p + 1)], dim=1).double()
    return torch.cat([torch.ones(len(targets), 1, dtype=torch.float64), lags], dim=1)


def fit_ar(series: Tensor, p: int, targets: Tensor) -> Tensor:
    """Least-squares AR(p) coefficients (c, phi_1..phi_p) (eq-sunspot-ar), fitted on the given
    target indices (each needs its p previous values): minimise sum_t (y_t - c - sum_k phi_k y_{t-k})^2."""
    X = ar_design(series, p, targets)
    return torch.linalg.lstsq(X, series[targets].double().unsqueeze(1)).solution[:, 0]


def ar_forecast(series: Tensor, coef: Tensor, targets: Tensor) -> Tensor:
    """One-step AR forecasts for the target indices, from the true previous values."""
    return ar_design(series, len(coef) - 1, targets) @ coef


# ------------------------------------------------------------------------- multi-step forecasts


def recursive_forecast(step: Callable[[Tensor], Tensor], context: Tensor, steps: int) -> Tensor:
    """Forecast ``steps`` values ahead by feeding each one-step forecast back in as an input.

    ``context`` is (N, window) -- N forecast origins, each with its last ``window`` known values;
    ``step`` maps such a (N, window) tensor to the next value (N,). Returns (N, steps). Errors
    compound: from the second step on, the inputs contain earlier forecasts.
    """
    window = context.clone()
    out = []
    for _ in range(steps):
        nxt = step(window).reshape(-1).to(window.dtype)
        out.append(nxt)
        window = torch.cat([window[:, 1:], nxt[:, None]], dim=1)
    return torch.stack(out, dim=1)


def lstm_step(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """The one-step function of a 1-horizon :class:`LSTMForecaster` for :func:`recursive_forecast`."""
    device = next(model.parameters()).device

    @torch.no_grad()
    def step(window: Tensor) -> Tensor:
        model.eval()
        return model(window.float().unsqueeze(-1).to(device))[:, 0].cpu()

    return step


def ar_step(coef: Tensor) -> Callable[[Tensor], Tensor]:
    """The one-step function of an AR(p) model: c + sum_k phi_k y_{t-k} from the last p values."""
    p = len(coef) - 1

    def step(window: Tensor) -> Tensor:
        lags = window[:, -p:].double().flip(1)  # y_{t-1}, ..., y_{t-p}
        return coef[0] + lags @ coef[1:]

    return step


# ------------------------------------------------------------------------- error measures


def rmse(y: Tensor, y_hat: Tensor) -> float:
    """Root mean squared error (eq-sunspot-rmse), in the units of y."""
    return (y.double() - y_hat.double()).pow(2).mean().sqrt().item()


def mae(y: Tensor, y_hat: Tensor) -> float:
    """Mean absolute error (eq-sunspot-mae), in the units of y."""
    return (y.double() - y_hat.double()).abs().mean().item()


def mase(y: Tensor, y_hat: Tensor, train_series: Tensor, lag: int = 1) -> float:
    """Mean absolute scaled error (eq-sunspot-mase): the MAE divided by the in-sample MAE of the
    lag-``lag`` naive forecast on the training series (Hyndman and Koehler, 2006). Below 1: better
    than persistence was on the training years."""
    train = train_series.double()
    scale = (train[lag:] - train[:-lag]).abs().mean().item()
    return mae(y, y_hat) / scale
