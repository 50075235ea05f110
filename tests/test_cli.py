"""Bad input gives one line naming the record, file or key, exit code 2, and no partial output."""

import json

import pytest
import yaml

from vlgraft.cli import main
from vlgraft.config import to_dict


def _run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    err = [ln for ln in lines if ln.startswith("vlgraft: error")]
    assert lines and lines[-1] == err[-1], lines  # the error is the last word, on one line
    return e.value.code, err


@pytest.fixture
def write_recipe(tiny_recipe, tmp_path):
    def make(data_path=None, **changes):
        d = to_dict(tiny_recipe())
        if data_path is not None:
            d["data"]["train"] = str(data_path)
        for k, v in changes.items():
            sect, key = k.split("__")
            d[sect][key] = v
        p = tmp_path / "recipe.yaml"
        p.write_text(yaml.safe_dump(d))
        return p, tmp_path / "run"
    return make


def _data(tmp_path, records):
    p = tmp_path / "d.json"
    p.write_text(json.dumps(records))
    return p


def _conv(q="<image>\nq"):
    return [{"from": "human", "value": q}, {"from": "gpt", "value": "a"}]


def test_misspelt_key(write_recipe, capsys):
    p, run = write_recipe()
    p.write_text(p.read_text().replace("batch_size", "batchsize"))
    code, err = _run(["train", str(p)], capsys)
    assert code == 2 and len(err) == 1 and "unknown key 'train.batchsize'" in err[0] and str(p) in err[0]
    assert not run.exists()


def test_unknown_registry_name(write_recipe, capsys):
    p, run = write_recipe(connector__name="mpl")
    code, err = _run(["train", str(p)], capsys)
    assert code == 2 and len(err) == 1 and "unknown connector 'mpl'" in err[0]
    assert "known: git, linear, mlp, patch_mining, pool, prompt_projection, resampler" in err[0]
    assert not run.exists()


def test_missing_image(write_recipe, capsys, tmp_path):
    data = _data(tmp_path, [{"id": "r1", "image": "gone.png", "conversations": _conv()}])
    p, run = write_recipe(data)
    code, err = _run(["train", str(p)], capsys)
    assert code == 2 and len(err) == 1 and "record 'r1'" in err[0] and "gone.png" in err[0]
    assert not run.exists()


def test_corrupt_image(write_recipe, capsys, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    data = _data(tmp_path, [{"id": "r2", "image": "bad.png", "conversations": _conv()}])
    p, run = write_recipe(data)
    code, err = _run(["train", str(p)], capsys)
    assert code == 2 and len(err) == 1 and "record 'r2'" in err[0] and "cannot read image" in err[0]
    assert not run.exists()


@pytest.mark.parametrize("record,needle", [
    ({"id": "r3", "conversations": _conv()}, "placeholder but no 'image'"),
    ({"id": "r4", "image": "ok.png", "conversations": _conv("q")}, "0 <image> placeholders"),
])
def test_placeholder_image_mismatch(write_recipe, capsys, tmp_path, record, needle):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    p, run = write_recipe(_data(tmp_path, [record]))
    code, err = _run(["train", str(p)], capsys)
    assert code == 2 and len(err) == 1 and record["id"] in err[0] and needle in err[0]
    assert not run.exists()


def test_eval_missing_checkpoint(capsys, tmp_path):
    code, err = _run(["eval", str(tmp_path / "nothing")], capsys)
    assert code == 2 and len(err) == 1 and "no checkpoint found" in err[0]
