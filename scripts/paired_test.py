"""Paired comparison of two `c2c eval` runs (or two modes of one run) on the questions they share: how many
each gets right where the other is wrong, and the exact two-sided McNemar p-value. Two accuracies whose
confidence intervals overlap can still differ significantly when the same questions are scored.

    .venv/bin/python scripts/paired_test.py docs/results/eval/RUN_A:receiver docs/results/eval/RUN_B:c2c
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cache2cache.evaluation.runner import discordant
from cache2cache.evaluation.scoring import mcnemar_exact


def load(spec: str) -> dict[str, bool]:
    """RUN_DIR:MODE -> {example id: correct}."""
    run, _, mode = spec.rpartition(":")
    path = Path(run) / "records.jsonl"
    if not run or not path.is_file():
        sys.exit(f"error: expected RUN_DIR:MODE with RUN_DIR/records.jsonl, got {spec!r}")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out = {r["id"]: bool(r["correct"]) for r in rows if r["mode"] == mode}
    if not out:
        sys.exit(f"error: no records of mode {mode!r} in {path}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="RUN_DIR:MODE")
    ap.add_argument("b", help="RUN_DIR:MODE")
    args = ap.parse_args()
    a, b = load(args.a), load(args.b)
    n, only_a, only_b = discordant(a, b)
    if not n:
        sys.exit("error: the two runs share no questions")
    shared = a.keys() & b.keys()
    print(f"{n} shared questions: A right {sum(a[i] for i in shared)}, B right {sum(b[i] for i in shared)}; "
          f"A right where B wrong {only_a}, B right where A wrong {only_b}; "
          f"exact McNemar p = {mcnemar_exact(only_a, only_b):.3f}")


if __name__ == "__main__":
    main()
