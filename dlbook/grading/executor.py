"""nbgrader's ``Execute`` preprocessor, hardened for untrusted notebooks.

:class:`GuardedExecute` replaces ``Execute`` in the sandboxed autograde runs of
:mod:`dlbook.grading.sandbox` (the sandbox's ``nbgrader_config.py`` names it; nbgrader imports
it in its own process). On top of ``Execute`` it

- caps the outputs kept per cell and per notebook while the kernel sends them, so a cell that
  prints hundreds of megabytes costs neither memory nor disk: the rest is dropped and a note
  (:data:`TRUNCATION_MARK`) is added to the cell. Outputs that decide a grade are never dropped
  outright: an error, a result and the first ``stderr`` text of a cell are kept, shortened;
- with ``scrub_sandbox`` (only ever set in a sandbox), removes from disk what would show the
  hidden tests to the student's code before the kernel starts: the sanitized notebook it is
  about to run (the notebook stays in memory) and the sources of the cells in the sandbox's
  gradebook (autograding no longer needs them);
- after the kernel has stopped, removes a link or anything else that student code put where
  nbgrader is about to write the autograded notebook.

Nothing here is imported by :mod:`dlbook.grading` itself, so nbgrader is only loaded where it runs.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import typing as t
from pathlib import Path

from nbformat.notebooknode import NotebookNode
from nbgrader.preprocessors import Execute
from traitlets import Bool, Integer

from .kernel_guard import TRUNCATION_MARK

_OUTPUT_MESSAGES = {"stream", "display_data", "execute_result", "error", "update_display_data"}
_STUB = 2000  # characters kept of each field of an output that is never dropped


def _size(content: dict[str, t.Any]) -> int:
    """Characters an output message would add to the notebook (roughly)."""
    total = 0
    for key in ("text", "evalue", "ename"):
        value = content.get(key)
        if isinstance(value, str):
            total += len(value)
    for line in content.get("traceback") or []:
        total += len(line) if isinstance(line, str) else 0
    for value in (content.get("data") or {}).values():
        total += len(value) if isinstance(value, str) else len(json.dumps(value, default=str))
    return total


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "\n[... truncated ...]"


def _shorten_content(content: dict[str, t.Any], limit: int = _STUB) -> None:
    """Shorten, in place, every string field of an output that must be kept (error, result)."""
    for key in ("text", "evalue", "ename"):
        if isinstance(content.get(key), str):
            content[key] = _shorten(content[key], limit)
    if isinstance(content.get("traceback"), list):
        lines = [_shorten(str(line), limit) for line in content["traceback"]]
        content["traceback"] = lines[:20] + (["[... traceback truncated ...]"] if len(lines) > 20 else [])
    data = content.get("data")
    if isinstance(data, dict):
        for key, value in list(data.items()):
            if isinstance(value, str):
                data[key] = _shorten(value, limit)
            elif len(json.dumps(value, default=str)) > limit:
                data[key] = "[... truncated ...]"


class GuardedExecute(Execute):
    """``Execute`` that caps outputs and, in a sandbox, hides the hidden tests from the kernel."""

    max_output_chars = Integer(1_000_000, help="characters of output kept per cell; the rest is dropped").tag(
        config=True
    )
    max_total_output_chars = Integer(5_000_000, help="characters of output kept for the whole notebook").tag(
        config=True
    )
    scrub_sandbox = Bool(
        False,
        help="delete the notebook being run and the cell sources of the gradebook from disk "
        "before starting the kernel (only for throw-away sandbox courses)",
    ).tag(config=True)

    def preprocess(
        self, nb: NotebookNode, resources: t.Any = None, km: t.Any = None
    ) -> tuple[NotebookNode, dict[str, t.Any]]:
        self.reset_caps()
        target = self._notebook_path(resources)
        if self.scrub_sandbox:
            self._scrub(resources, target)
        try:
            nb, resources = super().preprocess(nb, resources, km)
            nb.metadata["dlbook_grade"] = {"guarded": True, "scrubbed": bool(self.scrub_sandbox)}
            return nb, resources
        finally:
            if target is not None and (target.is_symlink() or (target.exists() and not target.is_file())):
                self.log.warning("removing %s, planted by the notebook's code", target)
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    target.unlink()

    def reset_caps(self) -> None:
        """Forget the output counted so far (a new notebook)."""
        self._kept: dict[int, int] = {}
        self._dropped: dict[int, int] = {}
        self._stderr_kept: set[int] = set()
        self._total = 0

    @staticmethod
    def _notebook_path(resources: t.Any) -> Path | None:
        try:
            return Path(resources["metadata"]["path"]) / f"{resources['unique_key']}.ipynb"
        except (KeyError, TypeError):
            return None

    def _scrub(self, resources: t.Any, target: Path | None) -> None:
        if target is not None and target.is_file():
            target.unlink()
        db_url = str((resources or {}).get("nbgrader", {}).get("db_url", ""))
        if db_url.startswith("sqlite:///"):
            db = sqlite3.connect(db_url[len("sqlite:///") :])
            try:  # secure_delete + VACUUM: no copy of the sources stays in free pages of the file
                db.execute("PRAGMA secure_delete = ON")
                db.execute("UPDATE source_cell SET source = ''")
                db.commit()
                db.execute("VACUUM")
            finally:
                db.close()

    # ------------------------------------------------------------------ output caps

    def preprocess_cell(self, cell: NotebookNode, resources: t.Any, index: int) -> t.Any:
        self._kept[index] = 0
        self._dropped[index] = 0
        self._stderr_kept.discard(index)
        return super().preprocess_cell(cell, resources, index)

    def process_message(self, msg: dict[str, t.Any], cell: NotebookNode, cell_index: int) -> t.Any:
        msg_type = msg.get("msg_type")
        if msg_type and msg_type.startswith("comm"):
            return None  # widget traffic: not needed for grading, and unbounded
        if msg_type in _OUTPUT_MESSAGES:
            if not self._admit(msg, cell_index):
                if "execution_count" in msg.get("content", {}):
                    cell["execution_count"] = msg["content"]["execution_count"]
                return None
        return super().process_message(msg, cell, cell_index)

    def _room(self, index: int) -> int:
        return max(
            0,
            min(self.max_output_chars - self._kept.get(index, 0), self.max_total_output_chars - self._total),
        )

    def _admit(self, msg: dict[str, t.Any], index: int) -> bool:
        """Whether to keep an output message, shortening it in place if needed."""
        content = msg["content"]
        size = _size(content)
        room = self._room(index)
        msg_type = msg["msg_type"]
        is_stderr = msg_type == "stream" and content.get("name") == "stderr"
        if size <= room:
            keep = True
        elif msg_type in ("error", "execute_result") or (is_stderr and index not in self._stderr_kept):
            _shorten_content(content, max(room, _STUB))  # decides the grade: keep it, short
            self._dropped[index] = self._dropped.get(index, 0) + max(0, size - _size(content))
            keep = True
        elif msg_type == "stream" and room > 0:
            content["text"] = content["text"][:room]
            self._dropped[index] = self._dropped.get(index, 0) + size - room
            keep = True
        else:
            self._dropped[index] = self._dropped.get(index, 0) + size
            keep = False
        if keep:
            kept = _size(content)
            self._kept[index] = self._kept.get(index, 0) + kept
            self._total += kept
            if is_stderr:
                self._stderr_kept.add(index)
        return keep

    def on_cell_executed(self, **kwargs: t.Any) -> None:
        reply = kwargs.get("execute_reply") or {}
        content = reply.get("content") or {}
        if content.get("status") == "error":
            _shorten_content(content)  # nbgrader copies the reply's error into the cell
        super().on_cell_executed(**kwargs)
        index = kwargs.get("cell_index")
        dropped = self._dropped.get(index, 0) if index is not None else 0
        if dropped:
            cell = kwargs["cell"]
            note = (
                f"{TRUNCATION_MARK}: {dropped} characters of output were dropped "
                f"(limits: {self.max_output_chars} per cell, {self.max_total_output_chars} per notebook)"
            )
            cell.outputs.append(
                NotebookNode(
                    output_type="display_data",
                    data={"text/plain": note},
                    metadata={"dlbook_grade": {"dropped_chars": dropped}},
                )
            )
