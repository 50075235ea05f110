import json

import pytest
import torch

from vlgraft.data.conversation import IGNORE, tokenize_conversation, tokenize_prompt
from vlgraft.data.images import load_image
from vlgraft.data.records import Record, load_llava_json
from vlgraft.data.sources import load_records
from vlgraft.errors import DataError
from vlgraft.models.vlm import IMAGE_TOKEN_ID


def _write(tmp_path, records, name="d.json"):
    p = tmp_path / name
    p.write_text(json.dumps(records))
    return p


def conv(*pairs):
    out = []
    for h, g in pairs:
        out += [{"from": "human", "value": h}, {"from": "gpt", "value": g}]
    return out


@pytest.mark.parametrize("record,message", [
    ({"id": "a", "conversations": conv(("<image>\nhi", "x"))}, "record 'a' .*placeholder but no 'image'"),
    ({"id": "b", "image": "img.png", "conversations": conv(("hi", "x"))}, "record 'b' .*0 <image> placeholders"),
    ({"id": "c", "image": "missing.png", "conversations": conv(("<image>\nhi", "x"))},
     "record 'c' .*image file not found"),
    ({"id": "d", "conversations": [{"from": "robot", "value": "x"}]}, "record 'd' .*unknown speaker 'robot'"),
    ({"id": "e", "conversations": [{"from": "gpt", "value": "x"}]}, "record 'e' .*alternate"),
    ({"id": "f"}, "record 'f' .*'conversations'"),
])
def test_bad_records_named(tmp_path, record, message):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    p = _write(tmp_path, [record])
    with pytest.raises(DataError, match=f"d.json: {message}"):
        load_llava_json(p)


def test_jsonl_bad_line_named(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"id": "ok", "conversations": conv(("q", "a"))}) + "\n{not json\n")
    with pytest.raises(DataError, match="d.jsonl: line 2 is not valid JSON"):
        load_llava_json(p)


def test_llava_jsonl_streams_up_to_the_limit(tmp_path):
    """data.limit stops reading a LLaVA JSONL file: a broken line after it is never parsed."""
    p = tmp_path / "d.jsonl"
    good = [json.dumps({"id": f"r{i}", "conversations": conv(("q", "a"))}) for i in range(2)]
    p.write_text("\n".join(good) + "\n{not json\n")
    assert [r.id for r in load_records(str(p), limit=2)] == ["r0", "r1"]
    with pytest.raises(DataError, match="d.jsonl: line 3 is not valid JSON"):
        load_records(str(p))


def test_duplicate_ids_rejected(tmp_path):
    p = _write(tmp_path, [{"id": "x", "conversations": conv(("q", "a"))}] * 2)
    with pytest.raises(DataError, match="duplicate id 'x'"):
        load_llava_json(p)


def test_corrupt_image_named(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="rec 7: cannot read image .*bad.png"):
        load_image(str(bad), "rec 7")


def test_easyvqa_grouped_into_conversations():
    train = load_records("easyvqa:train")
    assert len(train) == 4000
    n_q = sum(sum(1 for r, _ in rec.turns if r == "assistant") for rec in train)
    assert n_q == 38575
    for rec in train[:50]:
        texts = [t for _, t in rec.turns]
        assert texts[0].startswith("<image>\n") and sum(t.count("<image>") for t in texts) == 1
    test = load_records("easyvqa:test")
    types = [t for r in test for t in r.meta["answer_types"]]
    assert len(test) == 1000 and len(types) == 9673 and set(types) == {"yes/no", "color", "shape"}
    from vlgraft.eval.vqa import eval_items
    items = eval_items(test, "independent")
    assert len(items) == 9673
    assert all(len(it["turns"]) == 1 and it["turns"][0][1].startswith("<image>\n") for it in items)
    with pytest.raises(Exception, match="unknown dataset 'easyvq'"):
        load_records("easyvq:train")


