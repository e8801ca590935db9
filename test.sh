#!/usr/bin/env bash
# Run the FROQ test suite (installs .venv first if needed). Extra arguments go to pytest,
# e.g. ./test.sh tests/test_golden.py -x
# Tests that need ../shared (real LFW faces, official reference outputs) skip with the reason
# when it is absent; FROQ_SHARED=DIR points elsewhere.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
bash install.sh
VENV="${FROQ_VENV:-.venv}"
exec "$VENV/bin/python" -m pytest -q --durations=10 "${@:-tests}"   # the 10 slowest tests in every log
