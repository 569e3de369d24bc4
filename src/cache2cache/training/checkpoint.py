"""Atomic, self-contained training checkpoints (safetensors + JSON only; nothing is ever unpickled).

    <out_dir>/checkpoint-0000050/
        fuser/                  config.json + model.safetensors (loadable by Fuser.from_pretrained)
        optimizer.safetensors   every tensor of the optimizer state
        optimizer.json          the rest of the optimizer state (param groups, non-tensor values)
        trainer_state.json      step, epoch, position, tokens seen, elapsed time
        train_config.json       the resolved TrainConfig
    <out_dir>/latest            name of the newest complete checkpoint

A checkpoint is written to a temporary folder and renamed into place, so a kill at any moment leaves the
previous checkpoint intact. Randomness is derived from (seed, step), so no RNG state needs saving.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..atomic import write_text
from ..errors import C2CError
from ..fuser.model import Fuser

PREFIX = "checkpoint-"


def _split_optimizer_state(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, rest = {}, {"param_groups": state["param_groups"], "state": {}}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                rest["state"].setdefault(str(idx), {})[key] = value
    return tensors, rest


def _join_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    state: dict = {int(i): dict(v) for i, v in rest["state"].items()}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def save_checkpoint(out_dir: Path, fuser: Fuser, optimizer: torch.optim.Optimizer, trainer_state: dict,
                    config_json: str, keep_last: int) -> Path:  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"{PREFIX}{trainer_state['step']:07d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out_dir))
    try:
        fuser.save_pretrained(tmp / "fuser")
        tensors, rest = _split_optimizer_state(optimizer.state_dict())
        save_file(tensors, tmp / "optimizer.safetensors")
        (tmp / "optimizer.json").write_text(json.dumps(rest))
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
        (tmp / "train_config.json").write_text(config_json)
        final = out_dir / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_text(out_dir / "latest", name + "\n")
    for old in sorted(out_dir.glob(f"{PREFIX}*"))[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(path: Path) -> Path:
    """`path` is a checkpoint folder or a run folder (then its `latest` checkpoint)."""
    if (path / "trainer_state.json").is_file():
        return path
    latest = path / "latest"
    if latest.is_file():
        candidate = path / latest.read_text().strip()
        if (candidate / "trainer_state.json").is_file():
            return candidate
    found = sorted(path.glob(f"{PREFIX}*/trainer_state.json"))
    if not found:
        raise C2CError(f"no checkpoint to resume in {path}")
    return found[-1].parent


def load_checkpoint(path: Path) -> dict:
    """Everything in a checkpoint: config (dict), trainer_state (dict), fuser_dir (Path), optimizer (state dict)."""
    ckpt = find_checkpoint(path)
    try:
        config = json.loads((ckpt / "train_config.json").read_text())
        state = json.loads((ckpt / "trainer_state.json").read_text())
        optimizer = _join_optimizer_state(load_file(ckpt / "optimizer.safetensors"),
                                          json.loads((ckpt / "optimizer.json").read_text()))  # fmt: skip
    except (OSError, json.JSONDecodeError, SafetensorError, KeyError, ValueError) as e:
        raise C2CError(f"corrupt checkpoint {ckpt}: {e}") from None
    return {"path": ckpt, "config": config, "trainer_state": state, "fuser_dir": ckpt / "fuser",
            "optimizer": optimizer}  # fmt: skip
