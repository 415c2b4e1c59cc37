"""Check a submitted notebook against its lab before and after autograding.

- :func:`repair`: compares the submission with the released lab, cell by cell (nbgrader's
  ``grade_id``). Locked cells (the setup cell, every test cell) that were deleted, edited, turned
  into another cell type, unlocked or given other points are put back as released; nbgrader then
  adds the hidden tests to them, as for any submission. nbgrader metadata that does not belong to
  the lab (an invented grade cell, a copy of a test cell) is removed, so it cannot break or bias
  autograding. Every change becomes a :class:`Note` for the gradebook row.
- :func:`scan_code`: reads the code the student wrote (without running it) and reports what has
  no place in a lab answer but could tamper with grading: rebinding a name that the locked cells
  define and the tests use (``rel_error = ...``), replacing attributes of modules
  (``torch.allclose = ...``), dynamic code (``exec``, ``globals()``), IPython internals and shell
  commands, file, process and introspection access, text that names the grading files.
- :func:`scan_outputs`: reads the autograded notebook: outputs the executor truncated, and hidden
  test code that showed up in the output of a cell the student wrote (a leak that must not go
  back to students as feedback).

Static checks find the direct forms only; they are a tripwire for a human to look, not a proof.
"""

from __future__ import annotations

import ast
import copy
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import nbformat
from nbformat import NotebookNode

from .kernel_guard import TRUNCATION_MARK

