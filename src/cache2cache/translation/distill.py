"""Distil a translator end to end: the receiver reading a translated passage must predict what follows as it does
after reading the passage itself.

Ridge fitting and refinement (fit.py, refine.py) make each layer's translated keys and values close to the
receiver's own, one layer at a time. What matters is downstream: the receiver's next-token distributions over the
text it reads *after* the translated span. So a recorded passage (both models read it once, `refine.record`) is
cut at a random token: the head and the passage up to the cut become the receiver's template keys plus translated
keys and values, the receiver reads the rest of the passage (and the prompt's end) itself, and every map is
trained so that its next-token distributions there match the receiver's own reading of the whole passage
(KL(teacher || student), mean over the tokens it reads). Gradients flow through the frozen receiver into the
maps: a backward pass through the 135M receiver only, never through the sharer, whose reading is recorded once.

This is issue 25's dense target (the receiver's own reading of the continuation) applied to translation: no
labels, any text. With `teacher` the sharer (same vocabulary and template, e.g. Qwen2.5-Coder-0.5B <- 1.5B), the
target becomes the sharer's own continuation of the passage: what it understood, not only what the text says
(issue 33), and the translated cache may then carry more than the receiver's own reading. The sharer's forward
costs more than the whole student step, so with `top_k` its reading of each passage is recorded once, as top-k
log-probabilities (kl.py), and the KL is taken over those k tokens and the rest of the vocabulary.

Plain passages teach the continuation of the passage. An `Exchange` is text shaped like a message's use: a brief
the sender reads (a note, a paragraph), the question after it, and an answer; the brief is translated whole and
only the answer's tokens are scored, so a sharer teacher's prediction of the answer (what it knows about the
note) is the whole target (issue 33).

Through the knob (`Recompute`, recompute.py) the student is what the knob serves. With `own_from` m: translated
layers below m, the receiver's own layers from m on, run from the state the entry map of m writes; only that map
trains, so the state it writes is judged by what the receiver's upper layers make of it, not by its distance to
the receiver's own state (the ridge fit's criterion, entries.py). With `own_tokens` p (and no m): the receiver
recomputes its picked share of the brief's tokens at every layer, attending to the translated others, and every
map trains: the translated tokens are then judged as what the recomputed ones and the question read beside the
receiver's own, not as a stand-in for all of it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..alignment.tokens import Messages, same_tokenization
from ..caches.identity import identity_of
from ..caches.prompt_cache import PromptCache
from ..errors import C2CError
from ..kl import TopK, top_logprobs
from ..kv import ModelGeometry, new_cache
from ..models.loading import LoadedModel
from .features import rotary, rotate
from .fit import PassagePair, passage_pair
from .recompute import Recompute, pick_tokens, selected_layers
from .refine import compact
from .translator import Translator

CUT_RANGE = (0.3, 1.0)  # the translated share of a passage, drawn per step (1.0: all of it, as a brief is read)
HELD_CUTS = (0.6, 1.0)  # the held-out check: part of each passage translated, and all of it


@dataclass
class DistillReport:
    """Held-out KL (nats per token the receiver reads) before and after, and the step that was kept."""

    kl_before: float
    kl_after: float
    best_step: int
    steps: int

    def to_dict(self) -> dict:
        return {"kl_held_out": [self.kl_before, self.kl_after], "best_step": self.best_step, "steps": self.steps}


@dataclass(frozen=True)
class Exchange:
    """Distillation text shaped like a message's use: the sender reads `brief`, the receiver then reads `messages`
    (the brief is placed before the last user message, as at use time) and is scored on `answer`."""

    brief: str
    messages: Messages
    answer: str


def record_exchanges(receiver: LoadedModel, sharer: LoadedModel, exchanges: list[Exchange], chat: bool = True,
                     states_of: list[int] | None = None) -> list[PassagePair]:  # fmt: skip
    """Both models read each exchange's brief once (as `refine.record` reads passages), its answer kept in ids."""
    return [compact(passage_pair(receiver, sharer, ex.brief, chat, messages=ex.messages, answer=ex.answer,
                                 states_of=states_of))
            for ex in tqdm(exchanges, desc="record exchanges", unit="exchange", dynamic_ncols=True)]  # fmt: skip


def cut_of(pair: PassagePair, fraction: float) -> int:
    """How many of the passage's tokens are translated at this `fraction` (at least one, at most all); an
    exchange's brief is a message, translated whole."""
    n = len(pair.embedding)
    return n if pair.scored_from else min(n, max(1, round(fraction * n)))


def unscored(pair: PassagePair, cut: int) -> int:
    """How many of the student's first predictions (from position start + cut) precede an exchange's answer."""
    return max(0, pair.scored_from - pair.start - cut)


