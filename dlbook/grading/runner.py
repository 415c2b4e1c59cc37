"""Run nbgrader (or any command) in a subprocess with a wall-clock limit.

nbgrader runs ``alembic`` as a subprocess, found on ``PATH``: the environment given to nbgrader
puts the ``bin`` directory of the running interpreter first, so the tools of the same virtual
environment are used whatever the caller's ``PATH`` is.

Student code runs in the kernels that nbgrader starts, so a command may leave processes behind
(a kernel, or whatever a notebook spawned) and may print without end. :func:`run_command`
therefore keeps only the beginning and the end of the output (:data:`OUTPUT_HEAD`,
:data:`OUTPUT_TAIL` characters), and with ``marker`` tags every process it starts through the
environment variable :data:`MARKER_ENV`, so that :func:`kill_marked` can find and kill all of
them afterwards, even those that left the process group.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MARKER_ENV = "DLBOOK_GRADING_RUN"  # inherited by nbgrader, its kernels and their children
OUTPUT_HEAD = 100_000  # characters of output kept from the start ...
OUTPUT_TAIL = 400_000  # ... and from the end (nbgrader's errors come last)
DEFAULT_TIMEOUT = 600.0  # seconds of autograding per student (``grade --timeout``)
DEFAULT_MAX_OUTPUT = 1_000_000  # characters of output kept per cell, 5x that per notebook


@dataclass(frozen=True)
class CommandResult:
    """Outcome of :func:`run_command`: exit status (``None`` when killed on timeout) and output."""

    returncode: int | None
    output: str
    timed_out: bool
    seconds: float

    @property
    def ok(self) -> bool:
        """Whether the command finished in time with exit status 0."""
        return not self.timed_out and self.returncode == 0


def tool_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Copy of ``base`` (default: ``os.environ``) with this interpreter's ``bin`` dir first on PATH."""
    env = dict(os.environ if base is None else base)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env["PATH"]]) if env.get("PATH") else bin_dir
    env.setdefault("PYTHONIOENCODING", "utf-8")
    return env


def _kill_tree(process: subprocess.Popen[str]) -> None:
    """Kill ``process`` and all its descendants (a Jupyter kernel runs in a session of its own)."""
    descendants = []
    try:
        import psutil

        descendants = psutil.Process(process.pid).children(recursive=True)
    except Exception:  # psutil missing or the process already gone
        pass
    if hasattr(os, "killpg"):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    process.kill()
    for child in descendants:
        try:
            child.kill()
        except Exception:
            pass


class _BoundedReader(threading.Thread):
    """Read a text stream to its end, keeping its first ``head`` and last ``tail`` characters."""

    def __init__(self, stream, head: int = OUTPUT_HEAD, tail: int = OUTPUT_TAIL) -> None:
        super().__init__(daemon=True)
        self.stream, self.head_limit, self.tail_limit = stream, head, tail
        self.head: list[str] = []
        self.head_size = 0
        self.tail: deque[str] = deque()
        self.tail_size = 0
        self.dropped = 0

    def run(self) -> None:
        try:
            while chunk := self.stream.read(65536):
                room = self.head_limit - self.head_size
                if room > 0:
                    self.head.append(chunk[:room])
                    self.head_size += len(chunk[:room])
                    chunk = chunk[room:]
                if chunk:
                    self.tail.append(chunk)
                    self.tail_size += len(chunk)
                    while self.tail_size - len(self.tail[0]) >= self.tail_limit:
                        self.dropped += len(self.tail[0])
                        self.tail_size -= len(self.tail.popleft())
        except (OSError, ValueError):  # the pipe was closed under us
            pass

    def text(self) -> str:
        tail = "".join(self.tail)
        extra = max(0, len(tail) - self.tail_limit)
        dropped = self.dropped + extra
        middle = f"\n[... {dropped} characters of output left out ...]\n" if dropped else ""
        return "".join(self.head) + middle + tail[extra:]


def kill_marked(marker: str) -> int:
    """Kill every process whose environment has ``MARKER_ENV=marker``; return how many.

    Catches what a notebook left running (a daemon that double-forked out of the kernel's
    process group) as long as it kept the inherited environment. Needs psutil (a dependency of
    ipykernel); without it nothing is killed.
    """
    try:
        import psutil
    except ImportError:
        return 0
    killed = 0
    for _ in range(3):  # a process may fork while we look
        found = 0
        for proc in psutil.process_iter():
            if proc.pid == os.getpid():
                continue
            try:
                if proc.environ().get(MARKER_ENV) == marker:
                    proc.kill()
                    found += 1
            except (psutil.Error, OSError):
                continue
        killed += found
        if not found:
            break
    return killed


def run_command(
    cmd: Sequence[str],
    cwd: Path,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
    marker: str | None = None,
) -> CommandResult:
    """Run ``cmd`` in ``cwd``, stdout and stderr merged; kill it and its children after ``timeout`` s.

    Only the first :data:`OUTPUT_HEAD` and last :data:`OUTPUT_TAIL` characters of the output are
    kept. With ``marker``, every process started by the command carries it in its environment
    and all of them are killed when the command ends (see :func:`kill_marked`).
    """
    start = time.monotonic()
    env = dict(env if env is not None else tool_env())
    if marker is not None:
        env[MARKER_ENV] = marker
    process = subprocess.Popen(
        list(cmd),
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
        start_new_session=hasattr(os, "killpg"),
    )
    reader = _BoundedReader(process.stdout)
    reader.start()
    timed_out = False
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_tree(process)
        process.wait()
    if marker is not None:
        kill_marked(marker)
    reader.join(timeout=10)  # a leftover process that holds the pipe must not block us
    output = reader.text()
    seconds = time.monotonic() - start
    return CommandResult(None if timed_out else process.returncode, output, timed_out, seconds)


def run_nbgrader(
    args: Sequence[str], course_root: Path, timeout: float | None = None, marker: str | None = None
) -> CommandResult:
    """Run ``python -m nbgrader ARGS`` with this interpreter, in ``course_root``."""
    cmd = [sys.executable, "-m", "nbgrader", *args, f"--CourseDirectory.root={course_root}"]
    return run_command(cmd, cwd=course_root, timeout=timeout, marker=marker)


_EXCEPTION_LINE = re.compile(
    r"^\s*((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt)\b(?::.*)?)$"
)
_ERROR_LOG = re.compile(r"\|\s*(?:ERROR|CRITICAL)\]\s*(.*)$")
_GENERIC_ERRORS = ("There was an error processing", "Please see the", "Error log")


def summarize_error(output: str, limit: int = 300) -> str:
    """One line saying why an nbgrader run failed: its first specific ``ERROR`` log message
    (e.g. "Kernel died while waiting for execute reply."), else the exception of its last
    traceback, else its generic error message, else its last non-empty line."""
    lines = [line.rstrip() for line in output.splitlines() if line.strip()]
    errors = [m.group(1).strip() for m in map(_ERROR_LOG.search, lines) if m and m.group(1).strip()]
    specific = [e for e in errors if not e.startswith(_GENERIC_ERRORS)]
    exceptions = [m.group(1) for m in map(_EXCEPTION_LINE.match, lines) if m]
    for candidates in (specific, exceptions[-1:], errors, lines[-1:]):
        if candidates:
            return candidates[0][:limit]
    return "no output"
