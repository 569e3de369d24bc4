"""PNG plots of a training run: loss curves and which receiver layers' gates are open."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

from ..atomic import write_json

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(path: Path) -> list[dict]:
    """The log's records; a line cut off by a kill (the last one, half written) is skipped."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "step" in record and "kind" in record:
            out.append(record)
    return out


def plot_loss(metrics: list[dict], out: Path, title: str) -> None:
    """Cross-entropy per response token, train and validation; with distillation toward the sharer, its KL per
    continuation token beside them (the same unit)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    curves = [("train", "loss", "train cross-entropy (per response token)", "-"),
              ("val", "val_loss", "validation cross-entropy", "o-"),
              ("train", "sharer_kl", "train KL from the sharer (per continuation token)", "-"),
              ("val", "val_sharer_kl", "validation KL from the sharer", "s-")]  # fmt: skip
    for kind, key, label, style in curves:
        points = [(m["step"], m[key]) for m in metrics if m.get("kind") == kind and key in m]
        if points:
            ax.plot(*zip(*points), style, label=label, lw=1 if kind == "train" else 2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("nats/token")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_gates(gate_logits: dict[int, tuple[float, float]], n_layers: int, out: Path, title: str) -> None:
    """Bars of sigmoid(gate logit) per receiver layer for K and V; > 0.5 means open at inference."""
    import math

    layers = list(range(n_layers))
    k = [1 / (1 + math.exp(-gate_logits[i][0])) if i in gate_logits else 0.0 for i in layers]
    v = [1 / (1 + math.exp(-gate_logits[i][1])) if i in gate_logits else 0.0 for i in layers]
    fig, ax = plt.subplots(figsize=(max(6, n_layers * 0.3), 3.5))
    ax.bar([i - 0.2 for i in layers], k, width=0.4, label="key gate")
    ax.bar([i + 0.2 for i in layers], v, width=0.4, label="value gate")
    ax.axhline(0.5, color="grey", ls="--", lw=1)
    ax.set_xlabel("receiver layer")
    ax.set_ylabel("sigmoid(gate logit)")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def write_run(out_dir: Path, fuser, title: str, summary: dict, manifest: dict) -> None:
    """A finished run's folder: the fuser, its data manifest, loss and gate plots, and `summary` (completed with
    the last training loss and the open gates)."""
    fuser.save_pretrained(out_dir / "fuser")
    write_json(out_dir / "data_manifest.json", manifest)
    metrics = read_metrics(out_dir / "metrics.jsonl")
    train_losses = [m["loss"] for m in metrics if m["kind"] == "train"]
    summary["final_train_loss"] = train_losses[-1] if train_losses else None
    plot_loss(metrics, out_dir / "loss.png", title)
    gates = fuser.gate_logits()
    plot_gates(gates, len(fuser.config.layer_map), out_dir / "gates.png", title)
    summary["gates_open"] = sum(1 for k, v in gates.values() if k > 0 or v > 0)
    write_json(out_dir / "summary.json", summary)
