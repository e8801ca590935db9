#!/usr/bin/env bash
# FROQ end to end: (align photos) -> (build a calibration set) -> pseudo-labels -> observer -> qualities.
#
# Usage: ./run.sh [--photos DIR] [--calibration DIR] [--target DIR] [options]    (./run.sh -h: every option)
#
# The run itself is froq/pipeline.py (python -m froq.pipeline, same options); this script only picks
# the interpreter. Environment: PYTHON (default: ./.venv, set up by install.sh on first use, or the
# active python when it already has FROQ's dependencies).
set -euo pipefail

REPO=$(cd "$(dirname "$0")" && pwd)

die() { echo "run.sh: $*" >&2; exit 2; }

# -h/--help needs no dependencies: no setup, any python 3 prints the options
if [ -z "${PYTHON:-}" ]; then
  for arg in "$@"; do
    case "$arg" in
      -h|--help) if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi ;;
    esac
  done
fi
# the interpreter: $PYTHON if set; else the repo's .venv (set up by install.sh on first use) unless
# the active python already has FROQ's dependencies
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then
    bash "$REPO/install.sh"  # no-op when up to date
    PYTHON="$REPO/.venv/bin/python"
  elif command -v python >/dev/null && python -c "import torch, scipy, yaml, dlib, froq" 2>/dev/null; then
    PYTHON=python
  else
    bash "$REPO/install.sh"
    PYTHON="$REPO/.venv/bin/python"
  fi
fi
command -v "$PYTHON" >/dev/null || die "'$PYTHON' not found: activate the project's venv or set PYTHON=/path/to/python"

# the repository's packages first; relative paths stay relative to the current folder
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m froq.pipeline "$@"
