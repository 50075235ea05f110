"""TOMGPT text-only training: the connector learns from the paired *text* encoder's embeddings, and
the *image* encoder takes its place at inference with the same connector weights. Mechanics only, on
a tiny random CLIP (a real aligned pair is needed for real use)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from vlgraft.config import ConnectorOptions, ParamGroup, VisionOptions, options_for
from vlgraft.data.images import load_image
from vlgraft.data.records import load_llava_json
from vlgraft.errors import DataError
from vlgraft.training.checkpoint import load_vlm
from vlgraft.training.loop import train


@pytest.fixture(scope="module")
def tiny_clip_pair(tmp_path_factory, tokenizer_dir):
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

    out = tmp_path_factory.mktemp("clip_pair")
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    cfg = CLIPConfig(text_config={"vocab_size": len(tok), "hidden_size": 24, "intermediate_size": 48,
                                  "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 64,
                                  "eos_token_id": tok.eos_token_id},
                     vision_config={"hidden_size": 24, "intermediate_size": 48, "num_hidden_layers": 2,
                                    "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
                     projection_dim=16)
    CLIPModel(cfg).save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _text_records(path, n=8):
    colours = ["red", "green", "blue", "yellow"]
    recs = [{"id": f"t{i}", "image_text": f"a {colours[i % 4]} square",
             "conversations": [{"from": "human", "value": "<image>\nWhat is shown?"},
                               {"from": "gpt", "value": f"a {colours[i % 4]} square"}]} for i in range(n)]
    path.write_text(json.dumps(recs))
    return path


@pytest.mark.slow
def test_text_only_training_then_images_with_the_same_connector(tiny_recipe, tiny_clip_pair, tiny_data, tmp_path):
    recipe = tiny_recipe(max_steps=3)
    recipe.vision = VisionOptions(name=f"hf:{tiny_clip_pair}", tokens="embed")
    recipe.connector = options_for(ConnectorOptions, name="mlp")
    recipe.methods = []
    recipe.trainable = [ParamGroup("connector", ["connector"], 1e-2)]
    recipe.data.train = str(_text_records(tmp_path / "texts.json"))
    from vlgraft.models.vlm import VLM

    init = {k: v.clone() for k, v in VLM.from_recipe(recipe).connector.state_dict().items()}
    out = train(recipe, source="test")
    saved = load_file(out / "final" / "trainable.safetensors")
    assert set(saved) == {f"connector.{k}" for k in init}
    assert any(not torch.equal(saved[f"connector.{k}"], init[k]) for k in init)  # it learned from text alone

    vlm, _, _ = load_vlm(out)
    enc = vlm.vision
    with torch.no_grad():
        text_emb = enc.encode_text(["a red square"])
        pixels = enc.preprocess([load_image(load_llava_json(tiny_data)[0].images[0])])
        img_emb = enc(pixels)
    assert text_emb.shape == img_emb.shape == (1, 1, 16)  # one shared space
    torch.testing.assert_close(img_emb.norm(dim=-1), torch.ones(1, 1))
    # the image path: same connector weights, end to end through generation
    for k, v in vlm.connector.state_dict().items():
        assert torch.equal(v, saved[f"connector.{k}"])
    import io

    from vlgraft.serve.chat import ChatSession

    session = ChatSession(vlm, image=load_llava_json(tiny_data)[0].images[0], precision="fp32", max_new_tokens=3)
    torch.testing.assert_close(session.features, img_emb, atol=1e-5, rtol=1e-5)
    answer = session.ask("What is shown?", stream=io.StringIO())
    assert isinstance(answer, str)


def test_image_text_records_are_validated(tmp_path):
    bad = [{"id": "a", "image_text": "x", "image": "y.png",
            "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]},
           {"id": "b", "image_text": "x",
            "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
           {"id": "c", "image_text": "",
            "conversations": [{"from": "human", "value": "<image>Q"}, {"from": "gpt", "value": "A"}]}]
    for rec, msg in zip(bad, ["both 'image' and 'image_text'", "placeholders", "non-empty"]):
        p = tmp_path / f"{rec['id']}.json"
        p.write_text(json.dumps([rec]))
        with pytest.raises(DataError, match=msg) as e:
            load_llava_json(p)
        assert f"'{rec['id']}'" in str(e.value)
