"""``vlgraft serve``: an OpenAI-compatible HTTP server (FastAPI + uvicorn) and the web demo page.

    POST /v1/chat/completions   OpenAI chat completions; ``stream: true`` as Server-Sent Events
    GET  /v1/models             the one model served
    GET  /v1/vlgraft/info       model id, checkpoint, recipe, limits (read by the web page)
    GET  /health                liveness and load
    GET  /                      the web demo (``serve/static``)

Every failure is a JSON error in OpenAI's shape with a 4xx status (5xx only for the server's own
faults), and the server keeps serving: bodies, images, prompts, ``max_tokens``, the queue and the
time per request are bounded by flags. With ``--api-key`` the ``/v1`` routes need ``Authorization:
Bearer KEY``, compared in constant time. The engine thread (``serve.engine``) does all the model
work; the request handlers only parse, decode images (in the thread pool) and relay events.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from vlgraft.serve.engine import Engine, Request
from vlgraft.serve.errors import ApiError
from vlgraft.serve.protocol import Limits, Parsed, parse

STATIC = Path(__file__).parent / "static"


@dataclass
class ServerConfig:
    model_id: str
    checkpoint: str
    recipe_text: str
    limits: Limits
    api_key: str | None = None
    max_body_bytes: int = 20 * 2**20
    request_timeout: float = 300.0


def create_app(engine: Engine, cfg: ServerConfig):
    app = FastAPI(title="vlgraft", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())

    def error(e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(ApiError)
    async def _api_error(_, e: ApiError):
        return error(e)

    @app.exception_handler(HTTPException)
    async def _http_error(_, e: HTTPException):  # unknown routes and methods, in the same shape
        return error(ApiError(e.status_code, str(e.detail), code="not_found" if e.status_code == 404 else None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return error(ApiError(400, f"invalid request: {where}: {first.get('msg', 'invalid')}", param=where or None))

    def authorize(request: HttpRequest) -> None:
        if cfg.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), cfg.api_key.encode())
        if not ok:
            raise ApiError(401, "a valid API key is required: Authorization: Bearer KEY", code="invalid_api_key")

    @app.get("/health")
    async def health():
        return {"status": "ok", **engine.load()}

    @app.get("/v1/models")
    async def models(request: HttpRequest):
        authorize(request)
        return {"object": "list", "data": [_model_card(cfg.model_id, created)]}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str, request: HttpRequest):
        authorize(request)
        if model_id != cfg.model_id:
            raise ApiError(404, f"model {model_id!r} does not exist", "model", "model_not_found")
        return _model_card(cfg.model_id, created)

    @app.get("/v1/vlgraft/info")
    async def info():  # public: the page needs it to know whether to ask for a key
        lim = cfg.limits
        return {"model": cfg.model_id, "checkpoint": cfg.checkpoint, "recipe": cfg.recipe_text,
                "auth": cfg.api_key is not None,
                "limits": {"max_images": lim.max_images, "max_tokens": lim.max_tokens,
                           "max_body_bytes": cfg.max_body_bytes}}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HttpRequest):
        authorize(request)
        body = await _read_json(request, cfg.max_body_bytes)
        parsed: Parsed = await run_in_threadpool(parse, body, cfg.limits, cfg.model_id)
        pixels = None
        if parsed.images:
            pixels = await run_in_threadpool(engine.vlm.vision.preprocess, parsed.images)
        events: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        req = Request(parsed.record, pixels, parsed.image_keys, parsed.sampling,
                      time.monotonic() + cfg.request_timeout,
                      send=lambda kind, payload: loop.call_soon_threadsafe(events.put_nowait, (kind, payload)))
        engine.submit(req)  # 429 when the queue is full
        try:
            kind, payload = await _next(events, request, req)
        except asyncio.CancelledError:
            req.cancelled.set()
            raise
        if kind == "error":
            return error(payload)
        rid, now = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if parsed.stream:
            return StreamingResponse(_sse(events, request, req, rid, now, cfg.model_id, parsed.include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        while True:  # the text pieces add up to the "done" event's text: only the end matters here
            kind, payload = await _next(events, request, req)
            if kind == "error":
                return error(payload)
            elif kind == "done":
                return {"id": rid, "object": "chat.completion", "created": now, "model": cfg.model_id,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": payload["text"]},
                                     "finish_reason": payload["finish_reason"], "logprobs": None}],
                        "usage": _usage(payload)}

    @app.get("/")
    async def page():
        return FileResponse(STATIC / "index.html")

    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _model_card(model_id: str, created: int) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "vlgraft"}


def _usage(done: dict) -> dict:
    p, c = done["prompt_tokens"], done["completion_tokens"]
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


async def _read_json(request, limit: int):
    """The body as JSON, refused with 413 as soon as it passes ``limit`` bytes (not after reading it all)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is {int(declared):,} bytes, more than the server's "
                            f"--max-body-bytes {limit:,}", code="body_too_large")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise ApiError(413, f"the request body is more than the server's --max-body-bytes {limit:,}",
                           code="body_too_large")
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None


async def _next(events: asyncio.Queue, http_request, req: Request):
    """The engine's next event; a client that disconnects cancels its request."""
    while True:
        try:
            return await asyncio.wait_for(events.get(), timeout=0.5)
        except asyncio.TimeoutError:
            if await http_request.is_disconnected():
                req.cancelled.set()
                raise asyncio.CancelledError from None


async def _sse(events, http_request, req: Request, rid: str, created: int, model: str, include_usage: bool):
    """OpenAI's chunk stream: the role, content pieces, the finish reason, (usage,) ``[DONE]``."""
    def chunk(delta: dict, finish=None, usage=None) -> str:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
        body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            kind, payload = await _next(events, http_request, req)
            if kind == "text":
                yield chunk({"content": payload})
            elif kind == "error":
                yield f"data: {json.dumps(payload.body())}\n\n"
                break
            elif kind == "done":
                yield chunk({}, payload["finish_reason"])
                if include_usage:
                    yield chunk(None, usage=_usage(payload))
                break
        yield "data: [DONE]\n\n"
    finally:  # the client went away, or the stream ended: either way nothing more is generated for it
        req.cancelled.set()
