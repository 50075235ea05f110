"""The recipe: typed sections, loaded from YAML and ``-o key=value`` overrides, validated before any work.

Each kind of part owns its options: ``vision``, ``llm``, ``connector``, every ``methods`` entry and
every data source given as a mapping are chosen by ``name`` from their registry, and the chosen part's
own options class (a subclass of the kind's base below, declared in the part's file) takes the rest.
Unknown keys are rejected by their dotted name with a suggestion (``methods[0].rank`` -> ``r``), types,
choices and ranges are checked, and ``vlgraft train --help-recipe`` lists every key and every part's
options from these declarations (``vlgraft.options``).
"""

from __future__ import annotations

import importlib
import re
import sys
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml

from vlgraft.errors import ConfigError
from vlgraft.options import Part, check_values, help_lines, load, option, to_dict
from vlgraft.registry import CONNECTOR, DATASET, LLM, METHOD, VISION

PRECISIONS = ("fp32", "bf16")


# ----------------------------------------------------------------------------- the kinds of parts

@dataclass(kw_only=True)
class VisionOptions(Part):
    """Options every image encoder takes (token selection is shared); a tower may subclass them."""

    registry: ClassVar = VISION
    name: str = option("efficientnet-lite0", "registered encoder name, or 'hf:<hub id or local dir>' for any "
                       "transformers vision tower (CLIP, SigLIP, ViT, DINOv2)")
    feature_layer: int = option(-1, "which layer's features: hidden-state index for HF towers (LLaVA uses -2); "
                                "for EfficientNet -1 is the head conv (1280 ch), k>=0 the output of block k")
    grid: int | None = option(None, "average-pool the patch tokens to grid x grid tokens; null keeps all", min=1)
    image_size: int | None = option(None, "input resolution in pixels; null uses the encoder's native size", min=1)
    feature_layers: list[int] | None = option(None, "several layers at once (same numbering as feature_layer), "
                                              "merged by layer_merge; overrides feature_layer (LaVIN / "
                                              "LLaMA-Adapter multi-scale features)")
    layer_merge: str = option("channels", "how feature_layers combine: channels (concatenate widths; token counts "
                              "must match) | tokens (one token sequence after another; widths must match)",
                              choices=("channels", "tokens"))
    tokens: str = option("patch", "which tokens: patch (all patch tokens, or pooled to grid) | cls (one global "
                         "token: [CLS], or the mean of the patches for towers without one) | cls+patch | "
                         "embed (an image-text pair's projected embedding, one token; for TOMGPT text-only training)",
                         choices=("patch", "cls", "cls+patch", "embed"))


@dataclass(kw_only=True)
class LLMOptions(Part):
    """Options every language model takes; an LLM entry may subclass them."""

    registry: ClassVar = LLM
    name: str = option("smollm2-135m-instruct", "registered LLM name, or 'hf:<hub id or local dir>' for any "
                       "AutoModelForCausalLM")
    system_prompt: str | None = option(None, "system message for every conversation; null uses the chat "
                                       "template's own default")
    dtype: str = option("float32", "dtype of the loaded weights", choices=("float32", "bfloat16", "float16"))


@dataclass(kw_only=True)
class ConnectorOptions(Part):
    """Base of every connector's options (``connectors/<name>.py`` declares the rest)."""

    registry: ClassVar = CONNECTOR
    name: str = option("mlp", "registered connector")


@dataclass(kw_only=True)
class MethodOptions(Part):
    """Base of every method's options (``methods/<file>.py`` declares the rest)."""

    registry: ClassVar = METHOD
    name: str = option(MISSING, "registered method")


@dataclass(kw_only=True)
class FormatOptions(Part):
    """Base of every data format's options (``data/formats/<name>.py`` declares the rest). A data source
    is such a mapping, or the short form ``'name:ARG'``, where ARG sets the option named by ``spec_arg``
    (``from_arg`` may parse more out of it, e.g. ``path#split``)."""

    registry: ClassVar = DATASET
    name: str = option(MISSING, "registered data format")
    spec_arg: ClassVar[str] = "path"

    @classmethod
    def from_arg(cls, arg: str) -> dict:
        return {cls.spec_arg: arg} if arg else {}


