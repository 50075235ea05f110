"""``vlgraft curate``: the subcommand's arguments and handler (registered by :func:`register`)."""

from __future__ import annotations

from pathlib import Path

from vlgraft.errors import VlgraftError


def cmd_curate(args) -> None:
    from vlgraft.curate.generators import LocalGenerator, OpenAIGenerator
    from vlgraft.curate.pipeline import CurateConfig, curate, print_report

    if args.generator == "openai":
        if not args.model:
            raise VlgraftError("--generator openai needs --model (the endpoint's model name)")
        gen = OpenAIGenerator.from_env(args.model, args.base_url, args.api_key_env, timeout=args.timeout)
    else:
        gen = LocalGenerator(args.model or "smollm2-135m-instruct", device=args.device)
    for name in ("limit", "batch_size", "max_new_tokens"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise VlgraftError(f"--{name.replace('_', '-')} must be at least 1, not {v}")
    cfg = CurateConfig(spec=args.data, out=Path(args.out), kinds=tuple(k.strip() for k in args.kinds.split(",") if k.strip()),
                       limit=args.limit, image_root=args.image_root, refine=args.refine,
                       max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
                       batch_size=args.batch_size, pool_update=args.pool_update, overwrite=args.overwrite)
    print_report(curate(cfg, gen))


def register(sub) -> None:
    """Add the ``curate`` subcommand to the main parser's subparsers."""
    c = sub.add_parser("curate", help="turn annotations into instruction-following conversations with an LLM",
                       description="Generate LLaVA-style conversation / detail / reasoning data from a data set's "
                                   "annotations, filter it, and write canonical JSONL plus a report (docs/CURATE.md).")
    c.add_argument("data", metavar="DATA_SPEC", help="any data spec: easyvqa:train, a LLaVA .json/.jsonl, coco:..., ...")
    c.add_argument("--out", required=True, help="output conversations (.jsonl); the report goes next to it")
    c.add_argument("--kinds", default="conversation,detail,reasoning", help="comma-separated kinds to generate (default: %(default)s)")
    c.add_argument("--limit", type=int, help="only the first N source records")
    c.add_argument("--image-root", help="folder that relative image paths resolve against")
    c.add_argument("--generator", choices=["local", "openai"], default="local",
                   help="local (default): a causal LM run here; openai: any OpenAI-compatible chat-completions endpoint")
    c.add_argument("--model", help="local: smollm2-135m-instruct (default) or hf:<id or dir>; openai: the model name")
    c.add_argument("--base-url", default="https://api.openai.com/v1", help="openai: endpoint base URL, up to /v1 (default: %(default)s)")
    c.add_argument("--api-key-env", default="OPENAI_API_KEY", help="openai: environment variable holding the API key (default: %(default)s)")
    c.add_argument("--timeout", type=float, default=120.0, help="openai: seconds per request (default: %(default)s)")
    c.add_argument("--refine", action="store_true", help="second pass: the generator corrects each kept output (MiniGPT-4)")
    c.add_argument("--max-new-tokens", type=int, default=256, help="per generation (default: %(default)s)")
    c.add_argument("--temperature", type=float, default=0.7, help="sampling temperature, 0 is greedy (default: %(default)s)")
    c.add_argument("--seed", type=int, default=0, help="few-shot draws, pool updates, sampling (default: %(default)s)")
    c.add_argument("--batch-size", type=int, default=8, help="source records per generator call (default: %(default)s)")
    c.add_argument("--pool-update", type=float, default=0.25,
                   help="probability that a kept output replaces the oldest few-shot example of its kind (default: %(default)s)")
    c.add_argument("--device", help="local: torch device (default: cuda if available)")
    c.add_argument("--overwrite", action="store_true", help="start over, replacing an existing output")
    c.set_defaults(func=cmd_curate)
