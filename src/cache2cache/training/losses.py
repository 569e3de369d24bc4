"""The losses of one training micro-batch, computed by the receiver from a cache fused with gradients.

Cross-entropy on responses and gold options; option ranking (softmax over a question's per-character option
log-likelihoods, what cloze scoring compares, against the gold one); the mismatch term (the receiver fused
with another question's sharer cache must keep its own option distribution); and distillation toward the
sharer (at every continuation token the fused receiver must predict what the sharer predicts, a dense target
that carries what the sharer knows and the receiver does not, so a prior cannot meet it). Separate from the
recipe so that the loop (recipe.py) reads as a loop and each term can be tested on its own.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
import torch.nn.functional as F

from ..errors import C2CError
from ..inference.batching import Batch, right_pad
from ..inference.controls import rotate_sharers
from ..inference.pipeline import C2CModel
from ..inference.scoring import continuation_logits
from ..kl import top_logprobs, topk_kl
from .config import TrainConfig
from .examples import TrainBatch
from .targets import VocabBridge, sharer_rows

log = logging.getLogger(__name__)
MIN_COVERAGE = 0.5  # of the receiver's token strings in the sharer's vocabulary, for distillation across tokenizers


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
    sharer_kl: torch.Tensor | None = None  # summed over every continuation token (`sharer_kl_weight`)

    def objective(self, cfg: TrainConfig, n_targets: int, n_groups: int, n_continued: int) -> torch.Tensor:
        """What backward() takes: each term over its count in the whole step (trained tokens, questions,
        continuation tokens), so micro-batches and processes add up to the step's mean."""
        loss = cfg.ce_loss_weight * self.ce / n_targets
        if self.sharer_kl is not None:
            loss = loss + cfg.sharer_kl_weight * self.sharer_kl / n_continued
        if n_groups and cfg.option_loss_weight:
            loss = loss + cfg.option_loss_weight * self.rank / n_groups
        if self.mismatch is not None:
            loss = loss + cfg.mismatch_loss_weight * self.mismatch / n_groups
        return loss

    def logged(self) -> list[float]:
        """ce, ranking, ranked right, mismatch term, ranked right mismatched, sharer KL: summed per step."""
        return [self.ce.item(), self.rank.item(), self.correct, 0.0 if self.mismatch is None else self.mismatch.item(),
                self.mismatch_correct, 0.0 if self.sharer_kl is None else self.sharer_kl.item()]  # fmt: skip


