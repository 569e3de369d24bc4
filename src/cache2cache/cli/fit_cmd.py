"""`c2c fit`: fit a cache translator for a receiver/sharer pair on plain text both models read."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields, replace
from pathlib import Path

from rich.console import Console

from ..atomic import check_writable_dir
from ..errors import C2CError
from ..inference.factory import DEFAULT_RECEIVER, DEFAULT_SHARER, check_device, default_device
from ..translation.config import FEATURES
from ..translation.recipe import DTYPES, FitRecipe
from ..translation.text import DEFAULT_TEXT
from .common import output_dir, output_file, positive_int, token_share


def feature_list(text: str) -> list[str]:
    feats = [f.strip() for f in text.split(",") if f.strip()]
    if not feats or any(f not in FEATURES for f in feats):
        raise argparse.ArgumentTypeError(f"expected a comma list from {', '.join(FEATURES)}, got {text!r}")
    return feats


def layer_list(text: str) -> list[int]:
    try:
        layers = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        layers = []
    if not layers or any(m < 1 for m in layers):
        raise argparse.ArgumentTypeError(f"expected a comma list of layers >= 1, e.g. 21,24, got {text!r}")
    return layers


def register(sub) -> None:
    p = sub.add_parser(
        "fit",
        help="fit a cache translator (sharer K/V -> receiver K/V) on plain text",
        description=(
            "Fit a translator: per receiver layer, ridge maps from the sharer's keys and values (a window of\n"
            "sharer layers at the same relative depth) and the receiver's embedding of each token to the\n"
            "receiver's own keys and values of the same text. Both models read each passage as a brief, in their\n"
            "own chat templates; only moments are kept (memory does not grow with the text), checkpointed to\n"
            "--stats, so the same command continues a killed fit. Every tenth passage is held out to choose the\n"
            "ridge strength and report R² per layer (fit.json, r2.png). With the statistics complete, a rerun\n"
            "only solves: cheap to try other --key-features / --value-features. Then (--refine N) the key maps\n"
            "are trained from the ridge solution to make the receiver's own queries attend over translated keys\n"
            "as over its own (KL of attention, per layer, no backward pass through a model). Last (--distill\n"
            "STEPS), every map is trained at once so that the receiver, reading a passage translated up to a\n"
            "random cut, predicts the rest as it does after reading the passage itself (backward through the\n"
            "receiver only)."
        ),
        epilog=(
            "examples:\n"
            "  c2c fit                                          # the default pair, sciq + boolq passages\n"
            "  c2c fit --receiver tiny-llama --sharer tiny-qwen2 --text sciq:20 --out runs/translators/tiny\n"
            "  c2c fit --text boolq:500,notes.txt --window 3 --key-features keys,values,embedding\n"
            "  c2c fit --recipe configs/translator_default.toml     # the default pair's shipped translator (slow)\n"
            "  c2c fit --recipe configs/translator_qwen05.toml      # the Qwen 0.5B <- 1.5B one (~15 CPU-min)\n"
            "  c2c fit --recipe configs/translator_cheap.toml       # cheap: ~25 CPU-min, 51%; 95% at --own-from 15\n"
            "  c2c fit --from runs/translators/tiny --refine 8 --distill 50   # continue a saved translator\n"
            "  c2c fit --from DIR --refine 0 --distill 200 --distill-target sharer --distill-on note:sciq:400\n"
            "                                                   # distil what the sharer knows about a note\n"
            "  c2c fit --from DIR --refine 0 --entry-layers 21,24 --text sciq:100,boolq:100   # the knob from the top\n"
            "  c2c fit --from DIR --refine-text sciq:300 --refine 96 --refine-steps 0 --distill 200 \\\n"
            "      --distill-own-from 21                                    # distil the entry map of 21 alone\n"
            "  c2c fit --from DIR --refine 0 --distill 300 --distill-on brief:sciq_brief:300 --distill-own-tokens 0.3\n"
            "                                                   # train the maps for what --own-tokens 0.3 serves\n"
            "  c2c fit --from DIR --refine 0 --distill 300 --distill-on note:sciq:400 --recordings notes.safetensors\n"
            "                                 # a rerun with another --distill-lr reads the recorded exchanges back\n"
            "then: c2c eval --task sciq_brief --split heldout --method cloze --translator DIR \\\n"
            "        --modes receiver,translated,translated_mismatched,receiver_brief"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--recipe", type=Path, default=None,
                   help="a TOML file of these settings (underscores for dashes; flags given here win), e.g. "
                        "configs/translator_default.toml, the default pair's shipped translator's recipe")  # fmt: skip
    p.add_argument("--receiver", default=None, help=f"receiver model (default {DEFAULT_RECEIVER})")
    p.add_argument("--sharer", default=None, help=f"sharer model (default {DEFAULT_SHARER})")
    p.add_argument("--from", dest="start_from", default=None, metavar="DIR",
                   help="start from this saved translator (no ridge fit): refine and/or distil it, for the pair it "
                        "names (another --receiver/--sharer is refused)")  # fmt: skip
    p.add_argument("--text", default=None,
                   help=f"fitting text: comma list of sciq, boolq, sharegpt, .txt/.jsonl files, each with an "
                        f"optional :N passages (default {DEFAULT_TEXT})")  # fmt: skip
    p.add_argument("--max-chars", type=positive_int, default=None, help="cut each passage to this many characters "
                   "(default 1200)")  # fmt: skip
    p.add_argument("--window", type=positive_int, default=None,
                   help="sharer layers per receiver layer, nearest its relative depth, whose moments are gathered "
                        "(default 1: 7%% of SmolLM2-135M's parameters, the fastest fit)")  # fmt: skip
    p.add_argument("--use-window", type=positive_int, default=None,
                   help="solve the key maps from only the central N of the gathered layers (default: all of them)")
    p.add_argument("--value-window", type=positive_int, default=None,
                   help="solve the value maps from the central N (default: as --use-window)")
    p.add_argument("--key-features", type=feature_list, default=None,
                   help=f"what the key maps read, from {', '.join(FEATURES)} (default keys,embedding; previous is "
                        "the receiver's embedding of the token before, what its copying heads key on)")  # fmt: skip
    p.add_argument("--value-features", type=feature_list, default=None,
                   help="what the value maps read (default values,embedding)")
    p.add_argument("--refine", type=int, default=None, metavar="N",
                   help="then refine the key maps against the receiver's attention on N passages (by default N of "
                        "the fitting passages, kept with the receiver's queries as the moments read them; 0: ridge "
                        "only; default 96)")  # fmt: skip
    p.add_argument("--refine-text", default=None, metavar="SPEC",
                   help="take the refinement's passages from this text instead (after --refine-skip of them)")
    p.add_argument("--refine-skip", type=int, default=None, metavar="K", help="skip the first K of them (default 0)")
    p.add_argument("--refine-steps", type=int, default=None,
                   help="Adam steps per layer (default 200; 0: no refinement, only --distill on those passages)")
    p.add_argument("--refine-values", action="store_true", default=None,
                   help="after the keys, refine the value maps on the same passages against the receiver's "
                        "attention output through the translated keys (as long again)")  # fmt: skip
    p.add_argument("--distill", type=int, default=None, metavar="STEPS",
                   help="last, train every map together on the same passages, end to end: the receiver reading a "
                        "passage translated up to a random cut must predict the rest as after reading it itself "
                        "(KL through the receiver, never the sharer; 0: off)")  # fmt: skip
    p.add_argument("--distill-lr", type=float, default=None, metavar="LR",
                   help="Adam's step, relative to the trained maps' mean absolute weight (default 3e-5)")
    p.add_argument("--distill-target", choices=("receiver", "sharer"), default=None,
                   help="whose reading of the whole passage the distillation matches: the receiver's own "
                        "(default) or the sharer's (what it understood; needs the receiver's tokenizer)")
    p.add_argument("--distill-top-k", type=int, default=None, metavar="K",
                   help="record the target's top-K log-probabilities once per passage and take the KL over them and "
                        "the rest (one teacher forward per passage, not per step: for a sharer teacher); default 0, "
                        "the exact distribution")  # fmt: skip
    p.add_argument("--distill-on", default=None, metavar="SPEC",
                   help="distil on exchanges shaped like a message's use instead of the refinement passages: the "
                        "sender reads a brief, the receiver a question after it, and only the answer is scored "
                        "(e.g. note:sciq:400 for the knowledge probes, brief:sciq_brief:200; SHAPE:SOURCE:N, "
                        "trainable four fifths only; training/exchanges.py)")  # fmt: skip
    p.add_argument("--entry-layers", type=layer_list, default=None, metavar="M,M",
                   help="also fit maps of the receiver's hidden state entering these layers, on --text (in the "
                        "same reading as the key and value maps): what "
                        "`--own-from M` (the knob from the top: the receiver recomputes its layers M..L-1 over a "
                        "translated brief) reads; with --from DIR --refine 0, added to a saved translator")
    p.add_argument("--entry-window", type=positive_int, default=None, metavar="N",
                   help="each entry map reads the states entering N sharer layers around the same relative depth "
                        "(default 1)")  # fmt: skip
    p.add_argument("--distill-own-from", type=positive_int, default=None, metavar="M",
                   help="distil the entry map of layer M alone, through the knob: the receiver recomputes its layers "
                        "M.. from the state the map writes, and that map is trained so that what the receiver reads "
                        "next matches its own reading (the translator needs an entry map for M: --entry-layers)")
    p.add_argument("--distill-own-tokens", type=token_share, default=None, metavar="P",
                   help="distil every map through `--own-tokens P`: the receiver recomputes its picked share P of "
                        "each brief's tokens (names and numbers first) beside the translated others, and the maps are "
                        "trained for what it then reads (serve the result with --own-tokens P)")
    p.add_argument("--mlp-width", type=int, default=None, metavar="W",
                   help="before distilling, give every key and value map a nonlinear branch W wide (normalised "
                        "features, one GELU layer, an output starting at zero), trained with the maps by --distill "
                        "(default 0: affine maps only)")  # fmt: skip
    p.add_argument("--mlp-lr", type=float, default=None, metavar="LR",
                   help="the branches' Adam step, absolute (default 3e-4)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="of the saved weights (default float32)")
    p.add_argument("--out", type=output_dir, default=None, help="translator folder (default runs/translators/PAIR)")
    p.add_argument("--stats", type=output_file, default=None,
                   help="moments file, resumed if present (default: next to --out, OUT.stats.safetensors)")
    p.add_argument("--recordings", type=output_file, default=None, metavar="FILE",
                   help="keep what both models (and the distillation's teacher) read for the refinements and the "
                        "distillation in FILE, and read it from there when FILE holds the same reading: the next "
                        "fit on the same text records nothing again (a different reading is refused)")
    p.add_argument("--no-chat", dest="chat", action="store_false", default=None,
                   help="read passages as raw text, no chat template")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--cache-dir", type=output_dir, default=None, help="model cache directory")
    p.add_argument("--json", action="store_true", help="print the fit report as JSON")
    p.set_defaults(func=run)


RECIPE_FLAGS = tuple(f.name for f in fields(FitRecipe))


def recipe_of(args) -> FitRecipe:
    """The recipe file's settings (or the defaults), the flags given on the command line on top."""
    given = {k: getattr(args, k) for k in RECIPE_FLAGS if getattr(args, k, None) is not None}
    recipe = FitRecipe.load(args.recipe, **given) if args.recipe else FitRecipe(**given)
    if recipe.start_from:  # a saved translator names its pair: continue with that pair unless told otherwise
        from ..translation.config import TranslatorConfig

        saved = TranslatorConfig.load(Path(recipe.start_from))
        return replace(recipe, receiver=recipe.receiver or saved.receiver, sharer=recipe.sharer or saved.sharer)
    return replace(recipe, receiver=recipe.receiver or DEFAULT_RECEIVER, sharer=recipe.sharer or DEFAULT_SHARER)


