"""The losses of one training micro-batch, computed by the receiver from a cache fused with gradients.

Cross-entropy on responses and gold options; option ranking (softmax over a question's per-character option
log-likelihoods, what cloze scoring compares, against the gold one); and the mismatch term (the receiver fused
with another question's sharer cache must keep its own option distribution). Separate from the recipe so that
the loop (recipe.py) reads as a loop and each term can be tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
import torch.nn.functional as F

from ..inference.batching import Batch
from ..inference.controls import rotate_sharers
from ..inference.pipeline import C2CModel
from ..inference.scoring import continuation_logits
from .config import TrainConfig
from .examples import TrainBatch


@dataclass
class LossSums:
    """A micro-batch's summed losses: cross-entropy over trained tokens, option ranking over its multiple-choice
    examples, and how many of those ranked the gold option first; with `mismatch_loss_weight`, the mismatch term
    (KL from the receiver alone to the receiver fused with another question's sharer cache) and how many examples
    that mismatched run ranks right."""

    ce: torch.Tensor
    rank: torch.Tensor
    correct: int
    mismatch: torch.Tensor | None = None
    mismatch_correct: int = 0


class MicroBatchLoss:
    """Called on a micro-batch: prefills sharers and receiver without gradients, fuses with them, returns LossSums.
    `autocast` opens the mixed-precision context the fuser runs in."""

    def __init__(self, model: C2CModel, cfg: TrainConfig, autocast: Callable[[], ContextManager]) -> None:
        self.model, self.cfg, self._autocast = model, cfg, autocast

    def __call__(self, tb: TrainBatch) -> LossSums:
        return self.response_loss(tb, *self.prefill(tb))

    @torch.no_grad()
    def prefill(self, tb: TrainBatch) -> tuple[list, object]:
        """The frozen part of a step: sharer caches and the receiver's prompt cache, without gradients."""
        m = self.model
        return m.prefill_sharers(tb.prompt), m.prefill_answerer(tb.prompt, m.receiver)

    def option_scores(self, tb: TrainBatch, cache, prompt: Batch | None = None, sharer_caches: list | None = None
                      ) -> torch.Tensor:  # fmt: skip
        """Per-row summed log-likelihood of each continuation from `cache` (fused first when sharer caches are
        given, with gradients to the fuser)."""
        m, p = self.model, prompt or tb.prompt
        with self._autocast():
            if sharer_caches is not None:
                m.fuse(cache, sharer_caches, p)
            if tb.owner.numel() != p.ids.shape[0]:
                cache.batch_select_indices(tb.owner)
            rows = Batch(p.ids[tb.owner], p.mask[tb.owner], [])
            logits = continuation_logits(rows, cache, m.receiver, tb.response_ids, tb.response_mask)
        n, r = tb.response_ids.shape
        logp = -F.cross_entropy(logits.float().flatten(0, 1), tb.response_ids.flatten(), reduction="none")
        return (logp.view(n, r) * tb.response_mask).sum(-1)

    def mismatch_loss(self, tb: TrainBatch, sharer_caches: list) -> tuple[torch.Tensor, int]:
        """The term that makes a prior useless: fused with *another* question's sharer cache (rows rotated, see
        inference/controls.py), the receiver's option distribution must stay the receiver's own (KL(alone ||
        mismatched)). A fuser that adds answer-style priors whatever the sharer read pays here; one that carries
        what the sharer read about this question does not. Reorders `sharer_caches` in place."""
        m = self.model
        with torch.no_grad():
            alone = self.option_scores(tb, m.prefill_answerer(tb.prompt, m.receiver))
            rotated = rotate_sharers(tb.prompt, sharer_caches)
            cache = m.prefill_answerer(tb.prompt, m.receiver)
        mismatched = self.option_scores(tb, cache, rotated, sharer_caches)
        kl, correct = torch.zeros((), device=mismatched.device), 0
        scale = tb.option_chars * self.cfg.option_temperature
        for idx, gold in tb.groups:
            target = (alone[idx] / scale[idx]).log_softmax(-1)
            got = (mismatched[idx] / scale[idx]).log_softmax(-1)
            kl = kl + (target.exp() * (target - got)).sum()
            correct += int(got.argmax()) == gold
        return kl, correct

    def response_loss(self, tb: TrainBatch, sharer_caches: list, cache) -> LossSums:
        """Fuse (with gradients), copy each prompt's fused cache to its continuation rows, run the receiver over
        them: cross-entropy on responses and gold options, and the option-ranking loss: the softmax over a
        question's options of their per-character log-likelihoods (what cloze scoring compares) against the
        gold one. Ranking teaches the fuser to carry which answer is right, not only what answers look like."""
        per_row = self.option_scores(tb, cache, sharer_caches=sharer_caches)
        ce = -(per_row * tb.trained).sum()
        rank, correct = torch.zeros((), device=ce.device), 0
        scores = per_row / tb.option_chars / self.cfg.option_temperature
        for idx, gold in tb.groups:
            s = scores[idx]
            rank = rank - s.log_softmax(-1)[gold]
            correct += int(s.argmax()) == gold
        if self.cfg.mismatch_loss_weight and tb.groups and tb.prompt.ids.shape[0] > 1:
            return LossSums(ce, rank, correct, *self.mismatch_loss(tb, sharer_caches))
        return LossSums(ce, rank, correct)
