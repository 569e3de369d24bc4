"""Arguments and helpers shared by the subcommands that load a receiver, sharers and fusers."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.console import Console

from ..alignment.tokens import STRATEGIES
from ..fuser.config import PRESETS
from ..inference.factory import DEFAULT_FUSER, DEFAULT_RECEIVER, DEFAULT_SHARER, build
from ..inference.pipeline import C2CModel
from ..translation.recompute import PICKS, Recompute
from ..translation.translator import shipped_for


def token_share(text: str) -> float:
    """A share of a brief's tokens, in (0, 1]: checked before any model loads."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share like 0.25, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a share in (0, 1], got {value:g}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# ---- paths a user hands a command: checked when the arguments are parsed (one line, exit 2, nothing done) ----


def input_file(text: str) -> Path:
    """An existing, readable regular file."""
    path = Path(text).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: not a regular file")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"{text}: not readable")
    return path


def input_path(text: str) -> Path:
    """An existing file or folder (a run folder or a checkpoint)."""
    path = Path(text).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file or folder")
    return path


def _writable_parent(path: Path, text: str) -> None:
    parent = next((p for p in path.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise argparse.ArgumentTypeError(f"{text}: {parent} is not writable")


def output_dir(text: str) -> Path:
    """A folder to write in: existing (a folder, writable) or creatable."""
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: exists and is not a folder")
    if path.exists() and not os.access(path, os.W_OK):
        raise argparse.ArgumentTypeError(f"{text}: not writable")
    if not path.exists():
        _writable_parent(path, text)
    return path


def output_file(text: str) -> Path:
    """A file to (over)write: not a folder, in a folder that exists or can be made."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a folder, expected a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise argparse.ArgumentTypeError(f"{text}: not writable")
    _writable_parent(path, text)
    return path


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def layer_list(text: str) -> list[int]:
    """ "0-9,20" -> [0, 1, ..., 9, 20] (inclusive ranges)."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        a, _, b = part.partition("-")
        try:
            out += list(range(int(a), int(b or a) + 1))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected layers like 0-9,20, got {part!r}") from None
    return out


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--receiver", default=None, help=f"receiver model (default {DEFAULT_RECEIVER})")
    p.add_argument("--sharer", action="append", default=None,
                   help=f"sharer model; repeat for several (default {DEFAULT_SHARER})")  # fmt: skip
    p.add_argument("--fuser", action="append", default=[], type=Path,
                   help="trained fuser directory; one per --sharer, same order (default: the shipped fuser of "
                        "the default pair)")  # fmt: skip
    p.add_argument("--translator", action="append", default=[], type=Path,
                   help="fitted translator directory (`c2c fit`) for the first --sharer (repeat for the next "
                        "ones: several senders' brief parts, e.g. task sciq_two_briefs): enables mode translated "
                        "(default: the one shipped for the receiver and the first sharer, if any)")  # fmt: skip
    p.add_argument("--own-layers", type=int, default=0, metavar="M",
                   help="translated briefs: the receiver computes its own first M layers over the brief (M/L of "
                        "reading it itself), the translator the rest: the fidelity knob (default 0)")  # fmt: skip
    p.add_argument("--own-from", type=int, default=0, metavar="M",
                   help="translated briefs: the receiver computes its own layers M..L-1 over the brief ((L-M)/L of "
                        "reading it), from the state entering layer M that the translator's entry map writes "
                        "(`c2c fit --from DIR --entry-layers M`): the knob from the top (default 0: off)")  # fmt: skip
    p.add_argument("--own-to", type=int, default=0, metavar="U",
                   help="with --own-from M: the receiver's own layers stop before layer U ((U-M)/L of reading it); "
                        "the translator writes layers U..L-1 too: a window of critical layers (default 0: the top)")
    p.add_argument("--own-tokens", type=token_share, default=1.0, metavar="P",
                   help="translated briefs: the receiver's own layers (from --own-from M, else all of them) run over "
                        "only a share P of the brief's tokens, the others staying translated: the knob's token axis, "
                        "P*(L-M)/L of reading it (default 1: all tokens)")
    p.add_argument("--own-pick", choices=PICKS, default="facts",
                   help="with --own-tokens: facts (the tokens of names and numbers first, then of the word before "
                        "each, the rest evenly spaced) or spread (evenly spaced: the control for the choice) "
                        "(default facts)")  # fmt: skip
    p.add_argument("--no-chat", action="store_true", help="feed prompts as raw text, no chat template")
    p.add_argument("--dtype", default="auto",
                   help="auto (bf16 real receivers, fp32 sharers on CPU, fp32 tiny), float32, bfloat16, float16")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--cache-dir", type=output_dir, default=None, help="model cache directory")
    untrained = p.add_argument_group("untrained fuser (when no --fuser is given)")
    untrained.add_argument("--preset", choices=list(PRESETS), default="compact")
    untrained.add_argument("--layer-alignment", default="terminal", help="terminal, spread, or 'r:s,r:s'")
    untrained.add_argument("--token-alignment", choices=STRATEGIES, default="offsets")


def model_names(args) -> tuple[str, list[str], list[Path]]:
    """The receiver, sharers and fusers asked for. With no --receiver and no --sharer: the default pair, and its
    shipped fuser unless --fuser names another."""
    if args.receiver is None and args.sharer is None:
        return DEFAULT_RECEIVER, [DEFAULT_SHARER], list(args.fuser) or [DEFAULT_FUSER]
    sharers = args.sharer or []
    return args.receiver or DEFAULT_RECEIVER, sharers, list(args.fuser)


def translator_names(args) -> list[Path]:
    """The translators asked for; with none, the one shipped for the receiver and the first sharer, if any."""
    if getattr(args, "translator", None):
        return list(args.translator)
    receiver, sharers, _ = model_names(args)
    shipped = shipped_for(receiver, sharers[0]) if sharers else None
    return [shipped] if shipped else []


def recompute_from_args(args) -> Recompute:
    """The fidelity knob the `--own-*` options ask for (`add_model_args`)."""
    return Recompute(args.own_layers, args.own_from, args.own_to, args.own_tokens, args.own_pick)


def build_from_args(args, skeleton_sharers: bool = False) -> C2CModel:
    receiver, sharers, fusers = model_names(args)
    with Console(stderr=True).status("loading models..."):
        return build(receiver, sharers, fusers, dtype=args.dtype, device=args.device, cache_dir=args.cache_dir,
                     chat=not args.no_chat, skeleton_sharers=skeleton_sharers, translators=translator_names(args),
                     recompute=recompute_from_args(args),
                     preset=args.preset,
                     layer_alignment=args.layer_alignment, token_alignment=args.token_alignment)  # fmt: skip


def message_path(model: C2CModel) -> dict:
    """What a run's translated answers were served by (its translators and the fidelity knob), as `c2c eval`'s
    summary and `c2c generate --json` report it."""
    return {"translators": [t.source or "fitted in memory" for t in model.translators],
            "recompute": model.recompute.meta()}  # fmt: skip
