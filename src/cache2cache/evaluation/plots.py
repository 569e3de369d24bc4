"""PNG plots of an evaluation: accuracy per mode with 95% intervals, and latency per mode by phase."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PHASES = [("t2t_sharer_s", "T2T sharer (prefill+decode)"), ("sharer_prefill_s", "sharer prefill"),
          ("fuse_s", "fuse"), ("receiver_prefill_s", "answerer prefill"), ("decode_s", "answerer decode/score")]


def plot_accuracy(summary: dict, out: Path) -> None:
    modes = list(summary["modes"])
    acc = [summary["modes"][m]["accuracy"] for m in modes]
    lo = [a - summary["modes"][m]["ci95"][0] for a, m in zip(acc, modes)]
    hi = [summary["modes"][m]["ci95"][1] - a for a, m in zip(acc, modes)]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.bar(modes, acc, yerr=[lo, hi], capsize=6, color=["#8da0cb", "#66c2a5", "#fc8d62", "#e78ac3"][: len(modes)])
    for i, (a, up) in enumerate(zip(acc, hi)):
        ax.text(i, a + up + 0.01, f"{a:.3f}", ha="center", va="bottom")  # above the error bar
    ax.set_ylabel("accuracy (95% CI)")
    ax.set_ylim(0, 1)
    ax.set_title(f"{summary['task']} / {summary['split']} ({summary['method']}), n={summary['modes'][modes[0]]['n']}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_latency(summary: dict, out: Path) -> None:
    modes = list(summary["modes"])
    fig, ax = plt.subplots(figsize=(6, 3.8))
    bottom = [0.0] * len(modes)
    for key, label in PHASES:
        vals = [summary["modes"][m]["latency_s_mean"].get(key, 0.0) for m in modes]
        ax.bar(modes, vals, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylabel("seconds per example (batch share)")
    ax.set_title("latency by phase")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