@pytest.fixture(scope="module")
def smol():
    from vlgraft.config import LLMOptions
    from vlgraft.models.llm import build_llm

    return build_llm(LLMOptions(system_prompt=""))


def test_labels_only_on_assistant_replies(smol):
    rec = Record("r", images=["x.png"], turns=[("user", "<image>\nWhat color?"), ("assistant", "red"),
                                 ("user", "Shape?"), ("assistant", "circle")])
    ex = tokenize_conversation(rec, smol, 5, 512)
    ids, labels = ex["input_ids"], ex["labels"]
    tok = smol.tokenizer
    labelled = tok.decode(labels[labels != IGNORE])
    assert labelled == "red<|im_end|>\ncircle<|im_end|>\n"
    # everything else — system, user turns, role headers, image slots — is masked
    assert (labels[ids == IMAGE_TOKEN_ID] == IGNORE).all()
    assert tok.decode(ids[labels == IGNORE].clamp(min=0)).count("What color?") == 1
    # the whole sequence renders exactly the chat template's text
    text = smol.render(smol.messages(rec.turns)).replace("<image>", "")
    assert tok.decode(ids[ids != IMAGE_TOKEN_ID]) == text


def test_image_tokens_at_placeholder_with_right_count(smol):
    rec = Record("r", images=["x.png"], turns=[("user", "Look: <image> now"), ("assistant", "ok")])
    ids = tokenize_conversation(rec, smol, 7, 512)["input_ids"]
    pos = (ids == IMAGE_TOKEN_ID).nonzero().flatten()
    assert len(pos) == 7 and (pos.diff() == 1).all()
    assert smol.tokenizer.decode(ids[: pos[0]]).endswith("user\nLook: ")
    assert smol.tokenizer.decode(ids[pos[-1] + 1:]).startswith(" now")
    prompt = tokenize_prompt(rec.turns[:1], smol, 7)
    assert torch.equal(prompt, ids[: len(prompt)])  # inference prompt == training context
    assert smol.tokenizer.decode(prompt[-3:]).endswith("assistant\n")


def test_truncation_never_cuts_visual_tokens(smol, caplog):
    rec = Record("r9", images=["x.png"], turns=[("user", "a " * 50 + "<image>"), ("assistant", "ok")],
                 source="file.json: record 'r9'")
    with pytest.raises(DataError, match="record 'r9'.*would cut visual tokens"):
        tokenize_conversation(rec, smol, 16, 40)
    rec2 = Record("r10", images=["x.png"], turns=[("user", "<image>\nq"), ("assistant", "ok " * 80)],
                  source="record 'r10'")
    ex = tokenize_conversation(rec2, smol, 4, 40)
    assert len(ex["input_ids"]) == 40 and "record 'r10': truncated" in caplog.text


def test_easyvqa_balanced_split_removes_the_wording_prior():
    """In easy-VQA the wording gives yes/no answers away ~82% of the time; train-balanced evens every
    (negated?, answer) pair and keeps every colour/shape question."""
    from collections import Counter

    from vlgraft.data.formats.easyvqa import negated
    from vlgraft.data.sources import load_records

    full, bal = load_records("easyvqa:train"), load_records("easyvqa:train-balanced")
    def pairs(recs):
        return [(q, a) for r in recs for (_, q), (_, a) in zip(r.turns[::2], r.turns[1::2])]
    groups = Counter((negated(q), a) for q, a in pairs(bal) if a in ("yes", "no"))
    for neg in (False, True):
        assert abs(groups[(neg, "yes")] - groups[(neg, "no")]) < 0.05 * groups[(neg, "yes")]
    assert sum(a not in ("yes", "no") for _, a in pairs(bal)) == sum(a not in ("yes", "no") for _, a in pairs(full))
    assert [(q, a) for q, a in pairs(bal)] == [(q, a) for q, a in pairs(load_records("easyvqa:train-balanced"))]
