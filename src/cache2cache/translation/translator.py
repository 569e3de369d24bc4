"""Translator: a fitted map from a sharer's keys and values to the receiver's own, for text only the sharer read.

A fuser *adds* to a cache the receiver computed itself; a translator *writes* the receiver's cache of text the
receiver never read. For every receiver layer it is an affine map (fitted in closed form, fit.py) from features of
the aligned sharer token to the receiver's pre-RoPE keys and its values of that token:

    features   the sharer's pre-RoPE keys and/or values at a window of sharer layers of about the same relative
               depth, and optionally the receiver's own input embedding of the token (its identity: which token
               is there, which the sharer's deep states describe only loosely) and of the token before it
    keys       rotated at the receiver's positions after the map

Saved like a fuser (PEFT-style): a directory with config.json (both models' names, fingerprints and KV geometry,
the features, the fitting text and the held-out R² per layer) and model.safetensors.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from ..adapter_dir import (
    check_pair,
    fingerprint,
    read_weights,
    resolve_dir,
    shipped_names,
    write_dir,
)
from ..caches.identity import ModelIdentity
from ..errors import C2CError
from .config import TOKEN_FEATURES, TranslatorConfig

SHIPPED = Path(__file__).resolve().parent.parent / "assets" / "translators"


def shipped_translators() -> list[str]:
    return shipped_names(SHIPPED)


def shipped_for(receiver: str, sharer: str) -> Path | None:
    """The translator shipped for this pair of catalog names, if any: what a run of the pair serves unasked."""
    for name in shipped_translators():
        config = TranslatorConfig.load(SHIPPED / name)
        if (config.receiver, config.sharer) == (receiver, sharer):
            return SHIPPED / name
    return None


def previous_tokens(embedding: torch.Tensor) -> torch.Tensor:
    """(T, hidden): each token's predecessor's embedding within the message (zeros for its first token)."""
    return torch.cat([torch.zeros_like(embedding[:1]), embedding[:-1]])


def gather_features(feats: list[str], window: list[int], sharer_keys: list[torch.Tensor],
                    sharer_values: list[torch.Tensor], embedding: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """(T, F): the chosen features of T tokens, in a fixed order (keys of the window, values, embedding, previous).
    "previous" is the embedding one token back within the message (zeros for its first token)."""
    parts = []
    if "keys" in feats:
        parts += [sharer_keys[s] for s in window]
    if "values" in feats:
        parts += [sharer_values[s] for s in window]
    if any(f in TOKEN_FEATURES for f in feats) and embedding is None:
        raise C2CError("this translator reads the receiver's embedding of the token ids: pass them")
    if "embedding" in feats:
        parts.append(embedding)
    if "previous" in feats:
        parts.append(previous_tokens(embedding))
    return torch.cat([p.float() for p in parts], dim=-1)


def entry_features(sharer_state: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
    """(T, F) what an entry map reads: the sharer's state, the receiver's embedding of the token and of the one
    before it (zeros for the message's first token)."""
    return torch.cat([sharer_state.float(), embedding.float(), previous_tokens(embedding).float()], -1)


def distilled_on(record: dict) -> str:
    """What a distillation's fit record says it read (older records only count their passages), and through which
    knob, if any."""
    knob = f" through `--own-tokens {record['own_tokens']:g}`" if "own_tokens" in record else ""
    return (record.get("text") or f"{record['passages']} passages") + knob


def earlier(record: dict) -> str:
    """', after earlier distillations: on A, then on B' for the records a distillation kept under `after` (oldest
    first), or '' for a first distillation."""
    chain = []
    while "after" in record:
        record = record["after"]
        chain.insert(0, distilled_on(record))
    if not chain:
        return ""
    kind = "an earlier distillation" if len(chain) == 1 else "earlier distillations"
    return f", after {kind}: on " + ", then on ".join(chain)


class Residual(nn.Module):
    """A nonlinear branch beside an affine map: normalised features, one GELU layer `width` wide, an output layer
    that starts at zero, so a translator gains it without changing what it writes until distillation trains it."""

    def __init__(self, d_in: int, d_out: int, width: int) -> None:
        super().__init__()
        self.norm, self.up, self.down = nn.LayerNorm(d_in), nn.Linear(d_in, width), nn.Linear(width, d_out)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(nn.functional.gelu(self.up(self.norm(x))))


class Translator(nn.Module):
    """Per receiver layer, an affine map for keys (`k{r}`) and one for values (`v{r}`), each with a `Residual`
    branch beside it when the config asks for one (`mlp_width`)."""

    def __init__(self, config: TranslatorConfig) -> None:
        super().__init__()
        self.config = config
        self.source: str | None = None
        recv = config.receiver_geo
        self.keys = nn.ModuleList(nn.Linear(config.feature_dim(r, config.key_features), g.kv_dim)
                                  for r, g in enumerate(recv.layers))  # fmt: skip
        self.values = nn.ModuleList(nn.Linear(config.feature_dim(r, config.value_features, "values"), g.kv_dim)
                                    for r, g in enumerate(recv.layers))  # fmt: skip
        self.entries = nn.ModuleDict({str(m): nn.Linear(config.entry_dim(), config.receiver_hidden)
                                      for m in config.entry_layers})  # fmt: skip
        w = config.mlp_width
        self.key_mlps = nn.ModuleList(Residual(m.in_features, m.out_features, w) for m in self.keys) if w else None
        self.value_mlps = nn.ModuleList(Residual(m.in_features, m.out_features, w) for m in self.values) if w else None
        self.requires_grad_(False)

    def with_mlps(self, width: int) -> "Translator":
        """A copy with `Residual` branches `width` wide beside every key and value map (new ones, starting at zero:
        it writes what this one writes until distilled); its other weights are this one's."""
        out = Translator(replace(self.config, mlp_width=width, fit=dict(self.config.fit)))
        kept = {k: v for k, v in self.state_dict().items() if "_mlps." not in k}
        out.load_state_dict(kept, strict=False)
        out.source = self.source
        return out.to(next(self.parameters()).device).eval()

    def maps_and_branches(self) -> tuple[list[nn.Module], list[nn.Module]]:
        """(the affine key and value maps, their nonlinear branches if any): what distillation trains."""
        return [*self.keys, *self.values], [*self.key_mlps, *self.value_mlps] if self.config.mlp_width else []

    @property
    def uses_embedding(self) -> bool:
        return any(f in TOKEN_FEATURES for f in self.config.key_features + self.config.value_features)

    kind = "translator"
    writes_unread = True  # writes the positions of a brief the receiver never read (maps.py)

    def fingerprint(self) -> str:
        """A hash of the config and the weights as they are now: what a translated cache records it was written
        with, so a receiver host files it under the translator it serves, never under another (nor under the
        receiver's own reading)."""
        return fingerprint(self.config.to_json(), self.state_dict())

    def check_pair(self, receiver: ModelIdentity, sharer: ModelIdentity) -> None:
        """Raise C2CError unless this translator was fitted for exactly this receiver and sharer (adapter_dir)."""
        check_pair("translator", self.config, receiver.name, receiver.geometry.to_dict(), sharer.name,
                   sharer.geometry.to_dict(), receiver.fingerprint, sharer.fingerprint)  # fmt: skip

    @torch.no_grad()
    def forward(self, sharer_keys: list[torch.Tensor], sharer_values: list[torch.Tensor],
                embedding: torch.Tensor | None, layers: int | None = None
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
        """Per receiver layer (the first `layers` when given), (pre-RoPE keys, values), each (kv_heads, T,
        head_dim) float32, from per sharer layer (T, kv_dim) pre-RoPE keys and values of the aligned tokens and
        their (T, hidden) receiver embedding."""
        return self.maps(sharer_keys, sharer_values, embedding, layers)

    def maps(self, sharer_keys: list[torch.Tensor], sharer_values: list[torch.Tensor],
             embedding: torch.Tensor | None, layers: int | None = None
             ) -> list[tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
        """`forward` under the caller's grad mode: what training the maps end to end differentiates. With
        `layers`, only the first that many receiver layers (the knob recomputes the others; the sharer's reading
        then need not reach the layers above, `config.sharer_depth`)."""
        out = []
        for r, g in enumerate(self.config.receiver_geo.layers[:layers]):
            cfg = self.config
            x_k = gather_features(cfg.key_features, cfg.window(r), sharer_keys, sharer_values, embedding)
            x_v = gather_features(cfg.value_features, cfg.window(r, "values"), sharer_keys, sharer_values, embedding)
            k, v = self.keys[r](x_k), self.values[r](x_v)
            if cfg.mlp_width:
                k, v = k + self.key_mlps[r](x_k), v + self.value_mlps[r](x_v)
            shape = (-1, g.kv_heads, g.head_dim)
            out.append((k.view(shape).transpose(0, 1), v.view(shape).transpose(0, 1)))
        return out

    def entry_state(self, m: int, sharer_state: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """(T, receiver hidden) float32: the receiver's hidden state entering layer m over T brief tokens, from the
        sharer's states entering layers `config.entry_sharer_layers(m)` of the aligned tokens, side by side
        (T, window * sharer hidden), and
        the receiver's (T, hidden) embedding of the tokens (recompute.py: the knob from the top)."""
        if str(m) not in self.entries:
            have = ", ".join(map(str, self.config.entry_layers)) or "none"
            raise C2CError(f"this translator has no map of the state entering receiver layer {m} (it has: {have}); "
                           "fit one with `c2c fit --from DIR --entry-layers M`")  # fmt: skip
        return self.entries[str(m)](entry_features(sharer_state, embedding))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- save / load ------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype = torch.float32) -> Path:
        """config.json + model.safetensors (+ README.md), written atomically; `dtype=torch.bfloat16` halves it."""
        return write_dir(directory, self.config.to_json(), self.state_dict(), "translator", self.model_card(), dtype)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu",
                        revision: str | None = None) -> "Translator":  # fmt: skip
        """A translator folder, a shipped one by name (`shipped_translators()`), or a Hub repo id."""
        directory = resolve_dir(directory, SHIPPED, revision)
        if not directory.is_dir():
            raise C2CError(f"translator directory not found: {directory}")
        translator = cls(TranslatorConfig.load(directory))
        state = read_weights(directory, "translator")
        want = translator.state_dict()
        if set(state) != set(want) or any(state[k].shape != want[k].shape for k in want):
            raise C2CError(f"translator weights in {directory} do not match its config")
        translator.load_state_dict({k: v.float() for k, v in state.items()})
        translator.source = str(directory)
        return translator.to(device).eval()

    def model_card(self) -> str:
        cfg, fit = self.config, self.config.fit
        r2 = fit.get("r2") or []
        mean = lambda i: sum(x[i] for x in r2) / len(r2) if r2 else float("nan")  # noqa: E731
        return (
            f"# cache2cache translator: {cfg.receiver} <- {cfg.sharer}\n\n"
            f"Writes {cfg.receiver}'s keys and values of text only {cfg.sharer} read (closed-form ridge maps).\n\n"
            f"- parameters: {self.num_parameters():,}\n"
            f"- features: keys <- {', '.join(cfg.key_features)}; values <- {', '.join(cfg.value_features)}\n"
            f"- sharer layers per receiver layer: keys {len(cfg.window(0))}, values {len(cfg.window(0, 'values'))}\n"
            f"- fitted on {fit.get('tokens', 0):,} receiver tokens of: "
            f"{fit.get('text') or ', '.join(fit.get('sources', []))}"
            f" ({', '.join(f'{k}: {v} passages' for k, v in fit.get('passages', {}).items())}; never evaluation data)\n"
            f"- held-out R², mean over layers: keys {mean(0):.3f}, values {mean(1):.3f}\n"
            + (
                f"- key maps refined against the receiver's attention on {fit['refined_keys']['passages']} passages\n"
                if "refined_keys" in fit
                else ""
            )
            + (
                f"- value maps refined against the receiver's attention output on {fit['refined_values']['passages']} "
                "passages\n"
                if "refined_values" in fit
                else ""
            )
            + (
                f"- all maps then distilled end to end (the receiver's next-token distributions after a translated "
                f"brief, against {fit['distilled'].get('teacher', 'the receiver')} reading it) on "
                f"{distilled_on(fit['distilled'])}" + (" (serve it so)" if "own_tokens" in fit["distilled"] else "")
                + f"{earlier(fit['distilled'])}\n"
                if "distilled" in fit
                else ""
            )
            + (
                f"- entry maps (the receiver recomputes its layers from m on: `--own-from m`) for layers "
                f"{', '.join(map(str, cfg.entry_layers))}, held-out R² {fit['entries']['r2']}, fitted on "
                f"{fit['entries']['tokens']:,} tokens of {fit['entries']['text']}\n"
                if cfg.entry_layers and "entries" in fit
                else ""
            )
            + (
                f"- the entry map of layer {fit['distilled_entry']['own_from']} then distilled end to end through "
                f"the knob on {distilled_on(fit['distilled_entry'])}{earlier(fit['distilled_entry'])}\n"
                if "distilled_entry" in fit
                else ""
            )
            + (f"- every map with a nonlinear branch {cfg.mlp_width} wide (trained by the distillation)\n"
               if cfg.mlp_width else "")
            + f"- written by cache2cache {cfg.c2c_version}\n\n"
            "Load with `cache2cache.Translator.from_pretrained(dir)`, or `c2c generate --translator DIR`.\n"
        )
