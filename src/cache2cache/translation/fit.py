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

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection

import torch
from tqdm import tqdm

from ..alignment.tokens import Messages, encode
from ..atomic import write_json
from ..caches.identity import identity_of
from ..caches.prompt_cache import layer_inputs
from ..errors import C2CError
from ..kl import TopK
from ..models.loading import LoadedModel
from ..plotting import pyplot
from .config import FEATURES, TOKEN_FEATURES, TranslatorConfig, windows
from .moments import HELD_OUT_EVERY, FitState, Moments, ridge, stream_moments
from .reading import embeddings, prerope_kv, read_brief
from .translator import Translator, entry_features, gather_features

FIT_QUESTION = "?"  # what follows a brief in a fitting prompt: never read (both models stop at the brief's end)


def layout_of(receiver: LoadedModel, sharer: LoadedModel, width: int, entry_layers: Collection[int] = (),
              entry_window: int = 1) -> dict:  # fmt: skip
    """What the moments of a fit mean: the pair, the layer windows, and the entry maps read beside them (named
    only when there are any, so statistics gathered before entry maps existed keep their layout)."""
    r, s = identity_of(receiver), identity_of(sharer)
    layout = {"receiver": receiver.name, "sharer": sharer.name, "receiver_geometry": r.geometry.to_dict(),
              "sharer_geometry": s.geometry.to_dict(), "receiver_fingerprint": r.fingerprint,
              "sharer_fingerprint": s.fingerprint,
              "windows": windows(r.geometry.num_layers, s.geometry.num_layers, width),
              "receiver_hidden": receiver.model.config.get_text_config().hidden_size}  # fmt: skip
    if entry_layers:
        layout |= {"entry_layers": sorted(entry_layers), "entry_window": entry_window,
                   "sharer_hidden": sharer.model.config.get_text_config().hidden_size}  # fmt: skip
    return layout


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
    r_entering: list[torch.Tensor] | None = None  # per asked receiver layer, its entering state (start + T, hidden)

    def targets(self, r: int) -> torch.Tensor:
        return torch.cat([self.r_keys[r][self.start:], self.r_values[r][self.start:]], dim=-1)


@torch.no_grad()
def passage_pair(receiver: LoadedModel, sharer: LoadedModel, passage: str, chat: bool = True,
                 queries: bool = False, messages: Messages | None = None, answer: str = "",
                 states_of: list[int] | None = None, entering: list[int] | None = None) -> PassagePair:  # fmt: skip
    """Both models read `passage` as the brief of `messages` (default: the fitting prompt). With an `answer`, its
    tokens follow the receiver's prompt in `ids` and are what distillation scores (an exchange, distill.py). With
    `states_of` sharer layers, their entering states are kept too (what an entry map reads); with `entering`
    receiver layers, the receiver's own states entering them (what an entry map writes), from the same forward."""
    messages = messages or [{"role": "user", "content": FIT_QUESTION}]
    r_span, s_keys, s_values, *states = read_brief(receiver, sharer, messages, passage, chat, states_of=states_of)
    mine = layer_inputs(receiver) if entering else None
    try:
        r_out = prerope_kv(receiver, r_span.ids[:r_span.end], queries=queries)
    finally:
        if mine is not None:
            mine.close()
    tail = encode(receiver.tokenizer, answer)[0] if answer else []
    return PassagePair([k.cpu() for k in s_keys], [v.cpu() for v in s_values],
                       embeddings(receiver, r_span.brief_ids).cpu(), [k.cpu() for k in r_out[0]],
                       [v.cpu() for v in r_out[1]], r_span.start,
                       [q.cpu() for q in r_out[2]] if queries else None, list(r_span.ids) + tail,
                       len(r_span.ids) - 1 if tail else 0, states[0].cpu() if states else None,
                       r_entering=[mine.states[m][0].float().cpu() for m in entering] if mine else None)  # fmt: skip


@dataclass(frozen=True)
class EntryReading:
    """What entry maps read from a PassagePair: per receiver layer m of `layers`, the states entering its window of
    sharer layers (`columns` of the pair's side-by-side states of `sharer_layers`) and the receiver's embeddings,
    against the receiver's own state entering m."""

    layers: list[int]
    sharer_layers: list[int]
    columns: list[torch.Tensor]

    @classmethod
    def of(cls, cfg: TranslatorConfig) -> "EntryReading":
        windows_ = [cfg.entry_sharer_layers(m) for m in cfg.entry_layers]
        read = sorted({s for w in windows_ for s in w})
        h = cfg.sharer_hidden
        return cls(list(cfg.entry_layers), read, [torch.cat([torch.arange(read.index(s) * h, (read.index(s) + 1) * h)
                                                             for s in w]) for w in windows_])  # fmt: skip

    def pair(self, receiver: LoadedModel, sharer: LoadedModel, passage: str, chat: bool, queries: bool = False
             ) -> PassagePair:  # fmt: skip
        """`passage_pair` with the states these maps read and write."""
        return passage_pair(receiver, sharer, passage, chat, queries=queries, states_of=self.sharer_layers or None,
                            entering=self.layers or None)  # fmt: skip

    def blocks(self, pair: PassagePair) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(entry_features(pair.s_states[:, cols], pair.embedding), mine[pair.start:])
                for cols, mine in zip(self.columns, pair.r_entering or [])]  # fmt: skip


