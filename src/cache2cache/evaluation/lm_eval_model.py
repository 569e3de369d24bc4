"""cache2cache as an lm-evaluation-harness model: `--model c2c`.

    c2c-lm-eval --model c2c --model_args receiver=SmolLM2-135M-Instruct,sharer=Qwen2.5-Coder-1.5B-Instruct,mode=c2c \\
        --tasks my_task --include_path my_tasks/ --batch_size 8

`c2c-lm-eval` (or `python -m cache2cache.evaluation.lm_eval_model`) is lm-eval's own command line with this
model registered first: lm-eval 0.4 finds models only in its registry, which importing this module fills. In
Python: `import cache2cache.evaluation.lm_eval_model`, then `lm_eval.simple_evaluate(model="c2c", ...)`.

model_args: receiver, sharer (repeat with `+`: `sharer=A+B`), fuser (a folder or a Hub-style id, `+` for several;
default: the shipped fuser of the default pair), mode (c2c | t2t | receiver | sharer), chat (true: each context
is the user message of a chat turn, as `c2c eval` prompts; false: raw text), dtype, device, batch_size.

- loglikelihood: contexts are grouped, each is prefilled (and fused) once and its cache copied for every
  continuation, as `c2c eval --method cloze` does; is_greedy comes from the same forward.
- loglikelihood_rolling: the answering model alone over the raw text, in windows of its context (there is no
  prompt for a sharer to read, so c2c and t2t score like the receiver, and sharer like the sharer).
- generate_until: greedy (or sampled with `temperature` > 0) generation in the chosen mode, cut at `until`.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from ..errors import C2CError
from ..inference.answerers import answerer
from ..inference.batching import GenerateOptions
from ..inference.factory import DEFAULT_FUSER, DEFAULT_RECEIVER, DEFAULT_SHARER, build
from ..inference.modes import ANSWER_MODES

log = logging.getLogger(__name__)


def mc_task_yaml(task: str, data: str) -> str:
    """An lm-eval task over a local JSONL of {"question", "choices", "answer"} records (the `c2c eval` task
    format), prompted as `c2c eval --method cloze` prompts, scored by acc_norm: what an offline user points
    `--include_path` at."""
    return f"""task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def _flag(value) -> bool:
    return str(value).lower() in ("1", "true", "yes")


@register_model("c2c", "cache2cache")
class C2CLM(LM):
    def __init__(self, receiver: str | None = None, sharer: str | None = None, fuser: str | None = None,
                 mode: str = "c2c", chat=True, dtype: str = "auto", device: str | None = None, batch_size=8,
                 t2t_tokens: int = 64, **unused) -> None:  # fmt: skip
        super().__init__()
        if mode not in ANSWER_MODES:
            raise C2CError(f"mode must be one of {', '.join(ANSWER_MODES)}, got {mode!r}")
        if device and str(device).startswith("cuda") and not torch.cuda.is_available():
            log.warning("device %s is not available (lm-eval's command line asks for cuda by default): using cpu",
                        device)  # fmt: skip
            device = "cpu"
        sharers = sharer.split("+") if sharer else ([] if receiver else [DEFAULT_SHARER])
        fusers = fuser.split("+") if fuser else ([str(DEFAULT_FUSER)] if not receiver and not sharer else [])
        self.model = build(receiver or DEFAULT_RECEIVER, sharers, fusers, dtype=dtype, device=device or None,
                           chat=_flag(chat))  # fmt: skip
        self.mode = mode
        self.answerer = answerer(self.model, mode, int(t2t_tokens))
        self.batch = max(1, int(str(batch_size).split(":")[0]) if str(batch_size) != "auto" else 8)

    @property
    def scorer(self):
        """The model whose own likelihoods are read without a prompt (rolling loglikelihood)."""
        return self.model.answerer(self.answerer.answer_mode)

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        by_context: dict[str, list[int]] = defaultdict(list)
        for i, req in enumerate(requests):
            by_context[req.args[0]].append(i)
        contexts = list(by_context)
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        for start in tqdm(range(0, len(contexts), self.batch), desc="c2c loglikelihood", unit="batch"):
            group = contexts[start:start + self.batch]
            conts = [[requests[i].args[1] for i in by_context[c]] for c in group]
            prompts = [c if c.strip() else self.scorer.tokenizer.eos_token for c in group]
            if self.mode == "t2t":
                values = self.answerer.logprobs(prompts, conts).values
                greedy = [[False] * len(c) for c in conts]  # the notes change the prompt: greedy is not defined
            else:
                values, greedy, _ = self.model.continuation_scores(prompts, conts, self.answerer.answer_mode)
            for c, vs, gs in zip(group, values, greedy):
                for i, v, g in zip(by_context[c], vs, gs):
                    out[i] = (float(v), bool(g))
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def loglikelihood_rolling(self, requests) -> list[float]:
        model = self.scorer
        window = min(model.max_length, 2048)
        out = []
        for req in tqdm(requests, desc="c2c loglikelihood_rolling", unit="doc"):
            ids = model.tokenizer(req.args[0], add_special_tokens=False)["input_ids"]
            prefix = model.tokenizer.bos_token_id if model.tokenizer.bos_token_id is not None else \
                model.tokenizer.eos_token_id  # fmt: skip
            tokens, total, done = [prefix] + ids, 0.0, 0
            while done < len(ids):  # windows that score new tokens with as much context as fits
                end = min(len(ids), done + window - 1)
                start = max(0, end + 1 - window)
                x = torch.tensor([tokens[start:end + 1]], device=model.device)
                logp = model.model(input_ids=x).logits[0, :-1].float().log_softmax(-1)
                target = x[0, 1:]
                scored = logp.gather(-1, target[:, None])[:, 0]
                total += float(scored[done - start:].sum())
                done = end
            out.append(total)
        return out

    def generate_until(self, requests) -> list[str]:
        out = []
        for req in tqdm(requests, desc="c2c generate_until", unit="req"):
            context, kwargs = req.args
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            temperature = float(kwargs.get("temperature", 0.0) or 0.0)
            options = GenerateOptions(max_new_tokens=int(kwargs.get("max_gen_toks", 256)), do_sample=temperature > 0,
                                      temperature=temperature if temperature > 0 else 1.0)  # fmt: skip
            text = self.answerer.generate([context], options).results[0].text
            cut = min((text.find(u) for u in until if u and u in text), default=len(text))
            out.append(text[:cut])
        return out


def main() -> None:
    """`python -m cache2cache.evaluation.lm_eval_model ARGS`: lm-eval's own command line (the same ARGS as
    `lm_eval`), with the c2c model registered first."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
