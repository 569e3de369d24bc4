"""Exploration (issue 25): does the translator, used as a fuser on the *question* tokens, carry a brief?

C2C's setting: the receiver reads the question; the sharer reads brief + question. Here the receiver's own keys
and/or values of the question tokens are replaced by the translator's reading of the sharer's question tokens
(which attended to the brief), no training. Controls: the same with the sharer reading *another item's* brief
before this question (the strict control: only the brief differs), per item, cloze scored per character.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/explore_question_fusion.py --limit 60 --out runs/explore/qf.json

With --oracle the replacement keys and values are the receiver's own, computed while reading brief + question:
issue 25's dense target itself, the most any fuser of this form could write (docs/RESULTS.md).
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from cache2cache.alignment.tokens import TokenAligner, encode, render
from cache2cache.evaluation.runner import EvalConfig, select_items
from cache2cache.evaluation.scoring import mcnemar_exact, posed
from cache2cache.inference.batching import Briefed, sharer_messages, to_messages
from cache2cache.inference.factory import DEFAULT_TRANSLATOR
from cache2cache.kv import new_cache
from cache2cache.models.loading import load_model
from cache2cache.translation.features import BriefSpan, rotary, rotate
from cache2cache.translation.reading import embeddings, prerope_kv
from cache2cache.translation.translator import Translator

VARIANTS = ("kv", "v", "k")


@torch.no_grad()
def receiver_cache(receiver, ids):
    cache = new_cache(receiver.model.config)
    receiver.model(input_ids=torch.tensor([ids[:-1]]), past_key_values=cache, use_cache=True, logits_to_keep=1)
    return cache


@torch.no_grad()
def score(receiver, cache, ids, options) -> int:
    tok = receiver.tokenizer
    best, pick = None, 0
    for j, opt in enumerate(options):
        o = encode(tok, opt)[0]
        x = torch.tensor([[ids[-1]] + o[:-1]])
        pos = torch.arange(len(ids) - 1, len(ids) - 1 + len(o))[None]
        logits = receiver.model(input_ids=x, position_ids=pos, past_key_values=copy.deepcopy(cache)).logits[0]
        lp = logits.float().log_softmax(-1).gather(-1, torch.tensor(o)[:, None]).sum().item() / len(opt)
        if best is None or lp > best:
            best, pick = lp, j
    return pick


@torch.no_grad()
def translated_question(translator, receiver, sharer, aligner, messages, brief):
    """Per receiver layer (pre-RoPE keys, values) translated for the receiver tokens after the brief, and those
    receiver positions."""
    al = aligner.align(messages, True, sharer_messages(Briefed(messages, brief)))
    s_end = BriefSpan.of(sharer, messages, brief).end
    sel = [t for t in range(len(al.receiver_ids) - 1) if al.sharer_index[t] >= s_end]
    sk, sv = prerope_kv(sharer, al.sharer_ids)
    idx = torch.tensor([al.sharer_index[t] for t in sel])
    emb = embeddings(receiver, [al.receiver_ids[t] for t in sel])
    out = translator([k[idx] for k in sk], [v[idx] for v in sv], emb)
    return out, sel


@torch.no_grad()
def oracle_question(receiver, self_aligner, messages, brief):
    """As `translated_question`, from the receiver's own reading of brief + question: the best any fuser could
    write into the question's cache (the brief's own tokens are not in it)."""
    al = self_aligner.align(messages, True, sharer_messages(Briefed(messages, brief)))
    r_end = BriefSpan.of(receiver, messages, brief).end
    sel = [t for t in range(len(al.receiver_ids) - 1) if al.sharer_index[t] >= r_end]
    rk, rv = prerope_kv(receiver, al.sharer_ids)
    idx = torch.tensor([al.sharer_index[t] for t in sel])
    out = []
    for k, v in zip(rk, rv):
        h = receiver.model.config.num_key_value_heads
        out.append((k[idx].view(len(sel), h, -1).transpose(0, 1), v[idx].view(len(sel), h, -1).transpose(0, 1)))
    return out, sel


def fused_cache(receiver, base, translated, sel, variant):
    cache = copy.deepcopy(base)
    pos = torch.tensor(sel)
    for i, (k, v) in enumerate(translated):
        layer = cache.layers[i]
        cos, sin = rotary(receiver, i, pos)
        if "k" in variant:
            layer.keys[0][:, sel] = rotate(k, cos, sin).to(layer.keys.dtype)
        if "v" in variant:
            layer.values[0][:, sel] = v.to(layer.values.dtype)
    return cache


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--task", default="sciq_brief", help="a receiver-blind probe (items with a brief)")
    p.add_argument("--limit", type=int, default=60)
    p.add_argument("--translator", default=str(DEFAULT_TRANSLATOR))
    p.add_argument("--oracle", action="store_true", help="the receiver's own reading with the brief, not a sharer's")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    receiver = load_model("SmolLM2-135M-Instruct")
    if args.oracle:
        aligner = TokenAligner(receiver.tokenizer, receiver.tokenizer)
        source = lambda m, b: oracle_question(receiver, aligner, m, b)  # noqa: E731
    else:
        sharer = load_model("Qwen2.5-Coder-1.5B-Instruct", prefill_only=True)
        translator = Translator.from_pretrained(args.translator)
        aligner = TokenAligner(receiver.tokenizer, sharer.tokenizer)
        source = lambda m, b: translated_question(translator, receiver, sharer, aligner, m, b)  # noqa: E731
    items = select_items(EvalConfig(args.task, "heldout", ["receiver"], method="cloze", limit=args.limit))
    rows = []
    for n, it in enumerate(items):
        prompt = posed(it, "cloze")
        messages = to_messages(prompt)
        tok = receiver.tokenizer
        ids = encode(tok, render(tok, messages, True))[0]
        options = [f" {c}" for c in it.choices]
        base = receiver_cache(receiver, ids)
        row = {"id": it.id, "gold": it.answer, "receiver": score(receiver, base, ids, options)}
        for tag, brief in (("", it.brief), ("other_", items[(n + 1) % len(items)].brief)):
            translated, sel = source(messages, brief)
            for variant in VARIANTS:
                row[tag + variant] = score(receiver, fused_cache(receiver, base, translated, sel, variant), ids, options)
        rows.append(row)
        acc = {k: sum(r[k] == r["gold"] for r in rows) / len(rows) for k in row if k not in ("id", "gold")}
        print(n + 1, " ".join(f"{k}={v:.3f}" for k, v in acc.items()), flush=True)
    result = {"task": args.task, "n": len(rows), "rows": rows, "accuracy": acc}
    for variant in VARIANTS:
        right = [r[variant] == r["gold"] for r in rows]
        other = [r["other_" + variant] == r["gold"] for r in rows]
        recv = [r["receiver"] == r["gold"] for r in rows]
        a = sum(x and not y for x, y in zip(right, other)), sum(y and not x for x, y in zip(right, other))
        b = sum(x and not y for x, y in zip(right, recv)), sum(y and not x for x, y in zip(right, recv))
        result[variant] = {"vs_other_brief": [*a, mcnemar_exact(a[1], a[0])], "vs_receiver": [*b, mcnemar_exact(b[1], b[0])]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
