"""Showing library code inside a lesson, so the reader sees exactly what runs."""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable
from typing import Any

from IPython.display import Code


def show_source(*objects: Callable[..., Any] | type) -> Code:
    """Syntax-highlighted source of functions/classes, as one block, for a notebook output."""
    return Code("\n\n".join(inspect.getsource(obj) for obj in objects), language="python")


def _plain(value: Any) -> Any:
    """A Python scalar for numpy/torch scalars: myst-nb formats glued values from their text,
    and ``np.float64(0.9)`` (numpy 2's repr) would not parse as a number."""
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 0) == 0:
        return item()
    return value


# myst-nb's glue protocol: the display data its reader looks for (``myst_nb.glue`` writes the same).
# Written out here so that a lesson need not import myst_nb: that import pulls nbformat, jsonschema
# and rfc3987_syntax, which builds a grammar when imported, 3 s of CPU per lesson on CI's machine
# (measured 2026-12-07), more than most cells cost. tests/test_display.py checks that both display
# exactly the same data.
GLUE_PREFIX = "application/papermill.record/"


def glue(name: str, value: Any, display: bool = False) -> Any:
    """Record ``value`` under ``name`` for the lesson's prose, where myst-nb's ``glue:text`` role
    inserts it with a format spec (``name:.3f`` in the role's content).

    The book's numbers are then the run's numbers. Displays what ``myst_nb.glue`` displays where
    myst-nb is installed (the book build); elsewhere, e.g. on Colab, the value is only returned,
    since there is no prose to fill. Returns the value as a plain Python scalar.
    """
    value = _plain(value)
    if importlib.util.find_spec("myst_nb") is None:
        return value
    from IPython.core.formatters import format_display_data
    from IPython.display import display as ipy_display

    mimebundle, metadata = format_display_data(value)
    mime_prefix = "" if display else GLUE_PREFIX
    metadata["scrapbook"] = dict(name=name, mime_prefix=mime_prefix)
    ipy_display({mime_prefix + k: v for k, v in mimebundle.items()}, raw=True, metadata=metadata)
    return value