_LIMIT_OUTPUT_MARK = "... Output truncated ..."  # nbgrader's LimitOutput, past 1000 lines a cell
_LIMIT_OUTPUT_LINES = 1000
_DROPPED = re.compile(re.escape(TRUNCATION_MARK) + r": (\d+) characters")
_HIDDEN = re.compile(r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS", re.S)
_MAX_FINDINGS = 8


class Note(NamedTuple):
    """One thing to report in a gradebook row; ``review``: a person should look at it."""

    text: str
    review: bool = False


@dataclass(frozen=True)
class LabReference:
    """What a submitted notebook is compared with: the released and source versions of one notebook."""

    notebook: str
    release: NotebookNode
    source: NotebookNode
    points: dict[str, float] = field(default_factory=dict)  # grade cells in notebook order
    protected: dict[str, str] = field(default_factory=dict)  # name -> locked cell that binds it
    imports: dict[str, str] = field(default_factory=dict)  # name -> module, from the locked cells
    hidden_lines: tuple[str, ...] = ()

    @property
    def release_cells(self) -> dict[str, NotebookNode]:
        """Cells of the release that have a ``grade_id``, by grade id."""
        return {gid: c for c in self.release.cells if (gid := _grade_id(c))}

    @property
    def source_cells(self) -> dict[str, NotebookNode]:
        """Cells of the source (solutions, hidden tests) that have a ``grade_id``, by grade id."""
        return {gid: c for c in self.source.cells if (gid := _grade_id(c))}

    @property
    def locked(self) -> set[str]:
        """Grade ids of the locked cells of the release (setup and test cells)."""
        return {gid for gid, c in self.release_cells.items() if _meta(c).get("locked")}

    def has_cells_of_the_lab(self, nb: NotebookNode) -> bool:
        """Whether ``nb`` has at least one cell of this lab (by grade id)."""
        ids = set(self.release_cells)
        return any(_grade_id(c) in ids for c in nb.cells)


def _meta(cell: NotebookNode) -> dict:
    meta = cell.get("metadata", {}).get("nbgrader")
    return meta if isinstance(meta, dict) else {}


def _grade_id(cell: NotebookNode) -> str | None:
    gid = _meta(cell).get("grade_id")
    return gid if isinstance(gid, str) and gid else None


def _kind(cell: NotebookNode) -> str:
    return "test cell" if _meta(cell).get("grade") else "locked cell"


_META_KEYS = ("grade", "grade_id", "locked", "points", "solution", "task")


def _normalized(source: str) -> str:
    return "\n".join(line.rstrip() for line in source.replace("\r\n", "\n").split("\n")).strip()


def _python(source: str) -> ast.Module | None:
    """AST of a cell, IPython syntax (magics, ``!shell``) turned into Python first."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        source = TransformerManager().transform_cell(source)
    except Exception:  # IPython missing or a transform error: parse the raw text
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. SyntaxWarning for invalid escapes
            return ast.parse(source)
    except (SyntaxError, ValueError):
        return None


def _top_level_bindings(tree: ast.Module) -> list[tuple[str, ast.AST]]:
    """Names bound at module level (not inside functions or classes), with the binding node."""
    found: list[tuple[str, ast.AST]] = []

    def targets(node: ast.AST) -> None:
        if isinstance(node, ast.Name):
            found.append((node.id, node))
        elif isinstance(node, (ast.Tuple, ast.List)):
            for elt in node.elts:
                targets(elt)
        elif isinstance(node, ast.Starred):
            targets(node.value)

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.append((node.name, node))
            return
        if isinstance(node, ast.Lambda):
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                name = alias.asname or alias.name.split(".")[0]
                if name != "*":
                    found.append((name, node))
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                targets(target)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign, ast.For, ast.AsyncFor)):
            targets(node.target)
        elif isinstance(node, ast.NamedExpr):
            targets(node.target)
        elif isinstance(node, ast.Delete):
            for target in node.targets:
                targets(target)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                if item.optional_vars is not None:
                    targets(item.optional_vars)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            found.append((node.name, node))
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, (ast.comprehension,)):
                visit(child)

    for stmt in tree.body:
        visit(stmt)
    return found


def _imports(tree: ast.Module) -> dict[str, str]:
    """``name -> module`` for the imports of a cell (``import torch.nn as nn`` -> ``nn: torch.nn``)."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    root = alias.name.split(".")[0]
                    names[root] = root
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                if alias.name != "*":
                    names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def load_reference(source_path: Path, release_path: Path) -> LabReference:
    """Reference for one notebook: its source (solutions, hidden tests) and released version."""
    source = nbformat.read(source_path, as_version=4)
    release = nbformat.read(release_path, as_version=4)
    points: dict[str, float] = {}
    protected: dict[str, str] = {}
    imports: dict[str, str] = {}
    hidden: list[str] = []
    for cell in source.cells:
        meta = _meta(cell)
        gid = _grade_id(cell)
        if meta.get("grade") and gid:
            points[gid] = float(meta.get("points", 0) or 0)
        if cell.cell_type != "code" or not meta.get("locked") or not gid:
            continue
        for block in _HIDDEN.findall(cell.source):
            hidden.extend(line.strip() for line in block.splitlines() if len(line.strip()) >= 20)
        tree = _python(cell.source)
        if tree is None:
            continue
        imports.update(_imports(tree))
        for name, node in _top_level_bindings(tree):
            # The setup cell's every global is shared state; a test cell's variables are
            # reassigned before use, but its functions, classes and imports are reused.
            if not meta.get("grade") or isinstance(
                node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)
            ):
                protected.setdefault(name, gid)
    release_text = "\n".join(c.source for c in release.cells)
    # A hidden test may restate the answer (a reference implementation); lines that the solution
    # cells also contain are what a correct student writes, not a secret, so they do not count.
    solution_text = "\n".join(c.source for c in source.cells if _meta(c).get("solution"))
    hidden_lines = tuple(dict.fromkeys(
        line for line in hidden if line not in release_text and line not in solution_text
    ))
    return LabReference(Path(source_path).name, release, source, points, protected, imports, hidden_lines)


# ----------------------------------------------------------------------------- repair


