#!/usr/bin/env bash
# Set up (if needed), pull the default pair once, then show what cache-to-cache buys on it:
#  1. a few questions answered by the receiver alone, the sharer alone, text-to-text (the sharer writes notes,
#     the receiver reads them) and C2C (the receiver reads the sharer's cache through the shipped fuser),
#     side by side with their timings;
#  2. an accuracy table, receiver alone vs C2C vs the control (C2C fed another question's sharer cache: what
#     the fuser adds whatever the sharer read), on the 100 seeded ARC-Easy validation questions that
#     docs/RESULTS.md reports, scored by option likelihood (cloze: SmolLM2-135M picks option letters by
#     position, so the letter protocol cannot show what it knows). About 4 minutes: each question is prefilled
#     once and its cache reused for all options. T2T is left out of the table because the 1.5B sharer writing
#     notes costs 10-20 s per question on a 2-core CPU; the tables with T2T are in docs/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/c2c models pull SmolLM2-135M-Instruct Qwen2.5-Coder-1.5B-Instruct
.venv/bin/c2c generate --compare --prompt-file examples/questions.txt --max-new-tokens 48 "$@"
exec .venv/bin/c2c eval --task arc_easy --split validation --limit "${C2C_MAIN_LIMIT:-100}" \
  --method cloze --modes receiver,c2c,mismatched --out runs/main/arc_easy --overwrite
