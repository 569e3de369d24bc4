"""The streaming sufficient statistics of a translator fit (fit.py): per receiver layer, n, sums, X^T X, X^T Y
and the targets' squares, for fitting and held-out passages, checkpointed as one safetensors file."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import C2CError


@dataclass
class Moments:
    """Sums over tokens for one receiver layer: features x (F) and targets y (keys then values)."""

    n: torch.Tensor
    sx: torch.Tensor
    sy: torch.Tensor
    xx: torch.Tensor
    xy: torch.Tensor
    yy: torch.Tensor  # per target dimension

    @classmethod
    def zeros(cls, f: int, o: int) -> "Moments":
        z = lambda *s: torch.zeros(*s, dtype=torch.float64)  # noqa: E731
        return cls(z(1), z(f), z(o), z(f, f), z(f, o), z(o))

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.n += x.shape[0]
        self.sx += x.sum(0).double()
        self.sy += y.sum(0).double()
        self.xx += (x.T @ x).double()
        self.xy += (x.T @ y).double()
        self.yy += (y * y).sum(0).double()

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.{k}": getattr(self, k) for k in ("n", "sx", "sy", "xx", "xy", "yy")}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], prefix: str) -> "Moments":
        return cls(*(t[f"{prefix}.{k}"] for k in ("n", "sx", "sy", "xx", "xy", "yy")))

    def __add__(self, other: "Moments") -> "Moments":
        return Moments(*(getattr(self, k) + getattr(other, k) for k in ("n", "sx", "sy", "xx", "xy", "yy")))


@dataclass
class FitState:
    """Everything a fit has accumulated: per receiver layer, fitting and held-out moments; passages done."""

    layout: dict  # receiver, sharer, geometries, fingerprints, windows, hidden size: what the moments mean
    fit: list[Moments]
    held: list[Moments]
    done: int = 0
    tokens: int = 0
    sources: dict = field(default_factory=dict)  # source -> passages read
    seconds: float = 0.0

    def save(self, path: Path) -> None:
        tensors = {}
        for i, (a, b) in enumerate(zip(self.fit, self.held)):
            tensors |= a.tensors(f"fit.{i}") | b.tensors(f"held.{i}")
        meta = {"layout": self.layout, "done": self.done, "tokens": self.tokens, "sources": self.sources,
                "seconds": self.seconds}  # fmt: skip
        # written straight to a temp file (no second in-memory copy of gigabytes of moments), then renamed
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(tensors, tmp, metadata={"cache2cache.fit": json.dumps(meta)})
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "FitState":
        try:
            with safe_open(path, "pt") as f:
                meta = json.loads(f.metadata()["cache2cache.fit"])
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            layers = len(meta["layout"]["windows"])
            return cls(meta["layout"], [Moments.from_tensors(tensors, f"fit.{i}") for i in range(layers)],
                       [Moments.from_tensors(tensors, f"held.{i}") for i in range(layers)], meta["done"],
                       meta["tokens"], meta["sources"], meta["seconds"])  # fmt: skip
        except (OSError, SafetensorError, KeyError, ValueError, TypeError, json.JSONDecodeError) as e:
            raise C2CError(f"corrupt fitting statistics {path} ({type(e).__name__}: {e}); delete it to start over"
                           ) from None  # fmt: skip
