"""Write part of `c2c eval`'s seeded sample of a task as a JSONL task file, so that an expensive mode (T2T) can be
run on more of the *same* questions later: the first --take items of the --limit sample, skipping ids already
scored in --exclude records (records.jsonl of earlier runs).

    python scripts/same_questions.py --task arc_easy --limit 100 --take 60 \
        --exclude docs/results/eval/trained_arc_easy_val40_cloze_t2t/records.jsonl --out runs/arc_easy_t2t_more.jsonl
    c2c eval --task jsonl:runs/arc_easy_t2t_more.jsonl --split all --modes t2t --method cloze
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cache2cache.atomic import write_text
from cache2cache.evaluation.runner import EvalConfig, select_items


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True)
    ap.add_argument("--split", default="validation")
    ap.add_argument("--limit", type=int, default=100, help="the sample `c2c eval --limit` scored")
    ap.add_argument("--take", type=int, default=60, help="how many of its items should end up scored")
    ap.add_argument("--exclude", type=Path, nargs="*", default=[], help="records.jsonl files already scored")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    items = select_items(EvalConfig(task=args.task, split=args.split, modes=["receiver"], limit=args.limit))
    done = {json.loads(line)["id"] for f in args.exclude for line in f.read_text().splitlines() if line.strip()}
    have = [it for it in items if it.id in done]
    wanted = [it for it in items if it.id not in done][: max(0, args.take - len(have))]
    write_text(args.out, "".join(json.dumps({"id": it.id, "question": it.question, "choices": it.choices,
                                             "answer": it.answer, **({"brief": it.brief} if it.brief else {})}) + "\n"
                                 for it in wanted))  # fmt: skip
    print(f"{args.task}: {len(have)} of the sample already scored, {len(wanted)} more written to {args.out}")


if __name__ == "__main__":
    main()
