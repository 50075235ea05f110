"""``vlgraft curate``: flags made from ``CurateConfig`` and ``GeneratorOptions`` (registered by :func:`register`)."""

from __future__ import annotations

from dataclasses import dataclass

from vlgraft.errors import VlgraftError
from vlgraft.options import add_arguments, from_arguments, option


@dataclass
class GeneratorOptions:
    generator: str = option("local", "local: a causal LM run here; openai: any OpenAI-compatible chat-completions "
                            "endpoint", choices=("local", "openai"))
    model: str | None = option(None, "local: smollm2-135m-instruct (default) or hf:<id or dir>; openai: the "
                               "model name")
    base_url: str = option("https://api.openai.com/v1", "openai: endpoint base URL, up to /v1")
    api_key_env: str = option("OPENAI_API_KEY", "openai: environment variable holding the API key")
    timeout: float = option(120.0, "openai: seconds per request", gt=0)
    device: str | None = option(None, "local: torch device (default: cuda if available)")


def cmd_curate(args) -> None:
    from vlgraft.curate.pipeline import CurateConfig, curate, print_report

    cfg = from_arguments(CurateConfig, args, spec=args.data, out=args.out)
    print_report(curate(cfg, make_generator(args)))


def make_generator(args):
    """The writer model the generator options name (``curate`` and ``curate-text`` share them)."""
    from vlgraft.curate.generators import LocalGenerator, OpenAIGenerator

    g = from_arguments(GeneratorOptions, args)
    if g.generator == "openai":
        if not g.model:
            raise VlgraftError("--generator openai needs --model (the endpoint's model name)")
        return OpenAIGenerator.from_env(g.model, g.base_url, g.api_key_env, timeout=g.timeout)
    return LocalGenerator(g.model or "smollm2-135m-instruct", device=g.device)


def register(sub) -> None:
    """Add the ``curate`` subcommand to the main parser's subparsers."""
    from vlgraft.curate.pipeline import CurateConfig

    c = sub.add_parser("curate", help="turn annotations into instruction-following conversations with an LLM",
                       description="Generate LLaVA-style conversation / detail / reasoning data from a data set's "
                                   "annotations, filter it, and write canonical JSONL plus a report (docs/CURATE.md).")
    c.add_argument("data", metavar="DATA_SPEC",
                   help="any data source: easyvqa:train, a LLaVA .json/.jsonl, coco:..., ...")
    c.add_argument("--out", required=True, help="output conversations (.jsonl); the report goes next to it")
    add_arguments(c, CurateConfig, skip=("spec", "out"))
    add_arguments(c, GeneratorOptions)
    c.set_defaults(func=cmd_curate)
