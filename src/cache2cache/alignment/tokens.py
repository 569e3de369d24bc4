"""Map every receiver prompt token to a position in the sharer's prompt (C2C paper, Sec. 3.3).

Each model renders the conversation with its own chat template. The rendered text is cut into segments:
template text (role markers, system prompts) and message contents, which are the same characters in both
renderings. Receiver tokens in a template segment map proportionally onto the sharer's tokens of the same
segment. Receiver tokens inside message contents map by one of three strategies:

- "offsets" (default): the sharer reads its own natural tokenisation; a receiver token maps to the sharer
  token that covers its last character.
- "first" / "longest" (the paper's): each receiver token's text is re-encoded with the sharer's tokenizer and
  the first (or longest) resulting token is kept, so the sharer reads one token per receiver token.

Identical tokenizers and templates take an identity fast path.

The sharer may read more than the receiver: a *brief* (a passage, a document) placed before the last user
message's text (`with_brief`). The receiver's message texts are then found inside the sharer's rendering, so
each receiver token still maps to the sharer token that covers the same characters, and that token has read
the brief.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from ..errors import C2CError

STRATEGIES = ("offsets", "first", "longest")

# Used when a tokenizer has no chat template (base models).
PLAIN_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}Question: {{ m['content'] }}\n"
    "{% else %}Answer: {{ m['content'] }}\n\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Answer:{% endif %}"
)

Messages = list[dict[str, str]]


@dataclass
class AlignedPrompt:
    """One prompt, tokenised for both models, with the receiver->sharer position map."""

    receiver_ids: list[int]
    sharer_ids: list[int]
    sharer_index: list[int]  # len == len(receiver_ids); each a valid index into sharer_ids


PART_SEPARATOR = "\n\n"  # between the parts of a brief that several senders read, one part each


def with_brief(messages: Messages, brief: str) -> Messages:
    """The sharer's messages: `brief` and a blank line before the last user message's text."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last is None:
        raise C2CError("a brief for the sharer needs a user message to go before")
    out = [dict(m) for m in messages]
    out[last]["content"] = f"{brief.strip()}\n\n{out[last]['content']}"
    return out


def render(
    tokenizer: PreTrainedTokenizerBase, messages: Messages, chat: bool = True, add_generation_prompt: bool = True
) -> str:
    """The exact text a model reads: its chat template (or a plain fallback), by default with the generation
    prompt (a prompt to answer); without it for a finished conversation (a training example). A prompt whose
    last message is from the assistant is a partial answer to continue ("The correct answer is")."""
    if not chat:
        return "".join(m["content"] for m in messages)
    template = None if tokenizer.chat_template else PLAIN_TEMPLATE
    prefill = add_generation_prompt and messages[-1]["role"] == "assistant"
    try:
        return tokenizer.apply_chat_template(
            messages, chat_template=template, add_generation_prompt=add_generation_prompt and not prefill,
            continue_final_message=prefill, tokenize=False,
        )  # fmt: skip
    except Exception as e:  # jinja raises its own types for templates that reject a conversation
        raise C2CError(f"chat template of {tokenizer.name_or_path!r} rejected the prompt: {e}") from e


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character spans; special tokens in `text` come from the template, so none are added."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(span) for span in enc["offset_mapping"]]


def _segments(text: str, messages: Messages) -> list[tuple[int, int, bool]]:
    """Cut `text` into (start, end, is_content) pieces by finding each message's content in order."""
    cuts: list[tuple[int, int, bool]] = []
    pos = 0
    for m in messages:
        content = m["content"]
        at = text.find(content, pos) if content else -1
        if at < 0 and content.strip():
            content = content.strip()  # some templates strip message text
            at = text.find(content, pos)
        if at < 0:
            continue  # not found verbatim: this message's tokens fall into the template segment
        cuts.append((pos, at, False))
        cuts.append((at, at + len(content), True))
        pos = at + len(content)
    cuts.append((pos, len(text), False))
    return cuts


def _segment_of(starts: list[int], char: int) -> int:
    return max(bisect.bisect_right(starts, char) - 1, 0)


def _spread(n: int, positions: list[int]) -> list[int]:
    """Map n items proportionally onto `positions`, first to first and last to last."""
    m = len(positions)
    if n == 1:
        return [positions[-1]]
    return [positions[round(j * (m - 1) / (n - 1))] for j in range(n)]


# A conversation of every role a prompt here has: two templates that render it alike render our prompts alike
# (Qwen2.5-Coder 0.5B and 1.5B ship templates that differ only in their tool-calling branch).
PROBE = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"},
         {"role": "user", "content": "Q"}]  # fmt: skip


def _renderings(tok: PreTrainedTokenizerBase) -> tuple:
    """The probe rendered with and without its system message and generation prompt (the template's text when it
    cannot render them)."""
    try:
        return tuple(tok.apply_chat_template(m, tokenize=False, add_generation_prompt=g)
                     for m in (PROBE, PROBE[1:]) for g in (True, False))  # fmt: skip
    except Exception:  # a template that refuses a role: compare the templates themselves
        return (tok.chat_template,)


