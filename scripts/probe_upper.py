"""The receiver reading the evidence itself: the capacity probes' questions that a probe run sampled, written as a
JSONL task with the evidence (the brief) before the question, for `c2c eval --modes receiver`. What the receiver
could do with the information C2C is asked to carry.

    .venv/bin/python scripts/probe_upper.py --run probe_qa_sciq_brief --out runs/probe_upper_sciq_brief.jsonl
    .venv/bin/c2c eval --task jsonl:runs/probe_upper_sciq_brief.jsonl --split all --modes receiver --method cloze \\
        --out docs/results/eval/probe_upper_sciq_brief
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qa_summary import R

from cache2cache.atomic import write_text
from cache2cache.evaluation.tasks import get_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a probe evaluation under docs/results/eval")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    summary = json.loads((R / "eval" / args.run / "summary.json").read_text())
    wanted = {json.loads(line)["id"] for line in (R / "eval" / args.run / "records.jsonl").read_text().splitlines()}
    items = [it for it in get_task(summary["task"]).load("heldout") if it.id in wanted]
    write_text(Path(args.out), "".join(json.dumps({"id": it.id, "question": f"{it.brief.strip()}\n{it.question}",
                                             "choices": it.choices, "answer": it.answer}) + "\n" for it in items))
    print(f"{len(items)} items -> {args.out}")


if __name__ == "__main__":
    main()
