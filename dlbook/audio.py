"""Speech features from scratch in torch: framing, window, |STFT|^2, mel filterbank, log, DCT.

Each function is one step of the MFCC pipeline of the speech-features lesson, written directly in
tensors so the lesson can show it, and proven equal to its library counterpart there and in
``tests/test_rnn_speech.py`` (``torch.stft``, ``librosa.filters.mel``, ``scipy.fft.dct``,
``librosa.feature.mfcc``). The conventions are librosa's defaults, so the comparison is exact up
to rounding: centred frames padded with zeros, a periodic Hann window, the Slaney mel scale with
area-normalised triangles, ``10 log10`` with a floor and an 80 dB range, an orthonormal DCT-II.

Everything works on batches (leading dimensions), so the spoken-digit lesson computes the features
of every recording at once without importing librosa (its import and numba JIT cost seconds).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def frame(x: Tensor, frame_length: int, hop_length: int, *, center: bool = True) -> Tensor:
    """Overlapping frames ``(..., T, frame_length)`` of signals ``x`` ``(..., N)``.

    With ``center`` the signal is padded with ``frame_length // 2`` zeros at both ends, so frame
    ``t`` is centred on sample ``t * hop_length`` and ``T = 1 + N // hop_length``; this is
    librosa's ``center=True, pad_mode="constant"``.
    """
    if center:
        pad = frame_length // 2
        x = torch.nn.functional.pad(x, (pad, pad))
    if x.shape[-1] < frame_length:
        raise ValueError(f"signal of {x.shape[-1]} samples is shorter than one frame ({frame_length})")
    return x.unfold(-1, frame_length, hop_length)


def hann_window(n: int, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """The periodic Hann window ``0.5 - 0.5 cos(2 pi n / N)`` (the one FFT analysis uses)."""
    k = torch.arange(n, dtype=dtype)
    return 0.5 - 0.5 * torch.cos(2 * math.pi * k / n)


def power_spectrogram(x: Tensor, n_fft: int, hop_length: int, *, window: Tensor | None = None,
                      center: bool = True) -> Tensor:
    """``|STFT|^2`` as ``(..., n_fft // 2 + 1, T)``: frame, multiply by the window, real FFT, square.

    ``window`` defaults to the periodic Hann window of length ``n_fft``; pass
    ``torch.ones(n_fft)`` for a rectangular one.
    """
    if window is None:
        window = hann_window(n_fft, dtype=x.dtype)
    frames = frame(x, n_fft, hop_length, center=center) * window.to(x.device, x.dtype)
    spectrum = torch.fft.rfft(frames, n=n_fft, dim=-1)
    return (spectrum.real**2 + spectrum.imag**2).transpose(-1, -2)


def hz_to_mel(f: Tensor, *, htk: bool = False) -> Tensor:
    """Hertz to mel. Slaney (``htk=False``, librosa's default): linear below 1 kHz
    (``f / (200/3)``, so 1 kHz is 15 mel), logarithmic above; HTK: ``2595 log10(1 + f / 700)``."""
    f = torch.as_tensor(f, dtype=torch.float64)
    if htk:
        return 2595.0 * torch.log10(1.0 + f / 700.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    linear = f / f_sp
    log = min_log_mel + torch.log(torch.clamp(f, min=min_log_hz) / min_log_hz) / logstep
    return torch.where(f >= min_log_hz, log, linear)


def mel_to_hz(m: Tensor, *, htk: bool = False) -> Tensor:
    """The inverse of :func:`hz_to_mel`."""
    m = torch.as_tensor(m, dtype=torch.float64)
    if htk:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return torch.where(m >= min_log_mel, min_log_hz * torch.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, *, fmin: float = 0.0, fmax: float | None = None,
                   htk: bool = False, normalize: bool = True) -> Tensor:
    """Triangular filters ``(n_mels, n_fft // 2 + 1)``, float64, equally spaced on the mel scale.

    Filter ``m`` rises linearly from mel point ``m`` to ``m + 1`` and falls to ``m + 2`` (the
    ``n_mels + 2`` points span ``fmin..fmax``); with ``normalize`` each triangle is scaled by
    ``2 / (f_{m+2} - f_m)`` so it has the same area (Slaney's normalisation, librosa's
    ``norm="slaney"``): wide high-frequency filters do not collect more energy just for being wide.
    """
    fmax = sample_rate / 2 if fmax is None else fmax
    fft_freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    mel_points = torch.linspace(float(hz_to_mel(torch.tensor(fmin), htk=htk)),
                                float(hz_to_mel(torch.tensor(fmax), htk=htk)), n_mels + 2, dtype=torch.float64)
    hz_points = mel_to_hz(mel_points, htk=htk)
    lower, centre, upper = hz_points[:-2, None], hz_points[1:-1, None], hz_points[2:, None]
    rising = (fft_freqs - lower) / (centre - lower)
    falling = (upper - fft_freqs) / (upper - centre)
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    if normalize:
        weights = weights * (2.0 / (upper - lower))
    return weights


def power_to_db(power: Tensor, *, amin: float = 1e-10, top_db: float | None = 80.0) -> Tensor:
    """``10 log10(max(power, amin))``, floored ``top_db`` below each signal's maximum.

    The floor is per signal (the maximum over the last two dimensions), as librosa's
    ``power_to_db(S, ref=1.0)`` does for one signal: silence gives ``-inf`` without ``amin``, and
    without ``top_db`` the near-silent frames would dominate any distance between spectra.
    """
    db = 10.0 * torch.log10(torch.clamp(power, min=amin))
    if top_db is not None:
        peak = db.amax(dim=(-2, -1), keepdim=True)
        db = torch.maximum(db, peak - top_db)
    return db


def log_mel_spectrogram(x: Tensor, sample_rate: int, *, n_fft: int = 256, hop_length: int = 80,
                        n_mels: int = 40, fmin: float = 0.0, fmax: float | None = None,
                        top_db: float | None = 80.0) -> Tensor:
    """Log-mel spectrogram ``(..., n_mels, T)`` in dB: the mel filterbank applied to ``|STFT|^2``."""
    power = power_spectrogram(x, n_fft, hop_length)
    bank = mel_filterbank(sample_rate, n_fft, n_mels, fmin=fmin, fmax=fmax).to(x.device, x.dtype)
    return power_to_db(bank @ power, top_db=top_db)


def dct_matrix(n_out: int, n_in: int, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """The orthonormal DCT-II as a matrix ``(n_out, n_in)``: ``C[k, m] = s_k cos(pi k (2m + 1) / (2 n_in))``
    with ``s_0 = sqrt(1 / n_in)`` and ``s_k = sqrt(2 / n_in)``, so the full square matrix is orthogonal."""
    k = torch.arange(n_out, dtype=dtype)[:, None]
    m = torch.arange(n_in, dtype=dtype)[None, :]
    c = torch.cos(math.pi * k * (2 * m + 1) / (2 * n_in)) * math.sqrt(2.0 / n_in)
    c[0] = c[0] / math.sqrt(2.0)
    return c


def mfcc(x: Tensor, sample_rate: int, *, n_mfcc: int = 13, n_fft: int = 256, hop_length: int = 80,
         n_mels: int = 40, fmin: float = 0.0, fmax: float | None = None, top_db: float | None = 80.0) -> Tensor:
    """Mel-frequency cepstral coefficients ``(..., n_mfcc, T)``: the first ``n_mfcc`` rows of the
    orthonormal DCT-II of the log-mel spectrogram (decorrelated, compact: the spectral envelope)."""
    log_mel = log_mel_spectrogram(x, sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels,
                                  fmin=fmin, fmax=fmax, top_db=top_db)
    return dct_matrix(n_mfcc, n_mels, dtype=log_mel.dtype).to(log_mel.device) @ log_mel


def n_frames(n_samples: int | Tensor, hop_length: int) -> int | Tensor:
    """Frames a centred analysis gives a signal of ``n_samples``: ``1 + n_samples // hop_length``."""
    return 1 + n_samples // hop_length


def batch_features(waves: list[np.ndarray] | list[Tensor], sample_rate: int, *, kind: str = "mfcc",
                   max_samples: int | None = None, chunk: int = 256, dtype: torch.dtype = torch.float32,
                   **settings) -> tuple[Tensor, Tensor]:
    """Features of many recordings at once: ``(N, T_max, F)`` frames first (RNN order) and the
    frame counts ``(N,)``; frames past a recording's count are 0.

    ``kind`` is ``"mfcc"`` or ``"log_mel"`` (keyword ``settings`` go to :func:`mfcc` or
    :func:`log_mel_spectrogram`). Recordings are cropped to ``max_samples``, sorted by length and
    processed ``chunk`` at a time as zero-padded batches; a centred analysis pads with zeros
    anyway, so each recording's valid frames equal its features computed alone
    (``tests/test_rnn_speech.py`` checks it).
    """
    if kind not in ("mfcc", "log_mel"):
        raise ValueError(f"kind must be 'mfcc' or 'log_mel', got {kind!r}")
    compute = mfcc if kind == "mfcc" else log_mel_spectrogram
    hop = settings.get("hop_length", 80)
    signals = [torch.as_tensor(np.asarray(w)[:max_samples], dtype=dtype) for w in waves]
    lengths = torch.tensor([len(w) for w in signals])
    frames = n_frames(lengths, hop)
    order = torch.argsort(lengths, descending=True)
    out: Tensor | None = None
    for start in range(0, len(signals), chunk):
        idx = order[start : start + chunk]
        batch = torch.nn.utils.rnn.pad_sequence([signals[i] for i in idx.tolist()], batch_first=True)
        feats = compute(batch, sample_rate, **settings).transpose(-1, -2)  # (B, T, F)
        if out is None:
            out = torch.zeros(len(signals), int(frames.max()), feats.shape[-1], dtype=dtype)
        for row, i in enumerate(idx.tolist()):
            out[i, : frames[i]] = feats[row, : frames[i]]
    assert out is not None, "no recordings"
    return out, frames


__all__ = ["batch_features", "dct_matrix", "frame", "hann_window", "hz_to_mel", "log_mel_spectrogram", "mel_filterbank",
           "mel_to_hz", "mfcc", "n_frames", "power_spectrogram", "power_to_db"]
