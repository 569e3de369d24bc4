"""Compare training runs side by side (an ablation table): fuser size, step time, and how far each fuser
brought the held-out loss below its receiver's own (the step-0 validation loss, since an untrained fuser is a
no-op). Runs with different receivers have different baselines, so the drop is shown absolute and relative.

    .venv/bin/python benchmarks/compare_runs.py compact=~/.cache/cache2cache/runs/smollm2_qwen15 \
        base=~/.cache/cache2cache/runs/ablate_base --at 100 --out docs/results/ablation_runs.json

Prints a markdown table, writes JSON and a PNG (validation drop and smoothed training loss per step).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path

from cache2cache.atomic import write_json
from cache2cache.training.plots import plt, read_metrics


def summarise(label: str, run: Path, at: int | None) -> dict:
    metrics = read_metrics(run / "metrics.jsonl")
    val = {m["step"]: m["val_loss"] for m in metrics if m.get("kind") == "val"}
    train = [m for m in metrics if m.get("kind") == "train" and (at is None or m["step"] <= at)]
    if 0 not in val or not train:
        sys.exit(
            f"error: {run} has no step-0 validation loss or no training steps (not a training run folder?)"
        )
    step = max(s for s in val if at is None or s <= at)
    cfg = json.loads((run / "train_config.json").read_text())
    fuser_cfg = json.loads((run / "fuser" / "config.json").read_text()) if (run / "fuser").is_dir() else {}
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    # Differences of elapsed time start at step 2, so step 1's own time (it includes the step-0 validation)
    # never counts.
    step_times = [b["elapsed_s"] - a["elapsed_s"] for a, b in itertools.pairwise(train)]
    return {
        "label": label,
        "run": str(run),
        "receiver": cfg.get("receiver"),
        "sharer": cfg.get("sharer"),
        "preset": cfg.get("preset"),
        "hidden_dim": fuser_cfg.get("hidden_dim"),
        "fuser_parameters": summary.get("fuser_parameters"),
        "median_step_s": statistics.median(step_times) if step_times else None,
        "val_step": step,
        "val_receiver_alone": val[0],
        "val_fused": val[step],
        "val_drop": val[0] - val[step],
        "val_drop_rel": (val[0] - val[step]) / val[0],
        "val_curve": sorted((s, v) for s, v in val.items() if s <= step),
        "train_curve": [(m["step"], m["loss"]) for m in train],
    }


def plot(rows: list[dict], out: Path) -> None:
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        steps, losses = zip(*r["val_curve"])
        a.plot(steps, [r["val_receiver_alone"] - v for v in losses], "o-", label=r["label"])
        t_steps, t_loss = zip(*r["train_curve"])
        k = 10
        smooth = [statistics.mean(t_loss[max(0, i - k + 1) : i + 1]) for i in range(len(t_loss))]
        b.plot(t_steps, smooth, label=r["label"], lw=1.2)
    a.set(
        xlabel="optimizer step",
        ylabel="val loss drop vs receiver alone (nats/token)",
        title="held-out ShareGPT responses",
    )
    b.set(
        xlabel="optimizer step",
        ylabel="train loss, 10-step mean",
        title="training loss (own receiver's tokens)",
    )
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="LABEL=RUN_DIR, one per run")
    ap.add_argument("--at", type=int, help="compare at the last validation step <= this (default: the last)")
    ap.add_argument("--out", type=Path, default=Path("runs/compare_runs.json"))
    args = ap.parse_args()
    rows = []
    for spec in args.runs:
        label, sep, path = spec.partition("=")
        run = Path(path).expanduser()
        if not sep or not run.is_dir():
            sys.exit(f"error: expected LABEL=RUN_DIR with an existing folder, got {spec!r}")
        rows.append(summarise(label, run, args.at))
    print(
        "| run | receiver <- sharer | preset | fuser params | s/step | val loss: receiver alone -> fused (step) "
        "| drop |"
    )
    print("|---|---|---|---:|---:|---|---:|")
    for r in rows:
        params = f"{r['fuser_parameters']:,}" if r["fuser_parameters"] else "?"
        step_s = f"{r['median_step_s']:.1f}" if r["median_step_s"] else "?"
        print(
            f"| {r['label']} | {r['receiver']} <- {r['sharer']} | {r['preset']} | {params} | {step_s} | "
            f"{r['val_receiver_alone']:.4f} -> {r['val_fused']:.4f} ({r['val_step']}) | "
            f"{r['val_drop']:.4f} ({100 * r['val_drop_rel']:.1f}%) |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, rows)
    plot(rows, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
