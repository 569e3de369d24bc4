"""Which sharer layer feeds each receiver layer.

Rules (C2C paper, Sec. 3.3):
- terminal (default): the last layers are paired, and pairing walks down from there; receiver layers below the
  sharer's first layer are clamped to it. Deep layers carry the most abstract states in both models.
- spread: proportional depth, receiver layer i -> round(i * (Ls - 1) / (Lr - 1)).
- explicit: a user-given map "r:s,r:s,..."; receiver layers not named receive nothing.
"""

from __future__ import annotations

from ..errors import C2CError

LayerMap = list[int | None]  # index: receiver layer; value: sharer layer, or None for "not fused"

RULES = ("terminal", "spread")


def terminal(n_receiver: int, n_sharer: int) -> LayerMap:
    shift = n_sharer - n_receiver
    return [min(max(i + shift, 0), n_sharer - 1) for i in range(n_receiver)]


def spread(n_receiver: int, n_sharer: int) -> LayerMap:
    if n_receiver == 1:
        return [n_sharer - 1]
    return [round(i * (n_sharer - 1) / (n_receiver - 1)) for i in range(n_receiver)]


def parse_explicit(text: str, n_receiver: int, n_sharer: int) -> LayerMap:
    """Parse "0:3,5:7" (receiver:sharer pairs) into a map; unnamed receiver layers are not fused."""
    out: LayerMap = [None] * n_receiver
    for item in filter(None, (p.strip() for p in text.split(","))):
        try:
            r, s = (int(x) for x in item.split(":"))
        except ValueError:
            raise C2CError(f"bad layer pair {item!r}: expected RECEIVER:SHARER, e.g. '29:23'") from None
        if not (0 <= r < n_receiver and 0 <= s < n_sharer):
            raise C2CError(f"layer pair {item!r} out of range: receiver has {n_receiver}, sharer {n_sharer} layers")
        out[r] = s
    if all(s is None for s in out):
        raise C2CError("explicit layer map names no layer pair")
    return out


def layer_map(rule: str, n_receiver: int, n_sharer: int) -> LayerMap:
    """Build a map by rule name (`terminal`, `spread`) or from an explicit "r:s,..." string."""
    if rule == "terminal":
        return terminal(n_receiver, n_sharer)
    if rule == "spread":
        return spread(n_receiver, n_sharer)
    if ":" in rule:
        return parse_explicit(rule, n_receiver, n_sharer)
    raise C2CError(f"unknown layer alignment {rule!r}: use terminal, spread, or an explicit map like '0:0,1:2'")