def run(args) -> int:
    from ..models.loading import load_model
    from ..training.exchanges import exchanges
    from ..translation.fit import write_report
    from ..translation.recipe import run_recipe

    recipe = recipe_of(args)  # a bad setting fails before any model loads
    shaped = exchanges(recipe.distill_on) if recipe.distill_on else None
    device = check_device(args.device or default_device())
    name = f"{Path(recipe.receiver).name}-from-{Path(recipe.sharer).name}".lower()
    out = args.out or Path("runs/translators") / name
    stats = args.stats or out.with_name(f"{out.name}.stats.safetensors")
    check_writable_dir(out, "translator folder")
    if stats.exists() and not stats.is_file():
        raise C2CError(f"--stats {stats} exists and is not a file")
    with Console(stderr=True).status("loading models..."):
        receiver = load_model(recipe.receiver, device=device, cache_dir=args.cache_dir)
        sharer = load_model(recipe.sharer, device=device, cache_dir=args.cache_dir, prefill_only=True)
    translator = run_recipe(recipe, receiver, sharer, stats, shaped, args.recordings)
    translator.save_pretrained(out, dtype=DTYPES[recipe.dtype])
    if "r2" in translator.config.fit:
        write_report(translator, out)
    fit = translator.config.fit
    report = {"out": str(out), "stats": str(stats), "parameters": translator.num_parameters(),
              "receiver_parameters": sum(p.numel() for p in receiver.model.parameters()), **fit}  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    if "entries" in fit:
        print(f"entry maps for layers {fit['entries']['layers']}: held-out R² {fit['entries']['r2']}", file=sys.stderr)
    r2 = fit.get("r2") or []
    print(f"translator -> {out}: {report['parameters']:,} parameters "
          f"({report['parameters'] / report['receiver_parameters']:.1%} of the receiver), {fit['tokens']:,} tokens, "
          f"{fit['seconds'] / 60:.1f} min of reading", file=sys.stderr)  # fmt: skip
    if not r2:
        return 0
    print(f"held-out R² (mean over {len(r2)} layers): keys {sum(x[0] for x in r2) / len(r2):.3f}, "
          f"values {sum(x[1] for x in r2) / len(r2):.3f}; per layer in {out / 'fit.json'}, {out / 'r2.png'}")
    return 0
