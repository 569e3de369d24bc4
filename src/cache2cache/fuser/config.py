"""FuserConfig: everything needed to rebuild a fuser and to check it against a model pair."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import C2CError
from ..version import __version__

# Named sizes. "compact" is a few percent of a 135M receiver; "paper" has the width (1024) and MLP depth of the
# C2C paper's projector, which is larger than a 135M receiver itself.
PRESETS: dict[str, dict] = {
    "compact": {"hidden_dim": 128, "num_blocks": 1, "ffn_mult": 2},
    "base": {"hidden_dim": 256, "num_blocks": 2, "ffn_mult": 2},
    "paper": {"hidden_dim": 1024, "num_blocks": 1, "ffn_mult": 1},  # 1024 wide, 4 linear layers deep
}


@dataclass
class FuserConfig:
    """Config of one receiver<-sharer fuser. Saved as config.json next to model.safetensors."""

    receiver: str = field(default="", metadata={"help": "receiver model name (catalog name, dir name or hub id)"})
    sharer: str = field(default="", metadata={"help": "sharer model name"})
    receiver_geometry: dict = field(default_factory=dict, metadata={"help": "receiver KV shapes (kv.ModelGeometry)"})
    sharer_geometry: dict = field(default_factory=dict, metadata={"help": "sharer KV shapes (kv.ModelGeometry)"})
    layer_map: list = field(default_factory=list, metadata={"help": "per receiver layer: sharer layer or null"})
    layer_alignment: str = field(default="terminal", metadata={"help": "rule that produced layer_map"})
    token_alignment: str = field(default="offsets", metadata={"help": "offsets, first or longest"})
    hidden_dim: int = field(default=128, metadata={"help": "width of the projection MLP"})
    num_blocks: int = field(default=1, metadata={"help": "normalised feed-forward blocks in the projection"})
    ffn_mult: int = field(default=2, metadata={"help": "expansion factor inside each block"})
    gate_init: float = field(default=1.0, metadata={"help": "initial gate logit (>0: open at inference)"})
    zero_init: bool = field(default=True, metadata={"help": "zero output projection: an untrained fuser is a no-op"})
    receiver_fingerprint: str = field(default="", metadata={"help": "identity fingerprint of the receiver trained "
                                                                    "with ('' = not recorded)"})
    sharer_fingerprint: str = field(default="", metadata={"help": "identity fingerprint of the sharer trained with"})
    c2c_version: str = field(default=__version__, metadata={"help": "cache2cache version that wrote this config"})

    def __post_init__(self) -> None:
        """Every field of the declared type and every reference in range: a hand-edited or truncated config.json
        fails here with one line, not later inside the model code."""
        kinds = {"str": str, "dict": dict, "list": list, "int": int, "float": (int, float), "bool": bool}
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, kinds[f.type]) or (f.type in ("int", "float") and isinstance(value, bool)):
                raise C2CError(f"FuserConfig.{f.name} must be a {f.type}, got {value!r}")
        from ..alignment.tokens import STRATEGIES  # imported here: both pull in transformers, which a bare
        from ..kv import ModelGeometry  # config (read by `c2c --help`-fast code paths) does not need

        if self.token_alignment not in STRATEGIES:
            raise C2CError(f"FuserConfig.token_alignment must be one of {STRATEGIES}, got {self.token_alignment!r}")
        n_sharer = None
        for name in ("receiver_geometry", "sharer_geometry"):
            geometry = getattr(self, name)
            if geometry:
                try:
                    layers = ModelGeometry.from_dict(geometry).layers
                except (KeyError, TypeError, ValueError) as e:
                    raise C2CError(f"FuserConfig.{name} is not a model geometry ({type(e).__name__}: {e})") from None
                n_sharer = len(layers) if name == "sharer_geometry" else n_sharer
        for s in self.layer_map:
            if s is not None and not (type(s) is int and 0 <= s < (n_sharer if n_sharer is not None else 1 << 30)):
                raise C2CError(f"FuserConfig.layer_map entries must be sharer layer numbers "
                               f"(0-{(n_sharer or 1) - 1}) or null, got {s!r}")  # fmt: skip
        for name in ("hidden_dim", "num_blocks", "ffn_mult"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "num_blocks" else 1):
                raise C2CError(f"FuserConfig.{name} must be a positive integer, got {value!r}")
        n_recv = len(self.receiver_geometry.get("layers", [])) if self.receiver_geometry else None
        if n_recv is not None and len(self.layer_map) != n_recv:
            raise C2CError(f"layer_map has {len(self.layer_map)} entries but the receiver has {n_recv} layers")

    def fused_layers(self) -> list[tuple[int, int]]:
        """(receiver layer, sharer layer) pairs that this fuser writes to."""
        return [(r, s) for r, s in enumerate(self.layer_map) if s is not None]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def save(self, directory: Path) -> None:
        (directory / "config.json").write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, directory: Path) -> "FuserConfig":
        from ..adapter_dir import load_config

        return load_config(cls, directory, "fuser", ("receiver_geometry", "sharer_geometry", "layer_map"))
