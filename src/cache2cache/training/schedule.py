"""The training schedules: learning rate (warmup, then cosine) and the gates' temperature (annealed)."""

from __future__ import annotations

import math

from .config import TrainConfig


def lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    """Linear warmup, then cosine decay to lr * min_lr_ratio at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def temperature_at(cfg: TrainConfig, step: int, total: int) -> float:
    """Gate temperature, annealed geometrically from temperature_start to temperature_end."""
    return cfg.temperature_start * (cfg.temperature_end / cfg.temperature_start) ** (step / max(1, total - 1))
