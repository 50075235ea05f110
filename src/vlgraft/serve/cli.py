"""``vlgraft serve RUN_OR_EXPORT``: the OpenAI-compatible server and web page (``serve.app``)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from vlgraft.errors import VlgraftError

LOOPBACK = {"localhost"}


def register(sub) -> None:
    s = sub.add_parser("serve", help="an OpenAI-compatible server (POST /v1/chat/completions) and a web page at /")
    s.add_argument("run", nargs="?", default="runs/default", help="run, checkpoint or `vlgraft export` folder")
    s.add_argument("--host", default="127.0.0.1", help="address to bind; anything but loopback needs --api-key")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", default=os.environ.get("VLGRAFT_API_KEY"),
                   help="require Authorization: Bearer KEY on /v1 (default: $VLGRAFT_API_KEY)")
    s.add_argument("--model-name", help="the model id clients send (default: the run folder's name)")
    s.add_argument("--image-dir", help="allow image_url paths (or file:// URLs) inside this folder")
    s.add_argument("--device")
    s.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="recipe key override (data / eval / chat settings), as for eval and chat")
    lim = s.add_argument_group("limits")
    lim.add_argument("--max-batch", type=int, default=16, help="requests decoded together")
    lim.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond the batch (then 429)")
    lim.add_argument("--max-body-bytes", type=int, default=20 * 2**20, help="request body size (then 413)")
    lim.add_argument("--max-image-pixels", type=int, default=16_777_216, help="decoded pixels per image")
    lim.add_argument("--max-images", type=int, default=8, help="images per request")
    lim.add_argument("--max-prompt-tokens", type=int, default=2048, help="prompt tokens, image tokens included")
    lim.add_argument("--max-tokens", type=int, default=512, help="the largest max_tokens a request may ask for")
    lim.add_argument("--request-timeout", type=float, default=300.0, help="seconds per request (then 504)")
    s.set_defaults(func=cmd_serve)


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args) -> None:
    import uvicorn

    from vlgraft.config import dump_recipe
    from vlgraft.data.images import set_max_pixels
    from vlgraft.inference import default_device
    from vlgraft.serve.app import ServerConfig, create_app
    from vlgraft.serve.engine import Engine
    from vlgraft.serve.protocol import Limits
    from vlgraft.training.checkpoint import load_vlm

    args.api_key = args.api_key or None  # an empty $VLGRAFT_API_KEY is no key
    if not _is_loopback(args.host) and not args.api_key:
        raise VlgraftError(f"--host {args.host} is reachable from other machines: set --api-key (or "
                           "$VLGRAFT_API_KEY), or bind 127.0.0.1")
    for flag in ("max_batch", "max_queue", "max_body_bytes", "max_image_pixels", "max_images", "max_prompt_tokens",
                 "max_tokens"):
        if getattr(args, flag) < 1:
            raise VlgraftError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if not args.request_timeout > 0:
        raise VlgraftError(f"--request-timeout must be positive, got {args.request_timeout}")
    image_dir = Path(args.image_dir) if args.image_dir else None
    if image_dir is not None and not image_dir.is_dir():
        raise VlgraftError(f"--image-dir {image_dir} is not a folder")
    vlm, recipe, ckpt = load_vlm(args.run, default_device(args.device), args.override)
    set_max_pixels(args.max_image_pixels)
    run_dir = ckpt.parent if ckpt.name == "final" else ckpt
    model_id = args.model_name or run_dir.resolve().name
    engine = Engine(vlm, recipe, max_batch=args.max_batch, max_queue=args.max_queue,
                    max_prompt_tokens=args.max_prompt_tokens).start()
    limits = Limits(max_images=args.max_images, max_tokens=args.max_tokens,
                    default_max_tokens=min(recipe.chat.max_new_tokens, args.max_tokens), image_dir=image_dir)
    cfg = ServerConfig(model_id, str(ckpt), dump_recipe(recipe), limits, args.api_key, args.max_body_bytes,
                       args.request_timeout)
    print(f"serving {model_id!r} ({ckpt}) on http://{args.host}:{args.port}  —  web page: "
          f"http://{args.host}:{args.port}/", flush=True)
    try:
        uvicorn.run(create_app(engine, cfg), host=args.host, port=args.port, log_level="warning")
    finally:
        engine.stop()
