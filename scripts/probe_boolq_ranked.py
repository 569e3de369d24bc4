"""Is BoolQ a usable receiver-blind probe once the receiver cannot win by answering "yes" to everything?

    OMP_NUM_THREADS=1 .venv/bin/python scripts/probe_boolq_ranked.py --receiver Qwen2.5-Coder-0.5B-Instruct \
        --limit 200 --out docs/results/boolq_ranked_session11.json

Protocol: held-out boolq_brief questions, as many "no" as "yes" (a seeded sample of each); each mode scores " yes"
and " no" (cloze, per-character log-probability) and answers "yes" for the half of the questions where its
log-odds of yes is highest (the median is the threshold, so a constant bias toward "yes" buys nothing). Reports
the raw argmax accuracy and yes-rate too. Only the receiver alone and the receiver reading the passage: the gap a
translator would have to close.
"""

from __future__ import annotations

import argparse
import random
import statistics
from pathlib import Path

from cache2cache.atomic import write_json
from cache2cache.evaluation.runner import EvalConfig, Evaluator, select_items
from cache2cache.inference.pipeline import C2CModel
from cache2cache.models.loading import load_model


def ranked_accuracy(records: list[dict]) -> float:
    odds = [r["scores"][1] - r["scores"][0] for r in records]
    cut = statistics.median(odds)
    return sum((x > cut) == (r["gold"] == 1) for x, r in zip(odds, records)) / len(records)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--receiver", default="Qwen2.5-Coder-0.5B-Instruct")
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    cfg = EvalConfig("boolq_brief", "heldout", ["receiver", "receiver_brief"], method="cloze", batch_size=8)
    items = select_items(cfg)
    rng = random.Random(0)
    k = min(args.limit // 2, *(sum(i.answer == a for i in items) for a in (0, 1)))
    items = [x for a in (1, 0) for x in rng.sample([i for i in items if i.answer == a], k)]
    rng.shuffle(items)
    records = Evaluator(C2CModel(load_model(args.receiver)), cfg).run(items)
    result = {"receiver": args.receiver, "n": len(items), "modes": {}}
    for mode in cfg.modes:
        rows = [r for r in records if r["mode"] == mode]
        result["modes"][mode] = {"ranked": ranked_accuracy(rows), "argmax": sum(r["correct"] for r in rows) / len(rows),
                                 "yes_rate": sum(r["prediction"] == 1 for r in rows) / len(rows)}  # fmt: skip
        print(mode, result["modes"][mode])
    write_json(args.out, result)


if __name__ == "__main__":
    main()
