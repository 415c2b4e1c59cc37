"""Give every lesson the same first cell, which makes the notebook run on Colab.

    python tools/colab_cell.py [PATHS]            insert or refresh the cell (default: chapters/**/*.ipynb)
    python tools/colab_cell.py --check [PATHS]    exit 1 and list the lessons whose first cell differs

On Colab (or any machine without the course library) the cell installs ``dlbook`` from the
repository; locally it finds the editable install and does nothing. ``dlbook.device()`` then
picks Colab's GPU by itself; the cell only says how to get one when the runtime has none.
The hygiene test (tests/test_notebook_hygiene.py) runs the check.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from project import install_spec  # noqa: E402  (the repository and release: tools/project.py)

TAG = "colab-setup"

SOURCE = f'''# Runs anywhere: on Colab (or any machine without the course library) install dlbook first.
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("dlbook") is None:
    # the library of the release this notebook belongs to (a moving branch could break it)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "{install_spec()}"], check=True)
if "google.colab" in sys.modules:
    import torch

    if not torch.cuda.is_available():
        print("No GPU in this Colab runtime: Runtime > Change runtime type > GPU runs the full profile.")'''


def lessons(paths: list[str] | None = None) -> list[Path]:
    roots = [Path(p).resolve() for p in paths] if paths else [ROOT / "chapters"]
    return sorted(f for r in roots for f in ([r] if r.suffix == ".ipynb" else r.rglob("*.ipynb")))


def has_cell(nb: nbformat.NotebookNode) -> bool:
    code = [c for c in nb.cells if c.cell_type == "code"]
    return bool(code) and code[0].source == SOURCE and TAG in code[0].metadata.get("tags", [])


def apply(path: Path) -> bool:
    """Insert the cell (or refresh an outdated one) right after the title; True when changed."""
    nb = nbformat.read(path, as_version=4)
    if has_cell(nb):
        return False
    nb.cells = [c for c in nb.cells if TAG not in c.metadata.get("tags", [])]
    cell = nbformat.v4.new_code_cell(SOURCE, metadata={"tags": [TAG, "hide-input"]})
    first_code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    nb.cells.insert(first_code, cell)
    nbformat.write(nb, path)
    return True


def main(argv: list[str]) -> int:
    paths = [a for a in argv if not a.startswith("--")]
    if "--check" in argv:
        stale = [str(p.relative_to(ROOT)) for p in lessons(paths) if not has_cell(nbformat.read(p, as_version=4))]
        for path in stale:
            print(f"{path}: first code cell is not the Colab set-up cell (run python tools/colab_cell.py)")
        return 1 if stale else 0
    changed = [p for p in lessons(paths) if apply(p)]
    print(f"updated {len(changed)} of {len(lessons(paths))} lessons")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