def options_for(base: type, name: str, **values) -> Part:
    """The options of the part ``name`` of ``base``'s kind, from keyword values (validated)."""
    return load(base.registry.options(name), {"name": name, **values}, f"{base.registry.kind} {name!r}")


# ----------------------------------------------------------------------------- recipe sections

DataSource = str | FormatOptions


@dataclass
class ParamGroup:
    name: str = option(MISSING, "group name used in logs")
    params: list[str] = option(MISSING, "fnmatch patterns over model parameter names, e.g. "
                               "'connector.*', 'llm.*lora_*', 'vision.*'; a bare component name "
                               "(vision | connector | llm) means all its parameters; a method's name its "
                               "parameters (and '<method>.<group>' one of its groups)")
    lr: float | str = option(1e-4, "peak learning rate of this group, or 'mm1': MM1's fit to the LLM's "
                             "non-embedding parameter count N, exp(-0.4214 ln N - 0.5535), with weight decay "
                             "0.1 x lr", gt=0)
    weight_decay: float = option(0.0, "AdamW weight decay of this group (with lr: mm1, 0.1 x lr)", min=0)


@dataclass
class MixSource:
    train: DataSource = option(MISSING, "a training data source, as data.train")
    weight: float | None = option(None, "sampling ratio against the other sources (e.g. 5, 5, 1); the source's "
                                  "records cycle, each pass reshuffled", gt=0)
    epochs: float | None = option(None, "passes over this source instead of a weight (then every source gives "
                                  "epochs, and the run's length follows from them unless train.max_steps is set)", gt=0)
    image_root: str | None = option(None, "as data.image_root, for this source")
    limit: int | None = option(None, "use only this source's first N records", min=1)


@dataclass
class DataConfig:
    train: DataSource | None = option(None, "training data: a data format's options {name: coco, path: ...}, or "
                                      "the short form 'name:arg' (easyvqa:train, coco:captions.json, ...), or a "
                                      "LLaVA conversation .json/.jsonl file; null: easyvqa:train, or data.mixture")
    mixture: list[MixSource] = option(factory=list, help="several training sources sampled by ratio or by epochs "
                                      "(MM1's caption : interleaved : text = 5 : 5 : 1); replaces data.train")
    group_by_modality: bool = option(False, "every global batch is all image-text or all text-only (needed by "
                                     "train.modality_groups; LLaVA-1.5's modality grouping)")
    eval: DataSource = option("easyvqa:test", "evaluation data, same forms as 'train'")
    image_root: str | None = option(None, "folder that relative 'image' paths are resolved against "
                                    "(default: the data file's folder)")
    max_length: int = option(1024, "maximum tokens per sequence, visual tokens included", min=1)
    turns: str = option("conversation", "conversation: train on each record as one multi-turn chat; independent: "
                        "pack its question/answer pairs as independent single-turn questions that share the "
                        "image prefix (one image encoding per record, no answer visible to another question)",
                        choices=("conversation", "independent"))
    limit: int | None = option(None, "use only the first N training records", min=1)
    pack: bool = option(False, "pack several whole records (one source, one modality) into each training row of "
                        "up to max_length tokens, each record attending only to itself: no padding spent on "
                        "short records; train.batch_size then counts rows — with data.stream, each micro-batch's "
                        "records are packed and batch_size still counts records (docs/DATA.md, 'Packing records')")
    stream: bool = option(False, "read, check and tokenise training records as the batches need them (in the "
                          "DataLoader's workers) instead of all before the first step: for data of any size; "
                          "batches come from a shuffle buffer (docs/DATA.md, 'Streaming')")
    shuffle_buffer: int = option(10_000, "data.stream: records per source held to draw each batch from", min=1)
    max_image_pixels: int = option(89_478_485, "largest image accepted, in pixels (width x height); a larger one "
                                   "is an error naming the record (a decompression bomb guard)", min=1)
    describe_first: str | None = option(None, "a request such as 'Describe the image.': every question about an "
                                        "image is asked behind a first exchange in which the model describes the "
                                        "image (LLaMA-Adapter V2's expert captions, the model as its own expert); "
                                        "training uses each record's gold 'description', eval and chat the "
                                        "model's own (docs/DESCRIBE.md)")


