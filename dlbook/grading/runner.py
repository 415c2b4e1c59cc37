"""Run nbgrader (or any command) in a subprocess with a wall-clock limit.

nbgrader runs ``alembic`` as a subprocess, found on ``PATH``: the environment given to nbgrader
puts the ``bin`` directory of the running interpreter first, so the tools of the same virtual
environment are used whatever the caller's ``PATH`` is.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


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


def run_command(
    cmd: Sequence[str], cwd: Path, timeout: float | None = None, env: dict[str, str] | None = None
) -> CommandResult:
    """Run ``cmd`` in ``cwd``, stdout and stderr merged; kill it and its children after ``timeout`` s."""
    start = time.monotonic()
    process = subprocess.Popen(
        list(cmd),
        cwd=cwd,
        env=env if env is not None else tool_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
        start_new_session=hasattr(os, "killpg"),
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(process)
        output, _ = process.communicate()
        return CommandResult(None, output or "", True, time.monotonic() - start)
    return CommandResult(process.returncode, output or "", False, time.monotonic() - start)


def run_nbgrader(args: Sequence[str], course_root: Path, timeout: float | None = None) -> CommandResult:
    """Run ``python -m nbgrader ARGS`` with this interpreter, in ``course_root``."""
    cmd = [sys.executable, "-m", "nbgrader", *args, f"--CourseDirectory.root={course_root}"]
    return run_command(cmd, cwd=course_root, timeout=timeout)


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
