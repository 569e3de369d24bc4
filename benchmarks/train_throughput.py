"""Fuser-training throughput vs the receiver's own forward+backward on the same tokens (issue 4's goal: <= 1.3x).

For N micro-batches of real ShareGPT examples it times, per micro-batch:
  baseline   the receiver alone, forward+backward over prompt+response (gradient to the input embeddings,
             weights frozen: the receiver-side cost any fuser training pays), loss on the response;
  sharer     the sharer's prefill (frozen; could be precomputed once per dataset);
  prefill    the receiver's prompt prefill (frozen);
  fused      fuse + receiver over the response + backward (what the fuser's gradients need).
Tokens = receiver prompt + response tokens. Prints a table, writes JSON.

    .venv/bin/python benchmarks/train_throughput.py --receiver SmolLM2-135M-Instruct \
        --sharer Qwen2.5-Coder-0.5B-Instruct --out docs/results/train_throughput_smollm2_qwen05.json
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

from cache2cache import __version__
from cache2cache.atomic import write_json
from cache2cache.training.config import load_config
from cache2cache.training.examples import collate
from cache2cache.training.recipe import FuserTrainer


def _sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def baseline_step(trainer: FuserTrainer, tb) -> None:
    """Receiver forward+backward over prompt+response with gradients to the input embeddings only."""
    model = trainer.model.receiver.model
    p = tb.prompt
    ids = torch.cat([p.ids, tb.response_ids], dim=1)
    mask = torch.cat([p.mask, tb.response_mask], dim=1)
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    with trainer._autocast():
        logits = model(inputs_embeds=embeds, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                       use_cache=False).logits[:, p.ids.shape[1] - 1:-1]  # fmt: skip
    ce = F.cross_entropy(logits.float().flatten(0, 1), tb.response_ids.flatten(), reduction="none")
    (ce * tb.response_mask.flatten()).sum().backward()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--receiver", default="SmolLM2-135M-Instruct")
    ap.add_argument("--sharer", default="Qwen2.5-Coder-0.5B-Instruct")
    ap.add_argument("--micro-batches", type=int, default=6)
    ap.add_argument("--micro-batch-size", type=int, default=4)
    ap.add_argument("--set", nargs="*", default=[], help="extra TrainConfig overrides, key=value")
    ap.add_argument("--out", type=Path, default=Path("docs/results/train_throughput.json"))
    args = ap.parse_args()
    n = args.micro_batches * args.micro_batch_size
    cfg = load_config(None, [f"receiver={args.receiver}", f"sharer={args.sharer}", f"limit={n + 40}", "val_size=8",
                             f"micro_batch_size={args.micro_batch_size}", f"batch_size={args.micro_batch_size}",
                             "out_dir=/tmp/c2c-bench-train", *args.set])  # fmt: skip
    trainer = FuserTrainer(cfg)
    trainer.setup()
    dev = trainer.device
    batches = [collate(trainer.model, trainer.train_set[i:i + cfg.micro_batch_size])
               for i in range(0, n, cfg.micro_batch_size)][: args.micro_batches]  # fmt: skip
    rows = []
    for i, tb in enumerate([batches[0]] + batches):  # the first one is a warm-up
        tokens = int(tb.prompt.mask.sum() + tb.response_mask.sum())
        t0 = _sync(dev)
        baseline_step(trainer, tb)
        t1 = _sync(dev)
        with torch.no_grad():
            sharer_caches = trainer.model.prefill_sharers(tb.prompt)
        t2 = _sync(dev)
        with torch.no_grad():
            cache = trainer.model.prefill_answerer(tb.prompt, trainer.model.receiver)
        t3 = _sync(dev)
        trainer.response_loss(tb, sharer_caches, cache).ce.backward()
        t4 = _sync(dev)
        trainer.fuser.zero_grad(set_to_none=True)
        if i:
            rows.append(
                {"tokens": tokens, "baseline": t1 - t0, "sharer": t2 - t1, "prefill": t3 - t2, "fused": t4 - t3}
            )
    tok = sum(r["tokens"] for r in rows)
    agg = {k: sum(r[k] for r in rows) for k in ("baseline", "sharer", "prefill", "fused")}
    step = agg["sharer"] + agg["prefill"] + agg["fused"]
    result = {
        "date": date.today().isoformat(), "c2c_version": __version__, "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {dev}",
        "receiver": args.receiver, "sharer": args.sharer, "preset": cfg.preset, "dtype": cfg.dtype,
        "autocast_bf16": cfg.autocast_bf16, "micro_batches": len(rows), "micro_batch_size": cfg.micro_batch_size,
        "tokens": tok, "seconds": agg,
        "tokens_per_s": {"baseline_receiver_fwd_bwd": tok / agg["baseline"], "c2c_train_step": tok / step,
                         "c2c_train_step_sharer_kv_precomputed": tok / (agg["prefill"] + agg["fused"])},
        "ratio_vs_baseline": step / agg["baseline"],
        "ratio_vs_baseline_sharer_kv_precomputed": (agg["prefill"] + agg["fused"]) / agg["baseline"],
        "median_tokens_per_micro_batch": statistics.median(r["tokens"] for r in rows),
    }  # fmt: skip
    print(f"{args.receiver} <- {args.sharer}, {len(rows)} micro-batches of {cfg.micro_batch_size}, {tok} tokens, {dev}")
    for k, v in agg.items():
        print(f"  {k:10} {v:8.2f} s")
    for k, v in result["tokens_per_s"].items():
        print(f"  {k:40} {v:8.0f} tok/s")
    print(f"  ratio (train step / receiver fwd+bwd): {result['ratio_vs_baseline']:.2f}"
          f"  (sharer KV precomputed: {result['ratio_vs_baseline_sharer_kv_precomputed']:.2f})")  # fmt: skip
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