def student_logits(translator: Translator, receiver: LoadedModel, pair: PassagePair, cut: int,
                   knob: Recompute = Recompute()) -> torch.Tensor:  # fmt: skip
    """(L - s0, V) logits of the receiver reading ids[s0:] (s0 = start + cut) after its own template keys and the
    translated first `cut` passage tokens; differentiable in the translator's maps. Under a `knob` (recompute.py)
    the receiver's own layers from `own_from` (run from the state its entry map writes, differentiable in it) or
    from its embeddings over the `own_tokens` share it picks replace the translated ones, as the pipeline does."""
    if pair.ids is None:
        raise C2CError("distillation needs passages recorded with their token ids (re-record them)")
    m = knob.own_from
    if m and pair.s_states is None:
        raise C2CError("distilling through an entry map needs passages recorded with the sharer's states")
    geo = ModelGeometry.from_config(receiver.model.config).layers
    s, c = pair.start, cut
    maps = translator.maps([k[:c].float() for k in pair.s_keys], [v[:c].float() for v in pair.s_values],
                           pair.embedding[:c].float() if translator.uses_embedding else None)  # fmt: skip
    dtype = next(receiver.model.parameters()).dtype  # the cache in the receiver's own precision
    positions = torch.arange(s + c, device=receiver.device)
    keys, values = [], []
    for i, ((k, v), rk, rv, g) in enumerate(zip(maps, pair.r_keys, pair.r_values, geo)):
        own_k, own_v = (t[:s].float().view(s, g.kv_heads, g.head_dim).transpose(0, 1) for t in (rk, rv))
        own_k = rotate(own_k, *rotary(receiver, i, positions[:s]))  # the template, rotated at 0..s
        keys.append(torch.cat([own_k, rotate(k, *rotary(receiver, i, positions[s:]))], dim=1).to(dtype))
        values.append(torch.cat([own_v, v], dim=1).to(dtype))
    if m or knob.selective:
        ids = pair.ids[s:s + c]
        prefix = PromptCache(identity_of(receiver), pair.ids[:s], [k[:, :s] for k in keys], [v[:, :s] for v in values])
        picked = pick_tokens(receiver, ids, knob.own_tokens, knob.pick) if knob.selective else list(range(c))
        state = translator.entry_state(m, pair.s_states[:c].float(), pair.embedding[:c].float()) if m else None
        keys, values = selected_layers(receiver, prefix, ids, state, m, len(geo), keys, values, picked)
    cache = new_cache(receiver.model.config)
    for i, (k, v) in enumerate(zip(keys, values)):
        cache.update(k[None], v[None], i)
    ids = torch.tensor([pair.ids[s + c:]], device=receiver.device)
    pos = torch.arange(s + c, len(pair.ids), device=receiver.device)[None]
    return receiver.model(input_ids=ids, position_ids=pos, past_key_values=cache, use_cache=True).logits[0]


@torch.no_grad()
def teacher_logprobs(teacher: LoadedModel, pair: PassagePair, cut: int, vocab: int | None = None) -> torch.Tensor:
    """(L - s0, V) log-probabilities of the teacher's reading of the whole prompt (the receiver's token ids) at
    the positions the student reads, over the first `vocab` logits (the receiver's, where padding differs)."""
    ids = torch.tensor([pair.ids], device=teacher.device)
    return teacher.model(input_ids=ids).logits[0, pair.start + cut:, :vocab].float().log_softmax(-1)


def record_top_k(pairs: list[PassagePair], teacher: LoadedModel, k: int, vocab: int) -> None:
    """Each pair's `top_k`: the teacher's top-k over its reading from the brief's first token on (of its first
    `vocab` logits: the receiver's), recorded once; kept where the pair has this teacher's top-k already (loaded
    from a recordings file, recordings.py)."""
    todo = [p for p in pairs if p.top_k is None or p.top_k.teacher != teacher.name
            or p.top_k.logp.shape[-1] != min(k, vocab)]  # fmt: skip
    for p in tqdm(todo, desc=f"record {teacher.name}", unit="passage", dynamic_ncols=True):
        with torch.no_grad():
            logits = teacher.model(input_ids=torch.tensor([p.ids], device=teacher.device)).logits
        p.top_k = TopK(teacher.name, *(t.cpu() for t in top_logprobs(logits[0, p.start:, :vocab], k)))


def check_teacher(receiver: LoadedModel, teacher: LoadedModel) -> None:
    """A teacher other than the receiver must read the receiver's token ids as the same text."""
    if teacher is not receiver and not same_tokenization(receiver.tokenizer, teacher.tokenizer):
        raise C2CError(f"distilling toward {teacher.name} needs the receiver's tokenizer and chat template "
                       f"({receiver.name} differs; cross-tokenizer distillation is not built)")  # fmt: skip


