"""Write files so that a crash leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


def write_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to a hidden sibling, then rename it over `path` (atomic on POSIX); parents are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def write_text(path: Path, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path: Path, data) -> Path:
    return write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def replace_dir(new: Path, path: Path) -> Path:
    """Move the finished folder `new` to `path`. An existing `path` is renamed aside first and deleted only once
    `new` is in place, so a crash at any moment leaves the old folder or the new one (possibly under its
    hidden `.NAME.old` name), never neither."""
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if path.exists():
        os.replace(path, old)
    os.replace(new, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def check_writable_dir(path: Path, what: str = "output folder") -> None:
    """Fail now, before any work, if `path` cannot become a folder we can write in."""
    from .errors import C2CError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise C2CError(f"{what} {path} exists and is not a folder")
    parent = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    if not os.access(parent, os.W_OK):
        raise C2CError(f"{what} {path}: {parent} is not writable")
