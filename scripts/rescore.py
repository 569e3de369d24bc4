"""Score saved `c2c eval --method generate` runs again with today's `stated` (evaluation/scoring.py), without
running a model: each exact-answer record's kept output is checked against its gold answer anew. When the scorer
learns that two writings are one fact ("3,150 meters" for "3,150 metres"), earlier runs are compared on the same
footing. Prints a table per run and mode (correct then, correct now); `--json` prints the same as JSON. Runs are
read, never rewritten.

    .venv/bin/python scripts/rescore.py docs/results/eval/field_reports_from15_session14 \
        docs/results/eval/field_reports_text_session12
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cache2cache.errors import C2CError
from cache2cache.evaluation.scoring import stated
from cache2cache.evaluation.tasks import get_task


def rescore(run: Path) -> dict[str, dict[str, int]]:
    """{mode: {"n", "then", "now"}} of one run's exact-answer records."""
    summary, records = run / "summary.json", run / "records.jsonl"
    if not summary.is_file() or not records.is_file():
        raise C2CError(f"{run}: expected a `c2c eval` run folder (summary.json and records.jsonl)")
    meta = json.loads(summary.read_text())
    items = {it.id: it for it in get_task(meta["task"]).load(meta["split"])}
    out: dict[str, dict[str, int]] = {}
    for line in filter(str.strip, records.read_text().splitlines()):
        r = json.loads(line)
        it = items.get(r["id"])
        if it is None or not it.exact or r.get("output") is None:
            continue
        row = out.setdefault(r["mode"], {"n": 0, "then": 0, "now": 0})
        row["n"] += 1
        row["then"] += bool(r["correct"])
        row["now"] += stated(r["output"], str(it.answer)) == it.answer
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="`c2c eval --out` folders")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args()
    try:
        results = {str(run): rescore(run) for run in args.runs}
    except (C2CError, OSError, json.JSONDecodeError, KeyError) as e:
        sys.exit(f"error: {e}")
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'run':60} {'mode':24} {'n':>4} {'then':>5} {'now':>5}")
    for run, modes in results.items():
        for mode, row in modes.items():
            print(f"{run[-60:]:60} {mode:24} {row['n']:>4} {row['then']:>5} {row['now']:>5}")


if __name__ == "__main__":
    main()
