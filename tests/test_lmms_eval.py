"""lmms-eval's ``vlgraft`` model (``vlgraft.integrations.lmms_eval``): lmms-eval end to end on the
local easy-VQA tasks in ``tests/lmms_tasks`` (a generate_until task and a multiple-choice task scored
by loglikelihood), offline, and the model class against ``Model.generate`` and a hand computation
of the log-probabilities from the VLM's logits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest
import torch
from PIL import Image

try:
    from lmms_eval.api.instance import Instance

    from vlgraft.integrations.lmms_eval import VlgraftLmms
except ImportError as e:  # a clear failure, not a skip: the extra is part of the test setup
    pytest.fail(f"lmms-eval is not importable ({e}); install it as docs/LMMS_EVAL.md says "
                "(pip install --no-deps lmms-eval==0.7.3, then its runtime dependencies)", pytrace=False)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "tests" / "lmms_tasks"
TASK = "t"


@pytest.fixture(scope="module")
def run(tiny_llms, tiny_clip, tiny_data, recipe_dict, tmp_path_factory):
    import vlgraft

    return vlgraft.train(recipe_dict(tiny_llms["llama"], tiny_clip, tiny_data, tmp_path_factory.mktemp("lmms") / "run"))


@pytest.fixture(scope="module")
def model(run):
    return VlgraftLmms(pretrained=str(run), batch_size=8)


@pytest.fixture(scope="module")
def docs(tiny_data):
    img = tiny_data.parent / "img"
    return [
        {"q": "What color is it?", "images": [img / "0.png"], "answer": "red"},
        {"q": "What color is it?", "images": [img / "1.png"], "answer": "green"},
        {"q": "Is it a square?", "images": [img / "2.png"], "answer": "yes"},
        {"q": "What is 1 plus 1?", "images": [], "answer": "2"},
        {"q": "Do they have the same color?", "images": [img / "3.png", img / "7.png"], "answer": "yes"},
    ]


def _doc_to_visual(doc):
    out = []
    for p in doc["images"]:
        with Image.open(p) as im:
            out.append(im.convert("RGB"))
    return out


def _instance(kind, args, doc_id):
    return Instance(request_type=kind, arguments=args, idx=0, metadata={"task": TASK, "doc_id": doc_id, "repeats": 1})


def _gen_requests(docs, **gen):
    return [_instance("generate_until", (d["q"], {"until": [], **gen}, _doc_to_visual, i, TASK, "test"), i)
            for i, d in enumerate(docs)]


def _attach(m, docs):
    m.task_dict = {TASK: {"test": docs}}
    return m


# ---------------------------------------------------------------------------------------------- the model class

def test_generate_until_equals_model_generate(model, docs, run):
    import vlgraft

    m = _attach(model, docs)
    got = m.generate_until(_gen_requests(docs, max_new_tokens=6))
    loaded = vlgraft.load(run)
    want = loaded.generate([d["q"] for d in docs], images=[[str(p) for p in d["images"]] for d in docs],
                           max_new_tokens=6)
    assert got == want
    pil = loaded.generate(docs[0]["q"], images=_doc_to_visual(docs[0]), max_new_tokens=6)
    assert got[0] == pil
    # stop strings cut the answer at their first occurrence; max_new_tokens bounds it
    cut = [a[len(a) // 2:] if len(a) > 1 else "\n" for a in got]
    reqs = [_instance("generate_until", (d["q"], {"until": [c, "never-there"], "max_new_tokens": 6}, _doc_to_visual,
                                         i, TASK, "test"), i) for i, (d, c) in enumerate(zip(docs, cut))]
    assert m.generate_until(reqs) == [a.split(c, 1)[0] for a, c in zip(got, cut)]
    assert any(len(a) > 1 for a in got), f"the tiny model's answers are too short to test stop strings: {got}"
    short = m.generate_until(_gen_requests(docs[:2], max_new_tokens=1))
    assert short == loaded.generate([d["q"] for d in docs[:2]], images=[[str(p) for p in d["images"]]
                                                                        for d in docs[:2]], max_new_tokens=1)


def _hand_loglikelihood(vlm, context: str, images: list[Path], continuation) -> tuple[float, bool]:
    """log P(continuation | images, context) summed over the continuation's own tokens (its text
    stripped, as the assistant's reply, or token ids), from the logits."""
    from vlgraft.data.conversation import tokenize_prompt
    from vlgraft.data.images import load_image

    llm = vlm.llm
    prompt = tokenize_prompt([("user", "<image>\n" * len(images) + context)], llm, vlm.num_image_tokens)
    cont = (continuation if torch.is_tensor(continuation)
            else torch.tensor(llm.tokenizer(continuation.strip(), add_special_tokens=False).input_ids))
    ids = torch.cat([prompt, cont])[None]
    pix = vlm.vision.preprocess([load_image(p) for p in images]) if images else None
    with torch.no_grad():
        logits = vlm(ids, torch.ones_like(ids), pixel_values=pix,
                     image_counts=torch.tensor([len(images)]))["logits"][0].float()
    logp = torch.log_softmax(logits, -1)
    pos = range(len(prompt) - 1, ids.shape[1] - 1)
    ll = sum(float(logp[p, ids[0, p + 1]]) for p in pos)
    greedy = all(int(logits[p].argmax()) == int(ids[0, p + 1]) for p in pos)
    return ll, greedy


