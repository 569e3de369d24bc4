"""The streaming sufficient statistics of a translator fit (fit.py, entries.py): per map, n, sums, X^T X, X^T Y
and the targets' squares, for fitting and held-out passages, checkpointed as one safetensors file; and the ridge
regression solved from them."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from ..errors import C2CError

HELD_OUT_EVERY = 10
RIDGE_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0)  # times the mean feature variance (1 here)


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
    """Everything a fit has accumulated: per map (a receiver layer's keys and values, then any entry maps), fitting
    and held-out moments; passages done."""

    layout: dict  # receiver, sharer, geometries, fingerprints, windows, hidden sizes, entry layers: what they mean
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
            maps = sum(k.startswith("fit.") and k.endswith(".n") for k in tensors)
            return cls(meta["layout"], [Moments.from_tensors(tensors, f"fit.{i}") for i in range(maps)],
                       [Moments.from_tensors(tensors, f"held.{i}") for i in range(maps)], meta["done"],
                       meta["tokens"], meta["sources"], meta["seconds"])  # fmt: skip
        except (OSError, SafetensorError, KeyError, ValueError, TypeError, json.JSONDecodeError) as e:
            raise C2CError(f"corrupt fitting statistics {path} ({type(e).__name__}: {e}); delete it to start over"
                           ) from None  # fmt: skip


def stream_moments(texts: list[tuple[str, str]], state_path: Path, layout: dict, dims: list[tuple[int, int]],
                   read: Callable[[int, str], list[tuple[torch.Tensor, torch.Tensor]]], every_s: float = 120.0,
                   desc: str = "fit") -> FitState:  # fmt: skip
    """Stream `texts` ((source, passage) pairs) into the moments at `state_path`, one (features, targets) block
    per map as `read(index, passage)` returns them (of sizes `dims`), resuming from what the file holds (it must
    describe the same `layout`) and checkpointing every `every_s` seconds; every tenth passage is held out."""
    if state_path.is_file():
        state = FitState.load(state_path)
        if state.layout != layout:
            raise C2CError(f"{state_path} holds statistics for other models, another layer window or other entry "
                           "layers; use another --stats file or delete it")  # fmt: skip
        if [(m.sx.numel(), m.sy.numel()) for m in state.fit] != dims:
            raise C2CError(f"{state_path} holds statistics of other features (an older c2c's?); use another "
                           "--stats file or delete it")  # fmt: skip
    else:
        state = FitState(layout, [Moments.zeros(f, o) for f, o in dims], [Moments.zeros(f, o) for f, o in dims])
    last_save = time.monotonic()
    start = time.monotonic()
    base_seconds = state.seconds
    with tqdm(total=len(texts), initial=state.done, desc=desc, unit="passage", dynamic_ncols=True) as bar:
        for source, passage in texts[state.done:]:
            blocks = read(state.done, passage)
            into = state.held if state.done % HELD_OUT_EVERY == 0 else state.fit
            for moments, (x, y) in zip(into, blocks):
                moments.add(x, y)
            state.done += 1
            state.tokens += blocks[0][0].shape[0]
            state.sources[source] = state.sources.get(source, 0) + 1
            bar.update(1)
            bar.set_postfix(tokens=state.tokens)
            if time.monotonic() - last_save > every_s:
                state.seconds = base_seconds + time.monotonic() - start
                state.save(state_path)
                last_save = time.monotonic()
    state.seconds = base_seconds + time.monotonic() - start
    state.save(state_path)
    return state


def ridge(fit: Moments, held: Moments, cols: torch.Tensor, outs: slice
           ) -> tuple[torch.Tensor, torch.Tensor, float, float]:  # fmt: skip
    """Standardised ridge on features `cols` for targets `outs`: (weight (F, O), bias (O), ridge, held-out R²),
    the ridge strength chosen on `held`, then refitted on both."""

    def centred(m: Moments):
        n = m.n.item()
        mx, my = m.sx[cols] / n, m.sy[outs] / n
        cxx = m.xx[cols][:, cols] - n * torch.outer(mx, mx)
        cxy = m.xy[cols][:, outs] - n * torch.outer(mx, my)
        return n, mx, my, cxx, cxy

    def solve(m: Moments, lams) -> list[tuple[torch.Tensor, torch.Tensor]]:
        n, mx, my, cxx, cxy = centred(m)
        d = (cxx.diagonal() / n).clamp(min=1e-12).sqrt()
        evals, evecs = torch.linalg.eigh(cxx / n / torch.outer(d, d))
        proj = evecs.T @ (cxy / n / d[:, None])
        out = []
        for lam in lams:
            w = (evecs @ (proj / (evals.clamp(min=0) + lam)[:, None])) / d[:, None]
            out.append((w, my - mx @ w))
        return out

    def sse(m: Moments, w: torch.Tensor, b: torch.Tensor) -> float:
        sx, sy, n = m.sx[cols], m.sy[outs], m.n.item()
        pred_sq = (w * (m.xx[cols][:, cols] @ w)).sum() + 2 * b @ (w.T @ sx) + n * (b @ b)
        cross = (w * m.xy[cols][:, outs]).sum() + b @ sy
        return float(m.yy[outs].sum() - 2 * cross + pred_sq)

    if held.n.item() > 0:
        errors = [sse(held, w, b) for w, b in solve(fit, RIDGE_GRID)]
        best = min(range(len(RIDGE_GRID)), key=errors.__getitem__)
        total = float(held.yy[outs].sum() - (held.sy[outs] ** 2).sum() / held.n.item())
        r2 = 1 - errors[best] / max(total, 1e-12)
    else:
        best, r2 = RIDGE_GRID.index(1e-2), float("nan")
    w, b = solve(fit + held, [RIDGE_GRID[best]])[0]
    return w, b, RIDGE_GRID[best], r2
