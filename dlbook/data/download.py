"""Getting a registered file onto disk: mirror first, then the network, checksum always."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from .registry import DataFile, lookup

MIRROR_VAR = "DLBOOK_DATA_MIRROR"
CACHE_VAR = "DLBOOK_DATA_DIR"


class MissingDataError(RuntimeError):
    """A dataset file could not be found in the mirror, the cache or on the network."""


class ChecksumError(RuntimeError):
    """A file's sha256 does not match the registry: corrupt, truncated or a different file."""


def cache_dir() -> Path:
    """Where downloaded files live: ``$DLBOOK_DATA_DIR``, else ``~/.cache/dlbook``."""
    default = Path.home() / ".cache" / "dlbook"
    return Path(os.environ.get(CACHE_VAR) or default).expanduser()


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, entry: DataFile) -> Path:
    """Return ``path`` if its sha256 matches ``entry``; raise :class:`ChecksumError` if not."""
    actual = sha256_of(path)
    if actual != entry.sha256:
        raise ChecksumError(
            f"{path} has sha256 {actual}, but the registry expects {entry.sha256} for "
            f"{entry.key}. Delete the file and fetch it again (from {entry.url})."
        )
    return path


def _download(url: str, target: Path, timeout: float) -> None:
    """Stream ``url`` into ``target`` with a progress bar; write atomically via a temp file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name) as bar:
                while block := resp.read(1 << 16):
                    out.write(block)
                    bar.update(len(block))
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def fetch(key: str, *, timeout: float = 30.0) -> Path:
    """A verified local copy of the registered file ``key``.

    Looks in ``$DLBOOK_DATA_MIRROR/<key>`` first (used in place, never copied), then in the
    cache, then downloads from the file's URL into the cache. The sha256 is checked every time.
    """
    entry = lookup(key)
    mirror = os.environ.get(MIRROR_VAR)
    if mirror:
        candidate = Path(mirror).expanduser() / entry.key
        if candidate.is_file():
            return verify(candidate, entry)

    cached = cache_dir() / entry.key
    if cached.is_file():
        return verify(cached, entry)

    try:
        _download(entry.url, cached, timeout)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        where = f"{MIRROR_VAR}={mirror} has no {entry.key}" if mirror else f"{MIRROR_VAR} is not set"
        raise MissingDataError(
            f"cannot get {entry.filename} ({entry.description}).\n"
            f"  download from {entry.url} failed: {exc}\n"
            f"  and {where}.\n"
            f"Fix: set {MIRROR_VAR} to a folder holding {entry.key} (e.g. "
            f"export {MIRROR_VAR}=../shared/data), or place the file at {cached}."
        ) from exc
    try:
        return verify(cached, entry)
    except ChecksumError:
        cached.unlink(missing_ok=True)  # never leave a bad download where the next run trusts it
        raise