@dataclass
class TrainConfig:
    output_dir: str = option("runs/default", "run folder: checkpoints, metrics.jsonl, tensorboard")
    epochs: float = option(1.0, "passes over the training data (fractions allowed)", gt=0)
    max_steps: int | None = option(None, "optimizer steps; overrides epochs when set", min=1)
    batch_size: int = option(16, "micro-batch per process", min=1)
    grad_accum: int = option(1, "micro-batches per optimizer step (global batch = batch_size x grad_accum x "
                             "processes)", min=1)
    schedule: str = option("cosine", "learning-rate schedule (transformers.get_scheduler, with warm-up)",
                           choices=("cosine", "linear", "constant"))
    warmup_ratio: float = option(0.03, "fraction of steps with linear warm-up", min=0, max=1)
    max_grad_norm: float | None = option(1.0, "gradient clipping norm; null disables", gt=0)
    precision: str = option("bf16", "autocast precision, on CPU and GPU", choices=PRECISIONS)
    seed: int = option(0, "seed for initialisation, data order and dropout", min=0, max=2**32 - 1)
    text_kl: float = option(0.0, "weight of a KL term to the frozen base model on text-only samples' answer tokens "
                            "(the base: this model with every method switched off, no second copy); 0: off", min=0)
    feature_cache: bool = option(True, "cache frozen image-encoder features on disk (keyed by encoder, "
                                 "preprocessing and image bytes)")
    log_every: int = option(10, "optimizer steps between metric records", min=1)
    save_every: int | None = option(None, "optimizer steps between resumable checkpoints; null: only at the end",
                                    min=1)
    keep_checkpoints: int = option(2, "resumable checkpoints kept (older ones are deleted)", min=1)
    num_workers: int = option(0, "DataLoader worker processes", min=0)
    modality_groups: dict[str, list[str]] | None = option(
        None, "joint training (LLaMA-Adapter V2): {image: [group names], text: [group names]} — an image-text "
        "batch steps only the 'image' groups, a text-only batch only the 'text' groups; needs data.group_by_modality")


@dataclass
class EvalConfig:
    batch_size: int = option(64, "questions per generation batch", min=1)
    max_new_tokens: int = option(8, "generation budget per answer", min=1)
    limit: int | None = option(None, "evaluate only the first N questions", min=1)
    describe_max_new_tokens: int = option(32, "generation budget per description (data.describe_first)", min=1)
    loss_records: int = option(0, "also report the held-out loss (teacher forcing) over the first N records", min=0)
    text: str = option("off", "text-only ability (perplexity, QA) before and after training: off | also | only "
                       "(skip VQA)", choices=("off", "also", "only"))
    text_set: str | None = option(None, "the text set (JSONL) for eval.text; null: the bundled one")
    text_batch_size: int = option(16, "questions per batch of the text ability measure", min=1)
    precision: str | None = option(None, "precision of eval and chat; null: train.precision", choices=PRECISIONS)
    tasks: list[str] = option(factory=list, help="benchmarks to run (eval/tasks.py): vqa (data.eval), "
                              "caption:SOURCE, pope:OBJECTS[:SETTING], choice:SOURCE; empty: vqa")
    caption_max_new_tokens: int = option(32, "generation budget per caption (caption tasks)", min=1)
    choice_scoring: str = option("generate", "choice tasks: generate (read the option letter from the answer) | "
                                 "likelihood (the most likely option as the reply)", choices=("generate", "likelihood"))
    choice_candidates: str = option("letter", "choice tasks scored by likelihood: the reply is the option's letter "
                                    "or its text", choices=("letter", "option"))
    choice_circular: bool = option(False, "choice tasks: CircularEval (every rotation of the options must be "
                                   "answered right)")


