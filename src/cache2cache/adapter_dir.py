"""The folder format fusers and translators share (PEFT-style): config.json + model.safetensors + README.md.

Written atomically (a temp folder renamed into place, so a crash leaves the old folder or the new one); found by
path, by the name of one shipped inside the package, or by Hub repo id (through the Hub cache).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import warnings
from dataclasses import fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import hub
from .atomic import replace_dir
from .errors import C2CError
from .version import __version__

WEIGHTS = "model.safetensors"


def write_dir(directory: str | Path, config_json: str, tensors: dict[str, torch.Tensor], kind: str, card: str,
              dtype: torch.dtype = torch.float32) -> Path:  # fmt: skip
    """Write the three files of a `kind` ("fuser", "translator") folder, tensors cast to `dtype`."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    for stale in directory.parent.glob(f".{directory.name}.tmp*"):  # left by a writer that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp", dir=directory.parent))
    try:
        (tmp / "config.json").write_text(config_json + "\n")
        save_file({k: v.detach().to(dtype).contiguous().cpu() for k, v in tensors.items()}, tmp / WEIGHTS,
                  metadata={"format": "pt", "c2c": kind})  # fmt: skip
        (tmp / "README.md").write_text(card)
        replace_dir(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def resolve_dir(spec: str | Path, shipped: Path, revision: str | None = None) -> Path:
    """A folder path as given, else the shipped folder of that name, else a Hub repo id downloaded once."""
    name = str(spec)
    if not Path(spec).is_dir() and "/" not in name and (shipped / name).is_dir():
        return shipped / name
    if not Path(spec).is_dir() and hub.looks_like_repo_id(name):
        return hub.download(name, revision)
    return Path(spec)


def read_config(directory: Path, kind: str) -> dict:
    """config.json of a `kind` folder as a dict; one-line errors for a missing or corrupt file."""
    path = directory / "config.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise C2CError(f"not a {kind} directory (no config.json): {directory}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise C2CError(f"corrupt {kind} config {path}: {e}") from None
    if not isinstance(raw, dict):
        raise C2CError(f"corrupt {kind} config {path}: expected a JSON object")
    return raw


def read_weights(directory: Path, kind: str) -> dict[str, torch.Tensor]:
    """model.safetensors of a `kind` folder; one-line errors for a missing or corrupt file."""
    try:
        return load_file(directory / WEIGHTS)
    except FileNotFoundError:
        raise C2CError(f"{kind} weights missing: {directory / WEIGHTS}") from None
    except (SafetensorError, OSError) as e:
        raise C2CError(f"corrupt {kind} weights {directory / WEIGHTS}: {e}") from None


# ---- what fusers and translators (the two kinds of cache map) share -----------------------------------------

_MADE = {"fuser": "trained", "translator": "fitted"}


def shipped_names(directory: Path) -> list[str]:
    """The folders of one kind shipped inside the package (loadable by name)."""
    return sorted(p.name for p in directory.iterdir() if (p / "config.json").is_file()) if directory.is_dir() else []


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def load_config(cls, directory: Path, kind: str, required: tuple[str, ...]):
    """`cls` (a config dataclass) from a `kind` folder's config.json: unknown keys and a newer writer are warned
    about (the folder still loads), missing `required` keys and wrong types are one-line errors."""
    path = directory / "config.json"
    raw = read_config(directory, kind)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        warnings.warn(f"ignoring unknown {kind} config keys {unknown} (written by a newer cache2cache?)")
    if _version(str(raw.get("c2c_version", "0"))) > _version(__version__):
        warnings.warn(f"{path} was written by cache2cache {raw['c2c_version']}, newer than this {__version__}: "
                      "it loads, but settings it relies on may be ignored")  # fmt: skip
    missing = [k for k in required if not raw.get(k)]
    if missing:
        raise C2CError(f"corrupt {kind} config {path}: missing {', '.join(missing)}")
    try:
        return cls(**{k: v for k, v in raw.items() if k in known})
    except TypeError as e:
        raise C2CError(f"corrupt {kind} config {path}: {e}") from None


def check_pair(kind: str, config, receiver: str, receiver_geometry: dict, sharer: str, sharer_geometry: dict,
               receiver_fingerprint: str | None = None, sharer_fingerprint: str | None = None) -> None:  # fmt: skip
    """Raise C2CError unless the `kind` folder whose `config` records its pair was made for exactly this receiver
    and sharer: names, KV shapes, and, where the config records them, the fingerprints of the checkpoints it was
    made with (so it is never silently used with another checkpoint of a model with the same name)."""
    made = _MADE.get(kind, "made")
    if (config.receiver, config.sharer) != (receiver, sharer):
        raise C2CError(f"this {kind} was {made} for receiver {config.receiver} <- sharer {config.sharer}, not "
                       f"receiver {receiver} <- sharer {sharer}")  # fmt: skip
    if config.receiver_geometry != receiver_geometry or config.sharer_geometry != sharer_geometry:
        raise C2CError(f"this {kind}'s KV shapes do not match receiver {receiver} <- sharer {sharer} (same names, "
                       "different models?)")  # fmt: skip
    for role, recorded, actual in (("receiver", config.receiver_fingerprint, receiver_fingerprint),
                                   ("sharer", config.sharer_fingerprint, sharer_fingerprint)):  # fmt: skip
        if recorded and actual and recorded != actual:
            raise C2CError(f"this {kind} was {made} with another checkpoint of its {role} {getattr(config, role)} "
                           f"(fingerprint {recorded}, this one is {actual})")  # fmt: skip


def hash_tensors(h: "hashlib._Hash", tensors: dict[str, torch.Tensor]) -> "hashlib._Hash":
    """Feed the named tensors (sorted by name, as float32 bytes) into the sha256 `h`: the one weight fingerprint,
    of a cache map alone (`fingerprint`) and of a fused pair's identity built on it."""
    for name, t in sorted(tensors.items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h


def fingerprint(config_json: str, tensors: dict[str, torch.Tensor]) -> str:
    """16 hex digits naming a map's config and weights as they are now."""
    return hash_tensors(hashlib.sha256(config_json.encode()), tensors).hexdigest()[:16]
