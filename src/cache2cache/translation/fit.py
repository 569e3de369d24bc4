"""Fit a translator in closed form from streaming sufficient statistics.

Both models read the same passages (each as the brief of a prompt, in its own template, exactly as a message is
read at use time). For every receiver token of a passage we have features (the aligned sharer token's pre-RoPE
keys and values at the layer window, the receiver's embedding of the token) and targets (the receiver's own
pre-RoPE keys and values). Per receiver layer only the moments are kept: n, sums, X^T X, X^T Y and the targets'
squares, separately for fitting passages and held-out passages (every tenth). Memory does not grow with the
text; the statistics are checkpointed, so a killed fit resumes where it stopped.

`solve` turns the statistics into a `Translator` for any subset of the features (a sub-block of the moments, so
one pass over the text serves every feature choice): standardised ridge regression per layer and for keys and
values separately, the ridge strength chosen on the held-out passages, the held-out R² recorded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection

import torch
from tqdm import tqdm

from ..alignment.tokens import Messages, encode
from ..atomic import write_json
from ..caches.identity import identity_of
from ..errors import C2CError
from ..kl import TopK
from ..models.loading import LoadedModel
from ..plotting import pyplot
from .config import FEATURES, TOKEN_FEATURES, TranslatorConfig, windows
from .moments import FitState, Moments
from .reading import embeddings, prerope_kv, read_brief
from .translator import Translator, gather_features

HELD_OUT_EVERY = 10
RIDGE_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0)  # times the mean feature variance (1 here)
FIT_QUESTION = "?"  # what follows a brief in a fitting prompt: never read (both models stop at the brief's end)


def layout_of(receiver: LoadedModel, sharer: LoadedModel, width: int) -> dict:
    r, s = identity_of(receiver), identity_of(sharer)
    return {"receiver": receiver.name, "sharer": sharer.name, "receiver_geometry": r.geometry.to_dict(),
            "sharer_geometry": s.geometry.to_dict(), "receiver_fingerprint": r.fingerprint,
            "sharer_fingerprint": s.fingerprint,
            "windows": windows(r.geometry.num_layers, s.geometry.num_layers, width),
            "receiver_hidden": receiver.model.config.get_text_config().hidden_size}  # fmt: skip


def full_config(layout: dict) -> TranslatorConfig:
    """The config whose features are all of FEATURES: what the moments are accumulated over."""
    return TranslatorConfig(**layout, key_features=list(FEATURES), value_features=list(FEATURES))


@dataclass
class PassagePair:
    """One passage read as a brief by both models: the aligned sharer keys and values per sharer layer (T, kv),
    the receiver's embedding of its T brief tokens, and the receiver's own pre-RoPE keys and values per layer
    over its whole prompt up to the brief's end (start + T positions: its template tokens, then the brief)."""

    s_keys: list[torch.Tensor]
    s_values: list[torch.Tensor]
    embedding: torch.Tensor
    r_keys: list[torch.Tensor]
    r_values: list[torch.Tensor]
    start: int
    r_queries: list[torch.Tensor] | None = None  # per layer (start + T, heads * head_dim), pre-RoPE
    ids: list[int] | None = None  # the receiver's whole prompt (template, brief, what follows): distillation reads it
    scored_from: int = 0  # > 0: an exchange; distillation scores the predictions from this position of ids on
    s_states: torch.Tensor | None = None  # (T, window * hidden): the sharer's states entering an entry map's layers
    top_k: TopK | None = None  # a teacher's top-k from the brief's first token on (distill.record_top_k)

    def targets(self, r: int) -> torch.Tensor:
        return torch.cat([self.r_keys[r][self.start:], self.r_values[r][self.start:]], dim=-1)


