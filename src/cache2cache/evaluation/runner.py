"""Run a task in several modes through the same prompts and code, and write honest, reproducible results.

Modes: receiver (alone), sharer (alone), t2t (the sharer writes notes in text, up to a token budget; the
receiver answers with them in its prompt), c2c (the receiver answers from the fused cache), and the control
mismatched (C2C with the sharer's cache of another question of the batch: a gain over the receiver that survives
it is a prior the fuser adds, not communication); for items with a brief (read by the sharer only): translated (the
receiver answers from the translated cache of the brief), its control translated_mismatched (another question's
brief, translated), neutral (a neutral passage translated in the brief's place), t2t_blind (the same message as
text: the sharer writes notes on the brief alone) and receiver_brief (the receiver reads the brief itself: the
upper bound). inference/modes.py is the table.
Outputs, each written atomically (and records.partial.jsonl while it runs, see progress.py): records.jsonl (one
line per example and mode), summary.json (accuracy with a 95% Wilson interval, latency means, config,
identities, versions, seed), results.md, accuracy.png, latency.png.
"""

from __future__ import annotations

import hashlib
import json
import platform
import random
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers
from tqdm import tqdm

from ..atomic import write_json, write_text
from ..errors import C2CError
from ..inference.answerers import Question, Scores, answerer
from ..inference.batching import GenerateOptions
from ..inference.modes import BATCH_MATE_MODES, EVAL_MODES, MODES
from ..inference.pipeline import C2CModel
from ..inference.wire import human_bytes
from ..version import __version__
from .machine import describe
from .progress import Progress
from .scoring import (
    METHODS,
    extract_letter,
    extract_number,
    mcnemar_exact,
    pick_letter,
    posed,
    prompt_for,
    stated,
    t2t_prompt,
    wilson_interval,
)
from .tasks import Item, get_task


@dataclass
class EvalConfig:
    task: str
    split: str
    modes: list[str]
    method: str = "letter"
    limit: int = 0  # 0 = every item
    subjects: list[str] = field(default_factory=list)
    batch_size: int = 8
    t2t_tokens: int = 64  # the sharer's text budget in t2t mode
    gen_tokens: int = 256  # generation budget for the generate method
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [m for m in self.modes if m not in EVAL_MODES]
        if bad or not self.modes:
            raise C2CError(f"unknown or no mode(s) {bad}: choose from {', '.join(EVAL_MODES)}")
        if self.method not in METHODS:
            raise C2CError(f"unknown scoring method {self.method!r}: choose from {', '.join(METHODS)}")
        if self.limit < 0 or self.batch_size < 1 or self.t2t_tokens < 1 or self.gen_tokens < 1:
            raise C2CError("limit must be >= 0 and batch_size, t2t_tokens, gen_tokens >= 1")
        if set(BATCH_MATE_MODES) & set(self.modes) and self.batch_size < 2:
            raise C2CError("the mismatched controls use another question of the batch: need batch_size >= 2")


def select_items(cfg: EvalConfig) -> list[Item]:
    task = get_task(cfg.task)
    if task.kind == "gen" and cfg.method != "generate":
        raise C2CError(f"task {cfg.task} is scored by generation: use --method generate")
    items = task.load(cfg.split, cfg.subjects or None)
    if cfg.method != "generate" and any(not it.choices for it in items):
        raise C2CError(f"task {cfg.task} has questions without choices (answered exactly): use --method generate")
    if cfg.limit:
        items = random.Random(cfg.seed).sample(items, min(cfg.limit, len(items)))  # spread over subjects
    return items


def _prompt_hash(prompt) -> str:
    """What the models read (a briefed prompt: both parts), so that a changed prompt is never taken as the same."""
    return hashlib.sha1(json.dumps(asdict(prompt) if is_dataclass(prompt) else prompt, sort_keys=True).encode()
                        ).hexdigest()[:12]  # fmt: skip


