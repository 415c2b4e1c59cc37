"""Showing library code inside a lesson, so the reader sees exactly what runs."""

from __future__ import annotations

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


def glue(name: str, value: Any, display: bool = False) -> Any:
    """Record ``value`` under ``name`` for the lesson's prose, where myst-nb's ``glue:text`` role
    inserts it with a format spec (``name:.3f`` in the role's content).

    The book's numbers are then the run's numbers. Uses myst-nb's ``glue`` (the book build has
    it); elsewhere, e.g. on Colab, the value is only returned, since there is no prose to fill.
    Returns the value as a plain Python scalar.
    """
    value = _plain(value)
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        return value
    myst_glue(name, value, display=display)
    return value
