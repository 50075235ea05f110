"""OpenAI chat-completion requests -> the engine's ``Request``: checked field by field, errors naming
the field (``messages[0].content[1].image_url.url``) with a 4xx status.

Images come as ``image_url`` parts: ``data:`` URIs (base64), or, where the operator named an
``--image-dir``, local paths / ``file://`` URLs inside it. Remote URLs are refused: a server that
fetched whatever URL it is given could be made to reach any host its own network can see. Each image
part becomes an ``<image>`` placeholder followed by a newline at its place in the message text, which
is how ``vlgraft chat`` places images before a question, so the same image and question give the
same prompt.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path

from vlgraft.data.images import load_image
from vlgraft.data.records import IMAGE_PLACEHOLDER, Record
from vlgraft.errors import VlgraftError
from vlgraft.serve.engine import Sampling
from vlgraft.serve.errors import ApiError

# Accepted and ignored (no effect on a generation); any other unknown field is refused by name.
IGNORED_FIELDS = {"user", "metadata", "store", "frequency_penalty", "presence_penalty", "logprobs",
                  "parallel_tool_calls", "service_tier"}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclass
class Limits:
    max_images: int = 8
    max_tokens: int = 512  # cap on a request's max_tokens
    default_max_tokens: int = 128
    image_dir: Path | None = None


@dataclass
class Parsed:
    stream: bool
    include_usage: bool
    model: str
    record: Record
    images: list  # PIL images, in order
    image_keys: tuple[str, ...]
    sampling: Sampling


def _bad(message: str, param: str | None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def parse(body, limits: Limits, served_model: str) -> Parsed:
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", None)
    unknown = sorted(set(body) - KNOWN_FIELDS - IGNORED_FIELDS)
    if unknown:
        raise _bad(f"parameter {unknown[0]!r} is not supported by this server", unknown[0], "unsupported_parameter")
    if body.get("logprobs"):
        raise _bad("parameter 'logprobs' is not supported by this server", "logprobs", "unsupported_parameter")
    for key in ("frequency_penalty", "presence_penalty"):
        if body.get(key) not in (None, 0, 0.0):
            raise _bad(f"parameter {key!r} is not supported by this server (only 0)", key, "unsupported_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required: the id from GET /v1/models", "model")
    if model != served_model:
        raise ApiError(404, f"model {model!r} does not exist; this server serves {served_model!r}", "model",
                       "model_not_found")
    n = _int(body, "n", 1, lo=1)
    if n != 1:
        raise _bad("only n=1 is supported", "n")
    max_tokens = _int(body, "max_completion_tokens", None, lo=1)
    max_tokens = _int(body, "max_tokens", max_tokens, lo=1) if max_tokens is None else max_tokens
    if max_tokens is not None and max_tokens > limits.max_tokens:
        raise _bad(f"max_tokens={max_tokens} is more than this server allows ({limits.max_tokens}, --max-tokens)",
                   "max_tokens")
    temperature = _num(body, "temperature", 0.0, lo=0.0, hi=2.0)
    top_p = _num(body, "top_p", 1.0, lo=0.0, hi=1.0)
    if top_p == 0:
        raise _bad("top_p must be greater than 0", "top_p")
    seed = _int(body, "seed", None)
    stream = _bool(body, "stream", False)
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise _bad("stream_options must be an object", "stream_options")
    include_usage = bool(opts and _bool(opts, "include_usage", False, "stream_options."))
    stop = _stops(body.get("stop"))
    record, images, keys = _messages(body.get("messages"), limits)
    sampling = Sampling(max_tokens or limits.default_max_tokens, temperature, top_p, seed, stop,
                        _bool(body, "ignore_eos", False))
    return Parsed(stream, include_usage, model, record, images, keys, sampling)


KNOWN_FIELDS = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "seed",
                "n", "stream", "stream_options", "ignore_eos"}  # ignore_eos: vLLM's extension, for benchmarks


def _int(body: dict, key: str, default, lo: int | None = None):
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(f"{key} must be an integer, got {v!r}", key)
    if lo is not None and v < lo:
        raise _bad(f"{key} must be at least {lo}, got {v}", key)
    return v


def _num(body: dict, key: str, default: float, lo: float, hi: float) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise _bad(f"{key} must be a number from {lo} to {hi}, got {v!r}", key)
    return float(v)


def _bool(body: dict, key: str, default: bool, prefix: str = "") -> bool:
    v = body.get(key, default)
    if not isinstance(v, bool):
        raise _bad(f"{prefix}{key} must be true or false, got {v!r}", prefix + key)
    return v


def _stops(v) -> tuple[str, ...]:
    if v is None:
        return ()
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > 4:
        raise _bad("stop must be a non-empty string or a list of up to 4 of them", "stop")
    return tuple(stops)


def _messages(msgs, limits: Limits) -> tuple[Record, list, tuple[str, ...]]:
    if not isinstance(msgs, list) or not msgs:
        raise _bad("messages must be a non-empty list", "messages")
    turns, images, keys = [], [], []
    for i, m in enumerate(msgs):
        at = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(f"{at} must be an object with 'role' and 'content'", at)
        role = ROLES.get(m.get("role"))
        if role is None:
            raise _bad(f"{at}.role must be one of {sorted(ROLES)}, got {m.get('role')!r}", f"{at}.role")
        text = _content(m.get("content"), f"{at}.content", role, limits, images, keys)
        turns.append((role, text))
    if turns[-1][0] != "user":
        raise _bad("the last message must be the user's (the server writes the assistant's reply)",
                   f"messages[{len(turns) - 1}].role")
    rec = Record("request", turns, images=[f"image {k + 1}" for k in range(len(images))], source="request")
    return rec, images, tuple(keys)


def _content(content, at: str, role: str, limits: Limits, images: list, keys: list) -> str:
    if isinstance(content, str):
        parts = [{"type": "text", "text": content}]
    elif isinstance(content, list) and content:
        parts = content
    else:
        raise _bad(f"{at} must be a string or a non-empty list of parts", at)
    out = []
    for j, part in enumerate(parts):
        where = f"{at}[{j}]" if isinstance(content, list) else at
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise _bad(f"{where}.text must be a string", f"{where}.text")
            if IMAGE_PLACEHOLDER in text:
                raise _bad(f"{where}.text contains {IMAGE_PLACEHOLDER}: send images as image_url parts",
                           f"{where}.text")
            out.append(text)
        elif kind == "image_url":
            if role != "user":
                raise _bad(f"{where}: images can only be in user messages", where)
            if len(images) >= limits.max_images:
                raise _bad(f"more than {limits.max_images} images in one request (--max-images)", where)
            im = _image(part.get("image_url"), f"{where}.image_url", limits)
            images.append(im)
            keys.append(hashlib.sha1(f"{im.size}".encode() + im.tobytes()).hexdigest())
            out.append(IMAGE_PLACEHOLDER + "\n")
        else:
            raise _bad(f"{where}.type must be 'text' or 'image_url', got {kind!r}", f"{where}.type")
    return "".join(out)


def _image(spec, at: str, limits: Limits):
    url = spec.get("url") if isinstance(spec, dict) else spec
    if not isinstance(url, str) or not url:
        raise _bad(f"{at}.url must be a string: a data: URI, or a path under the server's --image-dir", f"{at}.url")
    if url.startswith("data:"):
        head, sep, data = url.partition(",")
        if not sep or not head.endswith(";base64"):
            raise _bad(f"{at}.url: a data: URI must be base64 (data:image/png;base64,...)", f"{at}.url")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise _bad(f"{at}.url: the data: URI is not valid base64", f"{at}.url") from None
        return _decode(io.BytesIO(raw), at, "the image")
    if url.split(":", 1)[0].lower() in ("http", "https", "ftp"):
        raise _bad(f"{at}.url: remote image URLs are not fetched by this server; send the image as a data: URI",
                   f"{at}.url", "remote_url_refused")
    path = url[len("file://"):] if url.startswith("file://") else url
    if limits.image_dir is None:
        raise _bad(f"{at}.url: local image paths are refused (the server was started without --image-dir); "
                   "send the image as a data: URI", f"{at}.url")
    root = limits.image_dir.resolve()
    full = (root / path).resolve()
    if not full.is_relative_to(root):
        raise ApiError(403, f"{at}.url: {path} is outside the server's --image-dir", f"{at}.url", "path_refused")
    return _decode(str(full), at, path)


def _decode(source, at: str, name: str):
    try:
        return load_image(source, at, name=name)
    except VlgraftError as e:
        raise _bad(str(e), f"{at}.url", "invalid_image") from None