class Evaluator:
    def __init__(self, model: C2CModel, cfg: EvalConfig) -> None:
        need_sharer = [m for m in cfg.modes if MODES[m].sharer]
        if need_sharer and not model.sharers:
            raise C2CError(f"mode(s) {', '.join(need_sharer)} need a sharer")
        need_translator = [m for m in cfg.modes if MODES[m].maps == "translators"]
        if need_translator and not model.translators:
            raise C2CError(f"mode(s) {', '.join(need_translator)} need a translator (--translator)")
        self.model, self.cfg = model, cfg

    def score_batch(self, items: list[Item], mode: str) -> list[dict]:
        cfg, model = self.cfg, self.model
        ans = answerer(model, mode, cfg.t2t_tokens)
        tokenizer = model.answerer(ans.answer_mode).tokenizer
        questions = [Question(posed(it, cfg.method), t2t_prompt(it),
                              lambda notes, it=it: prompt_for(it, cfg.method, notes)) for it in items]  # fmt: skip
        outputs: list[str | None] = [None] * len(items)  # generated text, kept for auditing (method generate)
        option_scores: list[list[float] | None] = [None] * len(items)  # per-character log-probs (method cloze)
        if cfg.method == "letter":
            scores = ans.next_token_logits(questions)
            preds = [pick_letter(tokenizer, scores.values[b], len(it.choices)) for b, it in enumerate(items)]
        elif cfg.method == "cloze":
            options = [[f" {c}" for c in it.choices] for it in items]
            scores = ans.logprobs(questions, options)
            option_scores = [[float(v) / max(1, len(o)) for v, o in zip(lp, opts)]
                             for lp, opts in zip(scores.values, options)]  # fmt: skip
            preds = [max(range(len(s)), key=s.__getitem__) for s in option_scores]
        else:
            out = ans.generate(questions, GenerateOptions(max_new_tokens=cfg.gen_tokens))
            scores = Scores([], out.timings, [r.notes for r in out.results])
            outputs = [r.text for r in out.results]
            preds = [extract_letter(r.text, len(it.choices)) if it.choices else
                     stated(r.text, str(it.answer)) if it.exact else extract_number(r.text)
                     for r, it in zip(out.results, items)]  # fmt: skip
        notes = scores.notes
        prompts = [ans.final_prompt(q, n) for q, n in zip(questions, notes)]
        share = {k: v / len(items) for k, v in scores.timings.to_dict().items()}  # each example's share of the batch
        sent = [ans.sent(q, n) for q, n in zip(questions, notes)]
        return [{"task": cfg.task, "split": cfg.split, "mode": mode, "id": it.id, "subject": it.subject,
                 "prompt_hash": _prompt_hash(p), "prediction": pred, "gold": it.answer,
                 "correct": pred == it.answer, "notes": n, "output": o, "scores": sc, "latency_s": share,
                 "wire_bytes": b}
                for it, p, pred, n, o, sc, b in zip(items, prompts, preds, notes, outputs, option_scores, sent)
                ]  # fmt: skip

    def run(self, items: list[Item], progress: Progress | None = None) -> list[dict]:
        """Every mode on every item, batch by batch; with `progress`, batches an interrupted run already scored
        are taken from it and each new one is appended to it as soon as it is scored."""
        records = []
        bs = self.cfg.batch_size
        batches = [items[i:i + bs] for i in range(0, len(items), bs)]
        if set(BATCH_MATE_MODES) & set(self.cfg.modes) and len(batches) > 1 and len(batches[-1]) == 1:
            batches[-2:] = [batches[-2] + batches[-1]]  # the control needs another question in every batch
        with tqdm(total=len(batches) * len(self.cfg.modes), desc="eval", unit="batch", dynamic_ncols=True) as bar:
            for mode in self.cfg.modes:
                for batch in batches:
                    scored = progress.scored(mode, [it.id for it in batch]) if progress else None
                    if scored is None:
                        scored = self.score_batch(batch, mode)
                        if progress:
                            progress.add(scored)
                    records += scored
                    bar.update(1)
                    done = [r for r in records if r["mode"] == mode]
                    bar.set_postfix(mode=mode, acc=f"{sum(r['correct'] for r in done) / len(done):.3f}")
        return records


