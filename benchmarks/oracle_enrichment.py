"""The C2C paper's oracle cache-enrichment experiment on a bundled receiver: accuracy from the question-only
cache, from a cache that also holds few-shot exemplars, and from the enriched cache (exemplars prefilled, then
their entries dropped). Prints a table and writes JSON.

    .venv/bin/python benchmarks/oracle_enrichment.py --out docs/results/oracle_enrichment.json
"""

from __future__ import annotations

import argparse
import platform
import random
import time
from datetime import date
from pathlib import Path

from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from cache2cache import __version__
from cache2cache.atomic import write_json
from cache2cache.evaluation.enrichment import SETTINGS, exemplar_turns, predict
from cache2cache.evaluation.scoring import wilson_interval
from cache2cache.evaluation.tasks import get_task
from cache2cache.models.loading import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="SmolLM2-135M-Instruct")
    ap.add_argument("--task", default="arc_easy")
    ap.add_argument("--split", default="validation")
    ap.add_argument("--shots-split", default="test", help="where the exemplars come from (never the eval split)")
    ap.add_argument("--shots", type=int, default=3)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("docs/results/oracle_enrichment.json"))
    args = ap.parse_args()

    task = get_task(args.task)
    items = task.load(args.split)
    items = random.Random(args.seed).sample(items, min(args.limit, len(items)))
    shots = exemplar_turns(random.Random(args.seed + 1).sample(task.load(args.shots_split), args.shots))
    model = load_model(args.model)
    rows, t0 = {}, time.perf_counter()
    for setting in SETTINGS:
        correct = sum(predict(model, it, shots, setting) == it.answer for it in tqdm(items, desc=setting))
        lo, hi = wilson_interval(correct, len(items))
        rows[setting] = {"accuracy": correct / len(items), "ci95": [lo, hi], "correct": correct, "n": len(items)}
    result = {"model": model.name, "task": args.task, "split": args.split, "shots": args.shots,
              "shots_split": args.shots_split, "seed": args.seed, "settings": rows,
              "seconds": round(time.perf_counter() - t0, 1), "machine": platform.machine(),
              "date": date.today().isoformat(), "cache2cache": __version__}  # fmt: skip
    write_json(args.out, result)
    table = Table(title=f"oracle cache enrichment: {model.name}, {args.task}/{args.split}, n={len(items)}, "
                        f"{args.shots} shots -> {args.out}", title_justify="left")  # fmt: skip
    for c in ("setting", "accuracy", "95% CI"):
        table.add_column(c)
    for s, r in rows.items():
        table.add_row(s, f"{r['accuracy']:.3f}", f"{r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
