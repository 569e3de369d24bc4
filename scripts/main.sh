#!/usr/bin/env bash
# Set up (if needed), pull the default model pair once, and answer a few questions side by side:
# the receiver alone, the sharer alone, and the receiver reading the sharer's fused cache (C2C).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/c2c models pull SmolLM2-135M-Instruct Qwen2.5-Coder-0.5B-Instruct
exec .venv/bin/c2c generate --compare --prompt-file examples/questions.txt --max-new-tokens 48 "$@"
