"""The Free Spoken Digit Dataset: registry, WAV reading (and refusing), the cached loader, the split."""

from __future__ import annotations

import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dlbook.data import download
from dlbook.data import fsdd as fsdd_module
from dlbook.data.download import ChecksumError, MissingDataError
from dlbook.data.fsdd import (
    FSDD_RATE,
    WavFormatError,
    load_fsdd,
    load_recording,
    parse_name,
    read_wav,
    speaker_split,
)
from dlbook.data.registry import REGISTRY, fsdd_checksums, fsdd_key

REAL = "3_theo_12.wav"


def _tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.5 * np.sin(2 * np.pi * 440.0 * t)
    return np.stack([wave * (c + 1) / channels for c in range(channels)], axis=1).astype(np.float32)


def test_registry_holds_every_recording_with_its_source_and_licence():
    sums = fsdd_checksums()
    assert len(sums) == 3000
    triples = [parse_name(n) for n in sums]
    assert {d for d, _, _ in triples} == set(range(10))
    assert len({s for _, s, _ in triples}) == 6
    assert {t for _, _, t in triples} == set(range(50))
    entry = REGISTRY[fsdd_key(REAL)]
    assert entry.url == ("https://raw.githubusercontent.com/Jakobovski/free-spoken-digit-dataset/v1.0.10/"
                         f"recordings/{REAL}")
    assert "CC BY-SA 4.0" in entry.license


def test_checksum_file_ships_with_the_package():
    import tomllib

    root = Path(__file__).resolve().parents[1]
    config = tomllib.loads((root / "pyproject.toml").read_text())
    assert "fsdd_sha256.txt" in config["tool"]["setuptools"]["package-data"]["dlbook.data"]


def test_read_wav_reads_a_real_recording(mirror):
    path = mirror / "fsdd" / "recordings" / REAL
    wave = read_wav(path)
    info = sf.info(path)
    assert wave.dtype == np.float32 and wave.ndim == 1 and len(wave) == info.frames
    raw, _ = sf.read(path, dtype="int16")  # 16-bit PCM: float32 is int16 / 32768, exactly
    np.testing.assert_array_equal(wave, raw.astype(np.float32) / 32768)
    assert 0 < np.abs(wave).max() <= 1.0
    np.testing.assert_array_equal(load_recording(3, "theo", 12), wave)
    with pytest.raises(ValueError, match="no recording 3_alice_12.wav"):
        load_recording(3, "alice", 12)


def test_wrong_sample_rate_is_refused_or_resampled(tmp_path):
    path = tmp_path / "fast.wav"
    sf.write(path, _tone(0.5, 16000), 16000, subtype="PCM_16")
    with pytest.raises(WavFormatError, match=r"fast\.wav: sample rate 16000 Hz, expected 8000 Hz.*resample=True"):
        read_wav(path)
    wave = read_wav(path, resample=True)
    assert len(wave) == 4000  # 0.5 s at 8 kHz
    # the 440 Hz tone survives resampling: its spectrum peaks at 440 Hz
    spectrum = np.abs(np.fft.rfft(wave))
    assert abs(np.argmax(spectrum) * FSDD_RATE / len(wave) - 440.0) < 5


def test_stereo_is_refused_or_mixed_down(tmp_path):
    path = tmp_path / "stereo.wav"
    stereo = _tone(0.25, 8000, channels=2)
    sf.write(path, stereo, 8000, subtype="FLOAT")
    with pytest.raises(WavFormatError, match=r"stereo\.wav: 2 channels, expected mono.*mixdown=True"):
        read_wav(path)
    np.testing.assert_allclose(read_wav(path, mixdown=True), stereo.mean(axis=1), atol=1e-7)


def test_truncated_and_garbage_files_are_refused(tmp_path, mirror):
    good = (mirror / "fsdd" / "recordings" / REAL).read_bytes()
    cut = tmp_path / REAL
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(WavFormatError, match=rf"{REAL}: truncated, its header declares \d+ frames but only \d+"):
        read_wav(cut)
    stub = tmp_path / "stub.wav"
    stub.write_bytes(good[:30])
    with pytest.raises(WavFormatError, match=r"stub\.wav: not a readable WAV file"):
        read_wav(stub)


