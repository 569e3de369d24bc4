"""Copy a finished training run's fuser into the package (bf16 weights, half the size), with the evidence a
user needs to trust it: the resolved training config, the metrics log, loss and gate plots, and the summary.

    .venv/bin/python scripts/ship_fuser.py ~/.cache/cache2cache/runs/smollm2_qwen15 \
        src/cache2cache/assets/fusers/smollm2-135m-from-qwen2.5-coder-1.5b
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from cache2cache.fuser.model import Fuser

EVIDENCE = ("train_config.json", "metrics.jsonl", "summary.json", "loss.png", "gates.png", "data_manifest.json")


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
    card = (args.dest / "README.md").read_text()
    card += ("\nWeights are stored in bfloat16 (trained in float32; loading casts back). The training folder holds "
             "the resolved config, the metrics log, the loss and gate plots and the run summary.\n")
    if args.note:
        card += f"\n{args.note.strip()}\n"
    (args.dest / "README.md").write_text(card)
    print(f"shipped {fuser.num_parameters():,} parameters -> {args.dest}")


if __name__ == "__main__":
    main()
