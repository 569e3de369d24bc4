"""The folder format fusers and translators share (PEFT-style): config.json + model.safetensors + README.md.

Written atomically (a temp folder renamed into place, so a crash leaves the old folder or the new one); found by
path, by the name of one shipped inside the package, or by Hub repo id (through the Hub cache).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import hub
from .atomic import replace_dir
from .errors import C2CError

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
