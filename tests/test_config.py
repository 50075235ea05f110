from pathlib import Path

import pytest

from vlgraft.config import Recipe, from_dict, load_recipe, recipe_help
from vlgraft.errors import ConfigError
from vlgraft.registry import CONNECTOR, Registry, UnknownNameError


def test_unknown_key_is_named_with_suggestion(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("train:\n  batch_sise: 4\n")
    with pytest.raises(ConfigError,
                       match=r"r.yaml: unknown key 'train.batch_sise' \(did you mean 'train.batch_size'\?\)"):
        load_recipe(p)


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match="'train.batch_size' expects int"):
        from_dict(Recipe, {"train": {"batch_size": "four"}})


def test_overrides_and_scientific_floats(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("trainable:\n  - {name: c, params: [connector], lr: 1e-3}\n")
    r = load_recipe(p, ["train.max_steps=7", "vision.grid=null"])
    assert r.train.max_steps == 7 and r.vision.grid is None
    assert r.trainable[0].lr == pytest.approx(1e-3)


def test_invalid_values_rejected():
    with pytest.raises(ConfigError, match="train.precision"):
        load_recipe(None, ["train.precision=fp8"])
    with pytest.raises(ConfigError, match="missing required key 'trainable\\[0\\].params'"):
        load_recipe(None, ["trainable=[{name: x}]"])


def test_recipe_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_recipe(bad)


def test_help_lists_every_key():
    text = "\n".join(recipe_help())
    for key in ("vision.grid", "llm.system_prompt", "train.precision", "train.feature_cache", "data.max_length"):
        assert key in text


def test_registry_unknown_and_duplicate():
    import vlgraft.connectors  # noqa: F401

    with pytest.raises(UnknownNameError, match=r"unknown connector 'mpl' \(did you mean 'mlp'\?\); known: git, "
                                               r"linear, mlp, patch_mining, pool, prompt_projection, resampler"):
        CONNECTOR.get("mpl")
    reg = Registry("thing")
    reg.register("a")(1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(2)


def test_bundled_recipes_validate():
    from pathlib import Path

    from vlgraft.config import load_recipe

    recipes = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))
    assert len(recipes) >= 6
    for p in recipes:
        load_recipe(p)  # raises, naming the file and key, on anything unknown or mistyped


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_loads(path):
    """Each recipe under recipes/ validates (keys, types); stage-2 recipes reference stage 1 by run folder."""
    from vlgraft.config import load_recipe

    recipe = load_recipe(path)
    assert recipe.name == path.stem
    if "stage2" in path.stem:
        assert recipe.init_from == f"runs/{path.stem.replace('stage2', 'stage1')}"
