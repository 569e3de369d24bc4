"""The serving engine: one worker thread that batches concurrent requests into single `generate()` calls.

Contract with the web layer (app.py): `submit(job)` from any thread; events come back on the job's asyncio
queue, in order: zero or more ("delta", text), then exactly one ("done", Finished) or ("error", exception).
`job.cancel()` (a client that went away) stops that row at its next token; the others in its batch go on.

Batching: the worker takes the oldest request, then waits up to `max_wait_s` for more that can share its
`generate()` call (same route and sampling settings) up to `max_batch`. Each row keeps its own token budget and
stop strings (checked per row after every token), so requests with different `max_tokens` batch together.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from ..inference.answerers import Answerer
from ..inference.batching import GenerateOptions, Prompt
from ..inference.decoding import eos_ids


@dataclass
class Finished:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn or a stop string) or "length"
    ttft_s: float | None
    seconds: float


@dataclass
class Job:
    answerer: Answerer
    prompt: Prompt
    options: GenerateOptions  # max_new_tokens is this row's own budget
    stops: list[str]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    submitted: float = field(default_factory=time.perf_counter)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()

    def emit(self, kind: str, value) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))

    @property
    def batch_key(self) -> tuple:
        o = self.options
        return (id(self.answerer), o.do_sample, o.temperature, o.top_p, o.top_k, o.seed)


class _Rows(BaseStreamer, StoppingCriteria):
    """Per-row bookkeeping during one batched generate(): decodes each row's new tokens, streams text deltas,
    and tells generate() which rows are done (end of turn, a stop string, their budget, or cancelled)."""

    def __init__(self, jobs: list[Job], tokenizer, eos: set[int]) -> None:
        self.jobs, self.tokenizer, self.eos = jobs, tokenizer, eos
        self.tokens: list[list[int]] = [[] for _ in jobs]
        self.sent = [""] * len(jobs)
        self.text = [""] * len(jobs)
        self.reason: list[str | None] = [None] * len(jobs)
        self.first: list[float | None] = [None] * len(jobs)
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first hands the streamer the prompt
            self.prompt_seen = True
            return
        for b, token in enumerate(value.reshape(len(self.jobs), -1)[:, -1].tolist()):
            if self.reason[b] is None:
                self._advance(b, token)

    def _advance(self, b: int, token: int) -> None:
        job = self.jobs[b]
        if job.cancelled.is_set():
            self.reason[b] = "cancelled"
            return
        if token in self.eos:
            self.reason[b] = "stop"
        else:
            self.tokens[b].append(token)
            self.text[b] = self.tokenizer.decode(self.tokens[b], skip_special_tokens=True)
            cut = min((i for i in (self.text[b].find(s) for s in job.stops) if i >= 0), default=-1)
            if cut >= 0:
                self.text[b], self.reason[b] = self.text[b][:cut], "stop"
            elif len(self.tokens[b]) >= job.options.max_new_tokens:
                self.reason[b] = "length"
        self._flush(b)

    def _flush(self, b: int) -> None:
        text = self.text[b]
        if self.reason[b] is None:  # hold back what may be the start of a stop string or a split character
            hold = max((k for s in self.jobs[b].stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
            text = text[:len(text) - hold].rstrip("\ufffd")
        if len(text) > len(self.sent[b]):
            if self.first[b] is None:
                self.first[b] = time.perf_counter()
            self.jobs[b].emit("delta", text[len(self.sent[b]):])
            self.sent[b] = text

    def end(self) -> None:
        pass

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        done = [r is not None or j.cancelled.is_set() for r, j in zip(self.reason, self.jobs)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class Engine:
    def __init__(self, max_batch: int = 8, max_wait_s: float = 0.01, lock: threading.Lock | None = None) -> None:
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self.lock = lock or threading.Lock()  # held around each generate(): other users of the models take it too
        self._pending: queue.Queue[Job | None] = queue.Queue()
        self._held: list[Job] = []  # taken from the queue but not batchable with the current batch
        self.batches = 0
        self.batched_rows = 0
        self.cancelled_rows = 0  # rows stopped early because their client went away
        self._thread = threading.Thread(target=self._work, name="c2c-engine", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        self._pending.put(job)

    @property
    def depth(self) -> int:
        return self._pending.qsize() + len(self._held)

    def close(self) -> None:
        self._pending.put(None)
        self._thread.join(timeout=30)

    def _work(self) -> None:
        closing = False
        while not closing:
            first = self._held.pop(0) if self._held else self._pending.get()
            if first is None:
                return
            batch = [first]
            for job in [j for j in self._held if j.batch_key == first.batch_key][: self.max_batch - 1]:
                self._held.remove(job)
                batch.append(job)
            deadline = time.perf_counter() + self.max_wait_s
            while len(batch) < self.max_batch:
                try:
                    job = self._pending.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if job is None:
                    closing = True
                    break
                (batch if job.batch_key == first.batch_key else self._held).append(job)
            live = [j for j in batch if not j.cancelled.is_set()]
            if live:
                self._run(live)

    def _run(self, jobs: list[Job]) -> None:
        ans = jobs[0].answerer
        model = ans.model.answerer(ans.answer_mode)
        rows = _Rows(jobs, model.tokenizer, eos_ids(model))
        budget = max(j.options.max_new_tokens for j in jobs)
        o = jobs[0].options
        options = GenerateOptions(budget, o.do_sample, o.temperature, o.top_p, o.top_k, o.seed)
        start = time.perf_counter()
        self.batches += 1
        self.batched_rows += len(jobs)
        try:
            with self.lock:
                out = ans.generate([j.prompt for j in jobs], options, streamer=rows,
                                   stopping_criteria=StoppingCriteriaList([rows]))  # fmt: skip
        except Exception as e:  # handed to every waiting request, never lost in this thread
            for j in jobs:
                j.emit("error", e)
            return
        seconds = time.perf_counter() - start
        for b, j in enumerate(jobs):
            rows._flush(b)
            reason = rows.reason[b] or "length"
            self.cancelled_rows += reason == "cancelled"
            ttft = rows.first[b] - j.submitted if rows.first[b] is not None else None
            j.emit("done", Finished(rows.text[b], out.results[b].prompt_tokens, len(rows.tokens[b]),
                                    "stop" if reason == "cancelled" else reason, ttft, seconds))  # fmt: skip
