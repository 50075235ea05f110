"""``vlgraft curate``: 3-of-4 few-shot pools, filters, dedup, refine, canonical output, resume, errors,
the local generator on a tiny random Llama, the OpenAI-compatible client against a stub server, and a
recipe trained on the curated file."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from vlgraft.cli import main
from vlgraft.curate import annotation as A
from vlgraft.curate.filters import Deduper, check, parse
from vlgraft.curate.generators import LocalGenerator, OpenAIGenerator
from vlgraft.curate.pipeline import CurateConfig, curate, progress_path, report_path
from vlgraft.curate.seeds import POOL_SIZE, REFINE_SYSTEM, SEEDS, SHOTS, SYSTEM, Example, SeedPool
from vlgraft.data.records import IMAGE_PLACEHOLDER, Record
from vlgraft.data.sources import load_records
from vlgraft.errors import VlgraftError

GOOD = {  # tiny_data: "What color is it?" -> colour, "Is it a square?" -> yes
    "conversation": "Q: What color is the object?\nA: The object is {c} all over.\nQ: Is it a square?\nA: Yes, it "
                    "is a {c} square.",
    "detail": "A {c} square fills the whole picture. Its color is an even {c} from one edge to the other, with "
              "nothing else in view.",
    "reasoning": "Q: What paint would you need to copy this picture?\nA: The square is {c} from edge to edge, so "
                 "one pot of {c} paint would be enough to copy it.",
}


def _kind(msgs: list[dict]) -> str:
    sys = msgs[0]["content"]
    return "refine" if sys == REFINE_SYSTEM else next(k for k, v in SYSTEM.items() if v == sys)


def _colour(msgs: list[dict]) -> str:
    return next(c for c in ("red", "green", "blue", "yellow") if f"A: {c}" in msgs[-1]["content"])


def good_script(msgs: list[dict]) -> str:
    kind = _kind(msgs)
    if kind == "refine":
        return msgs[-1]["content"].split("Text:\n", 1)[1]
    return GOOD[kind].format(c=_colour(msgs))


class Fake:
    """Deterministic generator: ``script(messages) -> text``; raises once ``fail_after`` prompts are served."""

    name = "fake"

    def __init__(self, script=good_script, fail_after: int | None = None):
        self.script, self.fail_after, self.n, self.calls = script, fail_after, 0, []

    def generate(self, prompts, max_new_tokens, temperature, seed):
        if self.fail_after is not None and self.n + len(prompts) > self.fail_after:
            raise RuntimeError("generator died")
        self.n += len(prompts)
        self.calls.append(prompts)
        return [self.script(m) for m in prompts]


def _cfg(data, out, **kw) -> CurateConfig:
    return CurateConfig(spec=str(data), out=Path(out), **{"kinds": ("conversation", "detail", "reasoning"),
                                                          "batch_size": 4, **kw})


def _shots(msgs: list[dict]) -> list[Example]:
    body = msgs[1:-1]
    return [Example(body[i]["content"], body[i + 1]["content"]) for i in range(0, len(body), 2)]


# ---------------------------------------------------------------- annotations


def test_annotation_from_emoji_meta_and_caption():
    rec = Record("e1", images=["x.png"], turns=[("user", "<image>\nWrite a short caption for this image."),
                                                ("assistant", "A hash key emoji.")],
                 meta={"name": "HASH KEY", "label": "hash key", "short_names": ["hash", "hash_key"],
                       "category": "Symbols", "subcategory": "keycap"})
    ann = A.extract(rec)
    assert ann.text.splitlines() == ["Name: hash key", "Also called: hash", "Category: Symbols / keycap",
                                     "Caption: A hash key emoji."]
    assert ann.key_terms == [["hash key", "hash"]] and ann.qa == []
    # without a label the emoji.json name is used
    rec.meta.pop("label")
    assert A.extract(rec).key_terms[0][0] == "HASH KEY"


def test_annotation_from_qa_pairs():
    rec = Record("q", images=["x.png"], turns=[("user", "<image>\nWhat shape is it?"), ("assistant", "circle"),
                                ("user", "What color is it?"), ("assistant", "red"), ("user", "Is it blue?"),
                                ("assistant", "no")])
    ann = A.extract(rec)
    assert ann.text == "Q: What shape is it? A: circle\nQ: What color is it? A: red\nQ: Is it blue? A: no"
    assert ann.key_terms == [["circle"], ["red"]] and len(ann.qa) == 3
    assert A.answer_vocab([ann]) == {"circle", "red"}


# ---------------------------------------------------------------- few-shot pool


def test_pool_samples_3_distinct_of_current_4_and_evolves():
    import random

    pool = SeedPool(SEEDS["detail"], update=1.0)
    assert len(pool.examples) == POOL_SIZE == 4 and SHOTS == 3
    rng = random.Random(0)
    triples = {tuple(SEEDS["detail"].index(e) for e in pool.sample(rng)) for _ in range(50)}
    assert all(len(set(t)) == 3 for t in triples) and len({frozenset(t) for t in triples}) == 4  # every 3-subset
    new = Example("Q: x A: y", "a new example")
    assert pool.offer(new, rng) and pool.examples == SEEDS["detail"][1:] + [new]  # the oldest leaves
    assert not SeedPool(SEEDS["detail"], update=0.0).offer(new, rng)


def test_pipeline_prompts_use_3_of_the_current_pool(tiny_data, tmp_path):
    """batch_size 1 and pool_update 1: the pool before record k is the last 4 of seeds + kept outputs so far."""
    fake = Fake()
    rep = curate(_cfg(tiny_data, tmp_path / "o.jsonl", kinds=("detail",), batch_size=1, pool_update=1.0), fake,
                 show_progress=False)
    pool = list(SEEDS["detail"])
    kept_ids = {r.id for r in load_records(str(tmp_path / "o.jsonl"))}
    triples = set()
    image_records = [r for r in load_records(str(tiny_data)) if r.images]
    assert len(fake.calls) == len(image_records) == 12
    for rec, (msgs,) in zip(image_records, fake.calls):
        shots = _shots(msgs)
        assert len(shots) == 3 and len(set(shots)) == 3 and all(s in pool[-4:] for s in shots)
        triples.add(frozenset(shots))
        if f"{rec.id}-detail" in kept_ids:
            pool.append(Example(A.extract(rec).text, good_script(msgs)))
    assert len(triples) > 4  # the draws vary and the pool moved
    assert [Example(**e) for e in rep["final_pools"]["detail"]] == pool[-4:]
    assert any(e not in SEEDS["detail"] for e in pool[-4:])


# ---------------------------------------------------------------- filters

ANN = A.extract(Record("r", images=["x.png"], turns=[("user", "<image>\nWhat color is it?"), ("assistant", "red"),
                                      ("user", "Is it a square?"), ("assistant", "yes")]))
VOCAB = {"red", "green", "blue"}


@pytest.mark.parametrize("kind,text,reason", [
    ("detail", GOOD["detail"].format(c="red"), None),
    ("detail", "A red square.", "length"),
    ("detail", "red " * 300, "length"),
    ("detail", "The square is red and the square is red and the square is red and the square is red and it is red.",
     "repetition"),
    ("detail", "According to the annotation, the square in the middle is painted a deep and even shade of red.",
     "mentions_source"),
    ("detail", "Here's the corrected text: a red square sits in the middle of the picture on its own, with nothing "
               "else.", "mentions_source"),
    ("detail", "A red square sits in the middle of the picture on its own. Note: I removed the repeated sentences.",
     "mentions_source"),
    ("detail", "The picture shows one square in the middle of a plain white background, drawn with sharp straight "
               "edges.", "missing_key_term"),
    ("detail", "A red square sits next to a blue square in the middle of a plain white background, both small.",
     "contradicts_annotation"),
    ("detail", "The picture shows a red square. The square is not red at all, it has no color and sits on white "
               "paper.", "negates_annotation"),
    ("conversation", GOOD["conversation"].format(c="red"), None),
    ("conversation", "Q: What color is it?\nA: It is red.", "unparseable"),  # one pair only
    ("conversation", "The object is red.", "unparseable"),
    ("conversation", "Q: What color is it?\nA: It is red all over.\nQ: Is it a square?\nA: No, it is a red thing.",
     "answer_disagrees"),
    ("reasoning", GOOD["reasoning"].format(c="red"), None),
    ("reasoning", "Q: What color is it? A: It is red, and red paint would be the one to use if you wanted to copy "
                  "this small picture.", None),
])
def test_filters_keep_and_drop(kind, text, reason):
    assert check(kind, parse(kind, text), ANN, VOCAB, [])[0] == reason


def test_filter_copies_example_and_off_topic():
    ex = SEEDS["detail"][0].output
    assert check("detail", parse("detail", ex), ANN, VOCAB, [ex])[0] == "copies_example"
    cap = A.extract(Record("c", images=["x.png"], turns=[("user", "<image>\nDescribe the image briefly."),
                                          ("assistant", "A man rides a bicycle down a wet street.")]))
    assert cap.key_terms == []
    on = "A man in a raincoat rides his bicycle along the wet street while cars wait at the light nearby."
    off = "Two cats sleep on a sofa in a warm living room while the afternoon sun comes through the window."
    assert check("detail", parse("detail", on), cap, set(), [])[0] is None
    assert check("detail", parse("detail", off), cap, set(), [])[0] == "off_topic"


def test_parse_cleans_and_cuts_unfinished_sentence():
    assert parse("detail", "Description: A red square. It sits in the middle of") == [("", "A red square.")]
    assert parse("conversation", "Sure!\nQ: What is it? A: A: A square.\nQ: Color?\nA:\nA: Red, bright\nand even.") == [
        ("What is it?", "A square."), ("Color?", "Red, bright and even.")]


def test_parse_cuts_a_loop_at_its_first_repeat():
    loop = "A red square sits in the middle. It has four equal sides. It is red. It has four equal sides. It is red."
    assert parse("detail", loop) == [("", "A red square sits in the middle. It has four equal sides. It is red.")]
    conv = "Q: What color?\nA: Red.\nQ: What shape?\nA: Square.\nQ: What color?\nA: Red.\nQ: What shape?\nA: Square."
    assert parse("conversation", conv) == [("What color?", "Red."), ("What shape?", "Square.")]


def test_dedup_exact_and_near():
    d = Deduper()
    assert d.add("detail", "A red square in the middle.")
    assert not d.add("detail", "a red  square in the middle!")  # same normalised text
    assert not d.add("detail", "In the middle, a red square.")  # same bag of content words
    assert d.add("conversation", "A red square in the middle.")  # per kind
    assert d.add("detail", "A blue square in the middle.")


# ---------------------------------------------------------------- pipeline


def bad_script(msgs: list[dict]) -> str:
    kind, c = _kind(msgs), _colour(msgs)
    if kind == "refine":
        return good_script(msgs)
    if c == "green":
        return {"conversation": "Q: What is it?\nA: It is green.", "detail": "Green.",
                "reasoning": "Q: Why? A: green green green green green green green green green green green green "
                             "green green"}[kind]
    if c == "blue":
        return GOOD[kind].format(c="blue").replace("blue", "blue and yellow", 1)
    return GOOD[kind].format(c=c)


def test_report_counts_reasons_and_dedup(tiny_data, tmp_path):
    out = tmp_path / "o.jsonl"
    rep = curate(_cfg(tiny_data, out, pool_update=0.0), Fake(bad_script), show_progress=False)
    assert rep["records"] == 16 and rep["skipped_no_image"] == 4  # text-only records are skipped
    for kind, v in rep["kinds"].items():
        assert v["generated"] == 12
        assert v["kept"] == 2, (kind, v)  # one red, one yellow; their 2 repeats each are duplicates
        assert v["dropped"]["duplicate"] == 4 and v["dropped"]["contradicts_annotation"] == 3
    assert rep["kinds"]["detail"]["dropped"]["length"] == 3
    assert rep["kinds"]["conversation"]["dropped"]["unparseable"] == 3
    assert rep["kinds"]["reasoning"]["dropped"]["repetition"] == 3
    assert rep["total"] == {"generated": 36, "kept": 6, "kept_fraction": round(6 / 36, 4)}
    ex = rep["dropped_examples"]["contradicts_annotation"][0]
    assert "yellow" in ex["detail"] and ex["text"] and len(rep["dropped_examples"]["duplicate"]) == 3
    assert json.loads(report_path(out).read_text()) == rep and not progress_path(out).exists()


def test_outputs_holding_a_text_eval_item_are_dropped(tiny_data, tmp_path):
    """A conversation that also asks an item of the bundled text evaluation set (reworded) is dropped
    as eval_overlap, naming the item; the other kinds are kept."""
    from vlgraft.eval.text import load_text_set

    item = next(q for q in load_text_set().qa if q["question"] == "What is the capital of France?")

    def leaky(msgs):
        text = good_script(msgs)
        return text + "\nQ: what's the capital of france?\nA: Paris." if _kind(msgs) == "conversation" else text

    out = tmp_path / "o.jsonl"
    rep = curate(_cfg(tiny_data, out, pool_update=0.0), Fake(leaky), show_progress=False)
    conv = rep["kinds"]["conversation"]
    assert conv["kept"] == 0 and conv["dropped"] == {"eval_overlap": 12}, conv
    assert f"{item['id']}:question" in rep["dropped_examples"]["eval_overlap"][0]["detail"]
    assert rep["kinds"]["detail"]["kept"] == 4  # one per colour, the rest duplicates
    assert "france" not in out.read_text().lower()


def test_output_loads_back_in_canonical_form(tiny_data, tmp_path):
    out = tmp_path / "o.jsonl"
    curate(_cfg(tiny_data, out), Fake(), show_progress=False)
    src = {r.id: r for r in load_records(str(tiny_data))}
    recs = load_records(str(out))
    assert len(recs) == 4 * 3  # 4 colours x 3 kinds; same-colour repeats are duplicates
    for r in recs:
        raw_id, kind = r.id.rsplit("-", 1)
        assert r.images[0] == src[raw_id].images[0] and Path(r.images[0]).is_file()
        assert r.turns[0][0] == "user" and r.turns[0][1].startswith(IMAGE_PLACEHOLDER + "\n")
        assert r.meta["curate"] == {"source_id": raw_id, "kind": kind}
        assert len(r.turns) == {"conversation": 4, "detail": 2, "reasoning": 2}[kind]


def test_image_paths_relative_when_under_the_output_folder(tiny_data):
    out = tiny_data.parent / "cur.jsonl"
    curate(_cfg(tiny_data, out, kinds=("detail",), overwrite=True), Fake(), show_progress=False)
    raw = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert all(r["image"].startswith("img/") for r in raw)
    assert all(Path(r.images[0]).is_file() for r in load_records(str(out)))


def test_refine_pass_rewrites_and_refilters(tiny_data, tmp_path):
    def script(msgs):
        if _kind(msgs) != "refine":
            return good_script(msgs)
        text = msgs[-1]["content"].split("Text:\n", 1)[1]
        return "Too short." if "yellow" in text else text.replace("whole picture", "entire frame")

    fake = Fake(script)
    rep = curate(_cfg(tiny_data, tmp_path / "o.jsonl", kinds=("detail",), refine=True, pool_update=0.0), fake,
                 show_progress=False)
    assert len(fake.calls) == 3 * 2  # 3 batches, each a generation call and a refine call
    assert all(_kind(m) == "refine" for m in fake.calls[1])
    assert rep["kinds"]["detail"]["dropped"]["refine:length"] == 3
    texts = [r.turns[1][1] for r in load_records(str(tmp_path / "o.jsonl"))]
    assert len(texts) == 3 and all("entire frame" in t for t in texts)


def test_resume_after_interruption_gives_the_same_file(tiny_data, tmp_path):
    cfg = dict(kinds=("conversation", "detail"), batch_size=3, pool_update=0.5)
    full = tmp_path / "full.jsonl"
    rep_full = curate(_cfg(tiny_data, full, **cfg), Fake(), show_progress=False)

    part = tmp_path / "part.jsonl"
    with pytest.raises(RuntimeError):
        curate(_cfg(tiny_data, part, **cfg), Fake(fail_after=2 * 3 * 2 + 1), show_progress=False)  # dies in batch 3
    prog = progress_path(part)
    assert prog.is_file() and len(prog.read_text().splitlines()) == 1 + 2
    # a crash between writing records and recording them: junk at the end of both files
    with part.open("ab") as f:
        f.write(b'{"id": "half-written"')
    with prog.open("ab") as f:
        f.write(b'{"outcomes": {"torn')
    fake = Fake()
    rep_part = curate(_cfg(tiny_data, part, **cfg), fake, show_progress=False)
    assert part.read_bytes() == full.read_bytes()
    assert sum(len(c) for c in fake.calls) == 6 * 2  # image records 7-12 (13-16 are text-only: no call)
    ids = [r.id for r in load_records(str(part))]
    assert len(ids) == len(set(ids))
    for k in ("kinds", "total", "final_pools", "records"):
        assert rep_part[k] == rep_full[k]


def test_errors_are_one_line(tiny_data, tmp_path, capsys):
    def run(*argv):
        with pytest.raises(SystemExit) as e:
            main(["curate", *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and err[0].startswith("vlgraft: error: "), err
        return err[0]

    out = tmp_path / "o.jsonl"
    assert "unknown kind 'chat'; known: conversation, detail, reasoning" in run(str(tiny_data), "--out", str(out),
                                                                                "--kinds", "detail,chat")
    assert "unknown dataset 'nosuch'" in run("nosuch:train", "--out", str(out))
    assert "data file not found" in run(str(tmp_path / "missing.json"), "--out", str(out))
    assert "--generator openai needs --model" in run(str(tiny_data), "--out", str(out), "--generator", "openai")
    assert "--batch-size must be >= 1; got 0" in run(str(tiny_data), "--out", str(out), "--batch-size", "0")
    assert not out.exists() and not progress_path(out).exists()
    out.write_text("")
    assert str(out) in run(str(tiny_data), "--out", str(out))
    assert "--overwrite" in run(str(tiny_data), "--out", str(out))
    out.unlink()
    # an unfinished run resumes only with the same settings
    with pytest.raises(RuntimeError):
        curate(_cfg(tiny_data, out, batch_size=2), Fake(fail_after=7), show_progress=False)
    assert "used generator='fake', not 'local:smollm2-135m-instruct'" in run(str(tiny_data), "--out", str(out))


# ---------------------------------------------------------------- generators and training


def test_local_generator_on_tiny_llama(tiny_llms, tiny_data, tmp_path):
    gen = LocalGenerator(f"hf:{tiny_llms['llama']}", device="cpu")
    prompts = [[{"role": "user", "content": "hi"}], [{"role": "system", "content": "be brief"},
                                                      {"role": "user", "content": "a much longer question here"}]]
    both = gen.generate(prompts, max_new_tokens=5, temperature=0.0, seed=0)
    assert len(both) == 2 and all(isinstance(t, str) for t in both)
    assert [gen.generate([p], 5, 0.0, 0)[0] for p in prompts] == both  # left padding changes nothing
    assert gen.generate(prompts, 5, 1.0, 3) == gen.generate(prompts, 5, 1.0, 3)  # seeded sampling
    rep = curate(_cfg(tiny_data, tmp_path / "o.jsonl", kinds=("detail",), limit=2, max_new_tokens=6), gen,
                 show_progress=False)
    assert rep["kinds"]["detail"]["generated"] == 2 and rep["generator"] == f"local:hf:{tiny_llms['llama']}"
    assert sum(rep["kinds"]["detail"]["dropped"].values()) + rep["kinds"]["detail"]["kept"] == 2


class _Stub(BaseHTTPRequestHandler):
    requests: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Stub.requests.append((self.path, self.headers.get("Authorization"), body))
        if body["model"] == "bad":
            self.send_response(400)
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "no such\\nmodel"}}')
            return
        content = f" echo: {body['messages'][-1]['content']} "
        reply = {"choices": [{"message": {"role": "assistant", "content": content}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


def test_openai_generator_against_stub_server(monkeypatch):
    srv = HTTPServer(("127.0.0.1", 0), _Stub)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_port}/v1"
    try:
        monkeypatch.setenv("MY_KEY", "sk-test")
        gen = OpenAIGenerator.from_env("m1", base, "MY_KEY")
        prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(5)]
        assert gen.generate(prompts, 7, 0.5, 10) == [f"echo: q{i}" for i in range(5)]  # order kept
        path, auth, body = _Stub.requests[0]
        assert path == "/v1/chat/completions" and auth == "Bearer sk-test"
        assert body["model"] == "m1" and body["max_tokens"] == 7 and body["temperature"] == 0.5
        assert sorted(r[2]["seed"] for r in _Stub.requests) == list(range(10, 15))
        with pytest.raises(VlgraftError, match=r"HTTP 400 for model 'bad': .*no such\\nmodel"):
            OpenAIGenerator("bad", base, retries=0).generate(prompts[:1], 7, 0.0, 0)
    finally:
        srv.shutdown()
        srv.server_close()
    with pytest.raises(VlgraftError, match="no reply .* after 2 tries"):
        OpenAIGenerator("m1", base, retries=1, backoff=0.0, timeout=2).generate(prompts[:1], 7, 0.0, 0)


def test_a_recipe_trains_on_the_curated_file(tiny_recipe, tiny_data, tmp_path):
    from vlgraft.config import Recipe, from_dict, to_dict
    from vlgraft.training.loop import train

    out = tmp_path / "curated.jsonl"
    curate(_cfg(tiny_data, out), Fake(), show_progress=False)
    d = to_dict(tiny_recipe(max_steps=2))
    d["data"].update(train=str(out), eval=str(out))
    run = train(from_dict(Recipe, d))
    assert (run / "final" / "trainable.safetensors").is_file()
    losses = [json.loads(ln)["loss"] for ln in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln]
    assert len(losses) == 2 and all(v == v for v in losses)
