# Sourced by tools/build-book and tools/test: create .venv (once), install the locked environment,
# requirements.lock (again only when it or pyproject.toml changes), put .venv first on
# PATH (nbgrader runs alembic as a subprocess) and point DLBOOK_DATA_MIRROR at ../shared/data
# when that folder exists and the variable is not set.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DLBOOK_VENV:-$ROOT/.venv}"

if [ ! -x "$VENV/bin/python" ]; then
  PY="${PYTHON:-}"
  if [ -z "$PY" ]; then
    for candidate in python3.11 python3 python; do
      if command -v "$candidate" >/dev/null 2>&1; then PY="$candidate"; break; fi
    done
  fi
  if [ -z "$PY" ] || ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: need Python >= 3.11 (pyproject.toml's requires-python); set PYTHON=/path/to/python3.11" >&2
    exit 2
  fi
  echo "creating $VENV with $("$PY" --version)"
  "$PY" -m venv "$VENV"
fi

source "$ROOT/tools/uv-args.sh"  # uv_index_args: pip's indexes for uv (tools/lock uses it too)

# requirements.lock pins every package of the environment (the Sphinx and Jupyter stacks too), as
# resolved from requirements.txt by tools/lock; installing it reproduces CI's environment exactly.
STAMP="$VENV/.dlbook-requirements"
WANT="$(cat "$ROOT/requirements.lock" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
  echo "installing the pinned requirements into $VENV (a few minutes the first time)"
  # Keep byte-compiling: CI sets PYTHONDONTWRITEBYTECODE=1, so a module not compiled here is
  # compiled again by every process that imports it (measured: --no-compile saved 90 s here and
  # cost 8 minutes of test time, every kernel recompiling torch).
  (cd "$ROOT" && "$VENV/bin/python" -m pip install --quiet --upgrade pip)
  # uv installs the same pins in parallel (measured on CI's 2-core machine, 2026-12-06: 58 s
  # against pip's 143-190 s for the 6.6 GB environment); pip does it when uv cannot be had.
  if "$VENV/bin/python" -m pip install --quiet uv >/dev/null 2>&1; then
    uv_index_args
    (cd "$ROOT" && "$VENV/bin/python" -m uv pip install --quiet --python "$VENV/bin/python" --compile-bytecode \
      "${UV_ARGS[@]}" -r requirements.lock)
  else
    (cd "$ROOT" && "$VENV/bin/python" -m pip install --quiet -r requirements.lock)
  fi
  # uv takes a version's files from the first index that has it: for soundfile that can be the pure
  # wheel, which needs the system's libsndfile (a clean clone's speech lessons failed on a machine
  # without it, 2026-12-07). pip ranks the wheels by platform tag and takes the one that bundles it.
  if ! "$VENV/bin/python" -c "import soundfile" >/dev/null 2>&1; then
    "$VENV/bin/python" -m pip install --quiet --force-reinstall --no-deps --only-binary :all: \
      "$(grep -m1 '^soundfile==' "$ROOT/requirements.lock")"
  fi
  echo "$WANT" > "$STAMP"
fi

export PATH="$VENV/bin:$PATH"
if [ -z "${DLBOOK_DATA_MIRROR:-}" ] && [ -d "$ROOT/../shared/data" ]; then
  DLBOOK_DATA_MIRROR="$(cd "$ROOT/../shared/data" && pwd)"
  export DLBOOK_DATA_MIRROR
fi
cd "$ROOT"
