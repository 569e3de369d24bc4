"""A translator's whole recipe in one dataclass (and one TOML file): the ridge fit, the two refinements and the
distillation, so `c2c fit --recipe configs/translator_default.toml` reproduces the shipped translator's procedure
with one command, and `start_from` continues from a saved translator instead of fitting one.

Steps, each optional after the first:
    fit        ridge maps from the moments of `text` (resumable, fit.py), or `start_from` a saved translator
    refine     the key maps against the receiver's attention on `refine` passages (refine.py)
    values     (`refine_values`) the value maps against its attention output on the same passages
    entries    (`entry_layers`) maps of the receiver's state entering those layers, on `text`: what `--own-from M`,
               the knob from the top, reads; gathered in the fit's own reading (fit.accumulate), or after
               `start_from` in a reading of their own (entries.py)
    distill    (`distill` steps) every key and value map end to end (with `mlp_width`, each with a nonlinear
               branch beside it, translator.Residual) on the same passages, or on exchanges shaped
               like a message's use (`distill_on`, built by the caller: training/exchanges.py) (distill.py); with
               `distill_own_from` M, the entry map of M alone, the receiver recomputing its layers M.. from it;
               with `distill_own_tokens` P, every map, the receiver recomputing its picked share P of the brief's
               tokens (`--own-tokens P`): the maps learn to serve beside the receiver's own tokens
The refinement's passages are `refine` of the fit's own (spread over them, read once with the moments) or, with
`refine_text`, the `refine_skip`-th on of that text (read apart). A fifth of them is held out.
"""

from __future__ import annotations

import tomllib
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path

import torch

from ..caches.identity import identity_of
from ..errors import C2CError
from ..models.loading import LoadedModel
from .config import FEATURES
from .distill import Exchange, check_teacher, distill, record_exchanges, record_top_k
from .entries import check_entry_layers, fit_entries
from .fit import accumulate, solve
from .recompute import Recompute
from .recordings import Reading, recorded
from .refine import compact, record, refine_keys, refine_values
from .text import DEFAULT_TEXT, parse_text_spec, passages
from .translator import Translator

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _kind(f: Field) -> type:
    """The type a recipe file must give field `f`."""
    if f.default_factory is not MISSING:
        return list
    return int if f.default is None else type(f.default)


