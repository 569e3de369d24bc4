"""TrainConfig: one flat, typed record of a training run, read from TOML and overridden by `key=value`.

Unknown keys and values of the wrong type fail before any model is loaded. The resolved config is saved in
every checkpoint, so a run can be audited or resumed from its directory alone.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from ..errors import C2CError


def split_mix_entry(entry: str) -> tuple[str, str]:
    """'name:weight' -> (name, weight text); ('name', '') when there is no weight (a path may hold colons)."""
    name, sep, weight = entry.rpartition(":")
    try:
        float(weight)
    except ValueError:
        return entry, ""
    return (name, weight) if sep else (entry, "")


@dataclass
class TrainConfig:
    # models
    receiver: str = "SmolLM2-135M-Instruct"
    sharer: str = "Qwen2.5-Coder-0.5B-Instruct"
    dtype: str = "auto"  # of the frozen models; the fuser keeps fp32 master weights
    device: str = ""  # "" = cuda if available, else cpu
    # fuser
    preset: str = "compact"
    layer_alignment: str = "terminal"
    token_alignment: str = "offsets"
    train_last_layers: int = 0  # > 0: fuse only the receiver's last N layers (cheaper, fewer parameters)
    init_fuser: str = ""  # a fuser folder to start from (its preset and alignments win), "" = random init
    # data
    # One source or a weighted mix, "name:weight,...", or a TOML list ["sharegpt:0.3", "sciq:0.2"]: sources are
    # "sharegpt", bundled question sets (see training/mixture.py: sciq, commonsense_qa, social_i_qa, piqa,
    # hellaswag, winogrande, boolq, copa, trivia_qa), a .jsonl/.json file or a datasets folder.
    data: str = "sharegpt"
    limit: int = 0  # use at most this many conversations (0 = all)
    val_size: int = 64  # held-out conversations for validation loss
    max_prompt_tokens: int = 256  # longer prompts are skipped (counted), never cut mid-template
    max_response_tokens: int = 128  # responses are truncated to this many tokens
    # optimisation
    batch_size: int = 8  # conversations per optimizer step, over all processes
    micro_batch_size: int = 4  # conversations per forward pass in one process (gradient accumulation)
    max_steps: int = 0  # 0 = one epoch
    lr: float = 1e-3
    weight_decay: float = 0.01
    # Adam moves a parameter by about lr per step, so at lr 1e-3 a gate logit starting at 1.0 cannot reach 0
    # (closed) in fewer than ~1000 steps: on short runs the gates cannot select layers unless they learn faster.
    gate_lr_mult: float = 1.0
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    # Multiple-choice examples: weight of the option-ranking loss (0 = cross-entropy on the gold option only) and
    # the softmax temperature over per-character option log-likelihoods (they differ by ~0.1-1 nats per char).
    option_loss_weight: float = 0.0
    option_temperature: float = 0.25
    # Weight of the mismatch term: KL from the receiver alone to the receiver fused with another question's sharer
    # cache, over a question's options. It makes answer priors that ignore the sharer cost what they gain, so the
    # fuser has to carry what the sharer read (0 = off; costs two more receiver passes per micro-batch).
    mismatch_loss_weight: float = 0.0
    # Distillation toward the sharer: weight of KL(sharer || fused receiver) at every continuation token (response
    # tokens, every option's tokens), the sharer's distribution kept as its top-k log-probabilities plus one bin
    # for the rest (training/losses.py topk_kl). A dense target that carries what the sharer knows; exact with one
    # vocabulary (e.g. Qwen2.5-Coder-0.5B <- 1.5B), across tokenizers over the token strings both hold, where both
    # start a token at the same character (training/targets.py). ce_loss_weight 0 trains on it alone.
    sharer_kl_weight: float = 0.0
    sharer_kl_top_k: int = 64
    ce_loss_weight: float = 1.0
    temperature_start: float = 1.0  # Gumbel-sigmoid gate temperature, annealed geometrically ...
    temperature_end: float = 0.05  # ... to this at the last step
    autocast_bf16: bool = True  # bf16 autocast for the fuser where the device supports it
    seed: int = 0
    # bookkeeping
    out_dir: str = "runs/fuser"
    log_every: int = 5
    eval_every: int = 50
    save_every: int = 50
    keep_last: int = 3

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise C2CError(f"{f.name} must be a finite number, got {value}")
        if not self.grad_clip > 0 or self.weight_decay < 0:
            raise C2CError(f"need grad_clip > 0 and weight_decay >= 0 (got {self.grad_clip}, {self.weight_decay})")
        positive = ("batch_size", "micro_batch_size", "max_prompt_tokens", "max_response_tokens", "log_every",
                    "eval_every", "save_every", "keep_last", "sharer_kl_top_k")  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise C2CError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_steps", "limit", "val_size", "warmup_steps", "train_last_layers"):
            if getattr(self, name) < 0:
                raise C2CError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.gate_lr_mult <= 0:
            raise C2CError(f"gate_lr_mult must be > 0, got {self.gate_lr_mult}")
        if self.lr <= 0 or not 0 < self.temperature_end <= self.temperature_start:
            raise C2CError("need lr > 0 and 0 < temperature_end <= temperature_start")
        weights = ("option_loss_weight", "mismatch_loss_weight", "sharer_kl_weight", "ce_loss_weight")
        if not (all(getattr(self, w) >= 0 for w in weights) and self.option_temperature > 0):
            raise C2CError(f"need {', '.join(weights)} >= 0 and option_temperature > 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise C2CError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")

    def with_absolute_paths(self) -> "TrainConfig":
        """The same run with local files (data sources, init_fuser, out_dir) made absolute: the config saved in a
        run resumes from any working directory. Catalog names, bundled sources and hub ids stay as they are."""
        def absolute(name: str) -> str:
            path = Path(name).expanduser()
            return str(path.resolve()) if name and path.exists() else name

        entries = [split_mix_entry(entry.strip()) for entry in self.data.split(",")]
        data = ",".join(absolute(name) + (f":{weight}" if weight else "") for name, weight in entries)
        return replace(self, data=data, init_fuser=absolute(self.init_fuser),
                       out_dir=str(Path(self.out_dir).expanduser().resolve()))  # fmt: skip

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def _coerce(name: str, value, kind):
    """Convert an override string (or TOML value) to the field's type, refusing anything else."""
    if isinstance(value, str) and kind is not str:
        try:
            value = {"bool": lambda v: {"true": True, "false": False}[v.lower()], "int": int, "float": float}[
                kind.__name__
            ](value)
        except (KeyError, ValueError):
            raise C2CError(f"{name}: expected {kind.__name__}, got {value!r}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not kind:
        raise C2CError(f"{name}: expected {kind.__name__}, got {value!r}")
    return value


def load_config(path: str | Path | None = None, overrides: list[str] = (), base: dict | None = None) -> TrainConfig:
    """TrainConfig from `base` (a saved config, on resume), then a TOML file, then `key=value` overrides."""
    values: dict = dict(base or {})
    if path is not None:
        try:
            values.update(tomllib.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise C2CError(f"config file not found: {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise C2CError(f"invalid TOML in {path}: {e}") from None
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise C2CError(f"override {item!r} is not key=value")
        values[key.strip()] = value.strip()
    if isinstance(values.get("data"), list):  # a TOML list of mix entries
        values["data"] = ",".join(str(v) for v in values["data"])
    types = {f.name: f.type for f in fields(TrainConfig)}
    kinds = {"str": str, "int": int, "float": float, "bool": bool}
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise C2CError(f"unknown config key(s) {unknown}; known: {', '.join(types)}")
    return TrainConfig(**{k: _coerce(k, v, kinds[types[k]]) for k, v in values.items()})