def _differences(cell: NotebookNode, released: NotebookNode) -> list[str]:
    """How a submitted locked cell differs from its released version (empty: unchanged)."""
    changes = []
    if cell.cell_type != released.cell_type:
        changes.append(f"turned into a {cell.cell_type} cell")
    elif _normalized(cell.get("source", "")) != _normalized(released.source):
        changes.append("edited")
    mine, theirs = _meta(cell), _meta(released)
    if bool(mine.get("locked")) != bool(theirs.get("locked")):
        changes.append("unlocked")
    if bool(mine.get("grade")) != bool(theirs.get("grade")) or bool(mine.get("solution")) != bool(
        theirs.get("solution")
    ):
        changes.append("its nbgrader type changed")
    elif theirs.get("grade"):
        try:
            same = float(mine.get("points")) == float(theirs.get("points"))
        except (TypeError, ValueError):
            same = False
        if not same:
            changes.append(f"points changed to {mine.get('points')!r}")
    return changes


def _fresh_copy(released: NotebookNode, taken: set[str], with_id: bool) -> NotebookNode:
    cell = copy.deepcopy(released)
    if not with_id:
        cell.pop("id", None)
    elif cell.get("id") in taken or not cell.get("id"):
        base = (_grade_id(released) or "cell")[:50]
        n = 1
        while f"{base}-restored{n}" in taken:
            n += 1
        cell["id"] = f"{base}-restored{n}"
    if cell.cell_type == "code":
        cell["outputs"] = []
        cell["execution_count"] = None
    return cell


def repair(nb: NotebookNode, ref: LabReference) -> tuple[NotebookNode, list[Note]]:
    """Copy of ``nb`` with every locked cell as released and only the lab's nbgrader metadata."""
    nb = copy.deepcopy(nb)
    notes: list[Note] = []
    released = ref.release_cells
    locked = ref.locked
    with_ids = nb.get("nbformat", 4) == 4 and nb.get("nbformat_minor", 0) >= 5
    taken = {c.get("id") for c in nb.cells if c.get("id")}
    seen: set[str] = set()
    cells: list[NotebookNode] = []
    for index, cell in enumerate(nb.cells):
        if "nbgrader" not in cell.get("metadata", {}):
            cells.append(cell)
            continue
        gid = _grade_id(cell)
        if gid not in released or gid in seen:
            del cell.metadata["nbgrader"]
            what = f"a copy of {gid}" if gid in seen else f"cell {index + 1} ({gid or 'no grade id'})"
            notes.append(Note(f"nbgrader metadata of {what} removed: not a cell of the lab"))
            cells.append(cell)
            continue
        seen.add(gid)
        original = released[gid]
        if gid in locked:
            changes = _differences(cell, original)
            if changes and not _differences(cell, ref.source_cells.get(gid, original)):
                changes = []  # the instructor's version (hidden tests and all): nothing to report
            if changes or cell.get("source") != original.source:
                fixed = _fresh_copy(original, taken - {cell.get("id")}, with_ids)
                if with_ids and cell.get("id"):
                    fixed["id"] = cell["id"]
                cell = fixed  # the released version, never hidden tests, goes into the sandbox
            if changes:
                notes.append(
                    Note(f"{_kind(original)} {gid} {', '.join(changes)} (restored from the release)")
                )
        elif any(_meta(cell).get(k) != _meta(original).get(k) for k in _META_KEYS):
            cell.metadata["nbgrader"] = copy.deepcopy(_meta(original))
            notes.append(Note(f"nbgrader metadata of {gid} restored from the release"))
        cells.append(cell)

    def position(target: NotebookNode) -> int | None:
        gid, cid = _grade_id(target), target.get("id")
        for i, cell in enumerate(cells):
            if (gid and _grade_id(cell) == gid) or (not gid and cid and cell.get("id") == cid):
                return i
        return None

    for r, original in enumerate(ref.release.cells):
        gid = _grade_id(original)
        if not gid or gid in seen:
            continue
        if gid not in locked:
            notes.append(Note(f"answer cell {gid} is missing"))
            continue
        anchor = next(
            (p for p in (position(c) for c in reversed(ref.release.cells[:r])) if p is not None), -1
        )
        fixed = _fresh_copy(original, taken, with_ids)
        taken.add(fixed.get("id"))
        cells.insert(anchor + 1, fixed)
        seen.add(gid)
        notes.append(Note(f"{_kind(original)} {gid} deleted (restored from the release)"))
    nb.cells = cells
    return nb, notes


