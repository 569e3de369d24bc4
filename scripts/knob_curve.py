"""The fidelity knob's curve: accuracy of translated briefs against the share of the receiver's own prefill the
knob costs, from `c2c eval` runs (`--own-layers M`: its first M layers; `--own-from M`: its layers M..L-1;
`--own-tokens P`: every layer over a share P of the brief's tokens, the share read from the run's header), with
the receiver alone (0% of reading, nothing sent) and the receiver reading the brief itself (100%) from a base run.

    .venv/bin/python scripts/knob_curve.py --base RUN --layers 30 first:8:RUN_A from:21:RUN_B tokens:0.25:RUN_C \
        --out docs/results/knob_curve.png     # also writes the .json beside it; prints a markdown table
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cache2cache.plotting import pyplot
from cache2cache.translation.recompute import Recompute


def accuracy(run: Path, mode: str) -> float:
    summary = json.loads((run / "summary.json").read_text())
    if mode not in summary["modes"]:
        sys.exit(f"error: {run} has no mode {mode!r} (it has {', '.join(summary['modes'])})")
    return summary["modes"][mode]["accuracy"]


def selective_share(run: Path, layers: int) -> float:
    """The share of the receiver's prefill a run with `--own-tokens` cost, from its summary (`Recompute.share`)."""
    h = json.loads((run / "summary.json").read_text())["models"].get("recompute", {})
    if "own_tokens" not in h:
        sys.exit(f"error: {run} was not run with --own-tokens")
    return Recompute.of(h).share(layers)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("points", nargs="+", help="first:M:RUN or from:M:RUN (a run of mode translated with the knob)")
    ap.add_argument("--base", type=Path, required=True,
                    help="a run with modes receiver and receiver_brief (and translated: the knob at 0)")
    ap.add_argument("--knob-free", type=Path, default=None,
                    help="the run whose mode translated is the knob at 0 (default: --base)")
    ap.add_argument("--layers", type=int, required=True, help="the receiver's number of layers")
    ap.add_argument("--title", default="")
    ap.add_argument("--out", type=Path, required=True, help="the PNG (the JSON goes beside it)")
    args = ap.parse_args()
    alone, read = accuracy(args.base, "receiver"), accuracy(args.base, "receiver_brief")
    translated = accuracy(args.knob_free or args.base, "translated")
    rows = {"first": [(0.0, 0, translated)], "from": [(0.0, 0, translated)], "tokens": [(0.0, 0, translated)]}
    for spec in args.points:
        kind, m, run = spec.split(":", 2)
        if kind not in rows or not m.replace(".", "", kind == "tokens").isdigit():
            sys.exit(f"error: expected first:M:RUN, from:M:RUN or tokens:P:RUN, got {spec!r}")
        if kind == "tokens":
            share = selective_share(Path(run), args.layers)
        else:
            share = int(m) / args.layers if kind == "first" else (args.layers - int(m)) / args.layers
        rows[kind].append((share, float(m) if kind == "tokens" else int(m), accuracy(Path(run), "translated")))
    gap = lambda acc: (acc - alone) / (read - alone) if read != alone else float("nan")  # noqa: E731
    print("| knob | M | share of the receiver's prefill | translated | gap closed |\n|---|---:|---:|---:|---:|")
    print(f"| receiver alone | - | 0% | {alone:.3f} | 0% |")
    print(f"| translated, knob-free | - | 0% | {translated:.3f} | {gap(translated):.0%} |")
    for kind, points in rows.items():
        for share, m, acc in sorted(points)[1:]:
            print(f"| own {kind} | {m} | {share:.0%} | {acc:.3f} | {gap(acc):.0%} |")
    print(f"| reading it | - | 100% | {read:.3f} | 100% |")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = {"first": "own first M layers", "from": "own layers from M (entry map)",
              "tokens": "own layers over a share of the tokens"}  # fmt: skip
    for kind, marker in (("first", "o"), ("from", "s"), ("tokens", "^")):
        if len(rows[kind]) == 1:
            continue
        points = sorted(rows[kind]) + [(1.0, None, read)]
        label = labels[kind]
        ax.plot([100 * p[0] for p in points], [p[2] for p in points], marker=marker, label=label)
    ax.axhline(alone, color="grey", linestyle=":", label="receiver alone")
    ax.set_xlabel("share of the receiver's own prefill over the brief (%)")
    ax.set_ylabel("accuracy")
    ax.set_title(args.title or "the fidelity knob")
    ax.legend()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120, bbox_inches="tight")
    report = {"receiver_alone": alone, "reading_it": read, "layers": args.layers,
              "points": {k: [{"share": s, "m": m, "accuracy": a, "gap_closed": gap(a)} for s, m, a in sorted(v)]
                         for k, v in rows.items()}}  # fmt: skip
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
