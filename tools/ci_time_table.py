"""Where the CI time goes: a table from the JUnit XML files that ``tools/test`` writes.

    python tools/ci_time_table.py _build/ci-times --install 95 --step1 540 --step2 160

Each test's time (setup + call + teardown, as pytest's JUnit report counts it) is summed per
group: every lesson notebook on its own (a lesson's cells, kernel start included), the solution
notebooks, the grading and lab tests (their batches are module fixtures, counted on the first
test), the site build and browser check, and the remaining unit tests. Two pytest workers run
step 1 (the lessons and the grading), so its wall time is about half the sum of its rows; step 2
runs the site build and, beside it, the unit tests. The wall times of the install and of
the two steps come from ``tools/test`` itself. Output: a Markdown table on stdout and in
``<folder>/table.md``.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

GRADING_MODULES = ("test_grading", "_lab", "test_lab_sync", "lab_checks")
SITE_MODULES = ("test_book_build", "test_site_browser")


def group_of(classname: str) -> str:
    """The row a test belongs to, from its JUnit ``classname`` (dotted path, notebooks keep .ipynb)."""
    if classname.endswith(".ipynb"):
        parts = classname[: -len(".ipynb")].split(".")
        if parts[0] == "chapters":
            return "lesson " + "/".join(parts[1:])
        return "solution notebooks"
    module = classname.split(".")[1] if classname.startswith("tests.") else classname
    module = module.split(".")[0]
    if module.startswith(SITE_MODULES):
        return "site build and browser check"
    if module.startswith(GRADING_MODULES[0]) or any(m in module for m in GRADING_MODULES[1:]):
        return "grading and lab tests"
    return "unit tests and derivation checks"


def seconds_by_group(folder: Path) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    files = sorted(folder.glob("*.xml"))
    if not files:
        raise FileNotFoundError(f"no JUnit XML files in {folder} (tools/test writes them there)")
    for path in files:
        for case in ET.parse(path).getroot().iter("testcase"):
            totals[group_of(case.get("classname", ""))] += float(case.get("time", 0.0))
    return dict(totals)


def table(totals: dict[str, float], walls: dict[str, float | None]) -> str:
    lines = ["| what | seconds |", "|---|---:|"]
    for name, value in walls.items():
        if value is not None:
            lines.append(f"| **{name}** (wall) | **{value:.0f}** |")
    lessons = {k: v for k, v in totals.items() if k.startswith("lesson ")}
    others = {k: v for k, v in totals.items() if not k.startswith("lesson ")}
    lines.append(f"| all lessons (sum over workers, {len(lessons)} notebooks) | {sum(lessons.values()):.0f} |")
    for name, value in sorted(others.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} (sum over workers) | {value:.0f} |")
    lines += ["", "| lesson (nbval, kernel start included) | seconds |", "|---|---:|"]
    lines += [f"| {name[len('lesson '):]} | {value:.1f} |" for name, value in sorted(lessons.items(), key=lambda kv: -kv[1])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path)
    for step in ("install", "step1", "step2", "total"):
        parser.add_argument(f"--{step}", type=float, default=None, help=f"wall seconds of {step}")
    args = parser.parse_args(argv)
    try:
        totals = seconds_by_group(args.folder)
    except (FileNotFoundError, ET.ParseError) as error:
        print(f"ci_time_table: {error}", file=sys.stderr)
        return 1
    walls = {"install (uv, or pip without it; when requirements changed)": args.install, "step 1: notebooks, labs, grading": args.step1,
             "step 2: site build and browser check, unit tests beside it": args.step2, "total": args.total}
    text = table(totals, walls)
    (args.folder / "table.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
