"""Fuser: all layer fusers for one receiver<-sharer pair, with PEFT-style save/load.

A saved fuser is a directory: config.json (with both models' names and KV geometry), model.safetensors
(fuser tensors only) and README.md (a short model card). Loading checks the pair before anything runs.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .. import hub
from ..adapter_dir import check_pair, fingerprint, read_weights, resolve_dir, shipped_names, write_dir
from ..alignment.layers import layer_map
from ..caches.identity import ModelIdentity
from ..errors import C2CError
from ..kv import ModelGeometry
from .config import PRESETS, FuserConfig
from .layer import LayerFuser

log = logging.getLogger(__name__)

SHIPPED = Path(__file__).resolve().parent.parent / "assets" / "fusers"  # fusers that ship with the package

LayerDeltas = dict[int, tuple[torch.Tensor | None, torch.Tensor | None]]
KV = tuple[torch.Tensor, torch.Tensor]


def shipped_fusers() -> list[str]:
    """Names of the fusers inside the package (loadable by name)."""
    return shipped_names(SHIPPED)


class Fuser(nn.Module):
    """Projects a sharer's KV cache into a receiver's, layer by layer (only mapped layers have weights)."""

    def __init__(self, config: FuserConfig) -> None:
        super().__init__()
        self.config = config
        self.source: str | None = None  # the directory it was loaded from; None for a fuser made in memory
        recv = ModelGeometry.from_dict(config.receiver_geometry)
        shar = ModelGeometry.from_dict(config.sharer_geometry)
        self.layers = nn.ModuleDict(
            {
                str(r): LayerFuser(shar.layers[s].kv_dim, recv.layers[r].kv_heads, recv.layers[r].head_dim, config)
                for r, s in config.fused_layers()
            }
        )

    @classmethod
    def for_pair(
        cls,
        receiver_name: str,
        receiver_geometry: ModelGeometry,
        sharer_name: str,
        sharer_geometry: ModelGeometry,
        preset: str = "compact",
        layer_alignment: str = "terminal",
        token_alignment: str = "offsets",
        **overrides,
    ) -> "Fuser":
        """A new, untrained fuser for a pair; `preset` picks the size (compact, base, paper)."""
        if preset not in PRESETS:
            raise C2CError(f"unknown fuser preset {preset!r}: choose one of {', '.join(PRESETS)}")
        config = FuserConfig(
            receiver=receiver_name,
            sharer=sharer_name,
            receiver_geometry=receiver_geometry.to_dict(),
            sharer_geometry=sharer_geometry.to_dict(),
            layer_map=layer_map(layer_alignment, receiver_geometry.num_layers, sharer_geometry.num_layers),
            layer_alignment=layer_alignment,
            token_alignment=token_alignment,
            **{**PRESETS[preset], **overrides},
        )
        return cls(config)

    # ---- what a pipeline calls --------------------------------------------------------------------------

    kind = "fuser"
    writes_unread = False  # adds into the positions the receiver read itself (maps.py)

    def check_pair(self, receiver: ModelIdentity, sharer: ModelIdentity) -> None:
        """Raise C2CError unless this fuser was trained for exactly this receiver and sharer (adapter_dir)."""
        check_pair("fuser", self.config, receiver.name, receiver.geometry.to_dict(), sharer.name,
                   sharer.geometry.to_dict(), receiver.fingerprint, sharer.fingerprint)  # fmt: skip

    def fingerprint(self) -> str:
        """A hash of the config and the weights as they are now."""
        return fingerprint(self.config.to_json(), self.state_dict())

    def forward(self, receiver_kv: Sequence[KV], sharer_kv: Sequence[KV], sharer_index: torch.Tensor) -> LayerDeltas:
        """`deltas`, as the module's forward: what a DistributedDataParallel wrapper calls (training)."""
        return self.deltas(receiver_kv, sharer_kv, sharer_index)

    def deltas(self, receiver_kv: Sequence[KV], sharer_kv: Sequence[KV], sharer_index: torch.Tensor) -> LayerDeltas:
        """Per fused receiver layer, the (dk, dv) to add to its keys and values: a pure function of tensors.

        Args:
            receiver_kv: per receiver layer (keys, values), each (B, H, t, D) over the receiver's last t prompt
                positions (t may differ by layer: a sliding-window layer may hold fewer).
            sharer_kv: per sharer layer (keys, values), (B, Hs, Ts, Ds), every sharer position.
            sharer_index: (B, T) long, for each of the receiver's last T >= t positions the aligned sharer one.
        Fusion is per position: a position's deltas depend only on the receiver's and the aligned sharer's
        keys/values there, so the deltas of a prompt's prefix can be computed once and reused.
        """
        out: LayerDeltas = {}
        dtype = next(self.parameters()).dtype
        for r, s in self.config.fused_layers():
            fuser = self.layers[str(r)]
            (rk, rv), (sk_all, sv_all) = receiver_kv[r], sharer_kv[s]
            t = rk.shape[-2]
            idx = sharer_index[:, -t:]  # (B, t)
            gather = idx[:, None, :, None].expand(-1, sk_all.shape[1], -1, sk_all.shape[-1])  # (B, Hs, t, ds)
            sk = sk_all.gather(2, gather).to(dtype)
            sv = sv_all.gather(2, gather).to(dtype)
            dk, dv = fuser(rk.to(dtype), rv.to(dtype), sk, sv)
            if dk is not None or dv is not None:
                out[r] = (dk, dv)
        return out

    def set_temperature(self, temperature: float) -> None:
        for layer in self.layers.values():
            layer.temperature = temperature

    @torch.no_grad()
    def close_gates(self, receiver_layers: list[int]) -> None:
        """Shut these receiver layers' gates (ablation: does the receiver need what they bring?)."""
        unknown = sorted(set(receiver_layers) - {int(r) for r in self.layers})
        if unknown:
            fused = sorted(map(int, self.layers))
            raise C2CError(f"receiver layers {unknown} are not fused by this fuser (fused: {fused})")
        for r in receiver_layers:
            self.layers[str(r)].gate_logit.fill_(-1e4)

    def gate_logits(self) -> dict[int, tuple[float, float]]:
        """Per fused receiver layer, the (key, value) gate logits; > 0 means open at inference."""
        return {int(r): tuple(layer.gate_logit.detach().float().tolist()) for r, layer in self.layers.items()}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- save / load ------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype = torch.float32) -> Path:
        """Write config.json, model.safetensors and README.md atomically (a temp dir renamed into place).
        `dtype=torch.bfloat16` halves the file (how the shipped fuser is stored); loading casts back."""
        return write_dir(directory, self.config.to_json(), self.state_dict(), "fuser", self.model_card(), dtype)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu",
                        revision: str | None = None) -> "Fuser":  # fmt: skip
        """Load a fuser folder, a shipped fuser by name (`shipped_fusers()`), or a Hub repo id (`owner/name`, at
        `revision`) through the Hub cache."""
        directory = resolve_dir(directory, SHIPPED, revision)
        aside = directory.with_name(f".{directory.name}.old")
        if not directory.is_dir() and aside.is_dir():  # a save killed between its two renames
            log.warning("%s is missing; loading the previous fuser kept aside at %s", directory, aside)
            directory = aside
        if not directory.is_dir():
            raise C2CError(f"fuser directory not found: {directory}")
        fuser = cls(FuserConfig.load(directory))
        state = read_weights(directory, "fuser")
        missing, unexpected = fuser.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise C2CError(
                f"fuser weights do not match its config ({len(missing)} missing, {len(unexpected)} unexpected, "
                f"e.g. {(missing or unexpected)[0]})"
            )
        fuser.source = str(directory)
        return fuser.to(device).eval()

    def push_to_hub(self, repo_id: str, private: bool = False, token: str | None = None) -> str:
        """Upload this fuser (config, bf16 weights, model card, and its source folder's logs and plots when it
        was loaded from one) to a Hub repo; returns the commit URL."""
        import tempfile as _tempfile

        with _tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "fuser"
            if self.source is not None:
                shutil.copytree(self.source, folder)
            self.save_pretrained(folder, dtype=torch.bfloat16)
            return hub.push(folder, repo_id, private=private, token=token)

    def model_card(self) -> str:
        cfg = self.config
        gates = self.gate_logits()
        open_layers = sum(1 for k, v in gates.values() if k > 0 or v > 0)
        return (
            f"# cache2cache fuser: {cfg.receiver} <- {cfg.sharer}\n\n"
            f"A Cache-to-Cache fuser (Fu et al., 2025, arXiv 2510.03215) that projects the KV cache of "
            f"`{cfg.sharer}` (sharer) into `{cfg.receiver}` (receiver).\n\n"
            f"- parameters: {self.num_parameters():,}\n"
            f"- width {cfg.hidden_dim}, {cfg.num_blocks} block(s), ffn x{cfg.ffn_mult}\n"
            f"- layer alignment: {cfg.layer_alignment}; token alignment: {cfg.token_alignment}\n"
            f"- fused receiver layers: {len(gates)}, gates open at inference: {open_layers}\n"
            f"- written by cache2cache {cfg.c2c_version}\n\n"
            "Load with `cache2cache.Fuser.from_pretrained(dir)`, or use `c2c generate --fuser DIR`.\n"
        )
