"""Execute a lesson and show its prose with every glued number filled in, as the book will.

    python tools/check_glue.py chapters/ann/deep-mlp-mnist.ipynb [--profile quick]

Fails (exit 1) when a ``{glue:...}`name``` reference has no value glued by the notebook or its
format spec does not apply; prints each markdown line that uses glue, rendered. The book's
``-W`` build makes the same references an error; this is the fast check while writing a lesson.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import nbformat
from myst_nb.core.variables import format_plain_text
from nbclient import NotebookClient

GLUE_PREFIX = "application/papermill.record/"
REF = re.compile(r"\{glue(?::\w+)?\}`([^`]+)`")


def glued_values(nb: nbformat.NotebookNode) -> dict[str, str]:
    values = {}
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            name = out.get("metadata", {}).get("scrapbook", {}).get("name")
            if name:
                data = out.get("data", {})
                values[name] = data.get(GLUE_PREFIX + "text/plain", data.get("text/plain", ""))
    return values


def render(text: str, values: dict[str, str], problems: list[str]) -> str:
    def one(match: re.Match) -> str:
        # myst-nb's own rule: the last colon separates the key from a format spec
        parts = match.group(1).rsplit(":", 1)
        key, spec = (parts[0], parts[1]) if len(parts) == 2 else (parts[0], "")
        if key not in values:
            problems.append(f"no value glued under {key!r}")
            return f"<MISSING {key}>"
        try:
            return format_plain_text(values[key], spec)
        except (ValueError, TypeError) as exc:
            problems.append(f"{key!r} with format {spec!r}: {exc}")
            return f"<BAD {key}>"

    return REF.sub(one, text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--profile", default=os.environ.get("DLBOOK_PROFILE", "quick"))
    parser.add_argument("--timeout", type=int, default=1800)
    args = parser.parse_args()
    os.environ["DLBOOK_PROFILE"] = args.profile
    nb = nbformat.read(args.notebook, as_version=4)
    NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(args.notebook.resolve().parent)}}).execute()
    values = glued_values(nb)
    problems: list[str] = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown" or "{glue" not in cell.source:
            continue
        for line in cell.source.splitlines():
            if "{glue" in line:
                print(f"[{index}] {render(line, values, problems)}")
    for problem in problems:
        print("ERROR:", problem, file=sys.stderr)
    print(f"{len(values)} values glued, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
