"""Same-base cache reuse needs two fine-tunes of one base. This makes the second one: a LoRA fine-tune (peft)
of a model on a multiple-choice task in the evaluation's letter format, saved as a small adapter
(adapter_config.json + adapter_model.safetensors) that `load_model` merges into the base at load.

The loss is the cross-entropy of the gold option's letter at the position after "The correct answer is", the
exact position `c2c eval --method letter` scores, so the fine-tune is measurably good at its task and its
caches measurably differ from the base's: the situation DroidSpeak's reuse is meant for.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..atomic import check_writable_dir, replace_dir
from ..errors import C2CError
from ..evaluation.scoring import LETTERS, prompt_for
from ..evaluation.tasks import Item, get_task
from ..models.loading import LoadedModel, load_model
from ..training.schedule import lr_at
from .capture import tokenize

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraRecipe:
    base: str = "SmolLM2-135M-Instruct"
    task: str = "arc_easy"
    split: str = "test"  # train on test, evaluate on validation: the two never share a question
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    steps: int = 80
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    seed: int = 0


def _letter_id(model: LoadedModel, index: int) -> int:
    """The token a chat model writes after "The correct answer is": the letter with its leading space."""
    return model.tokenizer.encode(f" {LETTERS[index]}", add_special_tokens=False)[-1]


def _batch(model: LoadedModel, items: list[Item]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids, mask = tokenize(model, [prompt_for(it, "letter") for it in items])
    gold = torch.tensor([_letter_id(model, int(it.answer)) for it in items], device=model.device)
    return ids, mask, gold


def _readme(recipe: LoraRecipe, log: dict) -> str:
    last = log["losses"][-10:]
    return (f"# LoRA adapter for {recipe.base}\n\nMade by cache2cache for same-base cache reuse (`c2c reuse`): "
            f"rank {recipe.rank}, alpha {recipe.alpha}, on {', '.join(recipe.target_modules)}; {recipe.steps} steps "
            f"x {recipe.batch_size} examples of {recipe.task}/{recipe.split} in the letter format, lr {recipe.lr}, "
            f"seed {recipe.seed}; {log['seconds']} s; final loss (mean of the last 10 steps) "
            f"{sum(last) / len(last):.3f}.\n\nReproduce:\n\n    c2c reuse finetune --base {recipe.base} --task "
            f"{recipe.task} --split {recipe.split} --steps {recipe.steps} --batch-size {recipe.batch_size} "
            f"--rank {recipe.rank} --lr {recipe.lr} --seed {recipe.seed} --out DIR\n\nLoad it merged: pass the "
            "folder wherever a model is expected (`--b DIR`). The loss curve is in finetune.json.\n")


def finetune_lora(recipe: LoraRecipe, out: Path, device: str = "cpu", overwrite: bool = False) -> dict:
    """Train the adapter, write it to `out` (replacing it only when training finished), return the log. A
    non-empty `out` is refused before any work unless `overwrite`."""
    from peft import LoraConfig, get_peft_model

    out = Path(out)
    check_writable_dir(out, "--out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise C2CError(f"--out {out} is not empty; choose a new folder or pass --overwrite to replace it")
    items = [it for it in get_task(recipe.task).load(recipe.split) if it.choices]
    if len(items) < recipe.batch_size:
        raise C2CError(f"{recipe.task}/{recipe.split} has {len(items)} items, fewer than one batch")
    torch.manual_seed(recipe.seed)
    base = load_model(recipe.base, dtype="float32", device=device)
    config = LoraConfig(r=recipe.rank, lora_alpha=recipe.alpha, lora_dropout=recipe.dropout,
                        target_modules=list(recipe.target_modules), task_type="CAUSAL_LM")  # fmt: skip
    model = get_peft_model(base.model, config)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0)
    rng = random.Random(recipe.seed)
    order: list[int] = []
    losses, t0 = [], time.perf_counter()
    bar = tqdm(range(recipe.steps), desc="LoRA fine-tune", unit="step")
    for step in bar:
        while len(order) < recipe.batch_size:  # epochs of fresh permutations
            order += rng.sample(range(len(items)), len(items))
        chunk, order = order[: recipe.batch_size], order[recipe.batch_size:]
        ids, mask, gold = _batch(base, [items[i] for i in chunk])
        for group in optimizer.param_groups:
            group["lr"] = lr_at(recipe, step, recipe.steps)
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[:, -1].float()
        loss = F.cross_entropy(logits, gold)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
    log = {"recipe": asdict(recipe), "trainable_params": sum(p.numel() for p in params), "losses": losses,
           "seconds": round(time.perf_counter() - t0, 1), "examples_seen": recipe.steps * recipe.batch_size,
           "task_items": len(items)}  # fmt: skip
    # Record the catalog name, not the local cache path, so the adapter names a base any machine can pull.
    model.peft_config["default"].base_model_name_or_path = recipe.base
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)
    (tmp / "finetune.json").write_text(json.dumps(log, indent=1))
    (tmp / "README.md").write_text(_readme(recipe, log))
    replace_dir(tmp, out)
    return log
