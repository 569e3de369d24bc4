"""Refine a translator's key maps against the receiver's own attention, without a backward pass through a model.

Ridge keys are the best linear guess of each key, but what the receiver does with keys is a softmax over
`query · key`: a small error in the wrong direction sends a query to the wrong token, and shrinkage (every ridge
prediction is pulled toward the mean) flattens where it should be sharp. So, per receiver layer, the key map is
trained (from its ridge solution) to make the receiver's own queries attend over [its template tokens, the
translated brief] as they attend over [its template tokens, its own keys of the brief]: the KL divergence between
the two attention distributions, every head and every brief query, on passages both models read. Then the value
maps likewise, against what the layer hands on: its attention output through o_proj over the translated keys and
values, against the output over its own. The receiver's queries, its template keys and values and the targets are
recorded once; training touches only the maps.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from tqdm import tqdm

from ..atomic import write_bytes
from ..errors import C2CError
from ..kl import TopK
from ..models.loading import LoadedModel, decoder_layers
from .features import rotary, rotate
from .fit import PassagePair, passage_pair
from .translator import Translator, gather_features


@dataclass
class LayerAttention:
    """What one receiver layer needs to score translated keys: its heads, head size and attention scaling."""

    kv_heads: int
    heads: int
    head_dim: int
    scaling: float


def record(receiver: LoadedModel, sharer: LoadedModel, texts: list[tuple[str, str]], chat: bool = True,
           queries: bool = True, states_of: list[int] | None = None) -> list[PassagePair]:  # fmt: skip
    """Both models read each passage; the receiver's queries are kept unless `queries` is False (distillation
    does not read them; they are half a pair's memory), the sharer's features in 16 bits, with `states_of` its
    states entering those layers too (distilling an entry map)."""
    return [compact(passage_pair(receiver, sharer, passage, chat, queries=queries, states_of=states_of))
            for _, passage in tqdm(texts, desc="record", unit="passage", dynamic_ncols=True)]  # fmt: skip


def compact(pair: PassagePair) -> PassagePair:
    """A recorded pair with its sharer features in 16 bits (most of its memory), as refinement keeps it."""
    pair.s_keys = [k.half() for k in pair.s_keys]
    pair.s_values = [v.half() for v in pair.s_values]
    pair.s_states = pair.s_states.half() if pair.s_states is not None else None
    return pair


def save_pairs(pairs: list[PassagePair], path: Path, identity: dict | None = None) -> None:
    """Recorded passages as one safetensors file (never pickled), with what they are a recording of
    (`identity`, JSON; read back by `pairs_identity`)."""
    tensors, meta = {}, []
    for j, p in enumerate(pairs):
        for name in ("s_keys", "s_values", "r_keys", "r_values", "r_queries"):
            for i, t in enumerate(getattr(p, name) or []):
                tensors[f"{j}.{name}.{i}"] = t.contiguous()
        tensors[f"{j}.embedding"] = p.embedding.contiguous()
        if p.ids is not None:
            tensors[f"{j}.ids"] = torch.tensor(p.ids, dtype=torch.long)
        if p.s_states is not None:
            tensors[f"{j}.s_states"] = p.s_states.contiguous()
        if p.top_k is not None:
            tensors[f"{j}.top_logp"], tensors[f"{j}.top_ids"] = p.top_k.logp.contiguous(), p.top_k.ids.contiguous()
        meta.append({"start": p.start, "scored_from": p.scored_from, "teacher": p.top_k and p.top_k.teacher,
                     "layers": {n: len(getattr(p, n) or []) for n in
                                ("s_keys", "s_values", "r_keys", "r_values", "r_queries")}})  # fmt: skip
    write_bytes(path, save_bytes(tensors, metadata={"pairs": json.dumps(meta), "identity": json.dumps(identity)}))


def _metadata(path: Path) -> dict:
    """The header's metadata of a `save_pairs` file; a file that is not one is a C2CError, not a traceback."""
    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
        json.loads(meta["pairs"])
        return meta
    except (OSError, SafetensorError, KeyError, ValueError) as e:
        raise C2CError(f"{path} is not a file of recorded passages ({type(e).__name__}: {e}); delete it or name "
                       "another") from None  # fmt: skip


def pairs_identity(path: Path) -> dict | None:
    """What `save_pairs` said the file records (None: not said), read from its header alone."""
    return json.loads(_metadata(path).get("identity", "null"))