def accumulate(receiver: LoadedModel, sharer: LoadedModel, texts: list[tuple[str, str]], state_path: Path,
               width: int = 3, chat: bool = True, every_s: float = 120.0,
               keep: Callable[[int, PassagePair], None] | None = None, kept: Collection[int] = (),
               entry_layers: Collection[int] = (), entry_window: int = 1) -> FitState:  # fmt: skip
    """Read `texts` ((source, passage) pairs) with both models into the moments at `state_path` (stream_moments:
    resumable), per receiver layer every feature of FEATURES against its keys and values; with `entry_layers`
    (checked by the caller: entries.check_entry_layers), from the same reading the moments of an entry map per
    layer (`EntryReading`), after the layers' own. The passages whose index is in `kept` are read with the
    receiver's queries too and handed to `keep` (the refinement's pairs: the models read each passage once)."""
    layout = layout_of(receiver, sharer, width, entry_layers, entry_window)
    cfg = full_config(layout)
    dims = [(cfg.feature_dim(r, cfg.key_features), 2 * g.kv_dim) for r, g in enumerate(cfg.receiver_geo.layers)]
    dims += [(cfg.entry_dim(), cfg.receiver_hidden)] * len(cfg.entry_layers)
    entries = EntryReading.of(cfg)

    def read(index: int, passage: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        pair = entries.pair(receiver, sharer, passage, chat, queries=index in kept)
        blocks = [(gather_features(list(FEATURES), cfg.windows[r], pair.s_keys, pair.s_values, pair.embedding),
                   pair.targets(r)) for r in range(len(cfg.windows))]  # fmt: skip
        blocks += entries.blocks(pair)
        if keep is not None and index in kept:
            pair.s_states, pair.r_entering = None, None  # the refinement reads neither
            keep(index, pair)
        return blocks

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
    if cfg.entry_layers:  # read beside the layers' moments: solved from the same reading
        n = len(cfg.windows)
        solve_entries(translator, state.fit[n:], state.held[n:], state, shared=True)
    return translator


def solve_entries(translator: Translator, fit: list[Moments], held: list[Moments], state: FitState,
                  text: str = "", shared: bool = False) -> None:
    """Solve `translator`'s entry maps (one per config.entry_layers, in order) from their moments `fit` and `held`
    in place, and record them in its fit record: held-out R², ridge, what they read (`state`'s passages; `shared`:
    the reading the key and value maps' moments were gathered in, whose seconds they are)."""
    cfg = translator.config
    r2, strength, centre_r2 = [], [], []
    cols = torch.arange(cfg.entry_dim())
    h, targets = cfg.sharer_hidden, slice(0, cfg.receiver_hidden)
    for i, m in enumerate(cfg.entry_layers):
        w, b, lam, score = ridge(fit[i], held[i], cols, targets)
        translator.entries[str(m)].weight.copy_(w.T.float())
        translator.entries[str(m)].bias.copy_(b.float())
        r2.append(round(score, 4))
        strength.append(lam)
        if cfg.entry_window > 1:  # what the window buys: the same moments, the central layer and the embeddings alone
            j = cfg.entry_sharer_layers(m).index(cfg.entry_sharer_layer(m))
            centre = torch.cat([torch.arange(j * h, (j + 1) * h), torch.arange(cfg.entry_window * h, cfg.entry_dim())])
            centre_r2.append(round(ridge(fit[i], held[i], centre, targets)[3], 4))
    cfg.fit["entries"] = {"layers": list(cfg.entry_layers),
                          "sharer_layers": [cfg.entry_sharer_layers(m) for m in cfg.entry_layers], "r2": r2,
                          "ridge": strength, "passages": dict(state.sources), "tokens": state.tokens, "text": text,
                          "seconds": round(state.seconds, 1), **({"read_with_maps": True} if shared else {}),
                          **({"r2_central_layer_only": centre_r2} if centre_r2 else {})}  # fmt: skip


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
