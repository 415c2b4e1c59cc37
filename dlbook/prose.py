"""Find run-dependent numbers typed into a lesson's prose.

Every number the book states must come from a run: glued from the notebook's variables
(myst-nb's ``glue:text`` role), rendered from a committed results file, or an exact constant on the
allow-list (a paper's figure with its citation, a count a cell asserts). This module is the
heuristic the hygiene test (``tests/test_prose_numbers.py``) applies to each lesson's markdown.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

# What is not prose: fenced code, display and inline math, inline code and MyST roles
# (``{glue:text}`acc```, ``{eq}`label```, ``{cite}`key```), link targets, HTML comments,
# equation labels and MyST directive options.
_STRIP = [
    re.compile(r"```.*?```", re.S),
    re.compile(r"\$\$.*?\$\$(\s*\([\w-]+\))?", re.S),
    re.compile(r"(?<!\\)\$[^$\n]+?(?<!\\)\$"),
    re.compile(r"\{[\w:-]+\}`[^`]*`"),
    re.compile(r"`[^`\n]*`"),
    re.compile(r"\]\([^)]*\)"),
    re.compile(r"<!--.*?-->", re.S),
    re.compile(r"^\s*:[\w-]+:.*$", re.M),
    re.compile(r"^\(\w[\w-]*\)=\s*$", re.M),
    # references and versions are not measurements: "lesson 1.5", "lessons 5.1 and 5.3",
    # "section 3.3.1", "PyTorch 2.2", "torch 2.14.1", "Python 3.11"
    re.compile(r"\b(?:[Ll]essons?|[Ss]ections?|[Cc]hapters?|§|[Ee]q(?:uation)?s?\.?)\s*\d+(?:\.\d+)*"
               r"(?:(?:,\s*|\s+and\s+|\s*[-–]\s*)\d+(?:\.\d+)*)*"),
    re.compile(r"\b(?:PyTorch|torch|torchvision|Python|CUDA|NumPy|numpy|version|v)\s*\d+(?:\.\d+)+"),
    # a table row's leading lesson number ("| 1.5 | [A deep MLP](...)"), which a test checks
    re.compile(r"^\|\s*\d+(?:\.\d+)+\s*\|", re.M),
]

# Numbers that read as measurements: decimals (0.848, 1.65), percentages (96%), durations
# (30 s, 2 min), ratios and speed-ups (1.5x, 3×), and scientific notation (3e-3).
NUMBER = re.compile(
    r"(?<![\w.])(?:"
    r"\d[\d,]*\.\d+(?:\s*(?:%|×|x\b|s\b|ms\b|seconds?\b|minutes?\b|min\b))?"
    r"|\d[\d,]*(?:\s*(?:%|s\b|ms\b|seconds?\b|minutes?\b|min\b|(?:×|x\b)(?!\s*\d)))"
    r"|\d+(?:\.\d+)?e[-+]?\d+"
    r")(?![\w.]*\d)"
)


@dataclass(frozen=True)
class ProseNumber:
    page: str
    cell: int
    text: str
    context: str


def prose_only(markdown: str) -> str:
    """The markdown with code, math, roles, links and comments blanked out."""
    for pattern in _STRIP:
        markdown = pattern.sub(" ", markdown)
    return markdown


def markdown_cells(path: Path) -> list[str]:
    """A notebook's markdown cells, or a MyST page as one cell."""
    if path.suffix == ".ipynb":
        nb = json.loads(path.read_text(encoding="utf-8"))
        return ["".join(c["source"]) if c["cell_type"] == "markdown" else "" for c in nb["cells"]]
    return [path.read_text(encoding="utf-8")]


def find_prose_numbers(path: Path, page: str | None = None) -> list[ProseNumber]:
    """Every number in ``path``'s prose that looks like a measurement."""
    found = []
    for index, source in enumerate(markdown_cells(path)):
        text = prose_only(source)
        for match in NUMBER.finditer(text):
            start, end = max(0, match.start() - 40), min(len(text), match.end() + 40)
            context = " ".join(text[start:end].split())
            found.append(ProseNumber(page or str(path), index, match.group(0), context))
    return found
