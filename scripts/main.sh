#!/usr/bin/env bash
# Set up (if needed), pull the default pair (and the reader of 3b) once, then show what cache communication buys:
#  1. a few questions answered by the receiver alone, the sharer alone, text-to-text (the sharer writes notes,
#     the receiver reads them) and C2C (the receiver reads the sharer's cache through the shipped fuser),
#     side by side with their timings;
#  2. a field report only the sharer reads (examples/brief.txt), and questions about it answered the same ways
#     plus "translated" (the receiver never reads the report, it answers from its own cache of it written by the
#     shipped translator from the sharer's reading), "t2t_blind" (the same message as text: the sharer writes notes
#     on the report alone, the receiver reads them) and the receiver reading the report itself;
#  3. five more reports of the kind (examples/field_reports.jsonl, 15 facts: counts, names, times, measures), each
#     answer scored by whether it states the fact, translated beside its controls and the receiver reading them;
#     then the fidelity knob's token axis (`--own-tokens 0.5`: the receiver recomputes its own layers over half of
#     the translated report's tokens, names and numbers and the word before each first) beside its controls, and
#     the example report again under `--own-tokens 0.4`;
#  3b. the same with a receiver that reads the facts itself: Qwen2.5-Coder-0.5B-Instruct <- the same sharer, through
#     the translator shipped for that pair, under the token knob (the fifteen facts beside their controls and the
#     receiver reading the reports itself; the example report under `--own-tokens 0.4`);
#  4. the capacity probe as a table: SciQ questions whose support paragraph only the sharer reads, answered by the
#     receiver alone, from the translated paragraph, from another question's translated paragraph and from a
#     neutral translated passage (the controls: a gain they share is not communication) and by the receiver reading
#     the paragraph itself (the upper bound);
#  5. the fuser's accuracy table, receiver alone vs C2C vs its control (C2C fed another question's sharer cache),
#     on the 100 seeded ARC-Easy validation questions that docs/RESULTS.md reports.
# Tables 4 and 5 are scored by option likelihood (cloze), C2C_MAIN_LIMIT questions each (default 100). About
# 20 minutes on 2 free CPU cores once set up (2026-12-07: 19 min 36 s, a clone with its environment and the models
# in place; C2C_MAIN_LIMIT=20 saves about 2); a fresh machine adds the set-up and the models' pull, and other work on
# the cores slows it several times. The full tables, with T2T, are in docs/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/c2c models pull SmolLM2-135M-Instruct Qwen2.5-Coder-1.5B-Instruct Qwen2.5-Coder-0.5B-Instruct
.venv/bin/c2c generate --compare --prompt-file examples/questions.txt --max-new-tokens 48 "$@"
.venv/bin/c2c generate --compare --brief-file examples/brief.txt --prompt-file examples/brief_questions.txt \
  --max-new-tokens 24 "$@"
.venv/bin/c2c eval --task jsonl:examples/field_reports.jsonl --split all --method generate --gen-tokens 24 \
  --modes receiver,translated,translated_mismatched,neutral,receiver_brief --out runs/main/field_reports --overwrite
.venv/bin/c2c eval --task jsonl:examples/field_reports.jsonl --split all --method generate --gen-tokens 24 \
  --own-tokens 0.5 --modes translated,translated_mismatched,neutral --out runs/main/field_reports_own_tokens0.5 \
  --overwrite
.venv/bin/c2c generate --mode translated --own-tokens 0.4 --brief-file examples/brief.txt \
  --prompt-file examples/brief_questions.txt --max-new-tokens 24 "$@"
READER="--receiver Qwen2.5-Coder-0.5B-Instruct --sharer Qwen2.5-Coder-1.5B-Instruct"
.venv/bin/c2c eval --task jsonl:examples/field_reports.jsonl --split all --method generate --gen-tokens 24 $READER \
  --own-tokens 0.5 --modes receiver,translated,translated_mismatched,neutral,receiver_brief \
  --out runs/main/field_reports_qwen05_own_tokens0.5 --overwrite
.venv/bin/c2c generate $READER --mode translated --own-tokens 0.4 --brief-file examples/brief.txt \
  --prompt-file examples/brief_questions.txt --max-new-tokens 24 "$@"
.venv/bin/c2c eval --task sciq_brief --split heldout --limit "${C2C_MAIN_LIMIT:-100}" --method cloze \
  --modes receiver,translated,translated_mismatched,neutral,receiver_brief --out runs/main/sciq_brief --overwrite
exec .venv/bin/c2c eval --task arc_easy --split validation --limit "${C2C_MAIN_LIMIT:-100}" \
  --method cloze --modes receiver,c2c,mismatched --out runs/main/arc_easy --overwrite