@dataclass
class ChatConfig:
    max_new_tokens: int = option(128, "generation budget per chat answer", min=1)


@dataclass
class Recipe:
    name: str = option("default", "recipe name")
    imports: list[str] = option(factory=list, help="Python modules imported before the rest of the recipe is read: "
                                "they may register parts of their own (connectors, methods, data formats, ...)")
    vision: VisionOptions = option(factory=lambda: options_for(VisionOptions, "efficientnet-lite0"),
                                   help="image encoder")
    llm: LLMOptions = option(factory=lambda: options_for(LLMOptions, "smollm2-135m-instruct"),
                             help="causal language model")
    connector: ConnectorOptions = option(factory=lambda: options_for(ConnectorOptions, "mlp"),
                                         help="vision -> LLM connector")
    methods: list[MethodOptions] = option(factory=list, help="PEFT methods applied in order, each {name: ..., its "
                                          "options}; e.g. {name: lora, r: 16, alpha: 32, "
                                          "target_modules: [q_proj, v_proj]}")
    trainable: list[ParamGroup] = option(factory=lambda: [ParamGroup(name="connector", params=["connector"], lr=1e-3)],
                                         help="parameter groups that train; everything else is frozen")
    vision_hr: VisionOptions | None = option(None, "a second, high-resolution image encoder (Mini-Gemini); used "
                                             "by the patch_mining connector")
    init_from: str | None = option(None, "a previous run or checkpoint (e.g. stage 1 of a curriculum) whose trained "
                                   "weights initialise this model; kept as a reference: this run's checkpoint holds "
                                   "only its own trainable parameters and eval/chat load the chain")
    data: DataConfig = option(factory=DataConfig, help="data")
    train: TrainConfig = option(factory=TrainConfig, help="training loop")
    eval: EvalConfig = option(factory=EvalConfig, help="evaluation (vlgraft eval)")
    chat: ChatConfig = option(factory=ChatConfig, help="chat (vlgraft chat)")


def from_dict(cls: type, data: dict, source: str = "recipe", prefix: str = "") -> Any:
    """``cls`` (a recipe section, or ``Recipe``) from plain data (``vlgraft.options.load``); a recipe's
    ``imports`` are imported first, so that the parts they register can be chosen by name."""
    if cls is Recipe and isinstance(data, dict):
        import_modules(data.get("imports") or [], source)
    return load(cls, data, source, prefix)


def import_modules(modules, source: str) -> None:
    """Import a recipe's ``imports`` (the working folder is searched too); errors name the entry."""
    if not isinstance(modules, list):
        raise ConfigError(f"{source}: key 'imports' expects a list of module names, got {modules!r}")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.append(str(Path.cwd()))
    for i, mod in enumerate(modules):
        if not isinstance(mod, str) or not mod:
            raise ConfigError(f"{source}: key 'imports[{i}]' expects a module name, got {mod!r}")
        try:
            importlib.import_module(mod)
        except ImportError as e:
            raise ConfigError(f"{source}: key 'imports[{i}]': cannot import {mod!r}: {e}") from None


# ----------------------------------------------------------------------------- loading

_INDEX = re.compile(r"^([^\[\]]*)((?:\[\d+\])*)$")