@torch.no_grad()
def passage_pair(receiver: LoadedModel, sharer: LoadedModel, passage: str, chat: bool = True,
                 queries: bool = False, messages: Messages | None = None, answer: str = "",
                 states_of: list[int] | None = None) -> PassagePair:  # fmt: skip
    """Both models read `passage` as the brief of `messages` (default: the fitting prompt). With an `answer`, its
    tokens follow the receiver's prompt in `ids` and are what distillation scores (an exchange, distill.py). With
    `states_of` sharer layers, their entering states are kept too (what an entry map reads)."""
    messages = messages or [{"role": "user", "content": FIT_QUESTION}]
    r_span, s_keys, s_values, *states = read_brief(receiver, sharer, messages, passage, chat, states_of=states_of)
    r_out = prerope_kv(receiver, r_span.ids[:r_span.end], queries=queries)
    tail = encode(receiver.tokenizer, answer)[0] if answer else []
    return PassagePair([k.cpu() for k in s_keys], [v.cpu() for v in s_values],
                       embeddings(receiver, r_span.brief_ids).cpu(), [k.cpu() for k in r_out[0]],
                       [v.cpu() for v in r_out[1]], r_span.start,
                       [q.cpu() for q in r_out[2]] if queries else None, list(r_span.ids) + tail,
                       len(r_span.ids) - 1 if tail else 0, states[0].cpu() if states else None)  # fmt: skip


def stream_moments(texts: list[tuple[str, str]], state_path: Path, layout: dict, dims: list[tuple[int, int]],
                   read: Callable[[int, str], list[tuple[torch.Tensor, torch.Tensor]]], every_s: float = 120.0,
                   desc: str = "fit") -> FitState:  # fmt: skip
    """Stream `texts` ((source, passage) pairs) into the moments at `state_path`, one (features, targets) block
    per map as `read(index, passage)` returns them (of sizes `dims`), resuming from what the file holds (it must
    describe the same `layout`) and checkpointing every `every_s` seconds; every tenth passage is held out."""
    if state_path.is_file():
        state = FitState.load(state_path)
        if state.layout != layout:
            raise C2CError(f"{state_path} holds statistics for other models or another layer window; "
                           "use another --stats file or delete it")  # fmt: skip
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


