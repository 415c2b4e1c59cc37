# Sourced by tools/env.sh and tools/lock; needs $VENV (the virtual environment with pip).
# uv does not read pip's configuration: hand it pip's indexes and wheel folders (a machine's local
# mirror of torch, say), and let it take each pin from whichever index has it. tools/lock uses it too.
uv_index_args() {
  UV_ARGS=(--index-strategy unsafe-best-match)
  while IFS= read -r line; do
    key="${line%%=*}"; value="${line#*=}"; value="${value#\'}"; value="${value%\'}"
    case "$key" in
      *.index-url) UV_ARGS+=(--default-index "$value") ;;
      *.extra-index-url) for url in $value; do UV_ARGS+=(--extra-index-url "$url"); done ;;
      *.find-links) for dir in $value; do UV_ARGS+=(--find-links "$dir"); done ;;
    esac
  done < <("$VENV/bin/python" -m pip config list 2>/dev/null || true)
}
