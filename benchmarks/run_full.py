"""Run lessons in the ``full`` profile and record what they measured, per device kind.

    python benchmarks/run_full.py [chapters/ann ...] --device cpu|cuda [--jobs N]
    python benchmarks/run_full.py chapters/cnn/training-cnns.ipynb --device cpu \
        --not-run "full run needs ~40 min on this CPU; waits for a GPU"

Each lesson's row in ``benchmarks/results/full-<kind>.json`` (``cpu``, or the GPU's short name,
e.g. ``h100``) gets the date, device name, torch version, seconds, the measured-vs-target lines
its outcome check printed, and a failure's message. Rows of lessons not named are kept, so the
file can be filled a chapter at a time. ``--not-run REASON`` records the named lessons as not run
on this device, with the reason and their measured quick-profile seconds. On a GPU, ``--jobs``
runs several notebooks at once (one kernel each); on a CPU run them one after another.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def device_kind(name: str) -> str:
    """``cpu`` for a CPU; for a GPU its model, e.g. ``NVIDIA H100 80GB HBM3`` -> ``h100``."""
    if name.startswith("cpu"):
        return "cpu"
    match = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Z]?)\b", name)
    return match.group(1).lower() if match else re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def lessons_in(paths: list[str]) -> list[Path]:
    found = []
    for arg in paths:
        path = (ROOT / arg) if not Path(arg).is_absolute() else Path(arg)
        if path.suffix == ".ipynb":
            if not path.is_file():
                raise SystemExit(f"no such notebook: {arg}")
            found.append(path.resolve())
        elif path.is_dir():
            found += sorted(p.resolve() for p in path.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
        else:
            raise SystemExit(f"not a notebook or folder: {arg}")
    return found


def quick_seconds(rel: str) -> float | None:
    """The lesson's measured quick-profile time on this course's CPU, if recorded."""
    path = RESULTS / "notebook-times-quick-cpu.json"
    if not path.is_file():
        return None
    rows = json.loads(path.read_text())["notebooks"]
    return next((r["seconds"] for r in rows if r["notebook"] == rel), None)


@contextlib.contextmanager
def locked_record(out: Path, kind: str):
    """The results file's record, read and written back under a lock: several runs (one per
    chapter, or notebooks finishing together) may update the same file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(out.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        record = json.loads(out.read_text()) if out.is_file() else {"device_kind": kind, "lessons": {}}
        yield record
        record["lessons"] = dict(sorted(record["lessons"].items()))
        tmp = out.with_name(out.name + ".part")
        tmp.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", default=["chapters"])
    parser.add_argument("--device", choices=["cpu", "cuda"], required=True)
    parser.add_argument("--jobs", type=int, default=1, help="notebooks at once (GPU); 1 on a CPU")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    parser.add_argument("--not-run", metavar="REASON", help="record the lessons as not run here, with REASON")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    # The kernels inherit these: every lesson sees the full profile on the chosen device.
    os.environ["DLBOOK_PROFILE"] = "full"
    os.environ["DLBOOK_DEVICE"] = args.device
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA device here; use --device cpu")
    from dlbook.runtime import device_name

    name = device_name(args.device)
    kind = device_kind(name)
    out = args.results_dir / f"full-{kind}.json"

    notebooks = lessons_in(args.paths)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    base = {"date": now, "device": name, "torch": torch.__version__,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    failed = False
    if args.not_run:
        with locked_record(out, kind) as record:
            for nb in notebooks:
                rel = str(nb.relative_to(ROOT))
                record["lessons"][rel] = {**base, "status": "not run", "reason": args.not_run,
                                          "quick_seconds_cpu": quick_seconds(rel)}
                print(f"recorded as not run: {rel}")
    else:
        from time_notebooks import time_notebook

        def run(nb: Path) -> tuple[str, dict]:
            row = time_notebook(nb, args.timeout)
            status = "error" if row["error"] else "ok"
            # A shared machine's timing means little without the load it was taken under.
            return row["notebook"], {**base, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                     "status": status, "seconds": row["seconds"], "setup": row["setup"],
                                     "outcome_lines": row["outcome_lines"], "error": row["error"],
                                     "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()]}

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for rel, entry in pool.map(run, notebooks):
                failed |= entry["status"] == "error"
                # Written after every lesson: an interrupted run keeps what it measured.
                with locked_record(out, kind) as record:
                    record["lessons"][rel] = entry
                print(f"{entry['seconds']:8.1f} s  {rel}  {entry['status']}  {entry['error'] or ''}", flush=True)
    print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
