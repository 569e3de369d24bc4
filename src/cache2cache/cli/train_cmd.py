"""`c2c train`: train a fuser from a TOML config plus key=value overrides; resumable."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path

from ..atomic import check_writable_dir
from ..errors import C2CError
from ..training.checkpoint import load_checkpoint
from ..training.config import TrainConfig, load_config
from ..training.recipe import FuserTrainer
from .common import input_path

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a fuser for a receiver/sharer pair",
        description=(
            "Train a fuser: receiver and sharer stay frozen; the loss is the receiver's next-token cross-entropy\n"
            "on response tokens, decoded from the fused cache. Settings come from an optional TOML file, then\n"
            "key=value overrides (any TrainConfig field). Checkpoints are written atomically every save_every\n"
            "steps; --resume continues a run exactly. Data-parallel: torchrun --nproc_per_node N -m\n"
            "cache2cache.cli.main train ... (batch_size is the global batch)."
        ),
        epilog=(
            "examples:\n"
            "  c2c train configs/smollm2_qwen05.toml\n"
            "  c2c train receiver=tiny-llama sharer=tiny-qwen2 max_steps=20 out_dir=runs/tiny\n"
            "  c2c train --resume runs/tiny max_steps=40      # continue, extending the run\n\n"
            f"fields: {', '.join(TrainConfig.__dataclass_fields__)}"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("items", nargs="*", metavar="CONFIG.toml | key=value", help="a TOML file and/or overrides")
    p.add_argument("--resume", type=input_path, help="a run folder or checkpoint folder to continue from")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in an out_dir that already holds one (its fuser is replaced at the end)")
    p.set_defaults(func=run)


def run(args) -> int:
    files = [i for i in args.items if "=" not in i]
    overrides = [i for i in args.items if "=" in i]
    if len(files) > 1:
        raise C2CError(f"give at most one config file, got {files}")
    base = None
    if args.resume:
        ckpt = load_checkpoint(args.resume)
        # Continue in the run folder being resumed (wherever it was moved), unless told otherwise.
        base = {**ckpt["config"], "out_dir": str(ckpt["path"].parent)}
    cfg = load_config(files[0] if files else None, overrides, base=base)
    if base:
        changed = {k: (base[k], v) for k, v in asdict(cfg).items() if base.get(k) != v}
        for k, (old, new) in changed.items():
            log.warning("resume: %s changed from %r to %r (the new value wins)", k, old, new)
    out = Path(cfg.out_dir).expanduser()
    check_writable_dir(out, "out_dir")
    if not args.resume and out.is_dir() and any(out.iterdir()):
        if not args.overwrite:
            raise C2CError(f"out_dir {out} already holds a run: continue it with --resume {out}, choose another "
                           "out_dir=..., or pass --overwrite to start afresh there")  # fmt: skip
        (out / "metrics.jsonl").unlink(missing_ok=True)  # a new run's log starts empty, not appended to
    trainer = FuserTrainer(cfg, resume=args.resume)
    try:
        trainer.setup()
        summary = trainer.train()
    finally:
        trainer.cleanup()
    if trainer.is_main:
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            for k, v in summary.items():
                print(f"{k:18} {v}")
    return 0
