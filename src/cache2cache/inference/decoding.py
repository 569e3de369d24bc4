"""Decoding settings for transformers' `generate()`: the same for every mode, so baselines decode exactly like
C2C."""

from __future__ import annotations

import threading
from typing import Callable, Iterator

import torch
from transformers import GenerationConfig, TextIteratorStreamer

from ..models.loading import LoadedModel
from .batching import Batch, GenerateOptions, GenerationResult


def generation_config(model: LoadedModel, options: GenerateOptions) -> GenerationConfig:
    base = model.model.generation_config
    sampling = (
        dict(do_sample=True, temperature=options.temperature, top_p=options.top_p, top_k=options.top_k or None)
        if options.do_sample
        else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    )
    return GenerationConfig(
        max_new_tokens=options.max_new_tokens,
        min_new_tokens=options.min_new_tokens or None,
        eos_token_id=base.eos_token_id if base.eos_token_id is not None else model.tokenizer.eos_token_id,
        pad_token_id=model.tokenizer.pad_token_id,
        bos_token_id=base.bos_token_id,
        **sampling,
    )


def eos_ids(model: LoadedModel) -> set[int]:
    """The token ids that end an answer of `model`."""
    eos = model.model.generation_config.eos_token_id
    if eos is None:
        eos = model.tokenizer.eos_token_id
    return set(eos if isinstance(eos, list) else [eos])


def results(out: torch.Tensor, batch: Batch, answerer: LoadedModel) -> list[GenerationResult]:
    """Per row of `generate()`'s output, the answer up to and including its first end token."""
    new = out[:, batch.ids.shape[1]:]
    eos = eos_ids(answerer)
    found = []
    for b in range(new.shape[0]):
        row = new[b].tolist()
        n = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        found.append(GenerationResult(text=answerer.tokenizer.decode(row[:n], skip_special_tokens=True),
                                      prompt_tokens=int(batch.mask[b].sum()), new_tokens=n,
                                      sharer_prompt_tokens=[int(s_mask[b].sum()) for _, s_mask, _ in batch.sharers]))
    return found


def stream(tokenizer, generate: Callable[[TextIteratorStreamer], object]) -> Iterator[str]:
    """Run `generate(streamer)` in a thread and yield the text as it is decoded; its error, if any, is raised
    here once the stream ends (never lost)."""
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            generate(streamer)
        except BaseException as e:  # handed to the consumer below
            errors.append(e)
            streamer.end()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield from streamer
    thread.join()
    if errors:
        raise errors[0]
