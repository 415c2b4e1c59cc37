"""Installed in the student's kernel by sandboxed autograding: cap what each cell prints.

:func:`install` wraps ``sys.stdout`` and ``sys.stderr`` so that a cell keeps at most ``limit``
characters of each; the rest is dropped inside the kernel, before it costs any messaging, and
a note starting with :data:`TRUNCATION_MARK` is displayed at the end of the cell.
The first ``stderr`` text of a cell always gets through (shortened): nbgrader gives a test cell
no points when it writes to stderr, and dropping it must not turn a failure into a pass.

This is the cheap first line. Student code can undo it (it runs in the same interpreter); the
output caps of :class:`dlbook.grading.executor.GuardedExecute` still hold then.
"""

from __future__ import annotations

import sys
from typing import Any

TRUNCATION_MARK = "[dlbook-grade] output truncated"
_FIRST_STDERR = 2000


class _Capped:
    """A text stream that forwards at most ``limit`` characters per cell to ``stream``."""

    def __init__(self, stream: Any, limit: int, name: str) -> None:
        self._stream, self._limit, self._name = stream, limit, name
        self.reset()

    def reset(self) -> None:
        self.used = 0
        self.dropped = 0

    def write(self, text: Any) -> int:
        if not isinstance(text, str):
            return self._stream.write(text)
        room = self._limit - self.used
        if self._name == "stderr" and self.used == 0:
            room = max(room, _FIRST_STDERR)
        if len(text) <= room:
            self.used += len(text)
            return self._stream.write(text)
        if room > 0:
            self._stream.write(text[:room])
            self.used += room
        self.dropped += len(text) - max(room, 0)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def install(limit: int) -> None:
    """Cap ``sys.stdout`` and ``sys.stderr`` at ``limit`` characters per cell (IPython kernels)."""
    try:
        ip = get_ipython()  # type: ignore[name-defined]  # noqa: F821 (defined in IPython kernels)
    except NameError:
        from IPython import get_ipython

        ip = get_ipython()
    if ip is None or isinstance(sys.stdout, _Capped):
        return
    out = _Capped(sys.stdout, limit, "stdout")
    err = _Capped(sys.stderr, limit, "stderr")
    sys.stdout, sys.stderr = out, err

    def before(*_: Any) -> None:
        out.reset()
        err.reset()

    def after(*_: Any) -> None:
        dropped = out.dropped + err.dropped
        if dropped:
            note = f"{TRUNCATION_MARK}: {dropped} characters of output were dropped (at most {limit} per cell are kept)"
            for stream in (out, err):
                stream.flush()
            # a display, not a stream: nbgrader's LimitOutput may cut long streams, never displays
            ip.display_pub.publish(
                data={"text/plain": note}, metadata={"dlbook_grade": {"dropped_chars": dropped}}
            )
        before()

    ip.events.register("pre_run_cell", before)
    ip.events.register("post_run_cell", after)