def test_loglikelihood_equals_hand_computation(model, docs):
    m = _attach(model, docs)
    vlm = m.vlm
    conts = [" red", " green", " yes", " 2", " no they do not"]
    reqs = [_instance("loglikelihood", (d["q"], c, _doc_to_visual, i, TASK, "test"), i)
            for i, (d, c) in enumerate(zip(docs, conts))]
    # a doc_to_target callable (``output_type: loglikelihood``) and an unconditional request (acc_mutual_info)
    reqs.append(_instance("loglikelihood", (docs[0]["q"], lambda doc: doc["answer"], _doc_to_visual, 0, TASK, "test"),
                          0))
    reqs.append(_instance("loglikelihood", ("", "yes"), 2))
    m.batch_size = 3  # batches of different lengths, padded
    try:
        nll = m.loglikelihood(reqs)  # score=nll (the default): lmms-eval's multiple choice takes the smallest
        m.score = "logprob"
        got = m.loglikelihood(reqs)
    finally:
        m.batch_size, m.score = 8, "nll"
    want = [_hand_loglikelihood(vlm, d["q"], d["images"], c) for d, c in zip(docs, conts)]
    want += [_hand_loglikelihood(vlm, docs[0]["q"], docs[0]["images"], "red"), _hand_loglikelihood(vlm, "", [], "yes")]
    assert len(got) == len(want) == len(nll)
    for (ll, greedy), (ll_w, greedy_w), (n, greedy_n) in zip(got, want, nll):
        assert isinstance(ll, float) and isinstance(greedy, bool)
        assert ll < 0 and ll == pytest.approx(ll_w, abs=1e-4)
        assert greedy == greedy_w == greedy_n
        assert n == -ll
    assert got[0][0] == pytest.approx(got[5][0], abs=1e-5)  # the same continuation, given as text or by doc_to_target
    # greedy: a continuation of the tokens greedy decoding picks is scored as greedy (token ids given
    # directly: the tiny model's greedy text need not tokenise back into the same tokens)
    from vlgraft.data.conversation import IGNORE, tokenize_prompt
    from vlgraft.data.dataset import collate, image_input
    from vlgraft.eval.likelihood import _batch_logprobs

    rec = m._record(0, docs[0]["q"], _doc_to_visual(docs[0]), "greedy test")
    ids = tokenize_prompt(rec.turns, vlm.llm, vlm.num_image_tokens)
    n_prompt = len(ids)
    pix = image_input(rec, None, vlm.vision)
    for _ in range(3):
        with torch.no_grad():
            logits = vlm(ids[None], torch.ones(1, len(ids), dtype=torch.long), **pix,
                         image_counts=torch.tensor([1]))["logits"][0, -1]
        ids = torch.cat([ids, logits.argmax().view(1)])
    labels = torch.cat([torch.full((n_prompt,), IGNORE), ids[n_prompt:]])
    (logprob, greedy, n_tokens), = _batch_logprobs(vlm, collate([{"input_ids": ids, "labels": labels, **pix}],
                                                                  vlm.llm.tokenizer.pad_token_id))
    assert greedy and n_tokens == 3
    want, _ = _hand_loglikelihood(vlm, docs[0]["q"], docs[0]["images"], ids[n_prompt:])
    assert logprob == pytest.approx(want, abs=1e-4)
    assert m.loglikelihood([_instance("loglikelihood", (docs[0]["q"], " ", _doc_to_visual, 0, TASK, "test"), 0)]) == [
        (0.0, True)]


def test_describe_first(run, docs):
    """describe=True: every request follows the model's own description, as Model.generate asks."""
    import vlgraft

    ovr = "data.describe_first=Describe the image."
    m = _attach(VlgraftLmms(pretrained=str(run), batch_size=8, describe="True", overrides=ovr), docs)
    got = m.generate_until(_gen_requests(docs, max_new_tokens=5))
    loaded = vlgraft.load(run, overrides=[ovr])
    assert got == loaded.generate([d["q"] for d in docs], images=[[str(p) for p in d["images"]] for d in docs],
                                  max_new_tokens=5)
    reqs = [_instance("loglikelihood", (d["q"], " yes", _doc_to_visual, i, TASK, "test"), i)
            for i, d in enumerate(docs)]
    plain = _attach(VlgraftLmms(pretrained=str(run), batch_size=8), docs).loglikelihood(reqs)
    described = m.loglikelihood(reqs)
    assert described[3] == pytest.approx(plain[3], abs=1e-5)  # text-only: nothing to describe
    assert described[0][0] != pytest.approx(plain[0][0], abs=1e-6)  # the description is in the context