def same_tokenization(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    """Whether both tokenizers turn every prompt into the same ids: one vocabulary, and chat templates that render
    every role alike (or none on both)."""
    if a is b:
        return True
    if a.get_vocab() != b.get_vocab() or (a.chat_template is None) != (b.chat_template is None):
        return False
    return a.chat_template == b.chat_template or _renderings(a) == _renderings(b)


class TokenAligner:
    """Aligns prompts between one receiver tokenizer and one sharer tokenizer.

    Built once per pair (the identity check compares vocabularies); `align` is then called per prompt.
    """

    def __init__(
        self,
        receiver: PreTrainedTokenizerBase,
        sharer: PreTrainedTokenizerBase,
        strategy: str = "offsets",
    ) -> None:
        if strategy not in STRATEGIES:
            raise C2CError(f"unknown token alignment {strategy!r}: choose one of {', '.join(STRATEGIES)}")
        for tok in (receiver, sharer):
            if not tok.is_fast:
                raise C2CError(f"tokenizer {tok.name_or_path!r} is not a fast tokenizer (needed for offsets)")
        self.receiver, self.sharer, self.strategy = receiver, sharer, strategy
        self.identity = same_tokenization(receiver, sharer)

    def align(self, messages: Messages, chat: bool = True, sharer_messages: Messages | None = None) -> AlignedPrompt:
        """`sharer_messages` (default: `messages`) is what the sharer reads when it reads more (`with_brief`)."""
        r_text = render(self.receiver, messages, chat)
        r_ids, r_spans = encode(self.receiver, r_text)
        if not r_ids:
            raise C2CError("the prompt is empty after tokenisation")
        briefed = sharer_messages is not None and sharer_messages != messages
        if self.identity and not briefed:
            return AlignedPrompt(r_ids, list(r_ids), list(range(len(r_ids))))
        s_text = render(self.sharer, sharer_messages if briefed else messages, chat)
        r_segs, s_segs = _segments(r_text, messages), _segments(s_text, messages)
        if len(r_segs) != len(s_segs):  # a message found in one rendering only: treat each as one block
            r_segs, s_segs = [(0, len(r_text), False)], [(0, len(s_text), False)]
        if self.strategy == "offsets":
            s_ids, s_spans = encode(self.sharer, s_text)
        else:
            s_ids, s_spans = self._reencode(r_text, r_ids, r_spans, r_segs, s_text, s_segs)
        index = self._map(r_spans, r_segs, s_spans, s_segs)
        return AlignedPrompt(r_ids, s_ids, index)

    def _reencode(self, r_text, r_ids, r_spans, r_segs, s_text, s_segs):
        """The paper's sharer input: template segments in the sharer's own tokens, content tokens re-encoded
        one receiver token at a time (first or longest piece). Spans index into the sharer's rendering, so
        `_map` can treat the result like a natural tokenisation."""
        starts = [a for a, _, _ in r_segs]
        ids: list[int] = []
        spans: list[tuple[int, int]] = []
        prev_end = 0
        for k, ((ra, _, content), (sa, sb, _)) in enumerate(zip(r_segs, s_segs)):
            if not content:
                seg_ids, seg_spans = encode(self.sharer, s_text[sa:sb])
                ids += seg_ids
                spans += [(a + sa, b + sa) for a, b in seg_spans]
                continue
            for (a, b) in (sp for sp in r_spans if _segment_of(starts, sp[0]) == k):
                a = max(a, prev_end)  # byte tokens of one character share a span: use it once
                prev_end = max(prev_end, b)
                if a >= b:
                    continue
                pieces = self.sharer(r_text[a:b], add_special_tokens=False)["input_ids"]
                if not pieces:
                    continue
                if self.strategy == "longest":
                    pick = max(pieces, key=lambda t: len(self.sharer.decode([t])))
                else:
                    pick = pieces[0]
                ids.append(pick)
                spans.append((a - ra + sa, b - ra + sa))  # same characters, shifted into the sharer's text
        return ids, spans

    def _map(self, r_spans, r_segs, s_spans, s_segs) -> list[int]:
        r_starts = [a for a, _, _ in r_segs]
        s_ends = [b for _, b in s_spans]
        n_s = len(s_spans)
        # Group receiver tokens and sharer tokens by segment.
        r_by_seg: list[list[int]] = [[] for _ in r_segs]
        for i, (a, _) in enumerate(r_spans):
            r_by_seg[_segment_of(r_starts, a)].append(i)
        s_starts = [a for a, _, _ in s_segs]
        s_by_seg: list[list[int]] = [[] for _ in s_segs]
        for j, (a, _) in enumerate(s_spans):
            s_by_seg[_segment_of(s_starts, a)].append(j)

        index = [0] * len(r_spans)
        last = 0  # the latest sharer position used: a fallback that never looks ahead of the segment
        for k, ((ra, _, content), (sa, _, _)) in enumerate(zip(r_segs, s_segs)):
            members = r_by_seg[k]
            if not members:
                last = s_by_seg[k][-1] if s_by_seg[k] else last
                continue
            if content:
                for i in members:
                    a, b = r_spans[i]
                    char = sa + (max(b, a + 1) - 1 - ra)  # the receiver token's last character, in sharer text
                    j = min(bisect.bisect_right(s_ends, char), n_s - 1)
                    index[i] = last = j
            elif s_by_seg[k]:
                for i, j in zip(members, _spread(len(members), s_by_seg[k])):
                    index[i] = last = j
            else:
                for i in members:
                    index[i] = last
        return index
