"""Getting a registered file onto disk: mirror first, then the network, checksum always."""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from tqdm.auto import tqdm

from .registry import DataFile, lookup

MIRROR_VAR = "DLBOOK_DATA_MIRROR"
CACHE_VAR = "DLBOOK_DATA_DIR"
# Folders that Debian's dataset packages install into (dataset-fashion-mnist puts
# fashion-mnist/*.gz in /usr/share/datasets): a valid read-only mirror on an offline machine.
SYSTEM_MIRRORS: tuple[Path, ...] = (Path("/usr/share/datasets"),)


class MissingDataError(RuntimeError):
    """A dataset file could not be found in the mirror, the cache or on the network."""


class ChecksumError(RuntimeError):
    """A file's sha256 does not match the registry: corrupt, truncated or a different file."""


def cache_dir() -> Path:
    """Where downloaded files live: ``$DLBOOK_DATA_DIR``, else ``~/.cache/dlbook``."""
    default = Path.home() / ".cache" / "dlbook"
    return Path(os.environ.get(CACHE_VAR) or default).expanduser()


def sha256_of(path: Path, chunk: int = 1 << 20, *, gunzip: bool = False) -> str:
    """The sha256 of a file's bytes, or with ``gunzip`` of its decompressed bytes."""
    digest = hashlib.sha256()
    with (gzip.open(path, "rb") if gunzip else open(path, "rb")) as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _fix_hint(path: Path, entry: DataFile) -> str:
    inside_cache = cache_dir() in path.parents
    first = (f"delete {path} and run again to download it from {entry.url}" if inside_cache
             else f"replace {path} with a good copy (from {entry.url})")
    extra = f"; {entry.offline_hint}" if entry.offline_hint else ""
    return f"Fix: {first}, or point {MIRROR_VAR} at a folder holding a good {entry.key}{extra}."


def verify(path: Path, entry: DataFile) -> Path:
    """Return ``path`` if its sha256 matches ``entry``; raise :class:`ChecksumError` if not.

    For a ``content_sha256`` entry the checksum is of the decompressed bytes, and a truncated or
    non-gzip file is reported as such.
    """
    what = "decompressed bytes" if entry.content_sha256 else "bytes"
    try:
        actual = sha256_of(path, gunzip=entry.content_sha256)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ChecksumError(
            f"{path} is truncated or not a gzip file ({type(exc).__name__}: {exc}); the registry "
            f"expects sha256 {entry.sha256} of the {what} of {entry.key}. {_fix_hint(path, entry)}"
        ) from exc
    if actual != entry.sha256:
        raise ChecksumError(
            f"{path}: the sha256 of its {what} is {actual}, but the registry expects "
            f"{entry.sha256} for {entry.key} (corrupt, truncated or a different file). "
            f"{_fix_hint(path, entry)}"
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
    mirrors = ([Path(mirror).expanduser()] if mirror else []) + list(SYSTEM_MIRRORS)
    for folder in mirrors:
        candidate = folder / entry.key
        if candidate.is_file():
            return verify(candidate, entry)

    cached = cache_dir() / entry.key
    if cached.is_file():
        return verify(cached, entry)

    try:
        _download(entry.url, cached, timeout)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        where = f"{MIRROR_VAR}={mirror} has no {entry.key}" if mirror else f"{MIRROR_VAR} is not set"
        also = f"\n  Offline: {entry.offline_hint}." if entry.offline_hint else ""
        raise MissingDataError(
            f"cannot get {entry.filename} ({entry.description}).\n"
            f"  download from {entry.url} failed: {exc}\n"
            f"  and {where}.\n"
            f"Fix: set {MIRROR_VAR} to a folder holding {entry.key} (e.g. "
            f"export {MIRROR_VAR}=../shared/data), or place the file at {cached}.{also}"
        ) from exc
    try:
        return verify(cached, entry)
    except ChecksumError:
        cached.unlink(missing_ok=True)  # never leave a bad download where the next run trusts it
        raise
