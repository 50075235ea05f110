"""Interleaved image-text documents and several images per record: loading, tokenisation, splicing
in order, training in a mixture, chat with two images, and the errors that name the bad document."""

import json

import pytest
import torch
from PIL import Image

from vlgraft.data.conversation import IGNORE, tokenize_conversation
from vlgraft.data.dataset import collate, image_input
from vlgraft.data.records import IMAGE_PLACEHOLDER, load_llava_json
from vlgraft.data.sources import load_records
from vlgraft.errors import DataError
from vlgraft.models.vlm import IMAGE_TOKEN_ID, VLM


@pytest.fixture
def docs(tmp_path):
    """Three images and an interleaved-documents file in both forms (OBELICS lists, content list)."""
    for i, c in enumerate([(220, 30, 30), (30, 200, 30), (30, 30, 220)]):
        Image.new("RGB", (40, 40), c).save(tmp_path / f"{i}.png")
    rows = [
        {"id": "d0", "texts": ["A red square:", None, "and a green one:", None, "Both are small."],
         "images": [None, "0.png", None, "1.png", None], "url": "http://example.org/a"},
        {"content": [{"type": "image", "image": "2.png"}, {"type": "text", "text": "A blue square, alone."}]},
        {"id": "t", "texts": ["Only text here, no picture at all."], "images": [None]},
    ]
    p = tmp_path / "docs.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_loader_reads_both_forms(docs):
    recs = load_records(f"interleaved:{docs}")
    assert [r.id for r in recs] == ["d0", "doc-1", "t"] and all(r.document for r in recs)
    d0 = recs[0]
    assert d0.turns == [("document", f"A red square:\n{IMAGE_PLACEHOLDER}\nand a green one:\n{IMAGE_PLACEHOLDER}\n"
                                     "Both are small.")]
    assert d0.images == [str(docs.parent / "0.png"), str(docs.parent / "1.png")] and d0.meta == {"url": "http://example.org/a"}
    assert recs[1].images == [str(docs.parent / "2.png")] and recs[1].turns[0][1].startswith(IMAGE_PLACEHOLDER)
    assert recs[2].images == [] and not recs[2].has_image


