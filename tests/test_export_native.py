"""``vlgraft export --format vlgraft``: a self-contained folder (safetensors only) that ``vlgraft.load``,
``chat`` and ``eval`` read without the run folder or the original parts' folders, and that answers as
the trained model does — mergeable methods folded in, the others kept as modules."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from tests.conftest import COLORS

pytestmark = pytest.mark.slow  # trains and exports

VARIANTS = {
    "lora+adapter on CLIP": ("hf", [{"name": "llama_adapter", "layers": 2, "prompt_len": 4},
                                    {"name": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}]),
    "ia3 + vision lora on CLIP": ("hf", [{"name": "ia3"}, {"name": "lora", "r": 2, "target": "vision",
                                                           "target_modules": ["q_proj"]}]),
    "bundled EfficientNet": ("efficientnet-lite0", [{"name": "lora", "r": 4, "target_modules": ["q_proj"]}]),
    # scope image: merged weights would act on text-only input too, so both stay modules
    "image-scoped lora+adapter": ("hf", [{"name": "llama_adapter", "layers": 2, "prompt_len": 4, "scope": "image"},
                                         {"name": "lora", "r": 4, "target_modules": ["q_proj"], "scope": "image"}]),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_export_answers_as_the_run_without_it(variant, tiny_llms, tiny_clip, tiny_data, recipe_dict, tmp_path,
                                               capsys):
    import vlgraft
    from vlgraft.cli import main

    tower, methods = VARIANTS[variant]
    # the parts live in copies that are deleted after export: the folder must not need them
    llm_dir, clip_dir = tmp_path / "llm", tmp_path / "clip"
    shutil.copytree(tiny_llms["llama"], llm_dir)
    shutil.copytree(tiny_clip, clip_dir)
    r = recipe_dict(llm_dir, clip_dir, tiny_data, tmp_path / "run")
    if tower != "hf":
        r["vision"] = {"name": tower, "feature_layer": -1, "grid": 2}
    r["methods"] = methods
    if any(m.get("scope") == "image" for m in methods):  # text-only records would train nothing
        images_only = tiny_data.parent / "images_only.json"  # beside the images it names
        images_only.write_text(json.dumps([x for x in json.loads(tiny_data.read_text()) if "image" in x]))
        r["data"]["train"] = str(images_only)
    r["trainable"] = [{"name": "connector", "params": ["connector"], "lr": 1e-2}] + [
        {"name": f"g{i}", "params": [m["name"]], "lr": 1e-2} for i, m in enumerate(methods)]
    run = vlgraft.train(r)
    image = tmp_path / "red.png"
    Image.new("RGB", (40, 40), COLORS["red"]).save(image)
    questions = ["What color is it?", "Is it a square?"]
    trained = vlgraft.load(run)
    before = trained.generate(questions, images=[[image], [image]], max_new_tokens=6)
    text_before = trained.generate(["What is 2 plus 2?"], max_new_tokens=6)
    del trained

    out = tmp_path / "exported"
    main(["export", str(run), str(out)])
    assert "merged" in capsys.readouterr().out
    shutil.rmtree(run)
    shutil.rmtree(llm_dir)
    shutil.rmtree(clip_dir)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".pkl")]  # safetensors only
    assert (out / "llm" / "model.safetensors").is_file() and (out / "model.safetensors").is_file()
    assert (out / "vision").is_dir() == (tower == "hf")

    model = vlgraft.load(out)
    assert model.generate(questions, images=[[image], [image]], max_new_tokens=6) == before
    assert model.generate(["What is 2 plus 2?"], max_new_tokens=6) == text_before
    kept = [m["name"] for m in methods if m["name"] == "llama_adapter" or m.get("scope") == "image"]
    assert [m.name for m in model.vlm.methods] == kept  # merged methods are gone, the others stay modules

    main(["chat", "--ckpt", str(out), "--image", str(image), "--max-new-tokens", "6", "-o", "eval.precision=fp32",
          questions[0]])
    assert capsys.readouterr().out.strip() == before[0]


def test_export_refuses_damaged_folders(tiny_recipe, tmp_path, capsys):
    import json

    from vlgraft.cli import main

    run = tiny_recipe()
    import vlgraft

    run_dir = vlgraft.train(run)
    out = tmp_path / "exported"
    main(["export", str(run_dir), str(out)])
    capsys.readouterr()
    marker = json.loads((out / "export.json").read_text())
    (out / "export.json").write_text(json.dumps({**marker, "version": 99}))
    with pytest.raises(SystemExit):
        main(["chat", "--ckpt", str(out), "--image", "x.png", "hi"])
    assert "not a vlgraft export of format version 1" in capsys.readouterr().err
    (out / "export.json").write_text(json.dumps(marker))
    from safetensors.torch import load_file, save_file

    weights = load_file(out / "model.safetensors")
    save_file({k: v for k, v in list(weights.items())[1:]}, out / "model.safetensors")
    with pytest.raises(SystemExit):
        main(["chat", "--ckpt", str(out), "--image", "x.png", "hi"])
    assert "keys do not match the exported recipe's model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(run_dir), str(tmp_path / "y"), "--format", "onnx"])
    assert "invalid choice" in capsys.readouterr().err
