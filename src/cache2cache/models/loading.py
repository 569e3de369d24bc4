"""Load a model and its tokenizer from whatever a user typed: a catalog name, a directory, a .gguf file, a hub id."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..errors import C2CError
from ..hub import download, looks_like_repo_id
from ..packages import default_cache_dir
from .catalog import find
from .pull import is_pulled, model_dir, pull
from .tiny import build_tiny

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A frozen causal LM, its tokenizer, and the name a fuser records for it.

    A *skeleton* (`load_skeleton`) has the tokenizer and config but no weights (they sit on the meta device): a
    process that only reads another process's caches of this model (a receiver fusing a remote sharer) needs
    nothing more. Its caches live on `kv_device`."""

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    kv_device: torch.device | None = None  # skeletons: where caches of this model are kept

    @property
    def device(self) -> torch.device:
        return self.kv_device if self.kv_device is not None else self.model.device

    @property
    def is_skeleton(self) -> bool:
        return self.model.device.type == "meta"

    @property
    def max_length(self) -> int:
        cfg = self.model.config.get_text_config()
        return int(getattr(cfg, "max_position_embeddings", 0) or 1 << 30)


_DTYPES = {"auto": None, "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}  # fmt: skip


def parse_dtype(name: str) -> torch.dtype | None:
    if name not in _DTYPES:
        raise C2CError(f"unknown dtype {name!r}: choose one of {', '.join(_DTYPES)}")
    return _DTYPES[name]


def _from_pretrained(source: str, dtype: torch.dtype, **kwargs) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Weights from safetensors only (a directory or hub repo with just pickled weights is refused unloaded),
    or from the GGUF file in `kwargs`."""
    if "gguf_file" not in kwargs:
        kwargs["use_safetensors"] = True
        folder = Path(source)
        if folder.is_dir() and not any(folder.glob("*.safetensors")) and any(folder.glob("*.bin")):
            raise C2CError(f"{source} holds only pickled weights (*.bin): cache2cache loads safetensors only (convert "
                           "them once with a tool you trust)")  # fmt: skip
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
        kwargs.pop("use_safetensors", None)
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except SafetensorError as e:
        raise C2CError(f"could not load model {source!r}: corrupt safetensors weights ({e})") from None
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise C2CError(f"could not load model {source!r}: {first}") from e
    return model, tokenizer


def _adapter_base(path: Path) -> str:
    try:
        base = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise C2CError(f"{path}/adapter_config.json does not name its base model: {e}") from None
    if not base:
        raise C2CError(f"{path}/adapter_config.json does not name its base model")
    return base


def merge_adapter(model: PreTrainedModel, adapter: Path) -> PreTrainedModel:
    """Merge a peft LoRA adapter (safetensors only) into `model`'s weights, so inference costs nothing extra."""
    from peft import PeftModel

    if not (adapter / "adapter_model.safetensors").is_file():
        raise C2CError(f"no adapter_model.safetensors in {adapter} (only safetensors adapters are loaded)")
    dtype = model.dtype
    merged = PeftModel.from_pretrained(model.float(), str(adapter)).merge_and_unload()
    return merged.to(dtype)


def load_model(
    spec: str,
    *,
    dtype: str = "auto",
    device: str | torch.device = "cpu",
    cache_dir: Path | None = None,
    auto_pull: bool = True,
    prefill_only: bool = False,
    _adapters: tuple[Path, ...] = (),
) -> LoadedModel:
    """Load `spec` frozen and in eval mode.

    `dtype="auto"` means float32 for the tiny test models (exact comparisons) and bfloat16 for real ones
    (the usual GPU choice, and faster for decoding on CPU), except that a model used mostly for prefill (a
    sharer: `prefill_only=True`) is float32 on CPU, where short-prompt prefill measured 2.4x faster than bf16
    (docs/RESULTS.md).
    """
    want = parse_dtype(dtype)
    if want is None and prefill_only and torch.device(device).type == "cpu":
        want = torch.float32
    entry = find(spec)
    if entry is not None and entry.kind == "tiny":
        model, tokenizer = build_tiny(entry.name)
        name = entry.name
        model = model.to(want or torch.float32)
    elif entry is not None:
        assert entry.real is not None
        if not is_pulled(entry.real, cache_dir):
            if not auto_pull:
                raise C2CError(f"model {entry.name} is not pulled yet: run `c2c models pull {entry.name}`")
            log.warning("pulling %s into %s (once)", entry.name, cache_dir or default_cache_dir())
            pull(entry.real, cache_dir)
        model, tokenizer = _from_pretrained(str(model_dir(entry.real, cache_dir)), want or torch.bfloat16)
        if entry.adapter is not None:
            model = merge_adapter(model, entry.adapter)
        name = entry.name
    else:
        path = Path(spec).expanduser()
        if path.suffix == ".gguf":
            if not path.is_file():
                raise C2CError(f"GGUF file not found: {spec}")
            model, tokenizer = _from_pretrained(str(path.parent), want or torch.bfloat16, gguf_file=path.name)
            name = path.stem
        elif (path / "adapter_config.json").is_file():
            if path.resolve() in _adapters:
                raise C2CError(f"adapter {spec} is its own base (through {', '.join(map(str, _adapters))})")
            base = load_model(_adapter_base(path), dtype=dtype, cache_dir=cache_dir, auto_pull=auto_pull,
                              prefill_only=prefill_only, _adapters=(*_adapters, path.resolve()))  # fmt: skip
            model, tokenizer = merge_adapter(base.model, path), base.tokenizer
            name = path.name
        elif path.is_dir():
            model, tokenizer = _from_pretrained(str(path), want or torch.bfloat16)
            name = path.name
        elif looks_like_repo_id(spec):
            model, tokenizer = _from_pretrained(str(download(spec, what="model")), want or torch.bfloat16)
            name = spec
        else:
            raise C2CError(f"unknown model {spec!r}: not a catalog name (see `c2c models`), directory or hub id")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # prompts are left-padded so that every row's last token lines up
    model.requires_grad_(False)
    return LoadedModel(name=name, model=model.to(device).eval(), tokenizer=tokenizer)


def load_skeleton(spec: str, kv_device: str | torch.device = "cpu", cache_dir: Path | None = None,
                  dtype: str = "auto") -> LoadedModel:  # fmt: skip
    """`spec`'s tokenizer and config with its weights on the meta device (no memory): enough to align prompts
    and hold this model's caches received from elsewhere, not to run it. `dtype` is the dtype its caches arrive
    in (auto: float32 on CPU, as a sharer is loaded, else bfloat16)."""
    from transformers import AutoConfig

    want = parse_dtype(dtype) or (torch.float32 if torch.device(kv_device).type == "cpu" else torch.bfloat16)
    entry = find(spec)
    if entry is not None and entry.real is not None and is_pulled(entry.real, cache_dir):
        source = str(model_dir(entry.real, cache_dir))
        config = AutoConfig.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=want)
        name = entry.name
    else:  # tiny models, directories, hub ids: load, then drop the weights
        loaded = load_model(spec, dtype=dtype, cache_dir=cache_dir, prefill_only=True)
        model, tokenizer, name = loaded.model.to(want), loaded.tokenizer, loaded.name
        model = model.to("meta")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.requires_grad_(False)
    return LoadedModel(name=name, model=model.eval(), tokenizer=tokenizer, kv_device=torch.device(kv_device))


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layer list of a causal LM (`model.model.layers` in every supported architecture)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise C2CError(f"cannot find the decoder layers of {type(model).__name__} (expected model.model.layers)")
    return layers
