"""Document QA with agents that pass caches: a sharer agent reads a long document once, a receiver agent answers
many questions about it.

Per question, five ways to answer, all scored the same way (cloze: the log-likelihood of " yes" / " no"):
  receiver   the receiver reads the document and the question itself (no store: all of it, every time)
  t2t        the sharer reads document + question and writes notes; the receiver reads the notes and the question
  c2c-cold   C2C with everything prefilled afresh for every question
  c2c-warm   C2C through a Team: the document was read once by both agents (caches in the prefix store, fused
             positions too), so a question costs its own tokens only
  translated the receiver never reads the document: the sharer's reading of it is translated into the receiver's
             cache once (a Team with a translator), and each question costs the receiver's reading of it only

Documents are BoolQ passages (bundled, validation split) joined three by three (>= 500 tokens; fewer when both
models' context cannot hold three), each followed by the questions about its passages. Only passages longer than 128 receiver tokens are used: the shipped fusers'
training data (configs/smollm2_qwen15_mc.toml) skipped every BoolQ prompt that long, so none of these was seen.

    python examples/document_qa.py                                   # the default pair and its shipped fuser
    python examples/document_qa.py --receiver tiny-llama --sharer tiny-qwen2 --docs 2     # tiny models, seconds

Prints a table (accuracy, seconds per question, time to first token of the warm path against the two models'
prefills of the question alone) and writes JSON and a PNG.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
from tqdm import tqdm

from cache2cache import GenerateOptions, __version__
from cache2cache.agents import Team
from cache2cache.atomic import write_json
from cache2cache.caches.prompt_cache import PromptCache
from cache2cache.caches.store import PrefixStore
from cache2cache.inference.answerers import Question, TextToText
from cache2cache.inference.factory import DEFAULT_FUSER, DEFAULT_RECEIVER, DEFAULT_SHARER, build
from cache2cache.translation.fit import accumulate, solve
from cache2cache.translation.text import passages
from cache2cache.translation.translator import Translator, shipped_for
from cache2cache.training.mixture import load_source

CHOICES = [" no", " yes"]


def documents(tokenizers, n_docs: int, per_doc: int, budget: int, min_tokens: int = 128) -> list[dict]:
    """BoolQ passages longer than `min_tokens` receiver tokens, grouped `per_doc` to a document; `per_doc` shrinks
    until a document fits `budget` tokens of every model (tiny test models have short contexts)."""
    convs, _ = load_source("boolq")
    long = []
    for c in convs:
        passage, question = c.prompt[0]["content"].removeprefix("Question: ").removesuffix("\nAnswer:").rsplit("\n", 1)
        length = max(len(t(passage)["input_ids"]) for t in tokenizers)
        if min_tokens < length and length * per_doc <= budget:
            long.append({"passage": passage, "question": question, "answer": c.answer})
        elif length * per_doc > budget and per_doc > 1:
            per_doc = max(1, budget // length)
        if len(long) >= n_docs * per_doc:
            break
    return [{"text": "\n\n".join(x["passage"] for x in long[i:i + per_doc]), "items": long[i:i + per_doc]}
            for i in range(0, len(long) - per_doc + 1, per_doc)]  # fmt: skip


def question_text(q: str) -> str:
    return f"Question: {q} (yes or no)\nAnswer:"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--receiver", default=DEFAULT_RECEIVER)
    ap.add_argument("--sharer", default=DEFAULT_SHARER)
    ap.add_argument("--fuser", default=None, help=f"fuser folder (default: the shipped one for the default pair: "
                                                  f"{DEFAULT_FUSER.name}; untrained for other pairs)")  # fmt: skip
    ap.add_argument("--docs", type=int, default=4)
    ap.add_argument("--per-doc", type=int, default=3, help="passages (and questions) per document")
    ap.add_argument("--t2t-tokens", type=int, default=48)
    ap.add_argument("--translator", default=None, help="translator folder (default: the one shipped for the pair; for "
                                                       "another pair a quick fit on 40 SciQ passages)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=Path("docs/results/document_qa"))
    args = ap.parse_args()
    fuser = args.fuser or (str(DEFAULT_FUSER) if (args.receiver, args.sharer) == (DEFAULT_RECEIVER, DEFAULT_SHARER) else None)
    cold = build(args.receiver, [args.sharer], [fuser] if fuser else [])
    receiver, sharer = cold.receiver, cold.sharers[0]
    translator = translator_for(args, receiver, sharer)
    budget = min(receiver.max_length, sharer.max_length) - 96  # room for the template and the question
    docs = documents([receiver.tokenizer, sharer.tokenizer], args.docs, args.per_doc, budget)
    team = Team(cold.fusers, store=PrefixStore(max_bytes=4 << 30))
    reader, answerer = team.agent("reader", sharer), team.agent("answerer", receiver)
    t_team = Team(translators=[translator], store=PrefixStore(max_bytes=1 << 30))
    t_reader, t_answerer = t_team.agent("reader", sharer), t_team.agent("answerer", receiver)
    t2t = TextToText(cold, note_tokens=args.t2t_tokens)

    rows, ttft = [], []
    bar = tqdm(total=sum(len(d["items"]) for d in docs), desc="questions", unit="q", dynamic_ncols=True)
    for d, doc in enumerate(docs):
        t0 = time.perf_counter()
        note = reader.read(doc["text"])  # the sharer reads the document once ...
        team.prime(answerer, [note])  # ... and so does the receiver, with the document's positions fused
        read_s = time.perf_counter() - t0
        for item in doc["items"]:
            q = question_text(item["question"])
            prompt = [{"role": "user", "content": f"{doc['text']}\n\n{q}"}]
            rec = {"doc": d, "question": item["question"], "gold": item["answer"], "doc_tokens": len(note.cache),
                   "read_s": read_s}  # fmt: skip
            for mode in ("receiver", "c2c"):  # cold: no store, the whole prompt every time
                t0 = time.perf_counter()
                (lp,), _ = cold.continuation_logprobs([prompt], [CHOICES], mode)
                rec[mode if mode == "receiver" else "c2c-cold"] = (lp, time.perf_counter() - t0)
            t0 = time.perf_counter()  # the sharer reads document + question and writes notes; the receiver reads them
            ask = Question(prompt, with_notes=lambda notes: f"Notes from another model:\n{notes}\n\n{q}")
            (lp,) = t2t.logprobs([ask], [CHOICES]).values
            rec["t2t"] = (lp, time.perf_counter() - t0)
            t0 = time.perf_counter()
            (lp,) = team.score(answerer, [q], [CHOICES], [note])
            rec["c2c-warm"] = (lp, time.perf_counter() - t0)
            t_note = t_reader.read(doc["text"])
            t_team.prime(t_answerer, [t_note])  # translated once per document; each question reads its own tokens
            t0 = time.perf_counter()
            (lp,) = t_team.score(t_answerer, [q], [CHOICES], [t_note])
            rec["translated"] = (lp, time.perf_counter() - t0)
            rows.append(rec)
            # time to first token, warm, against the two models prefilling the question's tokens alone
            # (a rephrased question: its tokens are new to the store, only the document is cached)
            q2 = question_text(f"Once more: {item['question']}")
            new_tokens = len(answerer.model.tokenizer(q2)["input_ids"])
            t0 = time.perf_counter()
            team.answer(answerer, [q2], [note], GenerateOptions(max_new_tokens=1))
            warm_ttft = time.perf_counter() - t0
            t0 = time.perf_counter()
            PromptCache.prefill(receiver, q2, chat=False)
            PromptCache.prefill(sharer, q2, chat=False)
            ttft.append({"warm_ttft_s": warm_ttft, "question_prefills_s": time.perf_counter() - t0,
                         "question_tokens": new_tokens})  # fmt: skip
            bar.update(1)
    bar.close()

    modes = ["receiver", "t2t", "c2c-cold", "c2c-warm", "translated"]
    table = {}
    for m in modes:
        right = [max(range(2), key=lambda i: r[m][0][i]) == r["gold"] for r in rows]
        table[m] = {"accuracy": sum(right) / len(right), "right": sum(right), "n": len(right),
                    "s_per_question": sum(r[m][1] for r in rows) / len(rows)}  # fmt: skip
    agree = sum(max(range(2), key=lambda i: r["c2c-warm"][0][i]) == max(range(2), key=lambda i: r["c2c-cold"][0][i])
                for r in rows) / len(rows)  # fmt: skip
    warm = sum(t["warm_ttft_s"] for t in ttft) / len(ttft)
    alone = sum(t["question_prefills_s"] for t in ttft) / len(ttft)
    result = {
        "date": date.today().isoformat(), "c2c_version": __version__, "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "receiver": receiver.name,
        "sharer": sharer.name, "fuser": fuser or "untrained", "translator": translator.source or "fitted here",
        "documents": len(docs), "questions": len(rows),
        "mean_doc_tokens": sum(r["doc_tokens"] for r in rows) / len(rows), "modes": table,
        "warm_vs_cold_agreement": agree, "warm_ttft_s": warm, "question_prefills_s": alone,
        "warm_ttft_over_question_prefills": warm / alone,
        "cold_over_warm": table["c2c-cold"]["s_per_question"] / table["c2c-warm"]["s_per_question"],
        "t2t_over_warm": table["t2t"]["s_per_question"] / table["c2c-warm"]["s_per_question"],
        "store": team.store.stats.to_dict(), "rows": rows,
    }  # fmt: skip
    print(f"{receiver.name} <- {sharer.name} ({result['fuser']}), {len(docs)} documents of "
          f"~{result['mean_doc_tokens']:.0f} sharer tokens, {len(rows)} questions")  # fmt: skip
    print(f"{'mode':10} {'accuracy':>9} {'s/question':>11}")
    for m in modes:
        print(f"{m:10} {table[m]['accuracy']:9.3f} {table[m]['s_per_question']:11.3f}")
    print(f"warm C2C time to first token {warm:.3f} s = {warm / alone:.2f}x the two models' prefills of the question "
          f"alone ({alone:.3f} s); cold/warm {result['cold_over_warm']:.1f}x, T2T/warm {result['t2t_over_warm']:.1f}x; "
          f"warm and cold C2C agree on {agree:.0%} of answers")  # fmt: skip
    write_json(args.out.with_suffix(".json"), json.loads(json.dumps(result)))
    plot(table, result, args.out.with_suffix(".png"))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")


def translator_for(args, receiver, sharer) -> Translator:
    """--translator, else the one shipped for the pair, else a quick fit (seconds on tiny models)."""
    path = args.translator or shipped_for(args.receiver, args.sharer)
    if path:
        return Translator.from_pretrained(path)
    print("no translator for this pair: fitting one on 40 SciQ passages (use `c2c fit` for a real one)")
    with tempfile.TemporaryDirectory() as tmp:
        state = accumulate(receiver, sharer, passages("sciq:40"), Path(tmp) / "stats.safetensors")
    return solve(state)


def plot(table: dict, result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(table)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    a.bar(modes, [table[m]["accuracy"] for m in modes], color="#4c72b0")
    a.set_ylim(0, 1)
    a.set_title("accuracy (BoolQ yes/no, cloze)")
    b.bar(modes, [table[m]["s_per_question"] for m in modes], color="#dd8452")
    b.set_yscale("log")
    b.set_title("seconds per question (log)")
    fig.suptitle(f"{result['receiver']} <- {result['sharer']}: {result['questions']} questions, "
                 f"{result['documents']} documents", fontsize=9)  # fmt: skip
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
