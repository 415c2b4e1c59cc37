"""RNN lesson: forecasting sunspots (chapters/rnn/sunspot-forecasting.ipynb).

The code is dlbook/models/forecasting.py: the LSTM forecaster's shapes, the baselines' definitions
on toy series, least-squares AR against statsmodels, recursive forecasts, the error measures, and
a scaler that cannot leak the test years into training.
"""

from __future__ import annotations

import math

import pytest
import torch
from statsmodels.tsa.ar_model import AutoReg

from dlbook.data import load_sunspots, make_windows
from dlbook.gradients import compare
from dlbook.models.forecasting import (
    LSTMForecaster,
    ar_forecast,
    ar_step,
    chronological_split,
    fit_ar,
    fit_scaler,
    inverse_transform,
    lstm_step,
    mae,
    mase,
    naive_forecast,
    recursive_forecast,
    rmse,
    seasonal_naive_forecast,
    transform,
    windows_by_target,
)

f64 = torch.float64


def ar2_series(n: int = 60) -> torch.Tensor:
    """A noiseless AR(2) oscillation: y_t = 5 + 1.5 y_{t-1} - 0.8 y_{t-2}."""
    y = [1.0, 3.0]
    for _ in range(n - 2):
        y.append(5 + 1.5 * y[-1] - 0.8 * y[-2])
    return torch.tensor(y, dtype=f64)


@pytest.mark.parametrize(("layers", "horizon"), [(1, 1), (2, 11)])
def test_forecaster_shapes(layers: int, horizon: int) -> None:
    torch.manual_seed(0)
    model = LSTMForecaster(hidden=8, layers=layers, horizon=horizon, dropout=0.1).eval()
    x, y = make_windows(torch.randn(40), window=7, horizon=horizon)
    assert model(x).shape == y.shape == (40 - 7 - horizon + 1, horizon)
    # lstm_step is the model's one-step forecast on (N, window) inputs.
    torch.testing.assert_close(lstm_step(model)(x[..., 0])[:, None], model(x)[:, :1])


def test_naive_and_seasonal_definitions() -> None:
    y = torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0, 60.0])
    t = torch.tensor([3, 4, 5])
    assert naive_forecast(y, t).tolist() == [30.0, 40.0, 50.0]  # y_hat_t = y_{t-1}
    assert seasonal_naive_forecast(y, t, period=3).tolist() == [10.0, 20.0, 30.0]  # y_hat_t = y_{t-3}
    with pytest.raises(ValueError):
        seasonal_naive_forecast(y, torch.tensor([2, 3]), period=3)
    # A series that repeats with the period is forecast perfectly by the seasonal rule only.
    periodic = torch.tensor([1.0, 5.0, 2.0] * 5)
    t = torch.arange(3, 15)
    assert rmse(periodic[t], seasonal_naive_forecast(periodic, t, 3)) == 0.0
    assert rmse(periodic[t], naive_forecast(periodic, t)) > 1.0


def test_least_squares_ar_recovers_coefficients_and_matches_statsmodels() -> None:
    y = ar2_series()
    coef = fit_ar(y, 2, torch.arange(2, 40))
    torch.testing.assert_close(coef, torch.tensor([5.0, 1.5, -0.8], dtype=f64), rtol=0, atol=1e-8)
    noisy = y + torch.randn(len(y), dtype=f64, generator=torch.Generator().manual_seed(1))
    ours = fit_ar(noisy, 3, torch.arange(3, len(y)))
    library = torch.from_numpy(AutoReg(noisy.numpy(), lags=3, trend="c").fit().params)
    compare({"ar": ours}, {"ar": library}).assert_ok()


