"""Cache maps: what a sender's reading passes through on its way into the receiver's cache.

A *cache map* is made for one (receiver, sharer) pair. It takes what the sharer read, aligned token by token to
the receiver's positions, and gives the receiver's cache of those positions. There are two kinds, and the only
thing the pipeline asks of a map besides its pair is where its output lands (`writes_unread`):

    kind        writes_unread  the receiver                         the map
    fuser       False          reads the positions itself           adds to its keys and values there (C2C)
    translator  True           never reads them (a brief)           writes its keys and values there

So a message is "over" positions the receiver read (fused) or "blind" (translated), a property of the map, not a
mode the pipeline special-cases: inference/messages.py lays every batch out as [blind head | what the receiver
reads], fills the head from the blind maps, lets the receiver read the rest, then lets the over maps add into
it. Both kinds save as the same folder (adapter_dir.py: config.json with the pair and its fingerprints,
model.safetensors, README.md) and are checked against the pair the same way.

A third kind implements this protocol, saves with `adapter_dir.write_dir`, and is handed to `C2CModel` with
the others (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from typing import ClassVar, Protocol, runtime_checkable

from .caches.identity import ModelIdentity, identity_of, known_identity
from .kv import ModelGeometry
from .models.loading import LoadedModel


class PairConfig(Protocol):
    """What every map's config records of the pair it was made for."""

    receiver: str
    sharer: str
    receiver_geometry: dict
    sharer_geometry: dict
    receiver_fingerprint: str
    sharer_fingerprint: str


@runtime_checkable
class CacheMap(Protocol):
    kind: ClassVar[str]  # its folder's kind: "fuser", "translator"
    writes_unread: ClassVar[bool]  # True: writes positions the receiver did not read; False: adds where it did
    config: PairConfig

    def check_pair(self, receiver: ModelIdentity, sharer: ModelIdentity) -> None:
        """Raise C2CError unless the map was made for exactly this pair (names, KV shapes, checkpoints)."""

    def fingerprint(self) -> str:
        """16 hex digits naming the config and weights as they are now."""


def check_map(cmap: CacheMap, receiver: LoadedModel, sharer: LoadedModel, hash_sharer: bool = False) -> None:
    """`cmap.check_pair` for loaded models. The receiver's fingerprint is always checked; the sharer's only when
    it is known already or `hash_sharer` asks for it (hashing a large sharer takes seconds)."""
    s_ident = identity_of(sharer) if hash_sharer else known_identity(sharer)
    cmap.check_pair(identity_of(receiver), ModelIdentity(sharer.name, s_ident.fingerprint if s_ident else "",
                                                         ModelGeometry.from_config(sharer.model.config)))  # fmt: skip
