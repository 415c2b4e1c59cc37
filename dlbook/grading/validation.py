"""Check that a submitted file is a readable Jupyter notebook before nbgrader sees it."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nbformat

#: Larger files are not read: a lab notebook without outputs is a few hundred kilobytes.
MAX_NOTEBOOK_BYTES = 50 * 2**20


def validate_notebook(path: Path) -> str | None:
    """Return ``None`` if ``path`` is a valid nbformat-4 notebook, else a one-line reason.

    Checks, in order: the file decodes as UTF-8, parses as JSON, declares nbformat 4 and passes
    nbformat's schema validation. Only the first problem is reported. Files larger than
    :data:`MAX_NOTEBOOK_BYTES` are refused without being read.
    """
    try:
        size = Path(path).stat().st_size
    except OSError as exc:
        return f"cannot read the file: {exc.strerror or exc}"
    if size > MAX_NOTEBOOK_BYTES:
        return f"file too large: {size} bytes (at most {MAX_NOTEBOOK_BYTES})"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text: {exc.reason} at byte {exc.start}"
    except OSError as exc:
        return f"cannot read the file: {exc.strerror or exc}"
    if not text.strip():
        return "empty file"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
    if not isinstance(data, dict) or "cells" not in data:
        return "not a Jupyter notebook: the JSON has no 'cells'"
    major = data.get("nbformat")
    if major != 4:
        return f"unsupported notebook format: nbformat {major!r} (expected 4)"
    try:
        with warnings.catch_warnings():  # e.g. MissingIDFieldWarning for notebooks without cell ids
            warnings.simplefilter("ignore")
            nbformat.validate(nbformat.from_dict(data))
    except nbformat.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "notebook"
        return f"invalid notebook ({where}): {exc.message.splitlines()[0][:200]}"
    return None
