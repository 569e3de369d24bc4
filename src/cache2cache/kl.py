"""KL divergence from a teacher recorded as its top-k log-probabilities: what both the fuser's distillation toward
the sharer (training/losses.py) and the translator's (translation/distill.py) compare against, so a teacher's
forward is paid once per text, not once per step."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def top_logprobs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most likely tokens' log-probabilities (..., k) under `logits` and their ids."""
    top = logits.float().log_softmax(-1).topk(min(k, logits.shape[-1]), dim=-1)
    return top.values, top.indices


def topk_kl(student_logits: torch.Tensor, top_logp: torch.Tensor, top_ids: torch.Tensor, mask: torch.Tensor
            ) -> torch.Tensor:  # fmt: skip
    """KL(teacher || student) summed over the tokens `mask` marks, with the teacher given as its top-k
    log-probabilities (..., k) and their token ids: the exact KL of both distributions coarsened to k + 1 bins
    (the teacher's k tokens and the rest of the vocabulary), so k = V is the full KL and a small k keeps what a
    recording of the teacher stores."""
    keep = mask.bool()
    student = student_logits[keep].float().log_softmax(-1)  # (T, V)
    t = top_logp[keep].float()
    s = student.gather(-1, top_ids[keep])
    rest_t = (1 - t.exp().sum(-1)).clamp(1e-8, 1.0)
    rest_s = (1 - s.exp().sum(-1)).clamp(1e-8, 1.0)
    return ((t.exp() * (t - s)).sum(-1) + rest_t * (rest_t.log() - rest_s.log())).sum()


@dataclass
class TopK:
    """A teacher's reading of one text, recorded once: its top-k log-probabilities (T, k) and their token ids at each
    of T positions, and whose reading it is (a recording is reused for that teacher only)."""

    teacher: str
    logp: torch.Tensor
    ids: torch.Tensor

    def kl(self, student: torch.Tensor, start: int) -> torch.Tensor:
        """Mean over the student's (T - start, V) logits, for the positions from `start` on, of the KL from this
        recording."""
        logp, ids = self.logp[start:], self.ids[start:]
        return topk_kl(student, logp, ids, torch.ones(len(logp), dtype=torch.bool)) / len(logp)
