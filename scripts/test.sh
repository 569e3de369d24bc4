#!/usr/bin/env bash
# Set up (if needed) and run the default test suite: tiny models only, a few minutes on 2 CPU cores.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` for the real-model tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check --quiet --select F,E9,E501,I src tests benchmarks scripts  # unused names, syntax errors, 120 columns, import order
exec .venv/bin/python -m pytest -q "$@"