class MicroBatchLoss:
    """Called on a micro-batch: prefills sharers and receiver without gradients, fuses with them, returns LossSums.
    `autocast` opens the mixed-precision context the fuser runs in."""

    def __init__(self, model: C2CModel, cfg: TrainConfig, autocast: Callable[[], ContextManager]) -> None:
        self.model, self.cfg, self._autocast = model, cfg, autocast
        self.bridge = VocabBridge.between(model.receiver.tokenizer, model.sharers[0].tokenizer) \
            if cfg.sharer_kl_weight else None
        if self.bridge is not None and self.bridge.coverage < MIN_COVERAGE:
            raise C2CError(f"sharer_kl_weight: only {self.bridge.coverage:.0%} of the receiver's token strings are in "
                           f"the sharer's vocabulary (need {MIN_COVERAGE:.0%}): the distributions cannot be compared")
        if self.bridge is not None and not self.bridge.identical:
            log.info("distilling the sharer over the %.1f%% of the receiver's token strings it shares",
                     100 * self.bridge.coverage)  # fmt: skip

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
        return self.row_scores(tb, self.continuation_logits(tb, cache, prompt, sharer_caches))

    @staticmethod
    def row_scores(tb: TrainBatch, logits: torch.Tensor) -> torch.Tensor:
        """(N,) summed log-likelihood of each continuation row under (N, R, V) logits."""
        n, r = tb.response_ids.shape
        logp = -F.cross_entropy(logits.float().flatten(0, 1), tb.response_ids.flatten(), reduction="none")
        return (logp.view(n, r) * tb.response_mask).sum(-1)

    def continuation_logits(self, tb: TrainBatch, cache, prompt: Batch | None = None,
                            sharer_caches: list | None = None) -> torch.Tensor:  # fmt: skip
        """(N, R, V) receiver logits over each continuation row from `cache`, fused first when sharer caches are
        given (with gradients to the fuser)."""
        m, p = self.model, prompt or tb.prompt
        with self._autocast():
            if sharer_caches is not None:
                m.fuse(cache, sharer_caches, p)
            if tb.owner.numel() != p.ids.shape[0]:
                cache.batch_select_indices(tb.owner)
            rows = Batch(p.ids[tb.owner], p.mask[tb.owner], [])
            return continuation_logits(rows, cache, m.receiver, tb.response_ids, tb.response_mask)

    @torch.no_grad()
    def sharer_logits(self, tb: TrainBatch, sharer_caches: list) -> tuple[torch.Tensor, torch.Tensor]:
        """The sharer's own next-token logits (N, R, V_sharer) at the receiver's continuation positions and the
        (N, R) mask of positions that have them (targets.py: across tokenizers, where both models start a token
        at the same character). The sharer has read the prompt already (for fusion): a copy of that cache, cut
        before the last prompt token, reads the continuations, so the target costs only their tokens."""
        m, device = self.model, tb.response_ids.device
        s_ids, s_mask, _ = tb.prompt.sharers[0]
        cache = copy.deepcopy(sharer_caches[0])
        cache.crop(-1)  # the last prompt token is read again with the continuations
        cache.batch_select_indices(tb.owner)
        rows = Batch(s_ids[tb.owner], s_mask[tb.owner], [])
        if self.bridge.identical:
            return continuation_logits(rows, cache, m.sharers[0], tb.response_ids, tb.response_mask), tb.response_mask
        row_ids = [r[:n].tolist() for r, n in zip(tb.response_ids, tb.response_mask.sum(-1).tolist())]
        read = sharer_rows(m.receiver.tokenizer, m.sharers[0].tokenizer, row_ids, tb.response_ids.shape[1])
        ids, ids_mask = right_pad(read.ids, 0, device)
        logits = continuation_logits(rows, cache, m.sharers[0], ids, ids_mask)
        at = read.at.to(device)
        picked = logits.gather(1, at.clamp(min=0)[..., None].expand(-1, -1, logits.shape[-1]))
        return picked, tb.response_mask * (at >= 0)

    def sharer_targets(self, tb: TrainBatch, sharer_caches: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`sharer_logits` as a target: top-k log-probabilities (N, R, k) over the tokens both vocabularies hold
        (renormalised; all of the receiver's when the vocabularies are one), their places among those tokens, and
        the mask."""
        logits, mask = self.sharer_logits(tb, sharer_caches)
        bridge = self.bridge
        cols = slice(None, bridge.receiver_size) if bridge.identical else bridge.sharer_ids.to(logits.device)
        return (*top_logprobs(logits[..., cols], self.cfg.sharer_kl_top_k), mask)

    def sharer_kl(self, logits: torch.Tensor, target: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
                  ) -> torch.Tensor:  # fmt: skip
        """KL from the sharer's targets to the receiver's (N, R, V) logits, over the tokens both vocabularies hold
        (renormalised) where the vocabularies differ."""
        top, ids, mask = target
        if not self.bridge.identical:
            logits = logits[..., self.bridge.receiver_ids.to(logits.device)]
        return topk_kl(logits[..., :self.bridge.receiver_size], top, ids, mask)

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
        target = self.sharer_targets(tb, sharer_caches) if self.cfg.sharer_kl_weight else None
        logits = self.continuation_logits(tb, cache, sharer_caches=sharer_caches)
        per_row = self.row_scores(tb, logits)
        kl = self.sharer_kl(logits, target) if target is not None else None
        ce = -(per_row * tb.trained).sum()
        rank, correct = torch.zeros((), device=ce.device), 0
        scores = per_row / tb.option_chars / self.cfg.option_temperature
        for idx, gold in tb.groups:
            s = scores[idx]
            rank = rank - s.log_softmax(-1)[gold]
            correct += int(s.argmax()) == gold
        if self.cfg.mismatch_loss_weight and tb.groups and tb.prompt.ids.shape[0] > 1:
            return LossSums(ce, rank, correct, *self.mismatch_loss(tb, sharer_caches), sharer_kl=kl)
        return LossSums(ce, rank, correct, sharer_kl=kl)
