"""Every way to answer, in one table: the answer modes and their controls, each with what it needs.

`C2CModel` runs four modes itself (`PIPELINE_MODES`): the receiver alone, the sharer alone, c2c (the fusers add
to the receiver's reading of the prompt) and translated (the translators write the receiver's cache of a brief
it never reads). Every other mode is one of those over prepared prompts (answerers.py): text-to-text writes
notes first; a control changes the *message* (another question's, in the batch: `batch_mates`) and never the
code that carries it. The CLI's help and choices, evaluation, benchmarks, the server and the tests read this
table; nothing else lists modes.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import C2CError


@dataclass(frozen=True)
class Mode:
    name: str
    runs: str  # the pipeline mode that reads the final prompts
    maps: str = ""  # which cache maps carry the message: "", "fusers" or "translators"
    control: bool = False  # evaluation's controls and bounds, beside the answer modes
    sharer: bool = False  # needs a sharer
    batch_mates: bool = False  # needs another question in the same batch (its message is this one's)
    brief: bool = False  # answers a question about a brief only the sharer reads
    wire: str = ""  # what crosses to the receiver: "", "text", "receiver_cache" or "sharer_cache" (wire.py)
    help: str = ""


MODES: dict[str, Mode] = {m.name: m for m in (
    Mode("receiver", "receiver", help="the receiver alone"),
    Mode("sharer", "sharer", sharer=True, help="the sharer alone, with its own chat template"),
    Mode("t2t", "receiver", sharer=True, wire="text",
         help="text-to-text: the sharer writes notes, the receiver reads them"),
    Mode("t2t_blind", "receiver", sharer=True, brief=True, wire="text",
         help="the same message as text: the sharer reads only the brief and writes notes; the receiver reads them"),
    Mode("c2c", "c2c", "fusers", sharer=True, wire="sharer_cache",
         help="the receiver answers from its cache with the sharers' fused in"),
    Mode("translated", "translated", "translators", sharer=True, brief=True, wire="receiver_cache",
         help="the receiver answers from its cache of the brief, written by the translators; it never reads it"),
    Mode("mismatched", "c2c", "fusers", control=True, sharer=True, batch_mates=True, wire="sharer_cache",
         help="c2c fed another question's sharer cache: what a fuser adds whatever the sharer read"),
    Mode("translated_mismatched", "translated", "translators", control=True, sharer=True, batch_mates=True,
         brief=True, wire="receiver_cache",
         help="translated with another question's brief: what a translator gives whatever it read"),
    Mode("neutral", "translated", "translators", control=True, sharer=True, brief=True, wire="receiver_cache",
         help="translated with a neutral passage in the brief's place: what any translated cache gives"),
    Mode("receiver_brief", "receiver", control=True, brief=True, wire="text",
         help="the receiver reads the brief itself, where the translated cache would be (the upper bound)"),
)}  # fmt: skip

PIPELINE_MODES = tuple(m.name for m in MODES.values() if m.runs == m.name)
ANSWER_MODES = tuple(m.name for m in MODES.values() if not m.control)
CONTROL_MODES = tuple(m.name for m in MODES.values() if m.control)
EVAL_MODES = tuple(MODES)
BENCH_MODES = tuple(m.name for m in MODES.values() if not m.control and not m.brief)  # briefs: probes, not benches
BATCH_MATE_MODES = tuple(m.name for m in MODES.values() if m.batch_mates)


def get_mode(name: str, among: tuple[str, ...] = tuple(MODES)) -> Mode:
    """The mode called `name`, if it is one of `among`; a one-line error naming the choices otherwise."""
    if name not in among:
        raise C2CError(f"unknown mode {name!r}: choose one of {', '.join(among)}")
    return MODES[name]


def parse_modes(spec: str, among: tuple[str, ...] = tuple(MODES)) -> list[str]:
    """'receiver,c2c' -> ['receiver', 'c2c'], every name checked against `among`."""
    names = [m.strip() for m in spec.split(",") if m.strip()]
    bad = [m for m in names if m not in among]
    if bad or not names:
        raise C2CError(f"unknown or no mode(s) {bad}: choose from {', '.join(among)}")
    return names


def modes_help(among: tuple[str, ...] = tuple(MODES)) -> str:
    """One line per mode, for --help."""
    return "\n".join(f"  {name:22} {MODES[name].help}" for name in among)
