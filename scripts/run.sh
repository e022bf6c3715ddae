#!/usr/bin/env bash
# Set up (when needed) and run, from a fresh clone:
#   bash scripts/run.sh demo [DEMO ARGS]      the main job (scripts/demo.py); installs without PyTorch
#   bash scripts/run.sh test [PYTEST ARGS]    README's test command (python -m pytest tests -n 2); installs PyTorch first
# The virtual environment .venv is created once. Packages are installed again only when pyproject.toml
# (or TORCH_INDEX_URL) changes: each verb keeps the SHA-256 of what it installed for in .venv/installed-{demo,test}.
# PYTHON picks the interpreter (default python3, >= 3.11); TORCH_INDEX_URL is passed to pip as --index-url
# for torch (e.g. https://download.pytorch.org/whl/cpu, PyTorch's CPU wheels, instead of the CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH=torch==2.13.0
usage="usage: bash scripts/run.sh demo|test [ARGS...]"
verb=${1:-}
case $verb in
  demo|test) shift ;;
  -h|--help) echo "$usage"; exit 0 ;;
  *) echo "$usage" >&2; exit 2 ;;
esac

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "run.sh: error: needs Python >= 3.11 (found: $("$python" --version 2>&1 | head -1)); set PYTHON=/path/to/python3.11" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  echo "run.sh: creating .venv with $("$python" --version)"
  "$python" -m venv .venv
fi
. .venv/bin/activate

if ! python -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "run.sh: error: .venv has $(python --version 2>&1), needs Python >= 3.11; remove .venv and rerun" >&2
  exit 2
fi
# the install is redone when pyproject.toml or the torch index changes
key=$(python -c 'import hashlib, sys; print(hashlib.sha256(open("pyproject.toml", "rb").read() + sys.argv[1].encode()).hexdigest())' "${TORCH_INDEX_URL:-}")
installed() { [ -f ".venv/installed-$1" ] && [ "$(cat ".venv/installed-$1")" = "$key" ]; }
if [ "$verb" = demo ]; then
  if ! installed demo && ! installed test; then
    echo "run.sh: installing moe-routing (without PyTorch) into .venv"
    python -m pip install -q -e .
    echo "$key" > .venv/installed-demo
  fi
  exec python scripts/demo.py "$@"
fi

if ! installed test; then
  echo "run.sh: installing $TORCH${TORCH_INDEX_URL:+ from $TORCH_INDEX_URL}, then moe-routing[test], into .venv"
  python -m pip install -q "$TORCH" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}  # before anything that depends on it
  python -m pip install -q -e ".[test]"
  echo "$key" > .venv/installed-test
fi
if [ -z "${MOE_SHARED_DATA:-}" ] && [ ! -d ../shared/data ]; then
  echo "run.sh: warning: no ../shared/data beside the clone (and MOE_SHARED_DATA unset): tests that need it skip" >&2
fi
exec python -m pytest tests -n 2 "$@"  # two workers (pytest-xdist): 11-13 min against 14.5-15 min in one
