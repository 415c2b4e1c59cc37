"""Showing library code inside a lesson, so the reader sees exactly what runs."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from IPython.display import Code


def show_source(*objects: Callable[..., Any] | type) -> Code:
    """Syntax-highlighted source of functions/classes, as one block, for a notebook output."""
    return Code("\n\n".join(inspect.getsource(obj) for obj in objects), language="python")