def test_bad_arguments_are_clear(run, docs):
    from vlgraft.errors import VlgraftError

    with pytest.raises(VlgraftError, match="unknown temperature"):
        VlgraftLmms(pretrained=str(run), temperature=0)
    with pytest.raises(VlgraftError, match="pretrained=RUN is required"):
        VlgraftLmms()
    with pytest.raises(VlgraftError, match="score='loss': expected one of nll, logprob"):
        VlgraftLmms(pretrained=str(run), score="loss")
    with pytest.raises(VlgraftError, match="no data.describe_first"):
        VlgraftLmms(pretrained=str(run), describe=True)
    m = _attach(VlgraftLmms(pretrained=str(run), batch_size="auto"), docs)
    assert m.batch_size == m.recipe.eval.batch_size
    video = _instance("generate_until", ("Q?", {}, lambda doc: ["clip.mp4"], 0, TASK, "test"), 0)
    with pytest.raises(VlgraftError, match="video.*images only"):
        m.generate_until([video])
    with pytest.raises(VlgraftError, match="2 <image> placeholders but the task gives 1"):
        m.generate_until([_instance("generate_until", ("<image> <image> Q?", {}, _doc_to_visual, 0, TASK, "test"), 0)])
    with pytest.raises(VlgraftError, match="multi-round"):
        m.generate_until_multi_round([])


# ---------------------------------------------------------------------------------------------- lmms-eval itself

def _entry_point_env(tmp: Path) -> dict:
    """``--model vlgraft`` is found through the entry point group ``lmms_eval.models``. When the
    installed vlgraft does not declare it yet (pyproject.toml without the entry point), a stand-in
    distribution on PYTHONPATH declares the same one."""
    declared = [ep for ep in distribution("vlgraft").entry_points if ep.group == "lmms_eval.models"]
    if declared:
        assert [ep.value for ep in declared] == ["vlgraft.integrations:lmms_eval_models"], declared
        return {}
    if "lmms_eval.models" in (ROOT / "pyproject.toml").read_text():
        pytest.fail("pyproject.toml declares the lmms_eval.models entry point but the installed vlgraft does not: "
                    "reinstall it (pip install -e .)", pytrace=False)
    info = tmp / "entry-points" / "vlgraft_lmms_eval_plugin-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vlgraft-lmms-eval-plugin\nVersion: 0\n")
    (info / "entry_points.txt").write_text("[lmms_eval.models]\nvlgraft = vlgraft.integrations:lmms_eval_models\n")
    return {"PYTHONPATH": os.pathsep.join([str(info.parent), *filter(None, [os.environ.get("PYTHONPATH")])])}


def test_lmms_eval_end_to_end(run, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets"),
           "WANDB_MODE": "disabled", **_entry_point_env(tmp_path)}
    limit = 6
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "vlgraft", "--model_args", f"pretrained={run}",
           "--tasks", "vlgraft_easyvqa,vlgraft_easyvqa_mc", "--include_path", str(TASKS), "--batch_size", "8",
           "--limit", str(limit), "--output_path", str(out), "--log_samples", "--verbosity", "WARNING"]
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"lmms-eval failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-8000:]}"
    found = sorted(out.glob("**/*_results.json"))
    assert len(found) == 1, f"expected one results file under {out}, found {found}\n{p.stdout[-3000:]}"
    results = json.loads(found[0].read_text())
    gen, mc = results["results"]["vlgraft_easyvqa"], results["results"]["vlgraft_easyvqa_mc"]
    assert 0.0 <= gen["exact_match,none"] <= 1.0
    assert 0.0 <= mc["acc,none"] <= 1.0 and 0.0 <= mc["acc_norm,none"] <= 1.0
    assert results["n-samples"]["vlgraft_easyvqa"]["effective"] == limit
    assert results["n-samples"]["vlgraft_easyvqa_mc"]["effective"] == limit
    # per-sample logs: answers cut at the task's stop strings; every choice scored, the most likely one chosen
    samples = {t: [json.loads(line) for line in next(out.glob(f"**/*_samples_{t}.jsonl")).read_text().splitlines()]
               for t in ("vlgraft_easyvqa", "vlgraft_easyvqa_mc")}
    rows = [json.loads(line) for line in (TASKS / "easyvqa_test.jsonl").read_text().splitlines()]
    assert [s["doc_id"] for s in samples["vlgraft_easyvqa"]] == list(range(limit))
    for s in samples["vlgraft_easyvqa"]:
        assert s["target"] == rows[s["doc_id"]]["answer"]
        answer = s["filtered_resps"]
        assert isinstance(answer, str) and "\n" not in answer and "." not in answer
    assert [s["doc_id"] for s in samples["vlgraft_easyvqa_mc"]] == list(range(limit))
    for s in samples["vlgraft_easyvqa_mc"]:
        nll = [float(v) for v, _ in s["filtered_resps"]]  # score=nll: each choice's summed negative log-likelihood
        a = rows[s["doc_id"]]["answer"]
        assert len(nll) == (2 if a in ("yes", "no") else 3 if a in ("circle", "rectangle", "triangle") else 8)
        assert all(n > 0 for n in nll)
        assert s["acc"] == float(min(range(len(nll)), key=nll.__getitem__) == int(s["target"]))
