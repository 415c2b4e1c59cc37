"""Execute every lesson notebook once and record how long each took, in which profile, on which
device: the numbers the closing notes and the book quote.

    python benchmarks/time_notebooks.py [chapters/ann ...] --out benchmarks/results/notebook-times-<profile>-<device>.json

Run it with DLBOOK_PROFILE=full on a GPU for the full-profile table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# A lesson's outcome check prints its measured value beside its target ("... 0.9915 (target 0.98)").
OUTCOME = re.compile(r"target\s*(?:of|at least|at most|<=|>=|<|>|≤|≥)?\s*[-+]?[\d.]")


def outcome_lines(nb: nbformat.NotebookNode) -> list[str]:
    """The printed measured-vs-target lines of an executed notebook (the last four)."""
    lines = [line.strip() for cell in nb.cells for out in cell.get("outputs", [])
             if out.get("output_type") == "stream" for line in out.get("text", "").splitlines()
             if OUTCOME.search(line)]
    return lines[-4:]


def time_notebook(path: Path, timeout: int, keep: Path | None = None) -> dict:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    error = None
    try:
        client.execute()
    except Exception as exc:  # record the failure, keep timing the others
        error = f"{type(exc).__name__}: {str(exc).splitlines()[-1] if str(exc) else ''}"
    seconds = time.perf_counter() - start
    if keep is not None:  # the executed copy, to read the numbers a closing note quotes
        keep.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, keep / path.name)
    first_output = ""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and "profile on" in out.get("text", ""):
                first_output = next(line for line in out["text"].splitlines() if "profile on" in line)
                break
        if first_output:
            break
    return {"notebook": str(path.relative_to(ROOT)), "seconds": round(seconds, 1), "setup": first_output, "error": error,
            "outcome_lines": outcome_lines(nb)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", default=["chapters"])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--keep-executed", type=Path, help="folder for the executed notebooks (outside the repo)")
    args = parser.parse_args()

    import dlbook  # after sys.path is set: the profile and device the kernels will see
    from dlbook.runtime import device_name

    notebooks = sorted(p for arg in args.paths for p in ([Path(arg)] if arg.endswith(".ipynb") else (ROOT / arg).rglob("*.ipynb"))
                       if ".ipynb_checkpoints" not in p.parts)
    results = []
    for nb in notebooks:
        row = time_notebook(nb.resolve(), args.timeout, args.keep_executed)
        results.append(row)
        print(f"{row['seconds']:7.1f} s  {row['notebook']}  {row['error'] or ''}", flush=True)
    import torch

    dev = dlbook.device()
    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "profile": dlbook.profile(),
        "device": device_name(dev),
        "torch": torch.__version__,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        # Timings on a shared machine mean little without the load they were taken under.
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "notebooks": results,
        "total_seconds": round(sum(r["seconds"] for r in results), 1),
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 1 if any(r["error"] for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
