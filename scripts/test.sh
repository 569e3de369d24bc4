#!/usr/bin/env bash
# Set up (if needed) and run the default test suite: tiny models only, a few minutes on 2 CPU cores.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` for the real-model tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
