"""Build a C2CModel from names and paths, as the CLI, evaluation and a server all need to."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch

from ..caches.identity import identity_of
from ..errors import C2CError
from ..fuser.model import Fuser
from ..kv import ModelGeometry
from ..models.catalog import ASSETS
from ..models.loading import LoadedModel, load_model, load_skeleton
from ..translation.recompute import Recompute
from ..translation.translator import Translator
from .pipeline import C2CModel

log = logging.getLogger(__name__)

DEFAULT_RECEIVER = "SmolLM2-135M-Instruct"
DEFAULT_SHARER = "Qwen2.5-Coder-1.5B-Instruct"
# The fuser trained for the default pair (configs/smollm2_qwen15.toml), shipped inside the package.
DEFAULT_FUSER = ASSETS / "fusers" / "smollm2-135m-from-qwen2.5-coder-1.5b"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(spec: str) -> str:
    """`spec` if this machine has that device; a clear error otherwise (not a traceback mid-load)."""
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise C2CError(f"unknown device {spec!r}: use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise C2CError(f"device {spec!r} is not available on this machine (CUDA devices: "
                       f"{torch.cuda.device_count() if torch.cuda.is_available() else 0})")  # fmt: skip
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise C2CError(f"device {spec!r} is not available on this machine")
    if device.type not in ("cpu", "cuda", "mps"):
        raise C2CError(f"device {spec!r} is not supported: use cpu, cuda, cuda:N or mps")
    return spec


def untrained_fuser(receiver: LoadedModel, sharer: LoadedModel, **kwargs) -> Fuser:
    """A fresh fuser for a pair (zero-initialised output: the receiver's answers are unchanged), recording the
    fingerprints of the two checkpoints, so it will refuse other checkpoints with the same names."""
    return Fuser.for_pair(
        receiver.name, ModelGeometry.from_config(receiver.model.config),
        sharer.name, ModelGeometry.from_config(sharer.model.config), **kwargs,
        receiver_fingerprint=identity_of(receiver).fingerprint, sharer_fingerprint=identity_of(sharer).fingerprint,
    )  # fmt: skip


def build(
    receiver: str,
    sharers: Sequence[str] = (),
    fusers: Sequence[str | Path] = (),
    *,
    dtype: str = "auto",
    device: str | None = None,
    cache_dir: Path | None = None,
    chat: bool = True,
    skeleton_sharers: bool = False,
    translators: Sequence[str | Path] = (),
    recompute: Recompute = Recompute(),
    **untrained_kwargs,
) -> C2CModel:
    """Load the models and fusers. With no fuser paths an untrained fuser is made per sharer (a warning says so);
    with fuser paths there must be exactly one per sharer, in the same order. `skeleton_sharers` loads the
    sharers without weights, for a process that receives their caches from elsewhere. `translators` (at most
    one per sharer, in order) enable mode "translated"; `recompute`: the layers of a translated brief the receiver
    computes itself (translation/recompute.py)."""
    if fusers and len(fusers) != len(sharers):
        raise C2CError(f"give one --fuser per --sharer (got {len(sharers)} sharer(s), {len(fusers)} fuser(s))")
    device = check_device(device or default_device())
    loaded_fusers = [Fuser.from_pretrained(f, device) for f in fusers]  # fail fast, before loading big models
    loaded_translators = [Translator.from_pretrained(t, device) for t in translators]
    r = load_model(receiver, dtype=dtype, device=device, cache_dir=cache_dir)
    if skeleton_sharers:  # their caches come from another process: tokenizer and config only
        if not loaded_fusers and not loaded_translators:
            raise C2CError("remote sharers need a trained --fuser (or a --translator) each")
        ss = [load_skeleton(s, kv_device=device, cache_dir=cache_dir) for s in sharers]
    else:
        ss = [load_model(s, dtype=dtype, device=device, cache_dir=cache_dir, prefill_only=True) for s in sharers]
    if not loaded_fusers and ss and not (skeleton_sharers and loaded_translators):
        log.warning("no fuser given: using an untrained fuser per sharer (it leaves the receiver's answers unchanged)")
        loaded_fusers = [untrained_fuser(r, s, **untrained_kwargs).to(device) for s in ss]
    return C2CModel(r, ss, loaded_fusers, chat=chat, translators=loaded_translators, recompute=recompute)