@pytest.mark.parametrize("row, needle", [
    ({"id": "x", "texts": ["a", None], "images": [None]}, "equally long"),
    ({"id": "x", "texts": ["a", "b"], "images": [None, "0.png"]}, "position 1 must hold exactly one"),
    ({"id": "x", "texts": [None], "images": [None]}, "position 0 must hold exactly one"),
    ({"id": "x", "texts": ["see <image> here"], "images": [None]}, "piece 0: the text contains a literal <image>"),
    ({"id": "x", "texts": [None, "hi"], "images": ["nope.png", None]}, "piece 0: image file not found"),
    ({"id": "x", "texts": [None], "images": ["0.png"]}, "has no text"),
    ({"id": "x", "content": [{"type": "video", "video": "v.mp4"}]}, r"content\[0\] must be an object with type"),
    ({"id": "x", "content": [{"type": "text", "text": ""}]}, r"content\[0\] \(text\) needs a non-empty string"),
    ({"id": "x"}, "needs 'texts' and 'images' lists"),
    (["not", "an", "object"], "must be a JSON object"),
])
def test_bad_documents_are_named(docs, row, needle):
    p = docs.parent / "bad.jsonl"
    p.write_text(json.dumps({"texts": ["fine"], "images": [None]}) + "\n\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=f"bad.jsonl: line 3: document .*{needle}"):
        load_records(f"interleaved:{p}")


def test_json_list_form_and_not_a_list(docs):
    p = docs.parent / "docs.json"
    p.write_text(json.dumps([{"texts": ["hello"], "images": [None]}]))
    assert load_records(f"interleaved:{p}")[0].id == "doc-0"
    p.write_text(json.dumps({"texts": ["hello"]}))
    with pytest.raises(DataError, match="docs.json: expected a JSON list of documents"):
        load_records(f"interleaved:{p}")


def test_llava_record_with_several_images(docs):
    conv = [{"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{IMAGE_PLACEHOLDER}\nSame colour?"},
            {"from": "gpt", "value": "no"}]
    p = docs.parent / "multi.json"
    p.write_text(json.dumps([{"id": "m", "image": ["0.png", "1.png"], "conversations": conv}]))
    (rec,) = load_llava_json(p)
    assert rec.images == [str(docs.parent / "0.png"), str(docs.parent / "1.png")]
    p.write_text(json.dumps([{"id": "m", "image": ["0.png", "1.png", "2.png"], "conversations": conv}]))
    with pytest.raises(DataError, match="record 'm' .*3 image\\(s\\) but 2 <image> placeholders"):
        load_llava_json(p)
    p.write_text(json.dumps([{"id": "m", "image": [], "conversations": conv}]))
    with pytest.raises(DataError, match="record 'm' .*non-empty list of paths"):
        load_llava_json(p)


def _vlm(tiny_recipe):
    torch.manual_seed(0)
    return VLM.from_recipe(tiny_recipe())


def test_document_tokenisation_and_truncation(tiny_recipe, docs):
    vlm = _vlm(tiny_recipe)
    n = vlm.num_image_tokens
    d0 = load_records(f"interleaved:{docs}")[0]
    ex = tokenize_conversation(d0, vlm.llm, n, 512)
    ids, labels = ex["input_ids"].tolist(), ex["labels"].tolist()
    assert ids.count(IMAGE_TOKEN_ID) == 2 * n and ex["n_images"] == 2
    assert all((lab == IGNORE) == (t == IMAGE_TOKEN_ID) for t, lab in zip(ids, labels))  # every text token learnt
    assert ids[-1] == vlm.llm.tokenizer.eos_token_id
    text = vlm.llm.tokenizer.decode([t for t in ids if t != IMAGE_TOKEN_ID])
    assert "<|im_start|>" not in text and "A red square" in text  # no chat template
    second = [i for i, t in enumerate(ids) if t == IMAGE_TOKEN_ID][n]  # first token of the second image
    cut = tokenize_conversation(d0, vlm.llm, n, second + 1)  # would cut inside the second image
    assert len(cut["input_ids"]) == second and cut["n_images"] == 1
    assert cut["input_ids"].tolist() == ids[:second]
    # a method that takes images outside the sequence (no visual positions): images whose placeholder
    # starts before the cut are kept
    from vlgraft.data.conversation import encode_with_images

    _, starts = encode_with_images(d0.turns[0][1], vlm.llm, 0)
    assert tokenize_conversation(d0, vlm.llm, 0, starts[1])["n_images"] == 1
    assert tokenize_conversation(d0, vlm.llm, 0, starts[1] + 1)["n_images"] == 2


def test_batch_splices_each_image_in_order(tiny_recipe, docs):
    vlm = _vlm(tiny_recipe).eval()
    n = vlm.num_image_tokens
    recs = load_records(f"interleaved:{docs}")
    items = [{**tokenize_conversation(r, vlm.llm, n, 512), **image_input(r, None, vlm.vision)} for r in recs]
    for it in items:
        it.pop("n_images")
    batch = collate(items, vlm.llm.tokenizer.pad_token_id)
    assert batch["image_counts"].tolist() == [2, 1, 0] and batch["pixel_values"].shape[0] == 3
    embeds = vlm.prepare(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                         image_counts=batch["image_counts"])["embeds"]
    visual = vlm.visual_embeds(batch["pixel_values"])  # [3, n, D]: 0.png, 1.png, 2.png
    for b, (row, imgs) in enumerate(zip(batch["input_ids"], ([0, 1], [2], []))):
        got = embeds[b][row == IMAGE_TOKEN_ID]
        want = torch.cat([visual[i] for i in imgs]) if imgs else got[:0]
        assert torch.allclose(got, want.to(got.dtype))
    # the loss depends on both images of the first document
    out = vlm(**batch)
    swapped = dict(batch, pixel_values=batch["pixel_values"][[1, 0, 2]])
    assert not torch.allclose(out["loss_sum"], vlm(**swapped)["loss_sum"])
    with pytest.raises(Exception, match="counts 2 images over its samples but has 3"):
        vlm(**dict(batch, image_counts=torch.tensor([1, 1, 0])))


def test_methods_outside_the_sequence_see_the_mean_of_a_samples_images():
    from vlgraft.methods.base import MethodContext

    visual = torch.arange(4 * 2 * 3, dtype=torch.float).view(4, 2, 3)
    ctx = MethodContext(visual=visual, has_image=torch.tensor([True, False, True]),
                        image_counts=torch.tensor([3, 0, 1]))
    out = ctx.visual_per_sample()
    assert torch.equal(out[0], visual[:3].mean(0)) and torch.equal(out[1], torch.zeros(2, 3))
    assert torch.equal(out[2], visual[3])


def test_mixture_with_documents_trains_and_eval_refuses_documents(tiny_recipe, tiny_data, docs):
    from vlgraft.config import DataConfig, EvalConfig, MixSource
    from vlgraft.eval.vqa import evaluate
    from vlgraft.training.checkpoint import load_vlm
    from vlgraft.training.loop import train

    r = tiny_recipe(max_steps=3, batch_size=4)
    r.data.train = None
    r.data.mixture = [MixSource(train=str(tiny_data), weight=1), MixSource(train=f"interleaved:{docs}", weight=1)]
    out = train(r, source="test")
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    vlm, _, _ = load_vlm(out)
    with pytest.raises(DataError, match="document 'd0' .*no question to answer"):
        evaluate(vlm, DataConfig(eval=f"interleaved:{docs}"), EvalConfig(), "fp32")


def test_chat_with_two_images(tiny_recipe, docs):
    from vlgraft.serve.chat import ChatSession

    vlm = _vlm(tiny_recipe).eval()
    chat = ChatSession(vlm, [str(docs.parent / "0.png"), str(docs.parent / "1.png")], precision="fp32",
                       max_new_tokens=3)
    chat.ask("Which is red?", stream=None)
    assert chat.turns[0] == ("user", f"{IMAGE_PLACEHOLDER}\n{IMAGE_PLACEHOLDER}\nWhich is red?")
    assert chat.features.shape[0] == 2
