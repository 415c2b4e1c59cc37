"""The Free Spoken Digit Dataset (FSDD v1.0.10): 3,000 recordings of the digits 0-9 by 6 speakers.

Every recording comes through the checksummed registry (mirror first, then cache, then the
tag's raw files), so a missing or corrupted one is an error naming the file and the fix. WAV files
are read with ``soundfile`` (a maintained libsndfile binding), and anything that is not what the
course expects (another sample rate, several channels, a file shorter than its header says) is
refused with a message, or converted only when asked: never silently misread.

The decoded waveforms are cached as one ``.npz`` in the course cache, keyed by the checksums, so
the second :func:`load_fsdd` takes milliseconds instead of reading 3,000 files.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np

from .download import cache_dir, fetch
from .registry import FSDD_SUMS, FSDD_VERSION, fsdd_checksums, fsdd_key

#: the dataset's sample rate (Hz)
FSDD_RATE = 8000
#: the six speakers, in the order of the dataset's metadata (speakers.tsv): gender, accent
FSDD_SPEAKERS: dict[str, tuple[str, str]] = {
    "jackson": ("male", "USA/neutral"),
    "nicolas": ("male", "BEL/French"),
    "theo": ("male", "USA/neutral"),
    "yweweler": ("male", "DEU/German"),
    "george": ("male", "GRC/Greek"),
    "lucas": ("male", "DEU/German"),
}


class WavFormatError(ValueError):
    """A WAV file is not what the caller expects (rate, channels) or is damaged (truncated)."""


def _declared_frames(path: Path) -> int | None:
    """Frames the RIFF header's ``data`` chunk declares, or None for a non-RIFF/odd file.

    libsndfile reads a truncated WAV without complaint (it returns the samples that are there),
    so the declared size is compared with what was read.
    """
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        block_align = None
        while chunk := fh.read(8):
            if len(chunk) < 8:
                return None
            cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"fmt ":
                fmt = fh.read(size + (size & 1))
                block_align = struct.unpack("<H", fmt[12:14])[0] if len(fmt) >= 14 else None
            elif cid == b"data":
                return size // block_align if block_align else None
            else:
                fh.seek(size + (size & 1), os.SEEK_CUR)
    return None


def read_wav(path: str | Path, expected_rate: int = FSDD_RATE, *, resample: bool = False,
             mixdown: bool = False) -> np.ndarray:
    """A mono WAV file as float32 samples in [-1, 1] at ``expected_rate`` Hz.

    Another sample rate raises :class:`WavFormatError` unless ``resample=True`` (then
    ``scipy.signal.resample_poly``, a polyphase anti-aliased resampler); several channels raise
    unless ``mixdown=True`` (then the channel mean). A file shorter than its header declares
    (truncated) always raises: reading it would silently drop the end of the word.
    """
    import soundfile as sf  # imported here: `import dlbook.data` must not need it

    path = Path(path)
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except sf.LibsndfileError as exc:
        raise WavFormatError(f"{path}: not a readable WAV file ({exc}); it may be truncated or corrupt. "
                             f"Replace it with a good copy.") from exc
    declared = _declared_frames(path)
    if declared is not None and declared > len(data):
        raise WavFormatError(f"{path}: truncated, its header declares {declared} frames but only "
                             f"{len(data)} are there. Replace it with a good copy.")
    if data.shape[1] != 1:
        if not mixdown:
            raise WavFormatError(f"{path}: {data.shape[1]} channels, expected mono; pass mixdown=True "
                                 f"to average the channels")
        data = data.mean(axis=1, keepdims=True)
    wave = data[:, 0]
    if rate != expected_rate:
        if not resample:
            raise WavFormatError(f"{path}: sample rate {rate} Hz, expected {expected_rate} Hz; pass "
                                 f"resample=True to resample it (scipy.signal.resample_poly)")
        from scipy.signal import resample_poly

        g = gcd(int(rate), int(expected_rate))
        wave = resample_poly(wave, expected_rate // g, rate // g).astype(np.float32)
        wave = np.clip(wave, -1.0, 1.0)
    return np.ascontiguousarray(wave, dtype=np.float32)


def parse_name(name: str) -> tuple[int, str, int]:
    """``"3_theo_12.wav"`` -> ``(3, "theo", 12)``: digit, speaker and take from a file name."""
    stem = name.removesuffix(".wav")
    digit, speaker, take = stem.split("_")
    return int(digit), speaker, int(take)


@dataclass
class FSDD:
    """Recordings with their labels; ``waves[i]`` is float32 in [-1, 1] at ``sample_rate`` Hz."""

    waves: list[np.ndarray]
    digits: np.ndarray  # int64 (N,)
    speakers: np.ndarray  # str (N,)
    takes: np.ndarray  # int64 (N,), the take index 0-49 of a speaker's digit
    sample_rate: int = FSDD_RATE

    def __len__(self) -> int:
        return len(self.waves)

    @property
    def lengths(self) -> np.ndarray:
        """Samples per recording (int64)."""
        return np.array([len(w) for w in self.waves], dtype=np.int64)

    def subset(self, index: np.ndarray) -> FSDD:
        """The recordings at ``index`` (an int array or a boolean mask), as a new FSDD."""
        idx = np.flatnonzero(index) if np.asarray(index).dtype == bool else np.asarray(index)
        return FSDD([self.waves[i] for i in idx], self.digits[idx], self.speakers[idx], self.takes[idx],
                    self.sample_rate)

    def describe(self) -> str:
        secs = self.lengths / self.sample_rate
        names = ", ".join(sorted(set(self.speakers.tolist())))
        return (f"FSDD {FSDD_VERSION}: {len(self):,} recordings of the digits 0-9 by "
                f"{len(set(self.speakers.tolist()))} speakers ({names}), {self.sample_rate} Hz, "
                f"{secs.min():.2f}-{secs.max():.2f} s (mean {secs.mean():.2f} s)")


def load_recording(digit: int, speaker: str, take: int) -> np.ndarray:
    """One verified recording, e.g. ``load_recording(3, "theo", 12)`` (``3_theo_12.wav``), without
    reading the other 2,999 (a lesson that needs a single example stays fast on a cold cache)."""
    name = f"{digit}_{speaker}_{take}.wav"
    if name not in fsdd_checksums():
        raise ValueError(f"no recording {name} in FSDD {FSDD_VERSION}: digits 0-9, takes 0-49, speakers "
                         f"{', '.join(FSDD_SPEAKERS)}")
    return read_wav(fetch(fsdd_key(name)))


def _cache_stamp() -> str:
    """A digest of every checksum: a different registry gives a different cache file."""
    sums = fsdd_checksums()
    return hashlib.sha256("".join(f"{k} {v}\n" for k, v in sorted(sums.items())).encode()).hexdigest()[:16]


def _read_all() -> FSDD:
    names = sorted(fsdd_checksums(), key=lambda n: (parse_name(n)[1], parse_name(n)[0], parse_name(n)[2]))
    waves, digits, speakers, takes = [], [], [], []
    for name in names:
        waves.append(read_wav(fetch(fsdd_key(name))))
        d, s, t = parse_name(name)
        digits.append(d), speakers.append(s), takes.append(t)
    return FSDD(waves, np.array(digits, dtype=np.int64), np.array(speakers), np.array(takes, dtype=np.int64))


def load_fsdd(*, use_cache: bool = True) -> FSDD:
    """All 3,000 recordings, verified against their checksums on the first load, then cached.

    Order: by speaker, then digit, then take. The cache (``<cache>/fsdd/fsdd-<stamp>.npz``) holds
    the concatenated samples and their offsets; it is written atomically and its name carries a
    digest of the checksum file, so a changed registry never reuses stale waveforms.
    """
    path = cache_dir() / "fsdd" / f"fsdd-{_cache_stamp()}.npz"
    if use_cache and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            flat, offsets = z["samples"], z["offsets"]
            waves = [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
            return FSDD(waves, z["digits"], z["speakers"].astype(str), z["takes"], int(z["rate"]))
    data = _read_all()
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        offsets = np.concatenate([[0], np.cumsum(data.lengths)]).astype(np.int64)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
        os.close(fd)
        try:
            np.savez(tmp, samples=np.concatenate(data.waves), offsets=offsets, digits=data.digits,
                     speakers=data.speakers.astype("U16"), takes=data.takes, rate=np.int64(data.sample_rate))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return data


def speaker_split(fsdd: FSDD, held_out: str) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)``: test is every recording of ``held_out``, train the other speakers'.

    A speaker-independent split: the model is tested on a voice it never heard. A random split
    puts every speaker in both halves and measures something easier.
    """
    known = sorted(set(fsdd.speakers.tolist()))
    if held_out not in known:
        raise ValueError(f"no speaker {held_out!r} in the data; speakers: {', '.join(known)}")
    test = fsdd.speakers == held_out
    return np.flatnonzero(~test), np.flatnonzero(test)


__all__ = ["FSDD", "FSDD_RATE", "FSDD_SPEAKERS", "FSDD_SUMS", "WavFormatError", "load_fsdd", "load_recording",
           "parse_name",
           "read_wav", "speaker_split"]
