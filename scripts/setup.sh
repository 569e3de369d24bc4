#!/usr/bin/env bash
# Create .venv and install cache2cache into it. Idempotent: reinstalls only when pyproject/constraints change.
# torch is installed first and pinned (C2C_TORCH, default torch==2.13.0): an unpinned torch pulls gigabytes of
# CUDA wheels on a CPU machine. On a GPU host, set C2C_TORCH to the CUDA build you want.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${C2C_TORCH:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.c2c-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)-$TORCH_SPEC
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "$TORCH_SPEC"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]"
  echo "$want" > "$stamp"
fi
