"""Typed recipe configuration.

A recipe is YAML; it is validated into these dataclasses. Unknown keys are rejected by their dotted
name (with a suggestion), values are type-checked, and ``vlgraft train --help-recipe`` prints every
key with its help text, generated from the ``help`` metadata below.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from vlgraft.errors import ConfigError


def _f(default: Any = dataclasses.MISSING, help: str = "", factory: Any = None):
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class VisionConfig:
    name: str = _f("efficientnet-lite0", "registered encoder name, or 'hf:<hub id or local dir>' for any "
                   "transformers vision tower (CLIP, SigLIP, ViT, DINOv2)")
    feature_layer: int = _f(-1, "which layer's features: hidden-state index for HF towers (LLaVA uses -2); "
                            "for EfficientNet -1 is the head conv (1280 ch), k>=0 the output of block k")
    grid: Optional[int] = _f(None, "average-pool the patch tokens to grid x grid tokens; null keeps all")
    image_size: Optional[int] = _f(None, "input resolution in pixels; null uses the encoder's native size")
    feature_layers: Optional[list[int]] = _f(None, "several layers at once (same numbering as feature_layer), "
                                             "merged by layer_merge; overrides feature_layer (LaVIN / "
                                             "LLaMA-Adapter multi-scale features)")
    layer_merge: str = _f("channels", "how feature_layers combine: channels (concatenate widths; token counts "
                          "must match) | tokens (one token sequence after another; widths must match)")
    tokens: str = _f("patch", "which tokens: patch (all patch tokens, or pooled to grid) | cls (one global "
                     "token: [CLS], or the mean of the patches for towers without one) | cls+patch | "
                     "embed (an image-text pair's projected embedding, one token; for TOMGPT text-only training)")


@dataclass
class LLMConfig:
    name: str = _f("smollm2-135m-instruct", "registered LLM name, or 'hf:<hub id or local dir>' for any "
                   "AutoModelForCausalLM")
    system_prompt: Optional[str] = _f(None, "system message for every conversation; null uses the chat "
                                      "template's own default")
    dtype: str = _f("float32", "dtype of the loaded weights: float32 | bfloat16 | float16")


@dataclass
class ConnectorConfig:
    name: str = _f("mlp", "registered connector: linear | mlp | git | resampler | pool | prompt_projection | "
                   "patch_mining")
    hidden_dim: Optional[int] = _f(None, "mlp, patch_mining: hidden width (null: the LLM's hidden size; "
                                   "patch_mining's mining width: the low-res feature width)")
    num_queries: int = _f(16, "resampler: number M of learned queries (visual tokens sent to the LLM)")
    num_heads: int = _f(8, "resampler: attention heads (must divide the LLM's hidden size)")
    grid: int = _f(2, "pool: output grid side (grid x grid tokens) for mode 'avg'; "
                   "'shuffle' merges grid x grid neighbours into one token")
    mode: str = _f("avg", "pool: 'avg' (average-pool to grid x grid) or 'shuffle' (pixel-shuffle / neighbour "
                   "concat, MiniGPT-v2)")


@dataclass
class ParamGroup:
    name: str = _f(dataclasses.MISSING, "group name used in logs")
    params: list[str] = _f(dataclasses.MISSING, "fnmatch patterns over model parameter names, e.g. "
                           "'connector.*', 'llm.*lora_*', 'vision.*'; a bare component name "
                           "(vision | connector | llm) means all its parameters")
    lr: Union[float, str] = _f(1e-4, "peak learning rate of this group, or 'mm1': MM1's fit to the LLM's "
                               "non-embedding parameter count N, exp(-0.4214 ln N - 0.5535), with weight decay 0.1 x lr")
    weight_decay: float = _f(0.0, "AdamW weight decay of this group (with lr: mm1, 0.1 x lr)")


@dataclass
class MixSource:
    train: str = _f(dataclasses.MISSING, "a training data spec, as data.train")
    weight: Optional[float] = _f(None, "sampling ratio against the other sources (e.g. 5, 5, 1); the source's "
                                 "records cycle, each pass reshuffled")
    epochs: Optional[float] = _f(None, "passes over this source instead of a weight (then every source gives "
                                 "epochs, and the run's length follows from them unless train.max_steps is set)")
    image_root: Optional[str] = _f(None, "as data.image_root, for this source")
    limit: Optional[int] = _f(None, "use only this source's first N records")


@dataclass
class DataConfig:
    train: Optional[str] = _f(None, "training data: a registered dataset 'name:arg' (easyvqa:train, "
                              "coco:captions.json, ...) or a LLaVA conversation .json/.jsonl file; null: "
                              "easyvqa:train, or data.mixture")
    mixture: list[MixSource] = _f(factory=list, help="several training sources sampled by ratio or by epochs "
                                  "(MM1's caption : interleaved : text = 5 : 5 : 1); replaces data.train")
    group_by_modality: bool = _f(False, "every global batch is all image-text or all text-only (needed by "
                                 "train.modality_groups; LLaVA-1.5's modality grouping)")
    eval: str = _f("easyvqa:test", "evaluation data, same forms as 'train'")
    image_root: Optional[str] = _f(None, "folder that relative 'image' paths are resolved against "
                                   "(default: the data file's folder)")
    max_length: int = _f(1024, "maximum tokens per sequence, visual tokens included")
    turns: str = _f("conversation", "conversation: train on each record as one multi-turn chat; independent: "
                    "pack its question/answer pairs as independent single-turn questions that share the "
                    "image prefix (one image encoding per record, no answer visible to another question)")
    limit: Optional[int] = _f(None, "use only the first N training records")
    describe_first: Optional[str] = _f(None, "a request such as 'Describe the image.': every question about an "
                                       "image is asked behind a first exchange in which the model describes the "
                                       "image (LLaMA-Adapter V2's expert captions, the model as its own expert); "
                                       "training uses each record's gold 'description', eval and chat the "
                                       "model's own (docs/DESCRIBE.md)")


@dataclass
class TrainConfig:
    output_dir: str = _f("runs/default", "run folder: checkpoints, metrics.jsonl, tensorboard")
    epochs: float = _f(1.0, "passes over the training data (fractions allowed)")
    max_steps: Optional[int] = _f(None, "optimizer steps; overrides epochs when set")
    batch_size: int = _f(16, "micro-batch per process")
    grad_accum: int = _f(1, "micro-batches per optimizer step (global batch = batch_size x grad_accum x processes)")
    schedule: str = _f("cosine", "learning-rate schedule: cosine | linear | constant")
    warmup_ratio: float = _f(0.03, "fraction of steps with linear warm-up")
    max_grad_norm: Optional[float] = _f(1.0, "gradient clipping norm; null disables")
    precision: str = _f("bf16", "fp32 | bf16 (autocast; on CPU and GPU)")
    seed: int = _f(0, "seed for initialisation, data order and dropout")
    feature_cache: bool = _f(True, "cache frozen image-encoder features on disk (keyed by encoder, "
                             "preprocessing and image bytes)")
    log_every: int = _f(10, "optimizer steps between metric records")
    save_every: Optional[int] = _f(None, "optimizer steps between resumable checkpoints; null: only at the end")
    keep_checkpoints: int = _f(2, "resumable checkpoints kept (older ones are deleted)")
    num_workers: int = _f(0, "DataLoader worker processes")
    modality_groups: Optional[dict] = _f(None, "joint training (LLaMA-Adapter V2): {image: [group names], text: "
                                         "[group names]} — an image-text batch steps only the 'image' groups, a "
                                         "text-only batch only the 'text' groups; needs data.group_by_modality")


@dataclass
class EvalConfig:
    batch_size: int = _f(64, "questions per generation batch")
    max_new_tokens: int = _f(8, "generation budget per answer")
    limit: Optional[int] = _f(None, "evaluate only the first N questions")
    describe_max_new_tokens: int = _f(32, "generation budget per description (data.describe_first)")


@dataclass
class Recipe:
    name: str = _f("default", "recipe name")
    vision: VisionConfig = _f(factory=VisionConfig, help="image encoder")
    llm: LLMConfig = _f(factory=LLMConfig, help="causal language model")
    connector: ConnectorConfig = _f(factory=ConnectorConfig, help="vision -> LLM connector")
    methods: list[dict] = _f(factory=list, help="PEFT methods applied in order, each {name: ..., options}; "
                             "e.g. {name: lora, r: 16, alpha: 32, target_modules: [q_proj, v_proj]}")
    trainable: list[ParamGroup] = _f(factory=lambda: [ParamGroup(name="connector", params=["connector"], lr=1e-3)],
                                     help="parameter groups that train; everything else is frozen")
    vision_hr: Optional[VisionConfig] = _f(None, "a second, high-resolution image encoder (Mini-Gemini); used by "
                                           "the patch_mining connector")
    init_from: Optional[str] = _f(None, "a previous run or checkpoint (e.g. stage 1 of a curriculum) whose trained "
                                  "weights initialise this model; kept as a reference: this run's checkpoint holds "
                                  "only its own trainable parameters and eval/chat load the chain")
    data: DataConfig = _f(factory=DataConfig, help="data")
    train: TrainConfig = _f(factory=TrainConfig, help="training loop")
    eval: EvalConfig = _f(factory=EvalConfig, help="evaluation")


# ----------------------------------------------------------------------------- validation

def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for i, a in enumerate(inner):  # the first type that takes the value
            try:
                return _coerce(value, a, key, source)
            except ConfigError:
                if i == len(inner) - 1:
                    raise
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key '{key}' expects a mapping, got {value!r}")
        return from_dict(tp, value, source, prefix=f"{key}.")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: key '{key}' expects a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key '{key}' expects a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML reads "1e-3" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, str, bool) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{source}: key '{key}' expects {_type_name(tp)}, got {value!r}")


def from_dict(cls: type, data: dict, source: str = "recipe", prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys by their dotted name."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in data:
        if k not in fields:
            close = difflib.get_close_matches(str(k), list(fields), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"{source}: unknown key '{prefix}{k}'{hint}; known keys here: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], f"{prefix}{name}", source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: missing required key '{prefix}{name}'")
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj)


def _set_dotted(d: dict, dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{source}: cannot set '{dotted}': '{p}' is not a mapping")
        cur = nxt
    cur[parts[-1]] = value


def read_yaml_mapping(path: str | Path, what: str) -> dict:
    """A YAML file whose top level is a mapping; errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a {what} must be a mapping at the top level")
    return data