def discordant(right_a: dict[str, bool], right_b: dict[str, bool]) -> tuple[int, int, int]:
    """On the questions two runs share (id -> correct): how many there are, how many only A gets right, and how
    many only B does."""
    shared = right_a.keys() & right_b.keys()
    only_a = sum(right_a[i] and not right_b[i] for i in shared)
    only_b = sum(right_b[i] and not right_a[i] for i in shared)
    return len(shared), only_a, only_b


def paired(records: list[dict], modes: list[str]) -> list[dict]:
    """Every later mode against every earlier one on the same questions: who is right where the other is wrong,
    and the exact McNemar p-value (a gain can be significant while the two confidence intervals overlap)."""
    right = {m: {r["id"]: r["correct"] for r in records if r["mode"] == m} for m in modes}
    out = []
    for j, b in enumerate(modes):
        for a in modes[:j]:
            n, only_a, only_b = discordant(right[a], right[b])
            out.append({"mode": b, "versus": a, "n": n, "right_only_mode": only_b, "right_only_versus": only_a,
                        "mcnemar_p": mcnemar_exact(only_a, only_b)})  # fmt: skip
    return out


def paired_line(p: dict) -> str:
    return (f"{p['mode']} vs {p['versus']}: right only with {p['mode']} {p['right_only_mode']}, only with "
            f"{p['versus']} {p['right_only_versus']} (exact McNemar p = {p['mcnemar_p']:.3f})")


def summarise(records: list[dict], cfg: EvalConfig, identities: dict) -> dict:
    per_mode = {}
    for mode in cfg.modes:
        rows = [r for r in records if r["mode"] == mode]
        correct = sum(r["correct"] for r in rows)
        lo, hi = wilson_interval(correct, len(rows))
        latency = {k: sum(r["latency_s"][k] for r in rows) / len(rows) for k in rows[0]["latency_s"]}
        sent = sum(r.get("wire_bytes", 0) for r in rows) / len(rows)  # records of older runs have none
        per_mode[mode] = {"accuracy": correct / len(rows), "ci95": [lo, hi], "n": len(rows), "correct": correct,
                          "latency_s_mean": latency, "wire_bytes_mean": sent}  # fmt: skip
    return {"task": cfg.task, "split": cfg.split, "method": cfg.method, "config": asdict(cfg), "modes": per_mode,
            "paired": paired(records, cfg.modes),
            "models": identities, "seed": cfg.seed, "created": datetime.now(timezone.utc).isoformat(),
            "versions": {"cache2cache": __version__, "torch": torch.__version__,
                         "transformers": transformers.__version__, "python": platform.python_version()},
            "machine": describe()}  # fmt: skip


def markdown(summary: dict) -> str:
    lines = [f"### {summary['task']} / {summary['split']} ({summary['method']})", "",
             "| mode | accuracy | 95% CI | n | mean latency per example (s) | sender's time (s) | "
             "receiver to first token (s) | sent (bytes) |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for mode, m in summary["modes"].items():
        lo, hi = m["ci95"]
        t = m["latency_s_mean"]
        sender = t["t2t_sharer_s"] + t["sharer_prefill_s"]
        lines.append(f"| {mode} | {m['accuracy']:.3f} | [{lo:.3f}, {hi:.3f}] | {m['n']} | {t['total_s']:.3f} | "
                     f"{sender:.3f} | {t['fuse_s'] + t['receiver_prefill_s']:.3f} | "
                     f"{human_bytes(m.get('wire_bytes_mean', 0))} |")  # fmt: skip
    if summary["paired"]:
        lines += ["", "Paired on the same questions:", ""] + [f"- {paired_line(p)}" for p in summary["paired"]]
    return "\n".join(lines) + "\n"


def write_results(out_dir: Path, records: list[dict], summary: dict) -> None:
    from .plots import plot_accuracy, plot_latency

    write_text(out_dir / "records.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    write_json(out_dir / "summary.json", summary)
    write_text(out_dir / "results.md", markdown(summary))
    plot_accuracy(summary, out_dir / "accuracy.png")
    plot_latency(summary, out_dir / "latency.png")
