"""Copy a finished training run's fuser into the package (bf16 weights, half the size), with the evidence a
user needs to trust it: the resolved training config, the metrics log, loss and gate plots, and the summary.

    .venv/bin/python scripts/ship_fuser.py ~/.cache/cache2cache/runs/smollm2_qwen15 \
        src/cache2cache/assets/fusers/smollm2-135m-from-qwen2.5-coder-1.5b
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from cache2cache.atomic import write_json
from cache2cache.fuser.model import Fuser
from cache2cache.training.plots import plot_loss, read_metrics

EVIDENCE = ("train_config.json", "metrics.jsonl", "summary.json", "loss.png", "gates.png", "data_manifest.json")


def manifest(run: Path) -> dict:
    """The run's data manifest, rebuilt from its saved config: the same sources, shares and skips as training
    (tokenizers only, no model weights)."""
    from types import SimpleNamespace

    from cache2cache.alignment.tokens import TokenAligner
    from cache2cache.models.loading import load_skeleton
    from cache2cache.training.config import load_config
    from cache2cache.training.recipe import FuserTrainer

    cfg = load_config(base=json.loads((run / "train_config.json").read_text()))
    trainer = FuserTrainer(cfg)
    trainer.world, trainer.rank, trainer.is_main = 1, 0, False
    tok = [load_skeleton(m).tokenizer for m in (cfg.receiver, cfg.sharer)]
    trainer.model = SimpleNamespace(aligners=[TokenAligner(tok[0], tok[1], cfg.token_alignment)])
    trainer._setup_data()
    return trainer.data_manifest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a training run folder with a final fuser/ in it")
    ap.add_argument("--fuser", type=Path, default=None, help="ship this fuser folder instead of RUN/fuser (e.g. "
                                                             "a checkpoint's)")  # fmt: skip
    ap.add_argument("dest", type=Path)
    ap.add_argument("--note", default="", help="a paragraph added to the README (how the run was made)")
    args = ap.parse_args()
    run = args.run.expanduser()
    fuser = Fuser.from_pretrained(args.fuser or run / "fuser")
    fuser.save_pretrained(args.dest, dtype=torch.bfloat16)
    (args.dest / "training").mkdir(exist_ok=True)
    for name in EVIDENCE:
        if (run / name).is_file():
            shutil.copy2(run / name, args.dest / "training" / name)
    if not (args.dest / "training" / "data_manifest.json").is_file():  # a checkpoint, not a finished run
        write_json(args.dest / "training" / "data_manifest.json", manifest(run))
    if not (args.dest / "training" / "loss.png").is_file():
        cfg = json.loads((run / "train_config.json").read_text())
        plot_loss(read_metrics(run / "metrics.jsonl"), args.dest / "training" / "loss.png",
                  f"{cfg['receiver']} <- {cfg['sharer']}")  # fmt: skip
    card = (args.dest / "README.md").read_text()
    card += ("\nWeights are stored in bfloat16 (trained in float32; loading casts back). The training folder holds "
             "the resolved config, the metrics log, the loss and gate plots and the run summary.\n")
    if args.note:
        card += f"\n{args.note.strip()}\n"
    (args.dest / "README.md").write_text(card)
    print(f"shipped {fuser.num_parameters():,} parameters -> {args.dest}")


if __name__ == "__main__":
    main()