def load_recipe(path: str | Path | None, overrides: list[str] | None = None) -> Recipe:
    """Load a recipe YAML (or the defaults when ``path`` is None) and apply ``key.sub=value`` overrides."""
    data: dict = {}
    source = str(path) if path else "defaults"
    if path is not None:
        data = read_yaml_mapping(path, "recipe")
    for ov in overrides or []:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} must look like key.sub=value")
        k, v = ov.split("=", 1)
        _set_dotted(data, k.strip(), yaml.safe_load(v), f"override {ov!r}")
    recipe = from_dict(Recipe, data, source)
    validate(recipe, source)
    return recipe


def validate(r: Recipe, source: str) -> None:
    if r.train.precision not in ("fp32", "bf16"):
        raise ConfigError(f"{source}: key 'train.precision' must be fp32 or bf16, got {r.train.precision!r}")
    if r.train.schedule not in ("cosine", "linear", "constant"):
        raise ConfigError(f"{source}: key 'train.schedule' must be cosine, linear or constant")
    if r.llm.dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"{source}: key 'llm.dtype' must be float32, bfloat16 or float16")
    if r.data.describe_first is not None and (not isinstance(r.data.describe_first, str) or not r.data.describe_first.strip()):
        raise ConfigError(f"{source}: key 'data.describe_first' must be a non-empty request (text) or null")
    if r.data.turns not in ("conversation", "independent"):
        raise ConfigError(f"{source}: key 'data.turns' must be conversation or independent, got {r.data.turns!r}")
    for i, m in enumerate(r.methods):
        if "name" not in m:
            raise ConfigError(f"{source}: key 'methods[{i}]' needs a 'name'")
    names = [g.name for g in r.trainable]
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: parameter group names in 'trainable' must be unique: {names}")
    for k in ("batch_size", "grad_accum", "log_every"):
        if getattr(r.train, k) < 1:
            raise ConfigError(f"{source}: key 'train.{k}' must be >= 1")


def recipe_help(cls: type = Recipe, prefix: str = "") -> list[str]:
    """One line per key: dotted name, type, default and help — for ``--help-recipe``."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines.append(f"{prefix}{f.name}:  {f.metadata.get('help', '')}")
            lines += recipe_help(tp, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            "required" if f.default_factory is dataclasses.MISSING else f.default_factory())
        if dataclasses.is_dataclass(default) or (isinstance(default, list) and default and dataclasses.is_dataclass(default[0])):
            default = to_dict(default) if not isinstance(default, list) else [to_dict(x) for x in default]
        lines.append(f"  {prefix}{f.name} ({_type_name(tp)}, default {default!r}): {f.metadata.get('help', '')}")
    return lines


def dump_recipe(r: Recipe) -> str:
    return yaml.safe_dump(to_dict(r), sort_keys=False)