# ----------------------------------------------------------------------------- static scan

_RISKY_MODULES = {
    "builtins", "ctypes", "gc", "inspect", "importlib", "subprocess", "multiprocessing",
    "threading", "_thread", "signal", "atexit", "sqlite3", "socket", "urllib", "requests",
    "http", "shutil", "pty", "glob", "pathlib", "pickle", "marshal", "unittest", "nbformat",
    "nbgrader", "nbclient", "nbconvert", "jupyter_client", "ipykernel", "IPython", "dlbook",
    "psutil", "sys", "os", "io", "tempfile", "zmq",
}  # fmt: skip
_RISKY_CALLS = {
    "exec", "eval", "compile", "__import__", "globals", "vars", "open", "breakpoint", "exit",
    "quit", "setattr", "delattr", "get_ipython",
}  # fmt: skip
_ALLOWED_MAGICS = {"matplotlib", "timeit", "time"}
_GRADING_WORDS = re.compile(
    r"\.ipynb|gradebook|nbgrader|solutions|autograd(?:ed|e)\b|submitted|source_cell|hidden test"
    r"|BEGIN HIDDEN|\.db\b|/proc/",
    re.I,
)


def _is_get_ipython(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "get_ipython"


def _root_name(node: ast.AST) -> str | None:
    """``torch`` for ``torch.nn.functional.relu`` or ``torch.x[0].y``; ``None`` for other roots."""
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _dotted(node: ast.AST) -> str:
    try:
        return ast.unparse(node)[:60]
    except Exception:
        return "?"


def _scan_cell(tree: ast.Module, ref: LabReference, own_imports: dict[str, str]) -> list[str]:
    """Findings for one cell of student code."""
    found: list[str] = []
    ipython_calls: set[int] = set()  # get_ipython() calls already judged with their method
    shared = set(ref.protected) | set(ref.imports) | set(own_imports) | {"builtins", "__builtins__"}
    for name, node in _top_level_bindings(tree):
        if name not in ref.protected:
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            module = _imports(ast.Module(body=[node], type_ignores=[])).get(name)
            if module is not None and module == ref.imports.get(name):
                continue  # importing the same module again under the same name is harmless
        found.append(f"rebinds {name} (defined by locked cell {ref.protected[name]})")
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            for name in node.names:
                if name in ref.protected:
                    found.append(f"declares global {name} (defined by locked cell {ref.protected[name]})")
        targets: list[ast.AST] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Delete):
            targets = list(node.targets)
        while targets:
            target = targets.pop()
            if isinstance(target, (ast.Tuple, ast.List)):
                targets.extend(target.elts)
            elif isinstance(target, ast.Starred):
                targets.append(target.value)
            elif isinstance(target, (ast.Attribute, ast.Subscript)) and _root_name(target) in shared:
                found.append(f"replaces {_dotted(target)}")
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else None
            if name in ("setattr", "delattr") and node.args and _root_name(node.args[0]) in shared:
                found.append(f"calls {name} on {_dotted(node.args[0])}")
            elif name in _RISKY_CALLS and name not in ("setattr", "delattr", "get_ipython"):
                found.append(f"calls {name}()")
            if isinstance(func, ast.Attribute) and _is_get_ipython(func.value):
                magic = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else None
                if not (func.attr in ("run_line_magic", "run_cell_magic") and magic in _ALLOWED_MAGICS):
                    what = (
                        f"%{magic}"
                        if func.attr.startswith("run_") and magic
                        else f"get_ipython().{func.attr}"
                    )
                    found.append(f"uses IPython internals or the shell ({what})")
                ipython_calls.add(id(func.value))
            elif _is_get_ipython(node) and id(node) not in ipython_calls:
                found.append("uses IPython internals (get_ipython())")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                if module.split(".")[0] in _RISKY_MODULES and module not in ("os.path",):
                    found.append(f"imports {module}")
        if isinstance(node, ast.Name) and node.id in ("__builtins__", "__loader__", "__spec__"):
            found.append(f"uses {node.id}")
        if isinstance(node, ast.Attribute) and node.attr.startswith("__") and node.attr in (
            "__code__", "__globals__", "__dict__", "__builtins__", "__class__", "__subclasses__",
        ):  # fmt: skip
            found.append(f"uses {_dotted(node)}")
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = _GRADING_WORDS.search(node.value)
            if match:
                found.append(f"mentions {match.group(0)!r}")
    return found


