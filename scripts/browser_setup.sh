#!/usr/bin/env bash
# Install what the browser tests need: Debian's chromium (a downloaded browser build is not available here) and
# the playwright Python package that drives it. Idempotent. Then: bash scripts/test.sh -m browser
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v chromium >/dev/null; then
  apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt playwright
