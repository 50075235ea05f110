"""The public Python API: ``vlgraft.load`` a trained model, ``vlgraft.train`` a recipe.

    import vlgraft
    model = vlgraft.load("runs/default")
    model.generate("What color is the shape?", images=["shape.png"])      # -> "red"
    chat = model.chat(images=["shape.png"]); chat.ask("What shape is it?")

``Model.generate`` follows the recipe the run was trained with (chat template, system prompt,
describe-first, precision); ``overrides`` change its data / eval / chat settings as ``-o`` does.
"""

from __future__ import annotations

import copy
from pathlib import Path

from vlgraft.config import Recipe, from_dict, inference_precision, load_recipe
from vlgraft.data.records import IMAGE_PLACEHOLDER, Record
from vlgraft.errors import VlgraftError


class Model:
    """A trained VLM with its recipe: ``generate`` answers, ``chat`` holds a conversation."""

    def __init__(self, vlm, recipe: Recipe, checkpoint: Path):
        self.vlm, self.recipe, self.checkpoint = vlm, recipe, checkpoint

    def generate(self, prompt: str | list[str], images=None, max_new_tokens: int | None = None,
                 describe: bool = True) -> str | list[str]:
        """Greedy answers to one prompt (``images``: paths or PIL images, placed before it) or to a list
        of prompts (``images``: one list per prompt), batched. With the recipe's describe-first the
        model describes each prompt's images first, unless ``describe=False``."""
        from vlgraft.data.describe import describe_records, with_descriptions
        from vlgraft.inference import generate_answers

        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        per_prompt = [images] if single else list(images or [[]] * len(prompts))
        if len(per_prompt) != len(prompts):
            raise VlgraftError(f"{len(prompts)} prompts but {len(per_prompt)} image lists")
        records = [_record(i, p, ims) for i, (p, ims) in enumerate(zip(prompts, per_prompt))]
        r = self.recipe
        precision = inference_precision(r)
        request = r.data.describe_first if describe else None
        if request:
            described = describe_records(self.vlm, records, request, None, r.eval.batch_size,
                                         r.eval.describe_max_new_tokens, precision, show=False)
            records = with_descriptions(records, request, described)
        answers = generate_answers(self.vlm, [{"record": rec, "turns": rec.turns} for rec in records], None,
                                   r.eval.batch_size, max_new_tokens or r.chat.max_new_tokens, precision, show=False)
        return answers[0] if single else answers

    def chat(self, images=None, describe: bool = True):
        """A multi-turn ``ChatSession`` about ``images`` (paths): ``session.ask(question)``."""
        from vlgraft.serve.chat import ChatSession

        session = ChatSession.from_recipe(self.vlm, self.recipe, [_path(im, "chat") for im in _as_list(images)])
        if not describe:
            session.describe_first = None
        return session


def _as_list(images) -> list:
    if images is None:
        return []
    return [images] if isinstance(images, (str, Path)) or hasattr(images, "mode") else list(images)


def _path(image, where: str) -> str:
    """A path for an image given as a path or as a PIL image (stored once, content-addressed)."""
    if isinstance(image, (str, Path)):
        return str(image)
    from vlgraft.data.formats.image_store import store_pil_image

    return str(store_pil_image(image, where))


def _record(i: int, prompt: str, images) -> Record:
    if not isinstance(prompt, str) or not prompt.strip():
        raise VlgraftError(f"prompt {i} is empty")
    where = f"generate: prompt {i}"
    paths = [_path(im, where) for im in _as_list(images)]
    return Record(f"prompt-{i}", [("user", f"{IMAGE_PLACEHOLDER}\n" * len(paths) + prompt)], images=paths, source=where)


def load(run: str | Path, device: str | None = None, overrides: list[str] | None = None) -> Model:
    """A trained model from a run folder or a checkpoint folder, on ``device`` (default: CUDA when
    available); ``overrides``: ``key=value`` changes of its data / eval / chat settings."""
    from vlgraft.inference import default_device
    from vlgraft.training.checkpoint import load_vlm

    vlm, recipe, ckpt = load_vlm(run, default_device(device), overrides)
    return Model(vlm, recipe, ckpt)


def train(recipe: str | Path | dict | Recipe, overrides: list[str] | None = None, resume: bool = False,
          overwrite: bool = False) -> Path:
    """Train a recipe (a YAML path, a mapping or a ``Recipe``) with ``key=value`` overrides; returns
    the run folder (its ``final/`` checkpoint is what ``load`` reads)."""
    from vlgraft.config import apply_overrides
    from vlgraft.training.loop import train as train_recipe

    if isinstance(recipe, (str, Path)):
        source, r = str(recipe), load_recipe(recipe, overrides)
    elif isinstance(recipe, Recipe):
        if overrides:
            raise VlgraftError("overrides apply to a recipe file or mapping; change the Recipe object itself")
        source, r = "recipe", recipe
    else:  # a mapping: overrides change a copy, never the caller's nested data
        source, r = "recipe", from_dict(Recipe, apply_overrides(copy.deepcopy(dict(recipe)), overrides or []))
    return train_recipe(r, resume=resume, overwrite=overwrite, source=source)  # validates the recipe first