@dataclass
class FitRecipe:
    receiver: str = ""  # empty: the default pair's (cli/fit_cmd.py)
    sharer: str = ""
    text: str = DEFAULT_TEXT
    max_chars: int = 1200
    window: int = 1  # sharer layers gathered per receiver layer
    use_window: int | None = None  # key maps solved from the central N of them (None: all)
    value_window: int | None = None  # value maps from the central N (None: as use_window)
    key_features: list = field(default_factory=lambda: ["keys", "embedding"])
    value_features: list = field(default_factory=lambda: ["values", "embedding"])
    start_from: str = ""  # a saved translator folder: no ridge fit, refine and distil it
    refine: int = 96  # passages for the refinements and the distillation (0: ridge only)
    refine_text: str = ""  # take them from this text instead of the fit's
    refine_skip: int = 0  # ... from its refine_skip-th passage on
    refine_steps: int = 200  # per layer (0: no refinement, e.g. to distil a saved translator only)
    refine_lr: float = 1e-3
    refine_values: bool = False
    distill: int = 0  # steps of end-to-end distillation (0: off)
    distill_lr: float = 3e-5
    distill_batch: int = 4
    distill_target: str = "receiver"  # whose reading the distillation matches: "receiver" or "sharer" (same vocab)
    distill_top_k: int = 0  # > 0: the target's top-k recorded once per passage (kl.py); 0: exact, read at each use
    distill_on: str = ""  # exchanges to distil on instead of the refinement passages, e.g. "note:sciq:400"
    distill_own_from: int = 0  # > 0: distil the entry map of this layer alone, through the knob (not the maps)
    distill_own_tokens: float = 1.0  # < 1: distil the maps through `--own-tokens` this share (recompute.py)
    entry_layers: list = field(default_factory=list)  # receiver layers m for `--own-from m` (entries.py)
    entry_window: int = 1  # sharer layers whose entering states each entry map reads
    mlp_width: int = 0  # > 0: give every map a nonlinear branch this wide before distilling (translator.Residual)
    mlp_lr: float = 3e-4  # the branches' learning rate (absolute: they start at zero)
    dtype: str = "float32"  # of the saved weights
    chat: bool = True

    def __post_init__(self) -> None:
        for name in ("text", "refine_text"):
            if getattr(self, name):
                parse_text_spec(getattr(self, name))  # a bad source fails before any model loads
        if min(self.refine, self.distill, self.refine_skip, self.refine_steps, self.distill_top_k) < 0:
            raise C2CError("refine, refine_skip, refine_steps, distill and distill_top_k must be >= 0")
        if (self.refine_values or (self.distill and not self.distill_on)) and not self.refine:
            raise C2CError("refine_values and distill train on the refinement passages: give refine N > 0 "
                           "(or distill_on exchanges)")
        if (self.distill_on or self.distill_own_from or self.distill_own_tokens != 1) and not self.distill:
            raise C2CError("distill_on, distill_own_from and distill_own_tokens shape the distillation: give distill "
                           "STEPS > 0 too")
        if not isinstance(self.distill_own_tokens, (int, float)) or not 0 < self.distill_own_tokens <= 1:
            raise C2CError(f"recipe: distill_own_tokens must be a share in (0, 1], got {self.distill_own_tokens!r}")
        if self.distill_own_from and self.distill_own_tokens != 1:
            raise C2CError("recipe: distil through distill_own_from or distill_own_tokens, not both")
        if self.distill_lr <= 0 or self.mlp_lr <= 0:
            raise C2CError(f"recipe: distill_lr and mlp_lr must be > 0, got {self.distill_lr}, {self.mlp_lr}")
        if self.mlp_width < 0 or (self.mlp_width and (not self.distill or self.distill_own_from)):
            raise C2CError("mlp_width: the maps' nonlinear branches train only by distilling the maps: give distill "
                           "STEPS > 0 (and no distill_own_from), or mlp_width 0")
        if self.distill_own_from < 0:
            raise C2CError(f"recipe: distill_own_from must be a receiver layer >= 1, got {self.distill_own_from}")
        if self.distill_own_from and not self.start_from and self.distill_own_from not in self.entry_layers:
            raise C2CError(f"distill_own_from {self.distill_own_from}: a fresh translator has no entry map for it; "
                           "add it to entry_layers")  # fmt: skip
        for name in ("key_features", "value_features"):
            feats = getattr(self, name)
            if not isinstance(feats, list) or not feats or any(f not in FEATURES for f in feats):
                raise C2CError(f"recipe: {name} must be a list from {', '.join(FEATURES)}, got {feats!r}")
        if self.distill_target not in ("receiver", "sharer"):
            raise C2CError(f"recipe: distill_target must be receiver or sharer, got {self.distill_target!r}")
        if not isinstance(self.entry_layers, list) or any(type(m) is not int or m < 1 for m in self.entry_layers):
            raise C2CError(f"recipe: entry_layers must be a list of receiver layers >= 1, got {self.entry_layers!r}")
        if self.entry_window < 1:
            raise C2CError(f"recipe: entry_window must be >= 1, got {self.entry_window}")
        if self.dtype not in DTYPES:
            raise C2CError(f"recipe: dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    @classmethod
    def load(cls, path: Path, **overrides) -> "FitRecipe":
        """A recipe from a TOML file (every key a field; unknown keys are errors, never ignored), `overrides`
        (the command line's explicit flags) on top."""
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise C2CError(f"recipe file not found: {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise C2CError(f"recipe {path} is not valid TOML: {e}") from None
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise C2CError(f"recipe {path}: unknown key(s) {unknown}; known: {', '.join(known)}")
        for key, value in raw.items():
            want = _kind(known[key])
            ok = isinstance(value, bool) if want is bool else not isinstance(value, bool) and isinstance(
                value, (int, float) if want is float else want)  # fmt: skip
            if not ok:
                raise C2CError(f"recipe {path}: {key} must be of type {want.__name__}, got {value!r}")
        return cls(**{**raw, **overrides})

    @property
    def knob(self) -> Recompute:
        """The knob the distillation's student is served under (recompute.py)."""
        return Recompute(own_from=self.distill_own_from, own_tokens=self.distill_own_tokens)

    def refinement_texts(self, fit_texts: list[tuple[str, str]]) -> tuple[list[int], list[tuple[str, str]]]:
        """Which fit passages the refinement reuses (their indices), or the passages it reads apart."""
        if not self.refine:
            return [], []
        if self.refine_text:
            return [], passages(self.refine_text, self.max_chars)[self.refine_skip:self.refine_skip + self.refine]
        if self.start_from:
            return [], fit_texts[self.refine_skip:self.refine_skip + self.refine]
        step = max(1, len(fit_texts) // self.refine)
        return list(range(1, len(fit_texts), step))[:self.refine], []


def run_recipe(recipe: FitRecipe, receiver: LoadedModel, sharer: LoadedModel, stats: Path,
               exchanges: list[Exchange] | None = None, recordings: Path | None = None) -> Translator:  # fmt: skip
    """Every step of `recipe` on the loaded pair; the translator, not yet saved. `exchanges`: what `distill_on`
    names, built by the caller (they are question sets, a floor above this one). `recordings`: a file that keeps
    what both models (and the distillation's teacher) read for the refinements and the distillation, reused by the
    next fit of the same reading (recordings.py)."""
    teacher = sharer if recipe.distill_target == "sharer" else receiver
    if recipe.distill:
        check_teacher(receiver, teacher)  # before an hour of fitting, not after
    if recipe.distill_on and not exchanges:
        raise C2CError(f"the recipe distils on {recipe.distill_on!r}: pass those exchanges (training/exchanges.py)")
    if recipe.entry_layers:
        check_entry_layers(receiver, recipe.entry_layers)
    chat = recipe.chat
    text_read = f"{recipe.text} (passages cut to {recipe.max_chars} characters)"
    texts = [] if recipe.start_from and recipe.refine_text else passages(recipe.text, recipe.max_chars)
    picked, apart = recipe.refinement_texts(texts)
    pairs: dict[int, object] = {}  # the refinement's passages, kept while the moments read them
    if recipe.start_from:
        translator = Translator.from_pretrained(recipe.start_from, receiver.device)
        translator.check_pair(identity_of(receiver), identity_of(sharer))  # one line, not a shape error mid-fit
    else:
        reuse = recordings is not None and recordings.is_file()  # the refinement's passages come from there
        state = accumulate(receiver, sharer, texts, stats, recipe.window, chat=chat,
                           keep=lambda i, pair: pairs.__setitem__(i, compact(pair)),
                           kept=set() if recipe.distill_own_from or reuse else set(picked),
                           entry_layers=recipe.entry_layers, entry_window=recipe.entry_window)  # fmt: skip
        translator = solve(state, recipe.key_features, recipe.value_features, width=recipe.use_window,
                           value_width=recipe.value_window)  # fmt: skip
        translator.config.fit["text"] = text_read
        if recipe.entry_layers:  # solved from the same reading
            translator.config.fit["entries"]["text"] = text_read
    entry = recipe.distill_own_from
    if entry and entry not in recipe.entry_layers + translator.config.entry_layers:
        raise C2CError(f"distill_own_from {entry}: {recipe.start_from} has no entry map for it; add it to entry_layers")
    if recipe.entry_layers and recipe.start_from:  # before any distillation: an entry map to distil must exist
        translator = fit_entries(translator, receiver, sharer, texts or passages(recipe.text, recipe.max_chars),
                                 recipe.entry_layers, stats.with_name(f"{stats.stem}.entries.safetensors"), chat,
                                 text_read, recipe.entry_window)  # fmt: skip
    if recipe.mlp_width and recipe.mlp_width != translator.config.mlp_width:
        translator = translator.with_mlps(recipe.mlp_width)  # branches at zero: distillation trains them
    states_of = translator.config.entry_sharer_layers(entry) if entry else None  # what the entry map reads
    exchanges = exchanges or []
    top_k = recipe.distill_top_k if recipe.distill else 0
    reading = Reading.of(receiver.name, sharer.name, chat, states_of, teacher.name, top_k,
                         [texts[i][1] for i in picked] or [t for _, t in apart], exchanges)  # fmt: skip

    def record_all() -> tuple[list, list]:
        if picked:
            missing = [i for i in picked if i not in pairs]  # read before a resume: read them again
            pairs.update(zip(missing, record(receiver, sharer, [texts[i] for i in missing], chat=chat,
                                             states_of=states_of)))  # fmt: skip
        ordered = [pairs[i] for i in picked] or (record(receiver, sharer, apart, chat=chat, states_of=states_of)
                                                  if apart else [])  # fmt: skip
        shaped = record_exchanges(receiver, sharer, exchanges, chat, states_of) if exchanges else []
        if top_k:
            record_top_k(shaped or ordered, teacher, top_k, receiver.model.get_output_embeddings().weight.shape[0])
        return ordered, shaped

    ordered, shaped = recorded(recordings, reading, record_all)
    where = (f"{len(ordered)} of the fitting passages" if picked else
             f"{len(ordered)} passages of {recipe.refine_text or recipe.text} from the {recipe.refine_skip}th on")
    if ordered or shaped:
        refine_all(recipe, translator, receiver, teacher, ordered, where, shaped)
    return translator


def refine_all(recipe: FitRecipe, translator: Translator, receiver: LoadedModel, teacher: LoadedModel,
               ordered: list, where: str, shaped: list | None = None) -> None:  # fmt: skip
    """The refinements and the distillation, in order, on the recorded passages, the distillation on the
    recorded exchanges (`shaped`) where there are any (a fifth of either held out)."""
    train, kept_out = held_fifth(ordered)
    steps = [("refined_keys", where, lambda: refine_keys(translator, receiver, train, kept_out, recipe.refine_steps,
                                                         recipe.refine_lr))] if ordered and recipe.refine_steps else []
    if ordered and recipe.refine_values and recipe.refine_steps:
        steps.append(("refined_values", where, lambda: refine_values(translator, receiver, train, kept_out,
                                                                     recipe.refine_steps, recipe.refine_lr)))
    if recipe.distill:
        d_train, d_held = held_fifth(shaped) if shaped else (train, kept_out)
        steps.append(("distilled_entry" if recipe.distill_own_from else "distilled",
                      f"{len(shaped)} exchanges of {recipe.distill_on}" if shaped else where,
                      lambda: distill(translator, receiver, d_train, d_held, recipe.distill, recipe.distill_lr,
                                      recipe.distill_batch, teacher=teacher, top_k=recipe.distill_top_k,
                                      knob=recipe.knob, branch_lr=recipe.mlp_lr)))  # fmt: skip
    for kind, text, step in steps:
        step()
        translator.config.fit[kind]["text"] = text


def held_fifth(pairs: list) -> tuple[list, list]:
    """(train, held out): the first fifth of `pairs` (at least one) held out."""
    held = max(1, len(pairs) // 5)
    return pairs[held:], pairs[:held]
