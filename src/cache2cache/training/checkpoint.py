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
import logging
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
log = logging.getLogger(__name__)


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


def _candidates(path: Path) -> list[Path]:
    """`path` itself if it is a checkpoint folder; for a run folder its checkpoints, newest first (the one
    `latest` names leading)."""
    if (path / "trainer_state.json").is_file():
        return [path]
    found = sorted((p.parent for p in path.glob(f"{PREFIX}*/trainer_state.json")), reverse=True)
    latest = path / "latest"
    named = path / latest.read_text().strip() if latest.is_file() else None
    return [named] * (named in found) + [p for p in found if p != named]


def _read(ckpt: Path) -> dict:
    try:
        config = json.loads((ckpt / "train_config.json").read_text())
        state = json.loads((ckpt / "trainer_state.json").read_text())
        optimizer = _join_optimizer_state(load_file(ckpt / "optimizer.safetensors"),
                                          json.loads((ckpt / "optimizer.json").read_text()))  # fmt: skip
        fuser = Fuser.from_pretrained(ckpt / "fuser")  # loaded here so that a corrupt one falls back too
    except (OSError, json.JSONDecodeError, SafetensorError, KeyError, ValueError, C2CError) as e:
        raise C2CError(f"corrupt checkpoint {ckpt}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return {"path": ckpt, "config": config, "trainer_state": state, "fuser": fuser, "optimizer": optimizer}


def load_checkpoint(path: Path) -> dict:
    """Everything in a checkpoint: config (dict), trainer_state (dict), fuser (Fuser, on the CPU), optimizer.
    Given a run folder whose newest checkpoint is damaged (a disk error, a hand edit), the newest intact one is
    used, with a warning; given a checkpoint folder, that one or an error."""
    candidates = _candidates(Path(path))
    if not candidates:
        raise C2CError(f"no checkpoint to resume in {path}")
    errors = []
    for ckpt in candidates:
        try:
            loaded = _read(ckpt)
        except C2CError as e:
            errors.append(str(e))
            continue
        for error in errors:
            log.warning("%s; resuming from the previous intact one, %s", error, ckpt.name)
        return loaded
    raise C2CError(errors[0] if len(errors) == 1 else f"every checkpoint in {path} is corrupt ({errors[0]}, ...)")
