"""Which machine a result came from, in one line. bf16 matrix kernels differ by CPU, so the same code, weights and
questions can give a few different greedy answers on another machine (docs/RESULTS.md, session 28: 16 of 100
answers, 3 of them scored, with the code of two days before giving today's answers exactly); results that name the
CPU can be told apart from a change in the code."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # what decides the bf16 kernels oneDNN picks, beside torch's level


def cpu(info: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name, torch's CPU kernel level and the bf16 instructions it has, e.g. "Intel(R) Xeon(R)
    Processor, AVX512 kernels, avx512_bf16" (the name alone where `info` cannot be read)."""
    name, flags = platform.processor() or "unknown CPU", set()  # the architecture is named beside it
    try:
        for line in info.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break  # every core repeats it
    except OSError:
        pass
    level = torch.backends.cpu.get_cpu_capability()
    return ", ".join([name, f"{level} kernels", *(f for f in BF16_FLAGS if f in flags)])


def describe() -> str:
    """The architecture, the CPU (`cpu`) and torch's threads: the summary's "machine"."""
    return f"{platform.machine()}, {cpu()}, {torch.get_num_threads()} threads"