def _set_dotted(d: dict, dotted: str, value: Any, source: str) -> None:
    """``a.b=v`` and ``methods[0].r=v`` into nested data (lists are indexed, not extended)."""
    cur: Any = d
    steps: list[str | int] = []
    for part in dotted.split("."):
        m = _INDEX.match(part)
        if not m or (not m.group(1) and not steps):
            raise ConfigError(f"{source}: '{dotted}' is not a dotted key")
        if m.group(1):
            steps.append(m.group(1))
        steps += [int(i) for i in re.findall(r"\[(\d+)\]", m.group(2))]
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        if isinstance(step, int):
            if not isinstance(cur, list) or step >= len(cur):
                raise ConfigError(f"{source}: cannot set '{dotted}': no item [{step}] there")
            if last:
                cur[step] = value
            else:
                cur = cur[step]
        elif not isinstance(cur, dict):
            raise ConfigError(f"{source}: cannot set '{dotted}': '{step}' is not inside a mapping")
        elif last:
            cur[step] = value
        else:
            nxt = cur.setdefault(step, {} if not isinstance(steps[i + 1], int) else [])
            if not isinstance(nxt, (dict, list)):
                raise ConfigError(f"{source}: cannot set '{dotted}': '{step}' is not a mapping")
            cur = nxt


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """``key.sub=value`` strings (values parsed as YAML) applied to recipe data, in order."""
    for ov in overrides or []:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} must look like key.sub=value")
        k, v = ov.split("=", 1)
        try:
            value = yaml_load(v)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {ov!r}: the value is not valid YAML: {yaml_error(e)}") from None
        except RecursionError:
            raise ConfigError(f"override {ov!r}: the value is nested too deeply") from None
        _set_dotted(data, k.strip(), value, f"override {ov!r}")
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key written twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def yaml_load(text: str):
    return yaml.load(text, Loader=_UniqueKeyLoader)


