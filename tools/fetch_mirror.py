"""Fill a data mirror from the registry's URLs, every file's sha256 verified.

    python tools/fetch_mirror.py TARGET [--skip KEY ...] [--only KEY ...] [--strict]

Downloads each file of ``dlbook.data.registry.REGISTRY`` from its canonical URL to
``TARGET/<key>`` (e.g. ``TARGET/mnist/t10k-images-idx3-ubyte.gz``), the layout that
``DLBOOK_DATA_MIRROR`` expects, and checks it with dlbook's own ``verify`` (Fashion-MNIST's on the
decompressed bytes). A file already in TARGET that verifies is kept; one that does not is fetched
again. A download that fails verification is deleted and the script exits with status 1.
A file that cannot be downloaded (no network, the host refuses it) is reported and skipped:
the loaders then say what is missing and where to get it; ``--strict`` makes that an error too.

CI (``.github/workflows/``) runs it when the cached mirror (``../shared/data``) misses. It needs
the course's environment (``dlbook`` imports torch): ``source tools/env.sh`` first.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
from pathlib import Path

from dlbook.data.download import ChecksumError, _download, verify
from dlbook.data.registry import REGISTRY, DataFile, lookup


def fetch_into(entry: DataFile, target: Path, *, timeout: float = 60.0) -> Path:
    """A verified copy of ``entry`` at ``target/<key>``: kept if one is there, else downloaded.

    Raises :class:`~dlbook.data.download.ChecksumError` when the downloaded bytes do not match the
    registry, and leaves no file behind (the download itself is written atomically).
    """
    path = target / entry.key
    if path.is_file():
        try:
            return verify(path, entry)
        except ChecksumError as exc:
            print(f"  {entry.key}: the copy in {target} does not verify, fetching it again ({exc})")
            path.unlink()
    _download(entry.url, path, timeout)
    try:
        return verify(path, entry)
    except ChecksumError:
        path.unlink(missing_ok=True)  # never leave a bad file where a loader would trust the mirror
        raise


def _keys(values: list[str]) -> list[str]:
    try:
        return [lookup(key).key for key in values]
    except KeyError as exc:
        raise SystemExit(f"error: {exc.args[0]}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", type=Path, help="the mirror folder, e.g. ../shared/data")
    parser.add_argument("--skip", nargs="+", default=[], metavar="KEY",
                        help="registry keys not to fetch (e.g. cifar10/cifar-10-python.tar.gz)")
    parser.add_argument("--only", nargs="+", default=[], metavar="KEY", help="fetch just these keys")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 when a file cannot be downloaded, not only when it is wrong")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per network operation")
    args = parser.parse_args(argv)

    skip = set(_keys(args.skip))
    wanted = _keys(args.only) if args.only else sorted(REGISTRY)
    target = args.target.expanduser()
    target.mkdir(parents=True, exist_ok=True)
    print(f"data mirror: {target.resolve()} ({len(wanted)} of the {len(REGISTRY)} registered files)")
    fetched, skipped, unavailable, corrupt = [], [], [], []
    for key in wanted:
        entry = REGISTRY[key]
        if key in skip:
            print(f"  {key}: skipped (--skip)")
            skipped.append(key)
            continue
        try:
            fetch_into(entry, target, timeout=args.timeout)
        except ChecksumError as exc:
            print(f"  {key}: WRONG CHECKSUM, deleted: {exc}", file=sys.stderr)
            corrupt.append(key)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            print(f"  {key}: cannot be downloaded from {entry.url} ({exc}); skipped", file=sys.stderr)
            unavailable.append(key)
        else:
            print(f"  {key}: verified ({entry.license})")
            fetched.append(key)
    print(f"{len(fetched)} verified, {len(skipped)} skipped, {len(unavailable)} not downloadable, "
          f"{len(corrupt)} with a wrong checksum")
    return 1 if corrupt or (args.strict and unavailable) else 0


if __name__ == "__main__":
    sys.exit(main())
