"""The Colab contract: every lesson runs beside a torch the course does not pin.

    bash tools/check-colab                       every lesson, Python 3.12, torch 2.9.1 (Colab's)
    bash tools/check-colab chapters/cnn/x.ipynb  just these lessons (their rows are replaced)
    bash tools/check-colab --torch 2.9.1 --torchvision 0.24.1 --python python3.12 --venv DIR

Tried as a student on Colab would: a fresh virtual environment on the newest Python Colab uses,
the torch and torchvision Colab ships installed FIRST, then this checkout installed by its declared
ranges (``pip install .``, no pins, no lock), then each lesson executed top to bottom in the quick
profile on the CPU with the data mirror. It writes benchmarks/results/colab-contract.json: the
Python, torch, torchvision and torchao it ran with, and each lesson OK or its error. Not part of
``.ci/run``: it downloads several GB (torch with its CUDA libraries) and runs for about half an hour.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "colab-contract.json"
# What a Colab runtime had when this was written (2026-12): Python 3.12, torch 2.9.1, torchvision 0.24.1.
COLAB = {"python": "3.12", "torch": "2.9.1", "torchvision": "0.24.1"}


def find_python(wanted: str) -> str:
    """``python3.12`` on PATH, else a pyenv install of that version; a clear error otherwise."""
    if os.sep in wanted:
        return wanted
    found = shutil.which(wanted)
    if found and subprocess.run([found, "--version"], capture_output=True).returncode == 0:
        return found
    version = wanted.removeprefix("python")
    for candidate in sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}*/bin/python{version}"))):
        return candidate
    raise SystemExit(f"no {wanted} here: install it (e.g. pyenv install {version}) or pass --python /path/to/python")


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, **kwargs)


def make_environment(python: str, venv: Path, torch: str, torchvision: str, reuse: bool = False) -> dict[str, str]:
    """A fresh venv with Colab's torch first, then this checkout by its ranges; the versions it got.
    ``reuse`` keeps the venv of the last check (its torch) and installs the checkout again."""
    py = str(venv / "bin" / "python")
    # Colab's preinstalled packages first, then the course as a student installs it, from the
    # public index only: no pip configuration of this machine (local wheel folders, a cap on torch).
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull}
    if reuse and Path(py).is_file():
        run([py, "-m", "pip", "uninstall", "-q", "-y", "dlbook"], env=env)
    else:
        if venv.exists():
            shutil.rmtree(venv)  # a previous check's environment, made by this tool (never a user's folder)
        run([python, "-m", "venv", str(venv)])
        run([py, "-m", "pip", "install", "-q", "--upgrade", "pip"], env=env)
        run([py, "-m", "pip", "install", "-q", f"torch=={torch}", f"torchvision=={torchvision}",
             "ipykernel", "nbclient", "nbformat"], env=env)
    run([py, "-m", "pip", "install", "-q", str(ROOT)], env=env)
    versions = json.loads(subprocess.run(
        [py, "-c", "import json, sys, importlib.metadata as m\n"
                   "names = ['torch', 'torchvision', 'torchao', 'dlbook', 'numpy', 'onnxruntime']\n"
                   "v = {n: (m.version(n) if n in {d.metadata['Name'] for d in m.distributions()} else None) for n in names}\n"
                   "v['python'] = sys.version.split()[0]\nprint(json.dumps(v))"],
        capture_output=True, text=True, check=True).stdout)
    if versions["torch"].split("+")[0] != torch:
        raise SystemExit(f"installing the package replaced torch {torch} by {versions['torch']}: its ranges "
                         "must accept the torch a student already has")
    return versions


def execute(paths: list[str], timeout: int) -> None:
    """Run inside the checked environment: execute each notebook, one JSON line per lesson."""
    import nbformat
    from nbclient import NotebookClient

    for rel in paths:
        nb = nbformat.read(ROOT / rel, as_version=4)
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str((ROOT / rel).parent)}})
        start, error = time.perf_counter(), None
        try:
            client.execute()
        except Exception as exc:  # record it and go on with the next lesson
            lines = [line for line in str(exc).splitlines() if line.strip()]
            error = f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:500]
        print(json.dumps({"lesson": rel, "status": "error" if error else "ok",
                          "seconds": round(time.perf_counter() - start, 1), "error": error}), flush=True)


def lessons_in(paths: list[str]) -> list[str]:
    """The notebooks named or found under ``paths`` (default: every lesson), relative to the
    checkout: benchmarks/run_full.py's rule, so both tools pick the same lessons."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from run_full import lessons_in as lesson_paths

    return sorted(str(p.relative_to(ROOT)) for p in lesson_paths(paths or ["chapters"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*")
    parser.add_argument("--python", default=f"python{COLAB['python']}")
    parser.add_argument("--torch", default=COLAB["torch"])
    parser.add_argument("--torchvision", default=COLAB["torchvision"])
    # outside the checkout: `pip install .` builds from the checkout, and a venv inside it is 6 GB to walk
    parser.add_argument("--venv", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                        / "dlbook" / "colab-venv")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the last check's environment (its torch), install this checkout again")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--execute", action="store_true", help=argparse.SUPPRESS)  # inside the venv
    args = parser.parse_args(argv)
    if args.execute:
        execute(args.paths, args.timeout)
        return 0

    lessons = lessons_in(args.paths)
    py = args.venv / "bin" / "python"
    versions = make_environment(find_python(args.python), args.venv, args.torch, args.torchvision, args.reuse)
    mirror = os.environ.get("DLBOOK_DATA_MIRROR") or str((ROOT.parent / "shared" / "data").resolve())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    # DLBOOK_INSTALL_MISSING: what a Colab runtime does by itself (dlbook.compat installs the
    # deployment stack paired with this torch when "google.colab" is imported; here it is not).
    env.update(DLBOOK_PROFILE="quick", DLBOOK_DEVICE="cpu", DLBOOK_DATA_MIRROR=mirror, MPLBACKEND="Agg",
               DLBOOK_INSTALL_MISSING="1", PIP_CONFIG_FILE=os.devnull,
               # On Colab dlbook.results downloads the committed result files from the repository
               # at the release tag (tests/test_full_results.py); offline, the checkout's stand in.
               DLBOOK_RESULTS_DIR=str(ROOT / "benchmarks" / "results"),
               PATH=f"{args.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
               # a private Jupyter data dir: the kernel is this venv's python3, never a user-level
               # kernelspec that would point back to the course's own environment
               JUPYTER_DATA_DIR=str(args.venv / "share" / "jupyter"), JUPYTER_PATH="")
    record = json.loads(args.out.read_text()) if args.out.is_file() else {}
    same = ("python", "torch", "torchvision", "dlbook")  # what defines the contract; the deployment
    # lesson itself installs torchao and onnx into the environment, which must not discard the rows
    if {k: record.get("environment", {}).get(k) for k in same} != {k: versions.get(k) for k in same}:
        record = {}  # another environment: its rows say nothing about this one
    rows = record.get("lessons", {})
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    proc = subprocess.Popen([str(py), str(Path(__file__).resolve()), "--execute", "--timeout", str(args.timeout), *lessons],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        row = json.loads(line)
        lesson = row.pop("lesson")
        rows[lesson] = {**row, "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        print(f"{rows[lesson]['status']:5s} {rows[lesson]['seconds']:7.1f} s  {lesson}  {rows[lesson]['error'] or ''}", flush=True)
        record = {"what": "every lesson executed in the quick profile (CPU) in a fresh environment: Colab's "
                          "torch installed first, then this checkout by its declared ranges (tools/check-colab)",
                  "started": record.get("started", started), "environment": versions,
                  "passed": sum(r["status"] == "ok" for r in rows.values()), "total": len(rows),
                  "lessons": dict(sorted(rows.items()))}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    if proc.wait() != 0:
        raise SystemExit(f"the executor failed (exit {proc.returncode})")
    failed = [k for k, r in rows.items() if r["status"] != "ok"]
    print(f"{len(rows) - len(failed)} of {len(rows)} lessons passed; {args.out.relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
