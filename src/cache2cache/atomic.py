"""Write files so that a crash leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
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
