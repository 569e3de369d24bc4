"""A training run's examples: its data mixture read, tokenised and aligned (only as many as the run needs), split
into validation and training, with what happened to every record of every source."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..alignment.tokens import TokenAligner
from ..errors import C2CError
from .config import TrainConfig
from .data import DataReport
from .examples import TrainExample, build_examples
from .mixture import load_mixture


@dataclass
class TrainingData:
    parts: list  # the mixture's sources, with their weights
    reports: list[DataReport]
    val: list[TrainExample]
    train: list[TrainExample]

    def summary(self) -> str:
        return "; ".join(r.summary() for r in self.reports)

    def manifest(self, cfg: TrainConfig) -> dict:
        """Exactly what the run trains on: each source, its weight and what happened to its records."""
        return {"spec": cfg.data, "seed": cfg.seed, "val_size": cfg.val_size, "train_examples": len(self.train),
                "sources": [{"weight": round(p.weight, 6), **r.to_dict()} for p, r in zip(self.parts, self.reports)]}


def load_training_data(cfg: TrainConfig, aligner: TokenAligner, progress: bool = True) -> TrainingData:
    """The examples of `cfg.data`: a run of max_steps tokenises and aligns only those it needs, each source its
    weight's share; several sources are interleaved (one keeps its own order, as runs always have)."""
    parts = load_mixture(cfg.data)
    needed = cfg.val_size + cfg.max_steps * cfg.batch_size if cfg.max_steps else None
    examples, reports = [], []
    for k, (part, convs, report) in enumerate(parts):
        order = torch.randperm(len(convs), generator=torch.Generator().manual_seed(cfg.seed + k)).tolist()
        share = None if needed is None else max(1, round(part.weight * needed))
        got, skipped = build_examples(aligner, [convs[i] for i in order], cfg.max_prompt_tokens,
                                      cfg.max_response_tokens, needed=share, progress=progress)  # fmt: skip
        report.skipped.update(skipped)
        report.used = len(got)
        report.not_needed = len(convs) - len(got) - sum(skipped.values())
        report.short = share - len(got) if share and len(parts) > 1 else 0  # proportions are off
        examples += got
        reports.append(report)
    if len(parts) > 1:
        mix = torch.randperm(len(examples), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
        examples = [examples[i] for i in mix]
    data = TrainingData([part for part, _, _ in parts], reports, examples[: cfg.val_size], examples[cfg.val_size:])
    if len(examples) <= cfg.val_size:
        raise C2CError(f"only {len(examples)} usable examples for val_size {cfg.val_size} ({data.summary()})")
    return data
