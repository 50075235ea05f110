"""``vlgraft`` command line: train, eval, report, chat, export, serve, info, sweep, curate.

Every command reads one recipe — the file given to ``train`` / ``info``, or the run's own for ``eval``,
``chat`` and ``export`` — and takes the same ``-o key=value`` overrides; a command's convenience flags
(``eval --limit 100``) are declared aliases of recipe keys (``-o eval.limit=100``), not settings of
their own. Every user error is one line on stderr (exit code 2), naming the file, record or key at fault.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# (flag, recipe key, argparse settings): each flag is a short way to write -o KEY=VALUE.
EVAL_FLAGS = [
    ("--data", "data.eval", {"metavar": "SOURCE", "help": "eval data (a data source: easyvqa:test, a .jsonl, ...)"}),
    ("--limit", "eval.limit", {"type": int, "metavar": "N", "help": "only the first N questions"}),
    ("--turns", "data.turns", {"choices": ["conversation", "independent"],
                               "help": "conversation: with the gold earlier turns as history; independent: each "
                                       "question alone with the image"}),
    ("--batch-size", "eval.batch_size", {"type": int, "metavar": "N"}),
    ("--loss-records", "eval.loss_records", {"type": int, "metavar": "N",
                                             "help": "also report the held-out loss over the first N records"}),
    ("--precision", "eval.precision", {"choices": ["fp32", "bf16"]}),
    ("--text-set", "eval.text_set", {"metavar": "JSONL", "help": "text set for --text (implies --text)"}),
    ("--task", "eval.tasks", {"action": "append", "metavar": "SPEC",
                              "help": "a benchmark to run, repeatable: vqa | caption:SOURCE | pope:OBJECTS[:SETTING] "
                                      "| choice:SOURCE (docs/METRICS.md)"}),
    ("--choice-scoring", "eval.choice_scoring", {"choices": ["generate", "likelihood"],
                                                 "help": "choice tasks: read the letter from the answer, or take "
                                                         "the most likely option"}),
]
EVAL_SWITCHES = [
    ("--no-describe", "data.describe_first", None, "answer directly, even if the recipe describes the image first"),
    ("--text", "eval.text", "also", "also measure text-only ability (perplexity, QA) before and after training"),
    ("--text-only", "eval.text", "only", "only the text-only ability (skip VQA)"),
    ("--circular", "eval.choice_circular", True, "choice tasks: CircularEval, every rotation of the options"),
]
CHAT_FLAGS = [
    ("--max-new-tokens", "chat.max_new_tokens", {"type": int, "metavar": "N"}),
    ("--precision", "eval.precision", {"choices": ["fp32", "bf16"]}),
]
CHAT_SWITCHES = [EVAL_SWITCHES[0]]


def _add_overrides(p: argparse.ArgumentParser, flags=(), switches=()) -> None:
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="set a recipe key, e.g. -o train.max_steps=20 or -o eval.limit=100 (repeatable)")
    for flag, key, kw in flags:
        p.add_argument(flag, dest=f"alias:{key}", **{"help": f"= -o {key}=...", **kw})
    for flag, key, value, text in switches:
        p.add_argument(flag, dest=f"switch:{flag}", action="store_true", help=f"{text} (= -o {key}={value})")


def overrides_of(args, flags=(), switches=()) -> list[str]:
    """The command's ``-o`` overrides after the ones its alias flags stand for (explicit ``-o`` wins)."""
    out = []
    for _, key, _ in flags:
        value = getattr(args, f"alias:{key}", None)
        if value is not None:
            out.append(f"{key}={json.dumps(value)}")
    for flag, key, value, _ in switches:
        if getattr(args, f"switch:{flag}", False):
            out.append(f"{key}={json.dumps(value)}")
    if getattr(args, "alias:eval.text_set", None) and not any(o.startswith("eval.text=") for o in out):
        out.append('eval.text="also"')
    return out + list(args.override)


def _device(args):
    from vlgraft.inference import default_device

    return default_device(getattr(args, "device", None))


def cmd_train(args) -> None:
    from vlgraft.config import load_recipe, recipe_help
    from vlgraft.training.loop import train

    if args.help_recipe:
        print("\n".join(recipe_help()))
        return
    if not args.recipe:
        raise SystemExit("vlgraft train: a RECIPE file is required (see --help-recipe for its keys)")
    recipe = load_recipe(args.recipe, args.override)
    train(recipe, resume=args.resume, overwrite=args.overwrite, source=args.recipe)


def cmd_eval(args) -> None:
    from vlgraft.config import load_recipe
    from vlgraft.eval.run import check_eval_inputs, run_eval
    from vlgraft.training.checkpoint import find_checkpoint, load_vlm

    overrides = overrides_of(args, EVAL_FLAGS, EVAL_SWITCHES)
    ckpt = find_checkpoint(args.run)
    out = Path(args.out) if args.out else ckpt.parent / "eval.json" if ckpt.name == "final" else ckpt / "eval.json"
    check_eval_inputs(load_recipe(ckpt / "recipe.yaml", overrides, saved=True), out)  # before the model loads
    vlm, recipe, _ = load_vlm(ckpt, _device(args), overrides)
    run_eval(vlm, recipe, out)