def test_ar_forecasts_one_step_and_recursive() -> None:
    y = ar2_series()
    coef = torch.tensor([5.0, 1.5, -0.8], dtype=f64)
    t = torch.arange(2, 60)
    torch.testing.assert_close(ar_forecast(y, coef, t), y[t])
    # Recursive forecasts of a noiseless AR process from a true context reproduce the series.
    context = torch.stack([y[o - 4 : o + 1] for o in (10, 20)])
    paths = recursive_forecast(ar_step(coef), context, 6)
    expected = torch.stack([y[o + 1 : o + 7] for o in (10, 20)])
    torch.testing.assert_close(paths, expected)
    # Planted bug: lags in the wrong order (phi_1 applied to y_{t-2}) must not reproduce it.
    wrong = recursive_forecast(lambda w: coef[0] + w[:, -2:].double() @ coef[1:], context, 6)
    assert (wrong - expected).abs().max() > 1.0


def test_recursive_forecast_feeds_forecasts_back() -> None:
    ctx = torch.tensor([[1.0, 2.0, 3.0]])
    out = recursive_forecast(lambda w: w.sum(1), ctx, 3)  # 6, then 2+3+6 = 11, then 3+6+11 = 20
    assert out.tolist() == [[6.0, 11.0, 20.0]]


def test_error_measures_by_hand() -> None:
    y = torch.tensor([1.0, 2.0, 3.0, 4.0])
    y_hat = torch.tensor([2.0, 2.0, 1.0, 4.0])  # errors -1, 0, 2, 0
    assert rmse(y, y_hat) == pytest.approx(math.sqrt(5 / 4))
    assert mae(y, y_hat) == pytest.approx(3 / 4)
    train = torch.tensor([0.0, 2.0, 1.0, 4.0, 4.0])  # naive in-sample MAE: (2 + 1 + 3 + 0) / 4 = 1.5
    assert mase(y, y_hat, train) == pytest.approx(0.75 / 1.5)
    # On its own training series, the naive forecast has MASE exactly 1.
    t = torch.arange(1, 5)
    assert mase(train[t], naive_forecast(train, t), train) == pytest.approx(1.0)


def test_split_is_chronological_and_disjoint() -> None:
    years = torch.arange(1700.0, 2009.0, dtype=f64)
    split = chronological_split(years, 1920, 1955)
    masks = torch.stack([split.train, split.val, split.test]).int()
    assert torch.equal(masks.sum(0), torch.ones(len(years), dtype=torch.int))
    assert years[split.train].max() < years[split.val].min() <= years[split.val].max() < years[split.test].min()
    assert (int(split.train.sum()), int(split.val.sum()), int(split.test.sum())) == (221, 35, 53)


def test_scaler_is_fitted_on_training_years_only() -> None:
    values = torch.cat([torch.linspace(0, 10, 50), torch.linspace(100, 200, 20)])
    train = torch.arange(70) < 50
    scaler = fit_scaler(values, train)
    assert scaler.mean_[0] == pytest.approx(values[:50].double().mean().item())
    assert scaler.scale_[0] == pytest.approx(values[:50].double().std(unbiased=False).item())
    scaled = transform(scaler, values)
    assert abs(scaled[:50].mean().item()) < 1e-6 and scaled[50:].min() > 5  # the future lies far outside
    # No leakage: changing the test values does not change the scaled training data.
    tampered = values.clone()
    tampered[50:] = -1000.0
    assert torch.equal(transform(fit_scaler(tampered, train), tampered)[:50], scaled[:50])
    torch.testing.assert_close(inverse_transform(scaler, scaled), values.double(), rtol=1e-6, atol=1e-4)
    # Planted bug: a scaler fitted on everything moves with the test values.
    assert fit_scaler(values, torch.ones(70, dtype=torch.bool)).mean_[0] > scaler.mean_[0] + 20


def test_windows_by_target_on_sunspots() -> None:
    series = load_sunspots()
    x, y, target = windows_by_target(series.values, 11)
    assert x.shape == (309 - 11, 11, 1) and y.shape == (298, 1)
    assert torch.equal(y[:, 0], series.values[target])
    assert torch.equal(x[:, -1, 0], series.values[target - 1])  # the last input is the year before
    assert series.years[target[0]].item() == 1711.0
