"""TranslatorConfig: everything needed to rebuild a translator and to check it against a model pair, validated
on load (a corrupt or foreign config is a one-line error; unknown keys and newer writers are warned about,
adapter_dir.load_config)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..adapter_dir import load_config, read_config
from ..errors import C2CError
from ..kv import ModelGeometry
from ..version import __version__

# What a map may read: the sharer's keys and values, the receiver's embedding of the token and of the token before it
# ("previous": what the keys of the receiver's previous-token and induction heads carry, so copying can find it).
FEATURES = ("keys", "values", "embedding", "previous")
TOKEN_FEATURES = ("embedding", "previous")  # read from the receiver's embedding of the brief's tokens


def windows(n_receiver: int, n_sharer: int, width: int) -> list[list[int]]:
    """Per receiver layer, the `width` sharer layers nearest its relative depth (clamped at both ends)."""
    out = []
    for r in range(n_receiver):
        centre = round(r * (n_sharer - 1) / max(1, n_receiver - 1))
        lo = min(max(centre - (width - 1) // 2, 0), max(0, n_sharer - width))
        out.append(list(range(lo, min(lo + width, n_sharer))))
    return out


@dataclass
class TranslatorConfig:
    receiver: str
    sharer: str
    receiver_geometry: dict
    sharer_geometry: dict
    windows: list  # per receiver layer: the sharer layers its key map reads (and its value map, unless below)
    key_features: list = field(default_factory=lambda: list(FEATURES))
    value_features: list = field(default_factory=lambda: list(FEATURES))
    receiver_hidden: int = 0  # the receiver's embedding width (0 when no map reads the embedding)
    receiver_fingerprint: str = ""
    sharer_fingerprint: str = ""
    fit: dict = field(default_factory=dict)  # fitting text, tokens, ridge per layer, held-out R² per layer
    value_windows: list | None = None  # per receiver layer: the sharer layers its value map reads (None: windows)
    # The knob from the top (recompute.py): receiver layers m whose entering hidden state a map writes, from the
    # sharer's state entering the layer of the same relative depth and the token's (and previous token's) embedding
    entry_layers: list = field(default_factory=list)
    sharer_hidden: int = 0  # the sharer's hidden size (what the entry maps read)
    entry_window: int = 1  # sharer layers around that depth whose entering states an entry map reads
    mlp_width: int = 0  # > 0: each key and value map adds a nonlinear branch this wide (translator.Residual)
    c2c_version: str = __version__

    def __post_init__(self) -> None:
        try:
            recv = ModelGeometry.from_dict(self.receiver_geometry)
            shar = ModelGeometry.from_dict(self.sharer_geometry)
        except (KeyError, TypeError, ValueError) as e:
            raise C2CError(f"translator config: not a model geometry ({type(e).__name__}: {e})") from None
        if not isinstance(self.windows, list) or len(self.windows) != recv.num_layers:
            raise C2CError(f"translator config: windows needs one entry per receiver layer ({recv.num_layers})")
        if self.value_windows is not None and (not isinstance(self.value_windows, list)
                                               or len(self.value_windows) != recv.num_layers):  # fmt: skip
            raise C2CError(f"translator config: value_windows needs one entry per receiver layer ({recv.num_layers})")
        for w in self.windows + (self.value_windows or []):
            if not isinstance(w, list) or not w or any(type(s) is not int or not 0 <= s < shar.num_layers for s in w):
                raise C2CError(
                    f"translator config: a window must list sharer layers 0-{shar.num_layers - 1}, got {w!r}"
                )
        for name in ("key_features", "value_features"):
            feats = getattr(self, name)
            if not isinstance(feats, list) or not feats or any(f not in FEATURES for f in feats):
                raise C2CError(f"translator config: {name} must be a non-empty list from {FEATURES}, got {feats!r}")
        n = recv.num_layers
        if not isinstance(self.entry_layers, list) or any(type(m) is not int or not 0 < m < n
                                                           for m in self.entry_layers):  # fmt: skip
            raise C2CError(f"translator config: entry_layers must list receiver layers 1-{n - 1}, "
                           f"got {self.entry_layers!r}")  # fmt: skip
        if self.entry_layers and (type(self.sharer_hidden) is not int or self.sharer_hidden < 1):
            raise C2CError("translator config: entry maps need sharer_hidden, the sharer's hidden size")
        if type(self.mlp_width) is not int or self.mlp_width < 0:
            raise C2CError(f"translator config: mlp_width must be an integer >= 0, got {self.mlp_width!r}")
        if type(self.entry_window) is not int or not 1 <= self.entry_window <= shar.num_layers:
            raise C2CError(f"translator config: entry_window must be 1-{shar.num_layers}, got {self.entry_window!r}")
        uses_embedding = any(f in TOKEN_FEATURES for f in self.key_features + self.value_features)
        uses_embedding = uses_embedding or bool(self.entry_layers)
        if uses_embedding and (type(self.receiver_hidden) is not int or self.receiver_hidden < 1):
            raise C2CError("translator config: receiver_hidden must be the receiver's embedding width")

    @property
    def receiver_geo(self) -> ModelGeometry:
        return ModelGeometry.from_dict(self.receiver_geometry)

    @property
    def sharer_geo(self) -> ModelGeometry:
        return ModelGeometry.from_dict(self.sharer_geometry)

    def window(self, r: int, maps: str = "keys") -> list[int]:
        """The sharer layers receiver layer r's key (or value) map reads."""
        return self.value_windows[r] if maps == "values" and self.value_windows is not None else self.windows[r]

    def feature_dim(self, r: int, feats: list[str], maps: str = "keys") -> int:
        shar = self.sharer_geo
        dim = sum(shar.layers[s].kv_dim for s in self.window(r, maps)) * sum(f in feats for f in ("keys", "values"))
        return dim + self.receiver_hidden * sum(f in feats for f in TOKEN_FEATURES)

    def entry_sharer_layer(self, m: int) -> int:
        """The sharer layer whose entering state receiver layer m's entry map reads: the same relative depth."""
        n_s = self.sharer_geo.num_layers
        return min(round(m * n_s / self.receiver_geo.num_layers), n_s - 1)

    def entry_sharer_layers(self, m: int) -> list[int]:
        """The `entry_window` sharer layers around `entry_sharer_layer(m)` (clamped at both ends), in order."""
        n_s, w = self.sharer_geo.num_layers, self.entry_window
        lo = min(max(self.entry_sharer_layer(m) - (w - 1) // 2, 0), n_s - w)
        return list(range(lo, lo + w))

    def sharer_depth(self, own_from: int = 0, own_to: int = 0) -> int:
        """How many of the sharer's layers a reading for this translator must run: the deepest layer the key and
        value maps of the layers it writes read (under the knob those below `own_from` and from `own_to` on, else
        all), and the states entering the entry map's layers (known before those layers run). Under the knob from
        the top the sharer stops about where the receiver's own layers take over."""
        n = self.receiver_geo.num_layers
        written = [r for r in range(n) if not own_from or not own_from <= r < (own_to or n)]
        deepest = [max(self.window(r, maps)) + 1 for r in written for maps, feats in
                   (("keys", self.key_features), ("values", self.value_features))
                   if any(f in ("keys", "values") for f in feats)]  # fmt: skip
        if own_from:
            deepest.append(max(self.entry_sharer_layers(own_from)))
        return max(deepest, default=0)

    def entry_dim(self) -> int:
        """What an entry map reads: the sharer's states (one per window layer), the receiver's embedding of the
        token and of the one before."""
        return self.entry_window * self.sharer_hidden + 2 * self.receiver_hidden

    def to_json(self) -> str:
        d = asdict(self)
        if not self.entry_layers:  # a translator without entry maps keeps the config (and fingerprint) it had
            del d["entry_layers"], d["sharer_hidden"]
        if self.entry_window == 1:  # likewise one with entry maps of one sharer layer
            del d["entry_window"]
        if not self.mlp_width:  # and one of affine maps only
            del d["mlp_width"]
        return json.dumps(d, indent=2, sort_keys=True)

    @classmethod
    def load(cls, directory: Path) -> "TranslatorConfig":
        raw = read_config(directory, "translator")
        if "layer_map" in raw:  # the other adapter kind: say so, not which flag (it depends on the command)
            raise C2CError(f"{directory} is a fuser, not a translator (fusers train with `c2c train` and serve "
                           "through --fuser)")  # fmt: skip
        if "windows" not in raw:
            raise C2CError(f"{directory} is not a translator (its config.json names no windows)")
        return load_config(cls, directory, "translator", ("receiver_geometry", "sharer_geometry", "windows"))
