"""Serving benchmark: time to first token and tokens/s of ``vlgraft serve`` at several concurrent clients.

    python benchmarks/serve.py [--run runs/default] [--clients 1 4 8 16] [--max-tokens 32]

Starts ``vlgraft serve RUN`` on 127.0.0.1, then for each client count runs that many clients, each a
closed loop (send, read the whole stream, send the next) of streamed requests through the official
``openai`` client: an easy-VQA test image (a different one per request, so every request also pays
for describe-first's description when the recipe has it) and a question, ``max_tokens`` tokens with
``ignore_eos`` so that every answer has the same length. Per request: time to the first content
token (TTFT) and the decode rate after it; per level: the total completion tokens/s over the wall
time, requests/s, and p50/p95. Writes ``benchmarks/results/serve_<device>.json`` and a plot.
Time it with nothing else running: PyTorch's CPU threads slow down several-fold under contention.
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def start_server(run: str, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "vlgraft.cli", "serve", run, "--port", str(port),
                             "--max-batch", "16"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    raise SystemExit("server did not start")


def one_request(client, model: str, image: str, max_tokens: int) -> dict:
    uri = "data:image/png;base64," + base64.b64encode(Path(image).read_bytes()).decode()
    t0 = time.perf_counter()
    first, n = None, 0
    stream = client.chat.completions.create(
        model=model, stream=True, max_tokens=max_tokens, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                               {"type": "text", "text": "What color is the shape?"}]}])
    for chunk in stream:
        if chunk.usage is not None:
            n = chunk.usage.completion_tokens
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter()
    end = time.perf_counter()
    first = first or end
    return {"ttft_s": first - t0, "total_s": end - t0, "tokens": n,
            "decode_tok_s": (n - 1) / (end - first) if n > 1 and end > first else 0.0}


def run_level(client, model: str, images: list[str], clients: int, per_client: int, max_tokens: int) -> dict:
    results, errors = [], []
    lock = threading.Lock()

    def worker(k: int):
        for j in range(per_client):
            try:
                r = one_request(client, model, images[(k * per_client + j) % len(images)], max_tokens)
                with lock:
                    results.append(r)
            except Exception as e:  # counted as failures in the table
                with lock:
                    errors.append(repr(e))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttft = [r["ttft_s"] for r in results]
    rate = [r["decode_tok_s"] for r in results]
    tokens = sum(r["tokens"] for r in results)
    return {"clients": clients, "requests": len(results), "failed": len(errors), "errors": errors[:3],
            "wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall, "requests_per_s": len(results) / wall,
            "ttft_p50_s": statistics.median(ttft), "ttft_p95_s": _pct(ttft, 0.95),
            "decode_tok_s_p50": statistics.median(rate), "decode_tok_s_p95": _pct(rate, 0.95)}


def plot(levels: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = [lv["clients"] for lv in levels]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(c, [lv["tokens_per_s"] for lv in levels], "o-", label="total")
    a.plot(c, [lv["decode_tok_s_p50"] for lv in levels], "s--", label="per request (p50, after the first token)")
    a.set(xlabel="concurrent clients", ylabel="completion tokens / s", title="throughput", xscale="log", xticks=c)
    a.set_xticklabels(c)
    a.legend()
    b.plot(c, [lv["ttft_p50_s"] for lv in levels], "o-", label="p50")
    b.plot(c, [lv["ttft_p95_s"] for lv in levels], "s--", label="p95")
    b.set(xlabel="concurrent clients", ylabel="seconds", title="time to first token", xscale="log", xticks=c)
    b.set_xticklabels(c)
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    import easy_vqa
    import openai
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/default")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--requests-per-client", type=int, default=None, help="default: max(2, 16 / clients)")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    paths = easy_vqa.get_test_image_paths()  # a dict, image id -> path
    images = [paths[k] for k in sorted(paths)]
    port = _free_port()
    proc = start_server(args.run, port)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)
        model = client.models.list().data[0].id
        one_request(client, model, images[-1], 4)  # warm-up: first-call allocations
        levels = []
        for c in args.clients:
            per = args.requests_per_client or max(2, 16 // c)
            lv = run_level(client, model, images, c, per, args.max_tokens)
            levels.append(lv)
            print(f"{c:>3} clients: {lv['tokens_per_s']:7.1f} tok/s total, TTFT p50 {lv['ttft_p50_s']:.2f} s, "
                  f"{lv['failed']} failed", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    base = levels[0]["tokens_per_s"]
    print("\n| clients | requests | failed | total tok/s | × 1 client | req/s | TTFT p50 | TTFT p95 | "
          "decode tok/s p50 | p95 |\n|---|---|---|---|---|---|---|---|---|---|")
    for lv in levels:
        print(f"| {lv['clients']} | {lv['requests']} | {lv['failed']} | {lv['tokens_per_s']:.1f} | "
              f"{lv['tokens_per_s'] / base:.2f} | {lv['requests_per_s']:.2f} | {lv['ttft_p50_s']:.2f} s | "
              f"{lv['ttft_p95_s']:.2f} s | {lv['decode_tok_s_p50']:.1f} | {lv['decode_tok_s_p95']:.1f} |")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"serve_{device}.json"
    out.write_text(json.dumps({"run": args.run, "device": device, "max_tokens": args.max_tokens,
                               "levels": levels}, indent=1))
    plot(levels, RESULTS / f"serve_{device}.png")
    print(f"\nwrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