def load_pairs(path: Path) -> list[PassagePair]:
    meta = json.loads(_metadata(path)["pairs"])
    tensors = load_bytes(path.read_bytes())
    get = lambda j, name, k: [tensors[f"{j}.{name}.{i}"] for i in range(k)]  # noqa: E731
    return [PassagePair(get(j, "s_keys", m["layers"]["s_keys"]), get(j, "s_values", m["layers"]["s_values"]),
                        tensors[f"{j}.embedding"], get(j, "r_keys", m["layers"]["r_keys"]),
                        get(j, "r_values", m["layers"]["r_values"]), m["start"],
                        get(j, "r_queries", m["layers"]["r_queries"]) or None,
                        tensors[f"{j}.ids"].tolist() if f"{j}.ids" in tensors else None, m.get("scored_from", 0),
                        tensors.get(f"{j}.s_states"),
                        TopK(m["teacher"], tensors[f"{j}.top_logp"], tensors[f"{j}.top_ids"]) if m.get("teacher")
                        else None)
            for j, m in enumerate(meta)]  # fmt: skip


def _attention(q: torch.Tensor, k: torch.Tensor, start: int, scaling: float, kv_heads: int) -> torch.Tensor:
    """Log attention weights (kv_heads, group, Tq, Tk) of brief queries q (heads, Tq, D) over keys (kv, Tk, D):
    query t sits at position start + t and sees keys up to there."""
    h, tq, d = q.shape
    logits = torch.einsum("kgtd,ksd->kgts", q.view(kv_heads, h // kv_heads, tq, d), k) * scaling
    tk = k.shape[1]
    causal = torch.arange(tk)[None, :] <= (start + torch.arange(tq))[:, None]
    return logits.masked_fill(~causal, float("-inf")).log_softmax(-1)


def _own_and_translated_keys(translator: Translator, r: int, pair: PassagePair, info: LayerAttention,
                             receiver: LoadedModel, weight: torch.Tensor | None = None,
                             bias: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """Layer r's rotated keys (kv, n, D) of [template, brief]: the receiver's own, and with the brief translated
    (by `weight`/`bias` when given, else the key map as it is); and the brief's rotated queries (heads, Tq, D)."""
    n = pair.start + len(pair.embedding)
    cos, sin = rotary(receiver, r, torch.arange(n))
    d = info.head_dim
    own = rotate(pair.r_keys[r].view(n, info.kv_heads, d).transpose(0, 1), cos, sin)
    cfg, lin = translator.config, translator.keys[r]
    x = gather_features(cfg.key_features, cfg.window(r), pair.s_keys, pair.s_values, pair.embedding.float())
    pred = x @ (lin.weight if weight is None else weight).T + (lin.bias if bias is None else bias)
    pred = rotate(pred.view(-1, info.kv_heads, d).transpose(0, 1), cos[pair.start:], sin[pair.start:])
    q = rotate(pair.r_queries[r][pair.start:].view(-1, info.heads, d).transpose(0, 1), cos[pair.start:],
               sin[pair.start:])  # fmt: skip
    return own, torch.cat([own[:, :pair.start], pred], dim=1), q


def layer_kl(translator: Translator, r: int, pair: PassagePair, info: LayerAttention, receiver: LoadedModel,
             weight: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Mean KL(own attention || attention over the translated brief) of layer r's brief queries on one passage."""
    own, mixed, q = _own_and_translated_keys(translator, r, pair, info, receiver, weight, bias)
    log_own = _attention(q, own, pair.start, info.scaling, info.kv_heads)
    log_new = _attention(q, mixed, pair.start, info.scaling, info.kv_heads)
    p = log_own.exp()
    return (p * (log_own - log_new).nan_to_num(0.0, 0.0, 0.0)).sum(-1).mean()


def layer_output_error(translator: Translator, r: int, pair: PassagePair, info: LayerAttention,
                       receiver: LoadedModel, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Layer r's attention output (after its o_proj) over the translated brief, as the receiver will read it
    (translated keys and values), against its output over its own keys and values: squared error relative to the
    output's own size, over the brief's queries. What a value is worth depends on who attends to it: this is the
    error that reaches the residual stream, not the values' R²."""
    own, mixed, q = _own_and_translated_keys(translator, r, pair, info, receiver)
    cfg, n, d = translator.config, pair.start + len(pair.embedding), info.head_dim
    x = gather_features(cfg.value_features, cfg.window(r, "values"), pair.s_keys, pair.s_values,
                        pair.embedding.float())  # fmt: skip
    values = pair.r_values[r].float().view(n, info.kv_heads, d).transpose(0, 1)
    pred = (x @ weight.T + bias).view(-1, info.kv_heads, d).transpose(0, 1)
    mixed_values = torch.cat([values[:, :pair.start], pred], dim=1)
    o_proj = decoder_layers(receiver.model)[r].self_attn.o_proj.weight.float()

    def output(log_attn: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        o = torch.einsum("kgts,ksd->kgtd", log_attn.exp(), v)  # (kv, group, Tq, D)
        return o.reshape(info.heads, -1, d).transpose(0, 1).reshape(-1, info.heads * d) @ o_proj.T

    with torch.no_grad():
        target = output(_attention(q, own, pair.start, info.scaling, info.kv_heads), values)
        log_new = _attention(q, mixed, pair.start, info.scaling, info.kv_heads)
    return (output(log_new, mixed_values) - target).pow(2).sum() / target.pow(2).sum().clamp_min(1e-12)


def layer_info(receiver: LoadedModel, r: int) -> LayerAttention:
    attn = decoder_layers(receiver.model)[r].self_attn
    cfg = receiver.model.config.get_text_config()
    head_dim = getattr(attn, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return LayerAttention(cfg.num_key_value_heads, cfg.num_attention_heads, head_dim, float(attn.scaling))


def refine_keys(translator: Translator, receiver: LoadedModel, train: list[PassagePair], held: list[PassagePair],
                steps: int = 200, lr: float = 1e-3, batch: int = 8, seed: int = 0, layers: int | None = None
                ) -> list[tuple[float, float]]:  # fmt: skip
    """Train every layer's key map (the first `layers` only, if given) on `train` (KL of attention, Adam from the
    ridge solution), keep the step with the lowest KL on `held` (checked every 25 steps); returns per layer
    (held-out KL before, after)."""
    return _refine(translator, "keys", layer_kl, receiver, train, held, steps, lr, batch, seed, layers)


def refine_values(translator: Translator, receiver: LoadedModel, train: list[PassagePair], held: list[PassagePair],
                  steps: int = 200, lr: float = 1e-3, batch: int = 8, seed: int = 0, layers: int | None = None
                  ) -> list[tuple[float, float]]:  # fmt: skip
    """As `refine_keys`, for the value maps, against the receiver's attention output through the translated keys
    (`layer_output_error`): refine the keys first, so the values learn to serve the attention the receiver will
    really have. Returns per layer (held-out relative error before, after)."""
    return _refine(translator, "values", layer_output_error, receiver, train, held, steps, lr, batch, seed, layers)


def _refine(translator: Translator, kind: str, loss_of, receiver: LoadedModel, train: list[PassagePair],
            held: list[PassagePair], steps: int, lr: float, batch: int, seed: int, layers: int | None
            ) -> list[tuple[float, float]]:  # fmt: skip
    """Adam on each layer's `kind` map (from where it is) to lower `loss_of` on `train`, keeping the step with
    the lowest loss on `held`; records the report in the translator's fit under `refined_<kind>`."""
    rng = random.Random(seed)
    report = []
    maps = getattr(translator, kind)
    todo = range(len(maps) if layers is None else min(layers, len(maps)))
    for r in tqdm(todo, desc=f"refine {kind}", unit="layer", dynamic_ncols=True):
        info = layer_info(receiver, r)
        lin = maps[r]
        w = lin.weight.detach().clone().requires_grad_(True)
        b = lin.bias.detach().clone().requires_grad_(True)
        scale = w.detach().abs().mean().item() or 1.0
        opt = torch.optim.Adam([w, b], lr=lr * scale)

        def held_loss() -> float:
            with torch.no_grad():
                return sum(loss_of(translator, r, p, info, receiver, w, b).item() for p in held) / max(1, len(held))

        before = best = held_loss()
        best_wb = (w.detach().clone(), b.detach().clone())
        for step in range(1, steps + 1):
            with torch.enable_grad():
                picked = rng.sample(train, min(batch, len(train)))
                loss = sum(loss_of(translator, r, p, info, receiver, w, b) for p in picked)
                opt.zero_grad()
                (loss / batch).backward()
            opt.step()
            if step % 25 == 0 or step == steps:
                now = held_loss()
                if now < best:
                    best, best_wb = now, (w.detach().clone(), b.detach().clone())
        with torch.no_grad():
            lin.weight.copy_(best_wb[0])
            lin.bias.copy_(best_wb[1])
        report.append((before, best))
    name = "kl_held_out" if kind == "keys" else "error_held_out"
    translator.config.fit[f"refined_{kind}"] = {name: report, "steps": steps, "lr": lr, "passages": len(train),
                                                "held_out": len(held)}  # fmt: skip
    return report
