"""Which fused layers matter? Validation loss of a trained fuser's run (the run's own held-out ShareGPT
examples, response tokens, gates hard as at inference) with groups of receiver layers' gates shut. Closing all
of them is the receiver alone. Prints a table and writes JSON.

    .venv/bin/python benchmarks/gate_ablation.py ~/.cache/cache2cache/runs/smollm2_qwen15 \
        --groups 0-9,10-19,20-29 --out docs/results/gate_ablation.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from cache2cache import __version__
from cache2cache.atomic import write_json
from cache2cache.cli.common import layer_list
from cache2cache.fuser.model import Fuser
from cache2cache.training.config import load_config
from cache2cache.training.recipe import FuserTrainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a finished training run folder (train_config.json, fuser/)")
    ap.add_argument("--groups", default="0-9,10-19,20-29", help="receiver layer groups to shut, one at a time")
    ap.add_argument("--out", type=Path, default=Path("docs/results/gate_ablation.json"))
    args = ap.parse_args()
    run = args.run.expanduser()
    cfg = load_config(None, ["max_steps=1"], base=json.loads((run / "train_config.json").read_text()))
    trainer = FuserTrainer(cfg)
    trainer.setup()  # the same validation examples as the run (the first val_size of its seeded order)
    trained = Fuser.from_pretrained(run / "fuser")
    fused = sorted(int(r) for r in trained.layers)
    gates = trained.gate_logits()
    settings = {"all gates as trained": [], **{f"shut {g}": layer_list(g) for g in args.groups.split(",")},
                "all shut (receiver alone)": fused}  # fmt: skip
    rows, t0 = [], time.perf_counter()
    for name, shut in settings.items():
        with torch.no_grad():
            trainer.fuser.load_state_dict(trained.state_dict())
        trainer.fuser.close_gates([r for r in shut if r in gates])
        rows.append({"setting": name, "shut": shut, "val_loss": trainer.evaluate()["val_loss"]})
    result = {"run": str(run), "receiver": cfg.receiver, "sharer": cfg.sharer, "val_examples": len(trainer.val),
              "open_gates": {r: [k > 0, v > 0] for r, (k, v) in gates.items()}, "rows": rows,
              "seconds": round(time.perf_counter() - t0, 1), "machine": platform.machine(),
              "date": date.today().isoformat(), "cache2cache": __version__}  # fmt: skip
    write_json(args.out, result)
    table = Table(title=f"gate ablation: {cfg.receiver} <- {cfg.sharer}, {len(trainer.val)} val examples -> "
                        f"{args.out}", title_justify="left")  # fmt: skip
    for c in ("setting", "val loss (nats/token)"):
        table.add_column(c)
    for r in rows:
        table.add_row(r["setting"], f"{r['val_loss']:.4f}")
    Console().print(table)


if __name__ == "__main__":
    main()