def scan_code(nb: NotebookNode, ref: LabReference) -> list[Note]:
    """Suspicious constructs in the code cells the student wrote (locked cells are skipped)."""
    locked = ref.locked
    seen: set[str] = set()
    cells: list[tuple[str, ast.Module]] = []
    own_imports: dict[str, str] = {}
    for index, cell in enumerate(nb.cells):
        gid = _grade_id(cell)
        if gid in locked and gid not in seen:
            seen.add(gid)
            continue  # graded as released, whatever the student wrote there
        if cell.get("cell_type") != "code":
            continue
        tree = _python(cell.get("source", ""))
        if tree is None:
            continue
        label = gid if gid and gid not in locked else f"cell {index + 1}"
        own_imports.update(_imports(tree))
        cells.append((label, tree))
    findings: list[str] = []
    for label, tree in cells:
        for finding in dict.fromkeys(_scan_cell(tree, ref, own_imports)):
            findings.append(f"{label} {finding}")
    if not findings:
        return []
    shown = findings[:_MAX_FINDINGS]
    more = f" and {len(findings) - _MAX_FINDINGS} more" if len(findings) > _MAX_FINDINGS else ""
    return [Note("suspicious code: " + ", ".join(shown) + more, review=True)]


# ----------------------------------------------------------------------------- after grading


def _output_text(output: NotebookNode) -> str:
    parts: list[str] = []
    if isinstance(output.get("text"), str):
        parts.append(output["text"])
    for key in ("ename", "evalue"):
        if isinstance(output.get(key), str):
            parts.append(output[key])
    parts.extend(str(line) for line in output.get("traceback") or [])
    for value in (output.get("data") or {}).values():
        parts.append(value if isinstance(value, str) else str(value))
    return "\n".join(parts)


def scan_outputs(nb: NotebookNode, ref: LabReference) -> list[Note]:
    """Truncated outputs, and hidden test code printed by cells that are not test cells."""
    notes: list[Note] = []
    truncated: list[str] = []
    leaks: list[str] = []
    for index, cell in enumerate(nb.cells):
        if cell.get("cell_type") != "code":
            continue
        label = _grade_id(cell) or f"cell {index + 1}"
        text = "\n".join(_output_text(o) for o in cell.get("outputs", []))
        if TRUNCATION_MARK in text:
            dropped = sum(int(n) for n in _DROPPED.findall(text))
            truncated.append(f"{label} ({dropped} characters dropped)" if dropped else label)
        elif _LIMIT_OUTPUT_MARK in text:
            truncated.append(f"{label} (over {_LIMIT_OUTPUT_LINES} lines)")
        if _meta(cell).get("grade"):
            continue  # a failing hidden test shows its own line in its traceback: that is normal
        if any(line in text for line in ref.hidden_lines):
            leaks.append(label)
    if truncated:
        notes.append(Note("output truncated: " + ", ".join(truncated)))
    if leaks:
        notes.append(
            Note(
                "hidden test code appears in the output of "
                + ", ".join(leaks)
                + ": do not return this autograded notebook as feedback",
                review=True,
            )
        )
    return notes