def yaml_error(e: yaml.YAMLError) -> str:
    """A YAML error on one line, with its line and column where the parser gives them."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else problem


def read_yaml_mapping(path: str | Path, what: str) -> dict:
    """A YAML file whose top level is a mapping; errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} file not found: {p}")
    try:
        data = yaml_load(p.read_bytes().decode("utf-8-sig")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {yaml_error(e)}") from None
    except RecursionError:
        raise ConfigError(f"{p}: YAML nested too deeply to read") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a {what} must be a mapping at the top level")
    return data


# Keys that recipe.yaml files written before each part declared its own options hold: the old shared
# connector section listed every connector's options with their defaults.
_LEGACY_CONNECTOR_KEYS = ("hidden_dim", "num_queries", "num_heads", "grid", "mode")


def upgrade_saved(data: dict) -> dict:
    """A checkpoint's saved recipe in today's form: a pre-typed ``connector`` section keeps only the
    options its connector declares (the others were other connectors' defaults)."""
    conn = data.get("connector")
    if isinstance(conn, dict) and isinstance(conn.get("name"), str) and conn["name"] in CONNECTOR:
        own = {f for f in CONNECTOR.options(conn["name"]).__dataclass_fields__}
        data["connector"] = {k: v for k, v in conn.items() if k in own or k not in _LEGACY_CONNECTOR_KEYS}
    return data


# What a checkpoint fixes: overriding these on a trained run would build another model than was trained.
FIXED_BY_CHECKPOINT = ("imports", "vision", "vision_hr", "llm.name", "connector", "methods", "trainable", "init_from")


def load_recipe(path: str | Path | None, overrides: list[str] | None = None, saved: bool = False) -> Recipe:
    """Load a recipe YAML (or the defaults when ``path`` is None), apply ``key.sub=value`` overrides and
    validate. ``saved``: a checkpoint's own recipe.yaml (upgraded from older forms), whose overrides may
    not change the model it holds."""
    data: dict = {}
    for ov in (overrides or []) if saved else []:
        key = ov.split("=", 1)[0].strip()
        # the key itself, a key inside it (connector.hidden_dim), or a section holding it (llm holds llm.name)
        fixed = next((f for f in FIXED_BY_CHECKPOINT
                      if key == f or key.startswith((f + ".", f + "[")) or f.startswith(key + ".")), None)
        if fixed:
            raise ConfigError(f"override {ov!r}: '{fixed}' is fixed by the checkpoint (it defines the trained "
                              "model); override data, eval, chat or train settings instead")
    source = (str(path) if path else "defaults") + (" with its -o overrides" if overrides else "")
    if path is not None:
        data = read_yaml_mapping(path, "recipe")
    if saved:
        if not data:
            raise ConfigError(f"{path} is empty: a checkpoint's recipe.yaml holds the recipe it was trained with")
        import_modules(data.get("imports") or [], str(path))
        data = upgrade_saved(data)
    apply_overrides(data, overrides or [])
    recipe = from_dict(Recipe, data, source)
    validate(recipe, source)
    return recipe


def validate(r: Recipe, source: str = "recipe") -> None:
    """What no single key can check: relations between keys, and data sources that must name a format."""
    from vlgraft.data.sources import parse_source

    check_values(r, source)  # the declared ranges, also for a Recipe built or changed in code
    if r.data.describe_first is not None and not r.data.describe_first.strip():
        raise ConfigError(f"{source}: key 'data.describe_first' must be a non-empty request (text) or null")
    if not r.trainable:
        raise ConfigError(f"{source}: key 'trainable' lists no parameter group: nothing would train")
    for g in r.trainable:
        check_lr(g, source)
    names = [g.name for g in r.trainable]
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: parameter group names in 'trainable' must be unique: {names}")
    if r.data.mixture and r.data.train is not None:
        raise ConfigError(f"{source}: data.train and data.mixture are both set: a mixture lists its sources itself "
                          "(set data.train: null)")
    by_epochs = [m.epochs is not None for m in r.data.mixture]
    if any(by_epochs) and not all(by_epochs):
        raise ConfigError(f"{source}: data.mixture: give every source 'epochs', or none (then 'weight', default 1)")
    for i, m in enumerate(r.data.mixture):
        if m.weight is not None and m.epochs is not None:
            raise ConfigError(f"{source}: data.mixture[{i}] ({m.train}): set 'weight' or 'epochs', not both")
    for key, spec in [("data.train", r.data.train), ("data.eval", r.data.eval)] + [
            (f"data.mixture[{i}].train", m.train) for i, m in enumerate(r.data.mixture)]:
        if spec is not None:
            parse_source(spec, f"{source}: key '{key}'")
    _check_modality_groups(r, names, source)


def check_lr(g: ParamGroup, source: str = "recipe") -> None:
    """A group's ``lr`` is a number or ``mm1``."""
    if isinstance(g.lr, str) and g.lr != "mm1":
        raise ConfigError(f"{source}: trainable group {g.name!r}: lr must be a number or 'mm1', got {g.lr!r}")


def _check_modality_groups(r: Recipe, group_names: list[str], source: str) -> None:
    """``train.modality_groups``: keys image/text, known and disjoint group names, grouped batches."""
    mg = r.train.modality_groups
    if mg is None:
        return
    if set(mg) != {"image", "text"}:
        raise ConfigError(f"{source}: train.modality_groups needs exactly the keys 'image' and 'text', "
                          f"got {sorted(mg)}")
    if not r.data.group_by_modality:
        raise ConfigError(f"{source}: train.modality_groups needs data.group_by_modality: true "
                          "(one modality per batch)")
    for k, names in mg.items():
        unknown = [n for n in names if n not in group_names]
        if unknown:
            raise ConfigError(f"{source}: train.modality_groups.{k}: unknown trainable group(s) {unknown}; "
                              f"groups: {group_names}")
    both = set(mg["image"]) & set(mg["text"])
    if both:
        raise ConfigError(f"{source}: train.modality_groups: {sorted(both)} in both image and text")


def inference_precision(r: Recipe) -> str:
    """The precision of eval and chat: ``eval.precision``, else ``train.precision``."""
    return r.eval.precision or r.train.precision


def recipe_help() -> list[str]:
    """One line per recipe key and per part option — for ``--help-recipe``."""
    return help_lines(Recipe)


def dump_recipe(r: Recipe) -> str:
    return yaml.safe_dump(to_dict(r), sort_keys=False)
