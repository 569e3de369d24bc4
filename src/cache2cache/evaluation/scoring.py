"""How a question becomes a prompt, and how a model's output becomes an answer.

Methods:
- letter (the C2C paper's protocol): the question with lettered options; the answer turn is pre-filled with
  "The correct answer is" and the logits of the option letters at the next position decide.
- cloze: option log-likelihood after "Question: ...\\nAnswer:", normalised per character (needed for base
  models, which do not follow the lettered format).
- generate: free generation, then answer extraction (the first option letter, GSM8K's final number, or for a
  span answer whether the first line states it: `stated`).
"""

from __future__ import annotations

import math
import re

from transformers import PreTrainedTokenizerBase

from ..inference.answerers import T2T_REQUEST
from ..inference.batching import Briefed, Prompt, sharer_messages
from .tasks import Item

METHODS = ("letter", "cloze", "generate")
ANSWER_PREFIX = "The correct answer is"
LETTERS = "ABCDEFGHIJ"


def options_block(item: Item) -> str:
    return "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(item.choices))


def question_block(item: Item, notes: str | None = None) -> str:
    """The user turn: question, options, optional notes from another model (T2T), and the instruction."""
    parts = [f"Question: {item.question.strip()}"]
    if item.choices:
        parts.append(options_block(item))
    if notes is not None:
        parts.append(f"Notes from another model:\n{notes.strip()}")
    if item.choices:
        parts.append("Answer with the letter of the correct option.")
    elif item.exact:  # naming the kinds of answer ("a name, number...") made the 135M receiver answer with them
        parts.append("Answer in a few words.")
    else:
        parts.append("Solve the problem step by step, then finish with 'The answer is N'.")
    return "\n\n".join(parts)


def prompt_for(item: Item, method: str, notes: str | None = None) -> Prompt:
    """Chat messages for the answering model (the letter method pre-fills the start of the answer)."""
    if method == "cloze":
        text = f"Question: {item.question.strip()}\n"
        if notes is not None:
            text += f"Notes from another model: {notes.strip()}\n"
        return [{"role": "user", "content": text + "Answer:"}]
    messages = [{"role": "user", "content": question_block(item, notes)}]
    if method == "letter":
        messages.append({"role": "assistant", "content": ANSWER_PREFIX})
    return messages


def posed(item: Item, method: str) -> Prompt:
    """The question as the models read it: `prompt_for`, and for an item with a brief, the brief for the sharers."""
    prompt = prompt_for(item, method)
    return Briefed(prompt, item.brief, tuple(item.parts)) if item.brief else prompt


def t2t_prompt(item: Item) -> Prompt:
    """What the sharer is asked in text-to-text mode (after any brief): useful context, in text, for another model."""
    block = f"Question: {item.question.strip()}"
    if item.choices:
        block += "\n\n" + options_block(item)
    messages = [{"role": "user", "content": f"{block}\n\n{T2T_REQUEST}"}]
    return sharer_messages(Briefed(messages, item.brief))


def letter_token_ids(tokenizer: PreTrainedTokenizerBase, n: int) -> list[list[int]]:
    """For each option letter, the single-token spellings a model may use next (" A" and "A")."""
    out = []
    for letter in LETTERS[:n]:
        ids = {tuple(tokenizer.encode(v, add_special_tokens=False)) for v in (f" {letter}", letter)}
        out.append(
            sorted({t[0] for t in ids if len(t) == 1}) or [tokenizer.encode(f" {letter}", add_special_tokens=False)[-1]]
        )
    return out


def pick_letter(tokenizer: PreTrainedTokenizerBase, logits, n: int) -> int:
    """The option whose letter (in any single-token spelling) has the highest logit in one row of (V,) logits."""
    spellings = letter_token_ids(tokenizer, n)
    return max(range(n), key=lambda i: max(float(logits[t]) for t in spellings[i]))


def extract_letter(text: str, n: int) -> int | None:
    m = re.search(rf"\b([{LETTERS[:n]}])\b", text)
    return LETTERS.index(m.group(1)) if m else None


def extract_number(text: str) -> str | None:
    """GSM8K: the number after 'answer is' (also as \\boxed{N}), else the last number in the text (commas and $
    removed)."""
    clean = text.replace(",", "").replace("$", "")
    m = re.search(r"answer is\s*:?\s*(?:\\boxed\{)?(-?\d+(?:\.\d+)?)", clean, flags=re.IGNORECASE)
    numbers = [m.group(1)] if m else re.findall(r"-?\d+(?:\.\d+)?", clean)
    if not numbers:
        return None
    value = numbers[-1].rstrip(".")
    return value[:-2] if value.endswith(".0") else value


MONTHS = "january|february|march|april|may|june|july|august|september|october|november|december"


def _words(text: str) -> str:
    """Lower-case words and numbers, punctuation dropped, so that only the fact is compared, not how it is
    written: a thousands separator does not split a number, British and American unit spellings are one
    ("metres", "meters"), and a day of a month is one in either order ("3rd of December", "December 3")."""
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text.lower())
    text = re.sub(r"\b(kilo|centi|milli)?(met|lit)re(s?)\b", r"\1\2er\3", text)
    text = re.sub(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?(?:\s+of)?\s+({MONTHS})\b", r"\2 \1", text)
    text = re.sub(rf"\b({MONTHS})\s+(\d{{1,2}})(?:st|nd|rd|th)\b", r"\1 \2", text)
    return " ".join(re.findall(r"[a-z0-9]+", text))


def stated(text: str, gold: str) -> str:
    """Exact match for span answers: `gold` when the answer's first line states it (its words, in order, as whole
    words; case and punctuation aside), else that first line (kept in the record for auditing)."""
    first = next((line for line in text.strip().splitlines() if line.strip()), "")
    return gold if f" {_words(gold)} " in f" {_words(first)} " and _words(gold) else first.strip()


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (well-behaved near 0 and 1, unlike the normal one)."""
    if n == 0:
        return (0.0, 0.0)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value for paired right/wrong outcomes: a binomial test of the discordant pairs
    (A right and B wrong: `only_a`; the reverse: `only_b`) against 1/2. Paired on the same questions, it sees
    differences that two overlapping confidence intervals hide."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n)
