"""Agents that pass caches instead of text.

    team = Team(fusers=[fuser], store=PrefixStore(2 << 30))
    reader = team.agent("reader", load_model("Qwen2.5-Coder-1.5B-Instruct"))
    answerer = team.agent("answerer", load_model("SmolLM2-135M-Instruct"))
    note = reader.read(document)                      # a CacheMessage: the reader's cache of the document
    replies = team.answer(answerer, ["Who ...?", "When ...?"], [note])   # batched; C2C through the fuser

A message is the sender's `PromptCache` of the conversation it read. The receiving agent joins that
conversation: its prompt is the sender's messages followed by the question, and it answers from its own cache
with the sender's fused in (Cache-to-Cache). Every cache goes through the team's prefix store, so the document
is prefilled once per model and each question costs only its own tokens (and fusion reuses the document's fused
positions). Where the team has a translator for the (receiver, sender) pair (`c2c fit`) of every message's
sender, the notes' documents are *translated*: the receiver answers from its own cache of the documents (one
after the other, one per sender), written by each translator from its sender's reading, and never reads them
itself; the translated cache is stored, so every follow-up question costs only the receiver's reading of it.
Where the team has neither, the message falls back to text: the sender writes what it would have said
(`CacheMessage.render`) and the receiver reads that, with a warning.

Roles (system prompts) apply when an agent reads or answers on its own; in C2C the receiver reads the sender's
conversation, system prompt included, because that is what the sender's cache holds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

from .alignment.tokens import Messages, encode, render
from .caches.identity import identity_of
from .caches.prompt_cache import PromptCache, measure_scale
from .caches.signing import CacheKeys, ScaleProfile, validate
from .caches.store import PrefixStore
from .errors import C2CError
from .fuser.model import Fuser
from .inference.batching import Briefed, GenerateOptions, GenerationResult, Prompt, to_messages
from .inference.pipeline import C2CModel
from .models.loading import LoadedModel
from .translation.translator import Translator

log = logging.getLogger(__name__)


@dataclass
class CacheMessage:
    """What one agent sends another: its cache of the conversation it read (a handle, not text)."""

    sender: str  # the agent's name
    cache: PromptCache

    @property
    def context(self) -> Messages:
        return self.cache.messages or []

    def to_bytes(self, key: CacheKeys | None = None) -> bytes:
        """The message on the wire: its cache file, signed when a key is given (caches/signing.py)."""
        self.cache.meta["sender"] = self.sender
        return self.cache.to_bytes(key=key)

    def render(self, team: "Team", options: GenerateOptions | None = None) -> str:
        """The text the sender would have written from this cache (for auditing, and the text fallback)."""
        sender = team.agents[self.sender]
        model = C2CModel(sender.model, store=team.store)
        team.store.put(self.cache)  # a message from elsewhere (a file, the wire) is a prefix to reuse
        return model.generate([self.context], "receiver", options).results[0].text


@dataclass
class Agent:
    name: str
    model: LoadedModel
    system: str | None = None  # the agent's role when it reads or answers on its own
    team: "Team | None" = field(default=None, repr=False)

    def _messages(self, prompt: Prompt) -> Messages:
        messages = to_messages(prompt)
        if self.system and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.system}] + messages
        return messages

    def read(self, context: Prompt) -> CacheMessage:
        """Prefill `context` (with this agent's role) once and return it as a message for other agents."""
        store = self.team.store if self.team else PrefixStore()
        messages = self._messages(context)
        ids = encode(self.model.tokenizer, render(self.model.tokenizer, messages))[0]
        if len(ids) > self.model.max_length:
            raise C2CError(f"{self.name}: {len(ids)} tokens exceed {self.model.name}'s context")
        cache = store.prefill(self.model, ids, messages)
        cache.meta["sender"] = self.name
        return CacheMessage(self.name, cache)

    def ask(self, prompts: Sequence[Prompt], options: GenerateOptions | None = None) -> list[GenerationResult]:
        """Answer on its own (no messages), with its role."""
        store = self.team.store if self.team else None
        model = C2CModel(self.model, store=store)
        return model.generate([self._messages(p) for p in prompts], "receiver", options).results


@dataclass
class Reply:
    text: str
    via: dict[str, str]  # sender -> "cache", "translated" or "text"
    result: GenerationResult


class Team:
    """Agents and the fusers between their models; one prefix store shared by all of them."""

    def __init__(self, fusers: Sequence[Fuser] = (), store: PrefixStore | None = None,
                 translators: Sequence[Translator] = ()) -> None:  # fmt: skip
        self.store = store if store is not None else PrefixStore()
        self.fusers = {(f.config.receiver, f.config.sharer): f for f in fusers}
        self.translators = {(t.config.receiver, t.config.sharer): t for t in translators}
        self.agents: dict[str, Agent] = {}
        self._models: dict[tuple[str, ...], C2CModel] = {}  # one per (receiver, senders): fuser hashes once
        self._scales: dict[str, ScaleProfile] = {}  # per sender: what its caches may hold (messages from the wire)

    def agent(self, name: str, model: LoadedModel, system: str | None = None) -> Agent:
        if name in self.agents:
            raise C2CError(f"an agent named {name!r} is already in the team")
        self.agents[name] = Agent(name, model, system, self)
        return self.agents[name]

    def receive(self, data: bytes, key: CacheKeys | None = None) -> CacheMessage:
        """A message from the wire, verified with `key` (required: an unsigned message is refused unless the key
        is None, which trusts the bytes) and validated against the sending agent's model in this team: its
        identity, shapes, finite values within the model's measured scale, tokens of its own conversation."""
        cache = PromptCache.from_bytes(data, key=key)
        sender = self.agents.get(str(cache.meta.get("sender")))
        if sender is None:
            raise C2CError(f"a message from {cache.meta.get('sender')!r}, who is not in this team")
        if sender.name not in self._scales:
            self._scales[sender.name] = measure_scale(sender.model)
        validate(cache, identity_of(sender.model), self._scales[sender.name], sender.model.tokenizer)
        return CacheMessage(sender.name, cache)

    def fuser_for(self, receiver: Agent, sender: Agent) -> Fuser | None:
        return self.fusers.get((receiver.model.name, sender.model.name))

    def answer(self, receiver: Agent, questions: Sequence[str], messages: Sequence[CacheMessage],
               options: GenerateOptions | None = None) -> list[Reply]:  # fmt: skip
        """Answer each question after the messages' conversations, batched. Senders with a fuser for this
        receiver are fused in (one sharer each, several at once); the others fall back to their text."""
        plan = self._plan(receiver, questions, messages, options)
        out = plan.model.generate(plan.prompts, plan.mode, options)
        return [Reply(r.text, plan.via, r) for r in out.results]

    def score(self, receiver: Agent, questions: Sequence[str], choices: Sequence[Sequence[str]],
              messages: Sequence[CacheMessage]) -> list[list[float]]:  # fmt: skip
        """Log-likelihood of each choice (a continuation text) after each question, read as `answer` reads it:
        cloze scoring through the same prompts, caches and fusers."""
        plan = self._plan(receiver, questions, messages)
        return plan.model.continuation_logprobs(plan.prompts, choices, plan.mode)[0]

    def prime(self, receiver: Agent, messages: Sequence[CacheMessage]) -> None:
        """Prefill (and fuse) the messages' conversations for `receiver` now, so that the first question about
        them is as cheap as the next ones."""
        plan = self._plan(receiver, ["(primed)"], messages)
        if plan.mode == "translated":  # translating the document stores its translated cache
            plan.model.prefill(plan.model.encode(plan.prompts, plan.mode), plan.mode)
            return
        context = plan.prompts[0][:-1]
        if context:
            plan.model.prefill(plan.model.encode([context], plan.mode), plan.mode)

    def _plan(self, receiver: Agent, questions: Sequence[str], messages: Sequence[CacheMessage],
              options: GenerateOptions | None = None) -> "_Plan":  # fmt: skip
        if not questions:
            raise C2CError("no questions given")
        unknown = [m.sender for m in messages if m.sender not in self.agents]
        if unknown:
            raise C2CError(f"messages from agents not in this team: {unknown}")
        for m in messages:
            self.store.put(m.cache)
        senders = [self.agents[m.sender] for m in messages]
        translators = [self.translators.get((receiver.model.name, s.model.name)) for s in senders]
        if messages and None not in translators and len({s.name for s in senders}) == len(senders):
            return self._translated_plan(receiver, senders, translators, questions, messages)
        fused, as_text = [], []
        for m in messages:
            sender = self.agents[m.sender]
            (fused if self.fuser_for(receiver, sender) is not None else as_text).append(m)
        for m in as_text:
            log.warning("no fuser for %s <- %s: %s's message is passed as text", receiver.model.name,
                        self.agents[m.sender].model.name, m.sender)  # fmt: skip
        notes = [f"Notes from {m.sender}:\n{m.render(self, options)}" for m in as_text]
        context = [msg for m in fused for msg in m.context]
        prompts = [context + [{"role": "user", "content": "\n\n".join(notes + [q])}] for q in questions]
        via = {m.sender: "cache" for m in fused} | {m.sender: "text" for m in as_text}
        senders = list(dict.fromkeys(m.sender for m in fused))
        key = (receiver.name, *senders)
        if key not in self._models:
            self._models[key] = C2CModel(receiver.model, [self.agents[s].model for s in senders],
                                         [self.fuser_for(receiver, self.agents[s]) for s in senders],
                                         store=self.store)  # fmt: skip
        return _Plan(self._models[key], prompts, "c2c" if senders else "receiver", via)

    def _translated_plan(self, receiver: Agent, senders: list[Agent], translators: list[Translator],
                         questions: Sequence[str], messages: Sequence[CacheMessage]) -> "_Plan":  # fmt: skip
        """Every sender's document translated into one receiver cache, in the order of the messages (each
        sender's part read by it alone, see translation/reading.translate_parts)."""
        parts = []
        for m in messages:
            users = [c["content"] for c in m.context if c["role"] == "user"]
            if not users:
                raise C2CError(f"{m.sender}'s message holds no user text to translate")
            parts.append(users[-1])
        key = (receiver.name, "translated", *(s.name for s in senders))
        if key not in self._models:
            self._models[key] = C2CModel(receiver.model, [s.model for s in senders], [], store=self.store,
                                         translators=translators)  # fmt: skip
        prompts = [Briefed(receiver._messages(q), parts[0]) if len(parts) == 1 else
                   Briefed.of_parts(receiver._messages(q), parts) for q in questions]  # fmt: skip
        return _Plan(self._models[key], prompts, "translated", {m.sender: "translated" for m in messages})


@dataclass
class _Plan:
    """How a team answers: the model (receiver and the fused senders), the prompts, the mode, each sender's path."""

    model: C2CModel
    prompts: list[Messages | Briefed]
    mode: str
    via: dict[str, str]
