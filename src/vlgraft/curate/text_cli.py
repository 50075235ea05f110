"""``vlgraft curate-text``: flags made from ``DistillConfig`` and ``GeneratorOptions`` (registered by
:func:`register_text`)."""

from __future__ import annotations

from vlgraft.curate.cli import GeneratorOptions
from vlgraft.options import add_arguments, from_arguments


def cmd_curate_text(args) -> None:
    from vlgraft.curate.cli import make_generator
    from vlgraft.curate.text_distill import DistillConfig, distill, print_report

    print_report(distill(from_arguments(DistillConfig, args, out=args.out), make_generator(args)))


def register_text(sub) -> None:
    """Add the ``curate-text`` subcommand to the main parser's subparsers."""
    from vlgraft.curate.text_distill import DistillConfig

    c = sub.add_parser("curate-text", help="text-only instruction data: LLM-written instructions answered by the "
                                           "frozen base LLM (self-distillation)",
                       description="Write new instructions with a generator from a few seed instructions, filter "
                                   "them, drop near-duplicates of each other and of the text evaluation set, answer "
                                   "each greedily with the base LLM of a recipe (or --llm), and write LLaVA-format "
                                   "text-only JSONL plus a report (docs/CURATE.md).")
    c.add_argument("--out", required=True, help="output records (.jsonl); the report goes next to it")
    add_arguments(c, DistillConfig, skip=("out", "device"))
    add_arguments(c, GeneratorOptions)
    c.set_defaults(func=cmd_curate_text)
