"""Reading scores off a prefilled (and fused or written) cache: next-token logits and continuation
log-probabilities (cloze), what evaluation, lm-eval and training read."""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import Cache

from ..alignment.tokens import encode
from ..models.loading import LoadedModel
from .batching import Batch, positions, right_pad


def continuation_logits(batch: Batch, cache: Cache, answerer: LoadedModel, cont_ids: torch.Tensor,
                        cont_mask: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """(B, R, V) logits predicting each token of right-padded continuations (B, R) from a prefilled prompt
    cache: the answering model reads the last prompt token and the continuation but its last token. Used by
    training (the response loss, with gradients) and by cloze scoring (without)."""
    b, r = cont_ids.shape
    ones = torch.ones(b, 1, dtype=batch.mask.dtype, device=batch.mask.device)
    x = torch.cat([batch.ids[:, -1:], cont_ids[:, :-1]], dim=1)
    x_mask = torch.cat([ones, cont_mask[:, :-1]], dim=1)
    pos = (batch.mask.sum(-1, keepdim=True) - 1) + torch.arange(r, device=x.device)  # continue prompt
    return answerer.model(input_ids=x, attention_mask=torch.cat([batch.mask[:, :-1], x_mask], dim=1),
                          position_ids=pos, past_key_values=cache, use_cache=True).logits  # fmt: skip


def option_scores(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[list[float], list[bool]]:
    """Per continuation, its summed log-probability and whether greedy decoding would produce it (every token
    the argmax, as lm-evaluation-harness asks)."""
    logp = logits.float().log_softmax(-1)
    flat = (logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1) * mask).sum(-1).tolist()
    greedy = ((logp.argmax(-1) == ids) | (mask == 0)).all(-1).tolist()
    return flat, greedy


def option_rows(tokenizer, continuations: Sequence[Sequence[str]]) -> list[list[int]]:
    """Token ids of every continuation of every prompt, in order (an empty one reads as the end token)."""
    return [encode(tokenizer, c)[0] or [tokenizer.eos_token_id] for opts in continuations for c in opts]


def per_prompt(flat: list, continuations: Sequence[Sequence[str]]) -> list[list]:
    """`flat` (one value per continuation, in order) regrouped per prompt."""
    out, k = [], 0
    for opts in continuations:
        out.append(flat[k:k + len(opts)])
        k += len(opts)
    return out


def last_logits(batch: Batch, cache: Cache, answerer: LoadedModel) -> torch.Tensor:
    """(B, V) float32 logits of the token after each prompt: the last prompt token read over its cache."""
    out = answerer.model(input_ids=batch.ids[:, -1:], attention_mask=batch.mask,
                         position_ids=positions(batch.mask)[:, -1:], past_key_values=cache)  # fmt: skip
    return out.logits[:, -1].float()


def score_options(batch: Batch, cache: Cache, answerer: LoadedModel, rows: list[list[int]],
                  continuations: Sequence[Sequence[str]]) -> tuple[list[list[float]], list[list[bool]]]:  # fmt: skip
    """Per prompt, each continuation's summed log-probability and greedy flag (`option_scores`): the prompt's
    cache is copied for every option, so scoring k options costs one prefill, not k."""
    owner = torch.tensor([i for i, opts in enumerate(continuations) for _ in opts], device=batch.ids.device)
    cache.batch_select_indices(owner)
    expanded = Batch(batch.ids[owner], batch.mask[owner], [])
    ids, mask = right_pad(rows, 0, batch.ids.device)  # pad id is masked out, any valid id will do
    flat, greedy = option_scores(continuation_logits(expanded, cache, answerer, ids, mask), ids, mask)
    return per_prompt(flat, continuations), per_prompt(greedy, continuations)
