"""Which model made a cache: its name, a fingerprint of its config and weights, and its KV geometry.

A cache is only meaningful to the model that computed it (or, through a fuser, to that model's partner).
The fingerprint hashes the model's config and a fixed probe of every weight tensor (its first elements, rounded
to bfloat16 so that one checkpoint loaded in float32 or bfloat16 gets the same fingerprint). It tells two
checkpoints of one architecture apart, including a fine-tune that changed only some layers, without reading
gigabytes of weights.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from dataclasses import dataclass

import torch

from ..errors import C2CError
from ..kv import ModelGeometry
from ..models.loading import LoadedModel

_PROBE = 64  # elements hashed per weight tensor


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    fingerprint: str  # 16 hex digits
    geometry: ModelGeometry

    def to_dict(self) -> dict:
        return {"name": self.name, "fingerprint": self.fingerprint, "geometry": self.geometry.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelIdentity":
        return cls(str(d["name"]), str(d["fingerprint"]), ModelGeometry.from_dict(d["geometry"]))

    def check(self, other: "ModelIdentity", what: str = "this cache") -> None:
        """Raise C2CError unless `other` is the same model (the fingerprint decides; names are for messages)."""
        if self.fingerprint != other.fingerprint:
            raise C2CError(f"{what} was made by {self.name} ({self.fingerprint}), not by {other.name} "
                           f"({other.fingerprint}): a cache only fits the model that computed it")  # fmt: skip


_memo: "weakref.WeakKeyDictionary[torch.nn.Module, ModelIdentity]" = weakref.WeakKeyDictionary()


def known_identity(model: LoadedModel) -> ModelIdentity | None:
    """The model's identity, or None for a skeleton whose identity nobody has pinned yet."""
    if model.is_skeleton and model.model not in _memo:
        return None
    return identity_of(model)


def pin_identity(model: LoadedModel, identity: ModelIdentity) -> None:
    """Declare the identity of a skeleton (a model without weights here): the one its caches carry, as told by
    the process that has the weights."""
    if identity.geometry != ModelGeometry.from_config(model.model.config):
        raise C2CError(f"{identity.name}'s KV geometry does not match the local config of {model.name}")
    _memo[model.model] = identity


@torch.no_grad()
def identity_of(model: LoadedModel) -> ModelIdentity:
    """The identity of a loaded model (computed once per model object)."""
    key = model.model
    if key not in _memo and model.is_skeleton:
        raise C2CError(f"{model.name} has no weights here: pin its identity (the one its caches carry) first")
    if key not in _memo:
        h = hashlib.sha256()
        config = model.model.config.get_text_config().to_dict()
        config.pop("dtype", None)
        config.pop("torch_dtype", None)
        h.update(json.dumps(config, sort_keys=True, default=str).encode())
        for name, p in model.model.state_dict().items():
            h.update(name.encode())
            h.update(p.detach().flatten()[:_PROBE].to("cpu", torch.bfloat16).view(torch.int16).numpy().tobytes())
        _memo[key] = ModelIdentity(model.name, h.hexdigest()[:16], ModelGeometry.from_config(model.model.config))
    return _memo[key]