def _small_registry(monkeypatch, names: list[str]) -> None:
    """Make the loader see only ``names`` (real recordings): a fast stand-in for all 3,000."""
    sums = {n: fsdd_checksums()[n] for n in names}
    monkeypatch.setattr(fsdd_module, "fsdd_checksums", lambda: sums)


def _no_network(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(download.urllib.request, "urlopen", refuse)


def test_corrupted_recording_names_the_file_and_the_fix(tmp_path, mirror, isolated_data, monkeypatch):
    names = ["0_george_0.wav", "1_george_0.wav"]
    _small_registry(monkeypatch, names)
    fake = tmp_path / "mirror" / "fsdd" / "recordings"
    fake.mkdir(parents=True)
    for n in names:
        shutil.copy(mirror / "fsdd" / "recordings" / n, fake / n)
    damaged = bytearray((fake / names[1]).read_bytes())
    damaged[200] ^= 0xFF  # one flipped byte: still a valid WAV, only the checksum can tell
    (fake / names[1]).write_bytes(bytes(damaged))
    monkeypatch.setenv("DLBOOK_DATA_MIRROR", str(tmp_path / "mirror"))
    with pytest.raises(ChecksumError, match=r"1_george_0\.wav.*DLBOOK_DATA_MIRROR"):
        load_fsdd(use_cache=False)


def test_missing_recording_names_the_file_and_the_fix(tmp_path, mirror, isolated_data, monkeypatch):
    names = ["0_george_0.wav", "1_george_0.wav"]
    _small_registry(monkeypatch, names)
    _no_network(monkeypatch)
    fake = tmp_path / "mirror" / "fsdd" / "recordings"
    fake.mkdir(parents=True)
    shutil.copy(mirror / "fsdd" / "recordings" / names[0], fake / names[0])
    monkeypatch.setenv("DLBOOK_DATA_MIRROR", str(tmp_path / "mirror"))
    with pytest.raises(MissingDataError, match=r"(?s)1_george_0\.wav.*Fix: set DLBOOK_DATA_MIRROR"):
        load_fsdd(use_cache=False)


def test_loader_reads_everything_caches_it_and_splits_by_speaker(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("DLBOOK_DATA_DIR", str(tmp_path / "cache"))
    first = load_fsdd()
    assert len(first) == 3000 and first.digits.dtype == np.int64 and first.sample_rate == 8000
    assert all(w.dtype == np.float32 and np.abs(w).max() <= 1.0 for w in first.waves)
    assert "3,000 recordings" in first.describe() and "6 speakers" in first.describe()
    assert list(Path(tmp_path / "cache" / "fsdd").glob("fsdd-*.npz")), "the decoded waves were not cached"
    second = load_fsdd()  # from the cache: the same data
    np.testing.assert_array_equal(second.digits, first.digits)
    np.testing.assert_array_equal(second.speakers, first.speakers)
    np.testing.assert_array_equal(second.takes, first.takes)
    assert all(np.array_equal(a, b) for a, b in zip(first.waves, second.waves))
    i = int(np.flatnonzero((first.speakers == "theo") & (first.digits == 3) & (first.takes == 12))[0])
    np.testing.assert_array_equal(first.waves[i], read_wav(mirror / "fsdd" / "recordings" / REAL))

    train, test = speaker_split(first, "theo")
    assert len(test) == 500 and len(train) == 2500 and not set(train) & set(test)
    assert set(first.speakers[test]) == {"theo"} and "theo" not in set(first.speakers[train])
    assert first.subset(test).describe().startswith("FSDD v1.0.10: 500 recordings")
    with pytest.raises(ValueError, match="no speaker 'alice'.*speakers: george"):
        speaker_split(first, "alice")