def cmd_chat(args) -> None:
    from vlgraft.serve.chat import ChatSession, interactive
    from vlgraft.training.checkpoint import load_vlm

    vlm, recipe, _ = load_vlm(args.ckpt, _device(args), overrides_of(args, CHAT_FLAGS, CHAT_SWITCHES))
    session = ChatSession.from_recipe(vlm, recipe, args.image)
    if args.question:
        session.ask(" ".join(args.question))
    else:
        interactive(session)


def cmd_info(args) -> None:
    from rich.console import Console

    from vlgraft.config import dump_recipe, load_recipe
    from vlgraft.models.vlm import VLM
    from vlgraft.report import print_groups, print_methods, print_split
    from vlgraft.training.optim import resolve_groups

    recipe = load_recipe(args.recipe, args.override)
    vlm = VLM.from_recipe(recipe, args.recipe)
    resolved = resolve_groups(vlm, recipe.trainable)
    console = Console()
    console.print(dump_recipe(recipe))
    print_split(vlm, console)
    print_methods(vlm, console)
    print_groups(resolved, console)
    console.print(f"visual tokens per image: {vlm.num_image_tokens}")


def cmd_export(args) -> None:
    from vlgraft.export import export

    export(args.run, Path(args.out), format=args.format, overwrite=args.overwrite, overrides=args.override)


def build_parser() -> argparse.ArgumentParser:
    from vlgraft.curate.cli import register as register_curate
    from vlgraft.curate.text_cli import register_text as register_curate_text
    from vlgraft.data.cache_cli import register_cache
    from vlgraft.data.validate_cli import register_validate
    from vlgraft.eval.report.cli import register as register_report
    from vlgraft.serve.cli import register as register_serve
    from vlgraft.sweep import register as register_sweep

    p = argparse.ArgumentParser(prog="vlgraft", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train a recipe")
    t.add_argument("recipe", nargs="?", help="recipe YAML")
    _add_overrides(t)
    t.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run in train.output_dir")
    t.add_argument("--help-recipe", action="store_true", help="list every recipe key and every part's options")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a run by free generation (settings: the recipe's eval section)")
    e.add_argument("run", nargs="?", default="runs/default", help="run folder or checkpoint folder")
    _add_overrides(e, EVAL_FLAGS, EVAL_SWITCHES)
    e.add_argument("--out", help="result JSON (default: RUN/eval.json)")
    e.add_argument("--device")
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("chat", help="ask about an image; interactive when no question is given")
    c.add_argument("question", nargs="*")
    c.add_argument("--image", action="append", help="image file; repeat for several images (placed in order "
                                                    "before the first question)")
    c.add_argument("--ckpt", default="runs/default", help="run folder or checkpoint folder")
    _add_overrides(c, CHAT_FLAGS, CHAT_SWITCHES)
    c.add_argument("--device")
    c.set_defaults(func=cmd_chat)

    x = sub.add_parser("export", help="a standalone model folder: vlgraft's own or transformers' LLaVA format")
    x.add_argument("run", help="run folder or checkpoint folder")
    x.add_argument("out", help="output folder")
    x.add_argument("--format", default="vlgraft", choices=["vlgraft", "llava-hf"],
                   help="vlgraft: any recipe, read by vlgraft chat/eval/serve and vlgraft.load; llava-hf: "
                        "transformers' LlavaForConditionalGeneration + AutoProcessor (docs/EXPORT.md)")
    _add_overrides(x)
    x.add_argument("--overwrite", action="store_true")
    x.set_defaults(func=cmd_export)

    i = sub.add_parser("info", help="print a recipe's resolved config and trainable parameters")
    i.add_argument("recipe")
    _add_overrides(i)
    i.set_defaults(func=cmd_info)
    register_report(sub)
    register_serve(sub)
    register_sweep(sub)
    register_curate(sub)
    register_curate_text(sub)
    register_cache(sub)
    register_validate(sub)
    return p


def _close_progress_bars() -> None:
    """Close the progress bars an error interrupted now: closed later (when collected) they would print
    after the error line, which must be the last thing a failed command prints."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def main(argv: list[str] | None = None) -> None:
    from vlgraft.errors import VlgraftError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        args.func(args)
    except VlgraftError as e:
        _close_progress_bars()
        message = " ".join(str(e).split("\n"))  # one line, whatever text the culprit held
        print(f"vlgraft: error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        _close_progress_bars()
        print("vlgraft: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # a bug, or input no check foresaw: one line, and the traceback on request
        if os.environ.get("VLGRAFT_DEBUG"):
            raise
        _close_progress_bars()
        message = " ".join(f"{type(e).__name__}: {e}".split("\n"))
        print(f"vlgraft: internal error: {message} (VLGRAFT_DEBUG=1 shows the traceback; please report it)",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