def accumulate(receiver: LoadedModel, sharer: LoadedModel, texts: list[tuple[str, str]], state_path: Path,
               width: int = 3, chat: bool = True, every_s: float = 120.0,
               keep: Callable[[int, PassagePair], None] | None = None, kept: Collection[int] = ()
               ) -> FitState:  # fmt: skip
    """Read `texts` ((source, passage) pairs) with both models into the moments at `state_path` (stream_moments:
    resumable), per receiver layer every feature of FEATURES against its keys and values. The passages whose
    index is in `kept` are read with the receiver's queries too and handed to `keep` (the refinement's pairs: the
    models read each passage once)."""
    layout = layout_of(receiver, sharer, width)
    cfg = full_config(layout)
    dims = [(cfg.feature_dim(r, cfg.key_features), 2 * g.kv_dim) for r, g in enumerate(cfg.receiver_geo.layers)]

    def read(index: int, passage: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        pair = passage_pair(receiver, sharer, passage, chat, queries=index in kept)
        if keep is not None and index in kept:
            keep(index, pair)
        return [(gather_features(list(FEATURES), cfg.windows[r], pair.s_keys, pair.s_values, pair.embedding),
                 pair.targets(r)) for r in range(len(cfg.windows))]  # fmt: skip

    return stream_moments(texts, state_path, layout, dims, read, every_s)


def _indices(full: TranslatorConfig, r: int, feats: list[str], window: list[int]) -> torch.Tensor:
    """Positions of `feats` of the sharer layers `window` (a subset of layer r's full window) inside layer r's
    full feature vector (keys of the full window, its values, the embedding, the previous token's)."""
    shar = full.sharer_geo
    offsets, at = {}, 0
    for s in full.windows[r]:
        offsets[s] = at
        at += shar.layers[s].kv_dim
    kv = at
    cols = []
    for kind, base in (("keys", 0), ("values", kv)):
        if kind in feats:
            cols += [torch.arange(base + offsets[s], base + offsets[s] + shar.layers[s].kv_dim) for s in window]
    h = full.receiver_hidden
    for j, name in enumerate(TOKEN_FEATURES):
        if name in feats:
            cols.append(torch.arange(2 * kv + j * h, 2 * kv + (j + 1) * h))
    return torch.cat(cols)


def sub_windows(full: list[list[int]], n_sharer: int, width: int | None) -> list[list[int]]:
    """Per receiver layer, the `width` sharer layers nearest its depth (what `windows` gives for that width,
    always inside the gathered window); all of it when `width` is None or not smaller."""
    if width is None or width >= min(map(len, full)):
        return [list(w) for w in full]
    narrow = windows(len(full), n_sharer, width)
    if any(not set(n) <= set(w) for n, w in zip(narrow, full)):
        raise C2CError(f"a window of {width} is not inside the gathered windows")
    return narrow


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


def solve(state: FitState, key_features: list[str] | None = None, value_features: list[str] | None = None,
          progress: bool = True, width: int | None = None, value_width: int | None = None) -> Translator:  # fmt: skip
    """A translator from accumulated moments, reading `key_features` for keys and `value_features` for values
    (default: all of FEATURES), from the `width` central sharer layers of each window (default: all of it; the
    value maps from `value_width` of them when given)."""
    full = full_config(state.layout)
    if state.fit[0].n.item() < 1:
        raise C2CError("the fitting statistics hold no tokens yet")
    n_sharer = len(state.layout["sharer_geometry"]["layers"])
    layout = dict(state.layout, windows=sub_windows(state.layout["windows"], n_sharer, width))
    if value_width is not None and value_width != width:
        layout["value_windows"] = sub_windows(state.layout["windows"], n_sharer, value_width)
    cfg = TranslatorConfig(**layout, key_features=list(key_features or FEATURES),
                           value_features=list(value_features or FEATURES))  # fmt: skip
    translator = Translator(cfg)
    strengths, r2 = [], []
    layers = list(enumerate(cfg.receiver_geo.layers))
    for r, g in tqdm(layers, desc="solve", unit="layer", disable=not progress, dynamic_ncols=True):
        per = []
        for maps, feats, outs, kind in ((translator.keys, cfg.key_features, slice(0, g.kv_dim), "keys"),
                                        (translator.values, cfg.value_features, slice(g.kv_dim, 2 * g.kv_dim),
                                         "values")):  # fmt: skip
            cols = _indices(full, r, feats, cfg.window(r, kind))
            w, b, lam, score = ridge(state.fit[r], state.held[r], cols, outs)
            maps[r].weight.copy_(w.T.float())
            maps[r].bias.copy_(b.float())
            per.append((lam, score))
        strengths.append([per[0][0], per[1][0]])
        r2.append([per[0][1], per[1][1]])
    cfg.fit = {
        "sources": sorted(state.sources),
        "passages": dict(state.sources),
        "tokens": state.tokens,
        "held_out_every": HELD_OUT_EVERY,
        "ridge": strengths,
        "r2": r2,
        "seconds": round(state.seconds, 1),
    }
    return translator


def write_report(translator: Translator, out_dir: Path) -> None:
    """fit.json (ridge and held-out R² per layer) and r2.png next to a saved translator."""
    plt = pyplot()
    fit = translator.config.fit
    write_json(out_dir / "fit.json", fit)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    layers = range(len(fit["r2"]))
    ax.plot(layers, [x[0] for x in fit["r2"]], marker="o", label="keys (pre-RoPE)")
    ax.plot(layers, [x[1] for x in fit["r2"]], marker="s", label="values")
    ax.set_xlabel("receiver layer")
    ax.set_ylabel("held-out R²")
    ax.set_ylim(min(0.0, min(min(x) for x in fit["r2"])), 1.0)
    ax.set_title(f"{translator.config.receiver} <- {translator.config.sharer}: {fit['tokens']:,} tokens")
    ax.legend()
    fig.savefig(out_dir / "r2.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
