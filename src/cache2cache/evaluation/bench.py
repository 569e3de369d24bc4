"""`c2c bench`: latency of each mode, measured the way a user would feel it.

For every mode, on real questions: time to first token (TTFT) and end-to-end latency for a fixed number of new
tokens, with the phase breakdown (sharer prefill, fuse, receiver prefill, decode; T2T's sharer generation),
medians over repeats after a warm-up; then tokens/s of C2C and of the receiver at several batch sizes; peak
memory. CUDA is synchronised at every clock reading.
"""

from __future__ import annotations

import platform
import resource
import statistics
from dataclasses import dataclass, field

import torch
from transformers.generation.streamers import BaseStreamer

from ..errors import C2CError
from ..inference.answerers import Question, answerer
from ..inference.batching import GenerateOptions, clock
from ..inference.modes import BENCH_MODES
from ..inference.pipeline import C2CModel
from ..kv import ModelGeometry
from ..version import __version__
from .machine import cpu
from .scoring import question_block, t2t_prompt
from .tasks import Item


class FirstTokenClock(BaseStreamer):
    """A streamer that only notes when generate() emits its first new token (its second `put`)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.calls, self.first = device, 0, None

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 2 and self.first is None:
            self.first = clock(self.device)

    def end(self) -> None:
        pass


@dataclass
class BenchConfig:
    modes: list[str] = field(default_factory=lambda: list(BENCH_MODES))
    new_tokens: int = 32
    t2t_tokens: int = 64
    repeats: int = 5
    batch_sizes: list[int] = field(default_factory=lambda: [1, 2, 4, 8])


def available_memory(device: torch.device) -> int:
    """Bytes a new allocation can take now: free GPU memory, or the kernel's MemAvailable on CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return 1 << 62  # unknown: do not refuse


def check_batch_fits(model: C2CModel, batch: int, tokens: int) -> None:
    """Refuse, before allocating, a batch whose caches and logits alone would take more than half the memory
    available (activations and the models themselves need the rest)."""
    per_token = 0
    for m in [model.receiver, *model.sharers]:
        geo, size = ModelGeometry.from_config(m.model.config), m.model.dtype.itemsize
        per_token += sum(2 * g.kv_heads * g.head_dim for g in geo.layers) * size
    vocab = model.receiver.model.config.get_text_config().vocab_size
    need = batch * (tokens * per_token + 2 * vocab * 4)
    free = available_memory(model.receiver.device)
    if need > free // 2:
        raise C2CError(f"batch size {batch} needs about {need / 2**30:.1f} GiB for its caches alone, more than half of "
                       f"the {free / 2**30:.1f} GiB available; use a smaller --batch-sizes")  # fmt: skip


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (KiB on Linux)


def run_once(model: C2CModel, item: Item, mode: str, cfg: BenchConfig) -> dict:
    """One request, batch 1: TTFT, end-to-end and the phase breakdown in seconds."""
    device = model.receiver.device
    options = GenerateOptions(max_new_tokens=cfg.new_tokens, min_new_tokens=cfg.new_tokens)
    question = Question([{"role": "user", "content": question_block(item)}], t2t_prompt(item),
                        lambda notes: [{"role": "user", "content": question_block(item, notes)}])  # fmt: skip
    first_token = FirstTokenClock(device)
    start = clock(device)
    ans = answerer(model, mode, cfg.t2t_tokens, exact_notes=True)
    out = ans.generate([question], options, streamer=first_token)
    end = clock(device)
    sent = ans.sent(question, out.results[0].notes)
    return {"ttft_s": first_token.first - start, "e2e_s": end - start, "parts": out.timings.to_dict(),
            "new_tokens": out.results[0].new_tokens, "wire_bytes": sent}  # fmt: skip


def latency(model: C2CModel, items: list[Item], cfg: BenchConfig, progress=None) -> dict:
    results = {}
    for mode in cfg.modes:
        if model.receiver.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(model.receiver.device)
        run_once(model, items[0], mode, cfg)  # warm-up
        runs = [run_once(model, items[i % len(items)], mode, cfg) for i in range(cfg.repeats)]
        keys = runs[0]["parts"].keys()
        results[mode] = {
            "ttft_s": statistics.median(r["ttft_s"] for r in runs),
            "e2e_s": statistics.median(r["e2e_s"] for r in runs),
            "parts_median_s": {k: statistics.median(r["parts"][k] for r in runs) for k in keys},
            "runs": len(runs),
            "wire_bytes": statistics.median(r["wire_bytes"] for r in runs),
            "peak_memory_mb": _peak_memory_mb(model.receiver.device),
        }  # fmt: skip
        if progress:
            progress(mode)
    return results


def throughput(model: C2CModel, items: list[Item], cfg: BenchConfig, modes=("receiver", "c2c")) -> dict:
    """Generated tokens per second at each batch size (median of `repeats` after a warm-up)."""
    out: dict = {}
    options = GenerateOptions(max_new_tokens=cfg.new_tokens, min_new_tokens=cfg.new_tokens)
    for mode in modes:
        out[mode] = {}
        for bs in cfg.batch_sizes:
            prompts = [[{"role": "user", "content": question_block(items[i % len(items)])}] for i in range(bs)]
            model.generate(prompts, mode, options)
            times = []
            for _ in range(max(1, cfg.repeats // 2)):
                t0 = clock(model.receiver.device)
                model.generate(prompts, mode, options)
                times.append(clock(model.receiver.device) - t0)
            out[mode][str(bs)] = bs * cfg.new_tokens / statistics.median(times)
    return out


def ratios(lat: dict) -> dict:
    r = {}
    if "c2c" in lat:
        p = lat["c2c"]["parts_median_s"]
        r["fuse_over_receiver_prefill"] = p["fuse_s"] / p["receiver_prefill_s"]
        if "t2t" in lat:
            r["t2t_e2e_over_c2c_e2e"] = lat["t2t"]["e2e_s"] / lat["c2c"]["e2e_s"]
        if "receiver" in lat:
            r["c2c_ttft_over_receiver_ttft"] = lat["c2c"]["ttft_s"] / lat["receiver"]["ttft_s"]
    return r


def environment(model: C2CModel) -> dict:
    dev = model.receiver.device
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{platform.machine()} CPU ({cpu()})"
    return {"device": name, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cache2cache": __version__, "receiver": model.receiver.name, "sharers": [s.name for s in model.sharers],
            "dtypes": {"receiver": str(model.receiver.model.dtype),
                       "sharers": [str(s.model.dtype) for s in model.sharers]}}  # fmt: skip
