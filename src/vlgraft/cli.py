"""``vlgraft`` command line: train, eval, chat, export, info, sweep, curate.

Every user error is one line on stderr (exit code 2), naming the file, record or key at fault.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _common_device(args):
    import torch

    return torch.device(args.device) if getattr(args, "device", None) else torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cmd_train(args) -> None:
    from vlgraft.config import load_recipe, recipe_help
    from vlgraft.train.loop import train

    if args.help_recipe:
        print("\n".join(recipe_help()))
        return
    if not args.recipe:
        raise SystemExit("vlgraft train: a RECIPE file is required (see --help-recipe for its keys)")
    recipe = load_recipe(args.recipe, args.override)
    train(recipe, resume=args.resume, overwrite=args.overwrite, source=args.recipe)


def cmd_eval(args) -> None:
    from vlgraft.eval.text import load_text_set
    from vlgraft.eval.vqa import evaluate
    from vlgraft.train.checkpoint import load_vlm

    text_set = load_text_set(args.text_set) if args.text or args.text_only or args.text_set else None  # fail early
    vlm, recipe, ckpt = load_vlm(args.run, _common_device(args))
    out = Path(args.out) if args.out else ckpt.parent / "eval.json" if ckpt.name == "final" else ckpt / "eval.json"
    precision = args.precision or recipe.train.precision
    if not args.text_only:
        res = evaluate(vlm, args.data or recipe.data.eval, turns=args.turns or recipe.data.turns, batch_size=args.batch_size or recipe.eval.batch_size,
                       max_new_tokens=recipe.eval.max_new_tokens, limit=args.limit or recipe.eval.limit,
                       precision=precision, image_root=recipe.data.image_root,
                       out_path=out, loss_records=args.loss_records, max_length=recipe.data.max_length,
                       describe_first=None if args.no_describe else recipe.data.describe_first,
                       describe_max_new_tokens=recipe.eval.describe_max_new_tokens)
        if "val_loss" in res:
            print(f"held-out loss {res['val_loss']:.4f} per answer token on {res['val_loss_records']} records")
        print(f"accuracy {100 * res['accuracy']:.2f}% on {res['n']} questions ({res['questions_per_s']:.1f} questions/s)")
    if text_set is not None:
        _eval_text(args, vlm, recipe, text_set, out, precision)


def _eval_text(args, vlm, recipe, text_set, out: Path, precision: str) -> None:
    """Text-only ability before/after training -> the ``text_ability`` block of eval.json."""
    import json

    from vlgraft.eval.text import before_after, print_text_ability
    from vlgraft.eval.vqa import write_result

    block = before_after(vlm, recipe, text_set, batch_size=args.batch_size or 16, precision=precision)
    rows = block.pop("predictions")
    result = json.loads(out.read_text()) if out.is_file() else {}
    result["text_ability"] = block
    write_result(out, result, rows, ".text.jsonl")
    print_text_ability(block)
    print(f"wrote text_ability to {out}")


def cmd_chat(args) -> None:
    from vlgraft.serve.chat import ChatSession, interactive
    from vlgraft.train.checkpoint import load_vlm

    vlm, recipe, _ = load_vlm(args.ckpt, _common_device(args))
    session = ChatSession(vlm, args.image, precision=args.precision or recipe.train.precision,
                          max_new_tokens=args.max_new_tokens,
                          describe_first=None if args.no_describe else recipe.data.describe_first,
                          describe_max_new_tokens=recipe.eval.describe_max_new_tokens)
    if args.question:
        session.ask(" ".join(args.question))
    else:
        interactive(session)


def cmd_info(args) -> None:
    from rich.console import Console

    from vlgraft.config import dump_recipe, load_recipe
    from vlgraft.models.vlm import VLM
    from vlgraft.train.loop import print_methods, print_split
    from vlgraft.train.optim import resolve_groups

    recipe = load_recipe(args.recipe, args.override)
    vlm = VLM.from_recipe(recipe, args.recipe)
    resolved = resolve_groups(vlm, recipe.trainable)
    console = Console()
    console.print(dump_recipe(recipe))
    print_split(vlm, console)
    print_methods(vlm, console)
    for g, members in resolved:
        console.print(f"group {g.name}: {sum(p.numel() for _, p in members):,} parameters in {len(members)} tensors, lr {g.lr}")
    console.print(f"visual tokens per image: {vlm.num_image_tokens}")


def cmd_export(args) -> None:
    """Merge LoRA/DoRA/IA3 into the base weights and write a self-contained folder: the LLM in
    transformers format (loadable with ``hf:<folder>/llm``), the rest of the trainable weights, recipe."""
    import shutil

    from safetensors.torch import save_file

    from vlgraft.config import dump_recipe
    from vlgraft.errors import VlgraftError
    from vlgraft.methods.lora import merge_adapters
    from vlgraft.train.checkpoint import load_vlm

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise VlgraftError(f"{out} exists; pass --overwrite to replace it")
    vlm, recipe, ckpt = load_vlm(args.run)
    n = merge_adapters(vlm.llm.model) + merge_adapters(vlm.vision)
    others = [m["name"] for m in recipe.methods if m["name"] not in ("lora", "ia3", "select")]
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    base_sd = {k: v for k, v in vlm.llm.model.state_dict().items() if ".vlgraft_" not in k}
    vlm.llm.model.save_pretrained(tmp / "llm", state_dict=base_sd)
    vlm.llm.tokenizer.save_pretrained(tmp / "llm")
    rest = {k: v.contiguous() for k, v in vlm.trainable_state_dict().items() if not k.startswith("llm.model.")
            or any(t in k for t in (".vlgraft_", "prompt_tuning", "prefix_tuning"))}
    save_file(rest, str(tmp / "trainable.safetensors"))
    (tmp / "recipe.yaml").write_text(dump_recipe(recipe))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    print(f"exported {ckpt} -> {out}: {n} adapter layers merged into the LLM weights"
          + (f"; methods kept as modules (not mergeable): {', '.join(others)}" if others else ""))


def build_parser() -> argparse.ArgumentParser:
    from vlgraft.curate.cli import register as register_curate
    from vlgraft.sweep import register as register_sweep

    p = argparse.ArgumentParser(prog="vlgraft", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train a recipe")
    t.add_argument("recipe", nargs="?", help="recipe YAML")
    t.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. -o train.max_steps=20 (repeatable)")
    t.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run in train.output_dir")
    t.add_argument("--help-recipe", action="store_true", help="list every recipe key with its type and help")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint by free generation")
    e.add_argument("run", nargs="?", default="runs/default", help="run folder or checkpoint folder")
    e.add_argument("--data", help="eval data (default: the recipe's data.eval)")
    e.add_argument("--limit", type=int, help="only the first N questions")
    e.add_argument("--turns", choices=["conversation", "independent"],
                   help="how a record's questions are asked (default: the recipe's data.turns): conversation = "
                        "with the gold earlier turns as history; independent = each question alone with the image")
    e.add_argument("--batch-size", type=int)
    e.add_argument("--loss-records", type=int, default=0, metavar="N",
                   help="also report the held-out loss (teacher forcing) over the first N records")
    e.add_argument("--precision", choices=["fp32", "bf16"])
    e.add_argument("--device")
    e.add_argument("--out", help="result JSON (default: RUN/eval.json)")
    e.add_argument("--no-describe", action="store_true",
                   help="answer directly, even if the recipe describes the image first (data.describe_first)")
    e.add_argument("--text", action="store_true",
                   help="also measure text-only ability (perplexity, QA accuracy) before and after training")
    e.add_argument("--text-only", action="store_true", help="only the text-only ability (skip VQA)")
    e.add_argument("--text-set", metavar="JSONL", help="text set for --text (default: the bundled one; implies --text)")
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("chat", help="ask about an image; interactive when no question is given")
    c.add_argument("question", nargs="*")
    c.add_argument("--image", action="append", help="image file; repeat for several images (placed in order before the first question)")
    c.add_argument("--ckpt", default="runs/default", help="run folder or checkpoint folder")
    c.add_argument("--max-new-tokens", type=int, default=128)
    c.add_argument("--no-describe", action="store_true",
                   help="answer directly, even if the recipe describes the image first (data.describe_first)")
    c.add_argument("--precision", choices=["fp32", "bf16"])
    c.add_argument("--device")
    c.set_defaults(func=cmd_chat)

    x = sub.add_parser("export", help="merge LoRA/DoRA/IA3 into the weights and write a standalone folder")
    x.add_argument("run", help="run folder or checkpoint folder")
    x.add_argument("out", help="output folder")
    x.add_argument("--overwrite", action="store_true")
    x.set_defaults(func=cmd_export)

    i = sub.add_parser("info", help="print a recipe's resolved config and trainable parameters")
    i.add_argument("recipe")
    i.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE")
    i.set_defaults(func=cmd_info)
    register_sweep(sub)
    register_curate(sub)
    return p


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
        print(f"vlgraft: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("vlgraft: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