def distill_loss(translator: Translator, receiver: LoadedModel, pair: PassagePair, cut: int,
                 teacher: torch.Tensor | TopK | None = None, knob: Recompute = Recompute()
                 ) -> torch.Tensor:  # fmt: skip
    """Mean over the tokens the student reads (an exchange: its answer's) of KL(teacher || student): `teacher` its
    log-probabilities from the cut on, or its recorded reading of the passage, or (None) the receiver's own."""
    skip = unscored(pair, cut)
    student = student_logits(translator, receiver, pair, cut, knob).float()[skip:]
    if isinstance(teacher, TopK):
        return teacher.kl(student, cut + skip)
    if teacher is None:
        teacher = teacher_logprobs(receiver, pair, cut, student.shape[-1])
    teacher = teacher[skip:]
    student = student[:, :teacher.shape[-1]].log_softmax(-1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean")


def distill(translator: Translator, receiver: LoadedModel, train: list[PassagePair], held: list[PassagePair],
            steps: int = 300, lr: float = 3e-5, batch: int = 4, seed: int = 0, check_every: int = 25,
            teacher: LoadedModel | None = None, top_k: int = 0, knob: Recompute = Recompute(),
            branch_lr: float = 3e-4) -> DistillReport:  # fmt: skip
    """Adam on every key and value map together (or, with the knob's `own_from` m, on the entry map of layer m
    alone, the receiver recomputing its layers m.. from it) (from where they are) to lower `distill_loss` (through
    the `knob`: the student is what it serves) on `train` at random
    cuts; the held-out loss (each passage cut at HELD_CUTS) is checked every `check_every` steps and
    the best weights are kept. `lr` is relative to each map's mean absolute weight; the maps' nonlinear branches
    (`Translator.with_mlps`), which start at zero, train at `branch_lr` itself. `teacher` (default: the
    receiver) is the model whose reading of the whole passage the student must match: exactly, read again at
    each use, or (`top_k` > 0) its top-k recorded once per passage. Records the report in the translator's fit
    under `distilled` (`distilled_entry` with `own_from`), an earlier distillation's report kept under `after`."""
    if not train or not held:
        raise C2CError("distillation needs training and held-out passages")
    if knob.own_first or knob.own_to:
        raise C2CError("the distillation's student takes the knob from own-from and own-tokens only")
    own_from = knob.own_from
    teacher = teacher or receiver
    check_teacher(receiver, teacher)
    vocab = receiver.model.get_output_embeddings().weight.shape[0]
    rng = random.Random(seed)
    if own_from and str(own_from) not in translator.entries:
        raise C2CError(f"the translator has no entry map for layer {own_from} to distil")
    maps, branches = ([translator.entries[str(own_from)]], []) if own_from else translator.maps_and_branches()
    affine = [p for lin in maps for p in lin.parameters()]
    scale = sum(p.detach().abs().mean().item() for p in affine) / len(affine) or 1.0
    extra = [p for b in branches for p in b.parameters()]
    opt = torch.optim.Adam([{"params": affine, "lr": lr * scale}] + ([{"params": extra, "lr": branch_lr}] if extra
                                                                     else []))  # fmt: skip
    params = affine + extra
    checks = [(p, c) for p in held for c in dict.fromkeys(cut_of(p, f) for f in HELD_CUTS)]
    if top_k:
        record_top_k(train + held, teacher, top_k, vocab)
    teachers = [p.top_k if top_k else teacher_logprobs(teacher, p, c, vocab) for p, c in checks]

    def held_loss() -> float:
        with torch.no_grad():
            return sum(distill_loss(translator, receiver, p, c, t, knob).item()
                       for (p, c), t in zip(checks, teachers)) / len(checks)  # fmt: skip

    before = best = held_loss()
    best_step, best_state = 0, [p.detach().clone() for p in params]
    translator.requires_grad_(True)
    try:
        bar = tqdm(range(1, steps + 1), desc="distil", unit="step", dynamic_ncols=True, postfix={"held_kl": before})
        for step in bar:
            opt.zero_grad()
            for pair in rng.sample(train, min(batch, len(train))):
                cut = cut_of(pair, rng.uniform(*CUT_RANGE))
                target = pair.top_k if top_k else (None if teacher is receiver
                                                   else teacher_logprobs(teacher, pair, cut, vocab))  # fmt: skip
                (distill_loss(translator, receiver, pair, cut, target, knob) / batch).backward()
            opt.step()
            if step % check_every == 0 or step == steps:
                now = held_loss()
                bar.set_postfix(held_kl=now)
                if now < best:
                    best, best_step, best_state = now, step, [p.detach().clone() for p in params]
    finally:
        translator.requires_grad_(False)
    with torch.no_grad():
        for p, kept in zip(params, best_state):
            p.copy_(kept)
    report = DistillReport(before, best, best_step, steps)
    key = "distilled_entry" if own_from else "distilled"
    earlier = translator.config.fit.get(key)  # a translator distilled again still lists all the text it has seen
    translator.config.fit[key] = {
        **report.to_dict(), "lr": lr, "passages": len(train), "held_out": len(held), "teacher": teacher.name,
        **({"branch_lr": branch_lr} if extra else {}),
        **({"top_k": top_k} if top_k else {}), **({"own_from": own_from} if own_from else {}),
        **({"own_tokens": knob.own_tokens, "pick": knob.pick} if knob.selective else {}),
        **({"after": earlier} if earlier else {})}  # fmt: skip
    return report
