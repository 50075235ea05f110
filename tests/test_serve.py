"""``vlgraft serve``: a live server on 127.0.0.1 answering the official ``openai`` client as ``vlgraft chat``
answers, streams and batches, and refuses every class of bad request with a 4xx JSON error while it
keeps serving. Engine behaviour that needs exact timing (queue full, deadline, disconnect) is tested
on the engine itself."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from PIL import Image

from tests.conftest import COLORS

pytestmark = pytest.mark.slow  # trains a tiny model and starts server processes

QUESTION = "What color is it?"
DESCRIBE = ["-o", "data.describe_first=Describe the image."]  # served with describe-first (a run override)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data_uri(color, size=(40, 40), fmt="PNG") -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def _user(question: str, *uris: str) -> dict:
    return {"role": "user", "content": [*({"type": "image_url", "image_url": {"url": u}} for u in uris),
                                        {"type": "text", "text": question}]}


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_llms, tiny_clip, tiny_data, recipe_dict):
    """A tiny trained run with LLaMA-Adapter prompts (methods that read the images through the method
    context, as the default recipe's do) plus LoRA; served and chatted with describe-first."""
    import vlgraft

    r = recipe_dict(tiny_llms["llama"], tiny_clip, tiny_data, tmp_path_factory.mktemp("serve") / "run")
    r["methods"] = [{"name": "llama_adapter", "layers": 2, "prompt_len": 4, "multimodal": True},
                    {"name": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}]
    r["trainable"] = [{"name": "connector", "params": ["connector"], "lr": 1e-2},
                      {"name": "adapter", "params": ["llama_adapter"], "lr": 1e-2},
                      {"name": "lora", "params": ["lora"], "lr": 1e-2}]
    r["connector"] = {"name": "mlp"}
    r["chat"] = {"max_new_tokens": 12}
    r["eval"]["describe_max_new_tokens"] = 6
    return vlgraft.train(r)


class Server:
    def __init__(self, run, *flags, key=None):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k != "VLGRAFT_API_KEY"}
        if key:
            env["VLGRAFT_API_KEY"] = key
        self.proc = subprocess.Popen([sys.executable, "-m", "vlgraft.cli", "serve", str(run), "--port",
                                      str(self.port), *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.proc.stdout.read()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise AssertionError("server did not become healthy in 120 s")

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=20)

    def client(self, key="unused"):
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0)

    def raw(self, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
        req = urllib.request.Request(self.url + path, data=body, headers={"Content-Type": "application/json",
                                                                          **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def server(run):
    s = Server(run, "--image-dir", str(run), *DESCRIBE)
    yield s
    s.close()


@pytest.fixture(scope="module")
def strict(run):
    """Small limits and an API key."""
    s = Server(run, "--max-body-bytes", "60000", "--max-image-pixels", "5000", "--max-images", "2",
               "--max-prompt-tokens", "120", "--max-tokens", "20", key="sesame")
    yield s
    s.close()


@pytest.fixture(scope="module")
def chat_answers(run):
    """What ``vlgraft chat`` answers (its ChatSession) per colour, first turn and a follow-up."""
    from vlgraft.serve.chat import ChatSession
    from vlgraft.training.checkpoint import load_vlm

    vlm, recipe, _ = load_vlm(run, overrides=DESCRIBE[1:])
    out = {}
    for name, color in COLORS.items():
        path = run / f"{name}.png"
        Image.new("RGB", (40, 40), color).save(path)
        session = ChatSession.from_recipe(vlm, recipe, str(path))
        out[name] = (session.ask(QUESTION, stream=io.StringIO()), session.ask("Is it a square?", stream=io.StringIO()))
    return out


def test_models_and_health(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["run"]
    status, body = server.raw("/health")
    assert status == 200 and body["status"] == "ok"


def test_plain_and_streamed_answers_equal_chat(server, chat_answers):
    client = server.client()
    for name, color in COLORS.items():
        first, _ = chat_answers[name]
        r = client.chat.completions.create(model="run", messages=[_user(QUESTION, _data_uri(color))])
        assert r.choices[0].message.content == first
        assert r.choices[0].finish_reason in ("stop", "length")
        assert r.usage.completion_tokens >= 1 and r.usage.prompt_tokens > 10
        pieces, finish, usage = [], None, None
        for chunk in client.chat.completions.create(model="run", messages=[_user(QUESTION, _data_uri(color))],
                                                    stream=True, stream_options={"include_usage": True}):
            if chunk.usage is not None:
                usage = chunk.usage
            for c in chunk.choices:
                pieces.append(c.delta.content or "")
                finish = c.finish_reason or finish
        assert "".join(pieces) == first
        assert finish == r.choices[0].finish_reason
        assert usage.completion_tokens == r.usage.completion_tokens


def test_multi_turn_and_image_paths(server, chat_answers, run):
    client = server.client()
    first, second = chat_answers["red"]
    msgs = [_user(QUESTION, _data_uri(COLORS["red"])), {"role": "assistant", "content": first},
            {"role": "user", "content": "Is it a square?"}]
    assert client.chat.completions.create(model="run", messages=msgs).choices[0].message.content == second
    # a path inside --image-dir is the same image
    by_path = client.chat.completions.create(model="run", messages=[_user(QUESTION, "red.png")])
    assert by_path.choices[0].message.content == first


def test_several_images_and_sampling(server):
    client = server.client()
    one, two = (client.chat.completions.create(model="run", messages=[_user("Which one is red?", *uris)], max_tokens=2)
                for uris in ([_data_uri(COLORS["red"])], [_data_uri(COLORS["red"]), _data_uri(COLORS["blue"])]))
    assert two.choices[0].finish_reason in ("stop", "length")
    assert two.usage.prompt_tokens > one.usage.prompt_tokens  # the second image is in the prompt
    a, b = (client.chat.completions.create(model="run", messages=[_user(QUESTION, _data_uri(COLORS["blue"]))],
                                           temperature=1.5, top_p=0.9, seed=7, max_tokens=8).choices[0].message.content
            for _ in range(2))
    assert a == b  # the same seed samples the same answer
    stop = client.chat.completions.create(model="run", messages=[_user(QUESTION, _data_uri(COLORS["blue"]))],
                                          max_tokens=1)
    assert stop.choices[0].finish_reason in ("length", "stop") and stop.usage.completion_tokens <= 1


def test_concurrent_clients_all_answered_as_alone(server, chat_answers):
    client = server.client()
    names = list(COLORS) * 4  # 16 concurrent requests
    results: dict[int, str] = {}
    errors = []

    def ask(i: int, name: str):
        try:
            stream = i % 2 == 0
            msgs = [_user(QUESTION, _data_uri(COLORS[name]))]
            if stream:
                text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
                    model="run", messages=msgs, stream=True) if c.choices)
            else:
                text = client.chat.completions.create(model="run", messages=msgs).choices[0].message.content
            results[i] = text
        except Exception as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=ask, args=(i, n)) for i, n in enumerate(names)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors
    assert {i: results[i] for i in range(len(names))} == {i: chat_answers[n][0] for i, n in enumerate(names)}


BAD = [  # (body, expected status, param the error names)
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    ({"messages": [_user("hi")]}, 400, "model"),
    ({"model": "other", "messages": [_user("hi")]}, 404, "model"),
    ({"model": "run", "messages": []}, 400, "messages"),
    ({"model": "run", "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role"),
    ({"model": "run", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]},
     400, "messages[1].role"),
    ({"model": "run", "messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    ({"model": "run", "messages": [{"role": "user", "content": [{"type": "audio"}]}]}, 400,
     "messages[0].content[0].type"),
    ({"model": "run", "messages": [_user("hi", "https://example.com/cat.png")]}, 400,
     "messages[0].content[0].image_url.url"),
    ({"model": "run", "messages": [_user("hi", "data:image/png;base64,@@@")]}, 400,
     "messages[0].content[0].image_url.url"),
    ({"model": "run", "messages": [_user("hi", "data:image/png;base64," + base64.b64encode(b"not an image").decode())]},
     400, "messages[0].content[0].image_url.url"),
    ({"model": "run", "messages": [_user("hi", "../../etc/passwd")]}, 403, "messages[0].content[0].image_url.url"),
    ({"model": "run", "messages": [_user("hi <image>")]}, 400, "messages[0].content[0].text"),
    ({"model": "run", "messages": [_user("hi")], "n": 2}, 400, "n"),
    ({"model": "run", "messages": [_user("hi")], "temperature": 9}, 400, "temperature"),
    ({"model": "run", "messages": [_user("hi")], "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "run", "messages": [_user("hi")], "max_tokens": 10_000}, 400, "max_tokens"),
    ({"model": "run", "messages": [_user("hi")], "stop": [1]}, 400, "stop"),
    ({"model": "run", "messages": [_user("hi")], "tools": []}, 400, "tools"),
    ({"model": "run", "messages": [_user("hi")], "stream": "yes"}, 400, "stream"),
    # describe-first needs the images in the first question
    ({"model": "run", "messages": [_user("hi"), {"role": "assistant", "content": "x"},
                                   _user("and?", _data_uri(COLORS["red"]))]}, 400, "messages"),
]


@pytest.mark.parametrize("body,status,param", BAD)
def test_bad_requests_get_4xx_errors(server, body, status, param):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    code, reply = server.raw("/v1/chat/completions", raw)
    assert code == status
    assert set(reply["error"]) == {"message", "type", "param", "code"} and reply["error"]["message"]
    assert reply["error"]["param"] == param
    assert server.raw("/health")[0] == 200  # and it keeps serving


def test_limits_and_api_key(strict):
    key = {"Authorization": "Bearer sesame"}
    ok = {"model": "run", "messages": [_user(QUESTION, _data_uri(COLORS["red"], (20, 20)))], "max_tokens": 4}
    assert strict.raw("/v1/chat/completions", json.dumps(ok).encode())[0] == 401
    assert strict.raw("/v1/chat/completions", json.dumps(ok).encode(), {"Authorization": "Bearer wrong"})[0] == 401
    assert strict.raw("/v1/models")[0] == 401
    code, reply = strict.raw("/v1/chat/completions", json.dumps(ok).encode(), key)
    assert code == 200 and reply["choices"][0]["message"]["content"] is not None
    assert strict.client("sesame").chat.completions.create(**ok).choices[0].finish_reason in ("stop", "length")
    cases = [  # (change to the valid request, status, code)
        ({"messages": [_user(QUESTION, _data_uri(COLORS["red"], (100, 100)))]}, 400, "invalid_image"),  # > 5000 px
        ({"messages": [_user(QUESTION, *[_data_uri(COLORS["red"], (20, 20))] * 3)]}, 400, None),  # > 2 images
        ({"messages": [_user("word " * 300)]}, 400, "context_length_exceeded"),
        ({"max_tokens": 21}, 400, None),
        ({"messages": [_user("x" * 70_000)]}, 413, "body_too_large"),
    ]
    for change, status, code in cases:
        reply_code, reply = strict.raw("/v1/chat/completions", json.dumps({**ok, **change}).encode(), key)
        assert (reply_code, reply["error"]["code"] if code else None) == (status, code), reply
    assert strict.raw("/v1/chat/completions", json.dumps(ok).encode(), key)[0] == 200


def test_binding_beyond_loopback_needs_a_key(run, capsys, monkeypatch):
    from vlgraft.cli import main

    monkeypatch.delenv("VLGRAFT_API_KEY", raising=False)
    with pytest.raises(SystemExit) as e:
        main(["serve", str(run), "--host", "0.0.0.0"])
    assert e.value.code == 2
    assert "set --api-key" in capsys.readouterr().err


# ---------------------------------------------------------------- the engine itself


class Sink:
    def __init__(self):
        self.events, self.done = [], threading.Event()

    def __call__(self, kind, payload):
        self.events.append((kind, payload))
        if kind in ("done", "error"):
            self.done.set()


def _request(engine, run, sink, max_tokens=12, deadline=None, color="green", temperature=0.0):
    from vlgraft.serve.engine import Request, Sampling
    from vlgraft.serve.protocol import Limits, parse

    p = parse({"model": "m", "messages": [_user(QUESTION, _data_uri(COLORS[color]))], "max_tokens": max_tokens},
              Limits(), "m")
    pixels = engine.vlm.vision.preprocess(p.images)
    sampling = Sampling(max_tokens, temperature, seed=1, ignore_eos=True)
    return Request(p.record, pixels, p.image_keys, sampling,
                   deadline or time.monotonic() + 60, sink)


def test_requests_joining_mid_stream_leave_the_others_unchanged(run):
    """A request that joins the running batch while another decodes changes neither one's tokens
    (sampled with a fixed seed: the tiny model's greedy tokens repeat one token)."""
    from vlgraft.serve.engine import Engine
    from vlgraft.training.checkpoint import load_vlm

    class Recording(Engine):  # keeps every finished answer's tokens; can submit after a given step
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.tokens, self.after_step = {}, None

        def _finish(self, job, reason, text=None):
            if not job.describe:
                self.tokens[id(job.request.send)] = list(job.tokens)
            super()._finish(job, reason, text)

        def _step(self):
            super()._step()
            if self.after_step and self.steps == self.after_step[0]:
                self.after_step[1]()

    vlm, recipe, _ = load_vlm(run, overrides=DESCRIBE[1:])
    engine = Recording(vlm, recipe).start()
    try:
        alone = {}
        for color in ("red", "blue"):
            sink = Sink()
            engine.submit(_request(engine, run, sink, max_tokens=16, color=color, temperature=1.0))
            assert sink.done.wait(60)
            alone[color] = engine.tokens[id(sink)]
        first, late = Sink(), Sink()
        engine.after_step = (engine.steps + 4, lambda: engine.submit(
            _request(engine, run, late, 16, color="blue", temperature=1.0)))
        engine.submit(_request(engine, run, first, max_tokens=16, color="red", temperature=1.0))
        assert first.done.wait(60) and late.done.wait(60)
        assert len(alone["red"]) == 16 and len(set(alone["red"])) > 3  # ignore_eos: to max_tokens; varied
        assert engine.tokens[id(first)] == alone["red"] and engine.tokens[id(late)] == alone["blue"]
    finally:
        engine.stop()


def test_engine_queue_deadline_and_cancel(run):
    from vlgraft.serve.engine import Engine
    from vlgraft.serve.errors import ApiError
    from vlgraft.training.checkpoint import load_vlm

    vlm, recipe, _ = load_vlm(run, overrides=DESCRIBE[1:])
    engine = Engine(vlm, recipe, max_batch=2, max_queue=1)  # not started: requests stay queued
    engine.submit(_request(engine, run, Sink()))
    with pytest.raises(ApiError) as e:
        engine.submit(_request(engine, run, Sink()))
    assert e.value.status == 429
    engine.waiting.clear()
    engine.max_queue = 8  # the requests below may wait together before the engine takes them
    engine.start()
    try:
        late = Sink()
        engine.submit(_request(engine, run, late, deadline=time.monotonic() - 1))
        assert late.done.wait(30)
        assert late.events[-1][0] == "error" and late.events[-1][1].status == 504
        gone = Sink()
        req = _request(engine, run, gone, max_tokens=200)
        req.cancelled.set()  # the client went away
        engine.submit(req)
        ok = Sink()
        engine.submit(_request(engine, run, ok))
        assert ok.done.wait(60) and ok.events[-1][0] == "done"
        time.sleep(0.2)
        assert not any(k == "done" for k, _ in gone.events)
        assert engine.load()["running"] == 0
    finally:
        engine.stop()
