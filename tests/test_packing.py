"""Independent turns packed behind one shared image prefix are exactly single-turn questions."""

import pytest
import torch

from vlgraft.data.conversation import IGNORE, single_turns, tokenize_conversation, tokenize_independent
from vlgraft.data.dataset import collate
from vlgraft.data.images import load_image
from vlgraft.data.records import Record
from vlgraft.models.vlm import VLM


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_packed_turns_equal_single_turn_logits(tiny_recipe, tiny_data, arch):
    recipe = tiny_recipe(arch)
    recipe.methods = []
    vlm = VLM.from_recipe(recipe).eval()
    img = str(tiny_data.parent / "img" / "1.png")
    rec = Record("r", images=[img], turns=[("user", "<image>\nWhat color is it?"), ("assistant", "green"),
                            ("user", "Is it round?"), ("assistant", "no"),
                            ("user", "How many shapes?"), ("assistant", "one")])
    pixels = vlm.vision.preprocess([load_image(img)])
    packed = tokenize_independent(rec, vlm.llm, vlm.num_image_tokens, 512)
    assert packed["segment_ids"].max() == 3
    b = collate([{**packed, "pixel_values": pixels[0]}], vlm.llm.tokenizer.pad_token_id)
    with torch.no_grad():
        logits = vlm(b["input_ids"], b["attention_mask"], pixel_values=b["pixel_values"],
                     position_ids=b["position_ids"], segment_ids=b["segment_ids"])["logits"][0]
        singles = single_turns(rec)
        assert [t[-1][1] for t in singles] == ["green", "no", "one"]
        seg = packed["segment_ids"]
        for k, turns in enumerate(singles, 1):
            one = tokenize_conversation(Record("r", images=[img], turns=turns), vlm.llm, vlm.num_image_tokens, 512)
            ref = vlm(one["input_ids"][None], torch.ones_like(one["input_ids"])[None],
                      pixel_values=pixels)["logits"][0]
            where = torch.cat([(seg == 0).nonzero().flatten(), (seg == k).nonzero().flatten()])
            assert torch.equal(packed["input_ids"][where], one["input_ids"])  # same tokens ...
            assert torch.equal(packed["labels"][where], one["labels"])
            torch.testing.assert_close(logits[where], ref, rtol=1e-4, atol=1e-4)  # ... same predictions
    # the shared prefix holds the image once; each answer is labelled once
    assert int((packed["input_ids"] == -200).sum()) == vlm.num_image_tokens
    labelled = vlm.llm.tokenizer.decode(packed["labels"][packed["labels"] != IGNORE])
    assert [w for w in ("green", "no", "one") if w in labelled] == ["green", "no", "one"]


def test_packing_drops_whole_questions_to_fit(tiny_recipe, tiny_data, caplog):
    vlm = VLM.from_recipe(tiny_recipe())
    img = str(tiny_data.parent / "img" / "1.png")
    rec = Record("r", images=[img],
                 turns=[("user", "<image>\nQ1?"), ("assistant", "a"), ("user", "Q2?"), ("assistant", "b")],
                 source="f.json: record 'r'")
    full = tokenize_independent(rec, vlm.llm, vlm.num_image_tokens, 512)
    cut = tokenize_independent(rec, vlm.llm, vlm.num_image_tokens, len(full["input_ids"]) - 1)
    assert cut["segment_ids"].max() == 1 and "record 'r': 1 of 2 questions dropped" in caplog.text


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_packed_generation_equals_single_prompt_generation(tiny_recipe, tiny_data, arch):
    from vlgraft.data.conversation import packed_prompt, tokenize_prompt

    recipe = tiny_recipe(arch)
    recipe.methods = []
    vlm = VLM.from_recipe(recipe).eval()
    torch.manual_seed(1)
    with torch.no_grad():  # larger random weights, so that greedy outputs depend on the context
        for p in vlm.llm.parameters():
            p.normal_(0, 0.3)
    tok = vlm.llm.tokenizer
    recs = []
    for i, qs in enumerate([["What color is it?", "Is it round?", "Name it"], ["Size?", "What color is it?"]]):
        img = str(tiny_data.parent / "img" / f"{i}.png")
        turns = [("user", "<image>\n" + qs[0]), ("assistant", "x")]
        for q in qs[1:]:
            turns += [("user", q), ("assistant", "x")]
        recs.append(Record(f"r{i}", images=[img], turns=turns))
    packs, want = [], []
    for rec in recs:
        singles = [t[:-1] for t in single_turns(rec)]
        pixels = vlm.vision.preprocess([load_image(rec.images[0])])[0]
        packs.append({**packed_prompt(singles, vlm.llm, vlm.num_image_tokens, rec.id), "pixel_values": pixels})
        for s in singles:
            ids = tokenize_prompt(s, vlm.llm, vlm.num_image_tokens)[None]
            new = vlm.generate(ids, torch.ones_like(ids), pixel_values=pixels[None], max_new_tokens=5)
            want.append(new[0].tolist())
    batch = collate(packs, tok.pad_token_id)
    got = vlm.generate_packed(batch, [3, 2], max_new_tokens=5)
    got = [t for per in got for t in per]
    stops = set(vlm.llm.stop_token_ids)
    want = [w[: next((i + 1 for i, x in enumerate(w) if x in stops), len(w))] for w in want]  # drop padding
    assert got == want and len({tuple(w) for w in want}) > 1
