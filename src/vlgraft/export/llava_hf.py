"""``--format llava-hf``: a folder that ``transformers.LlavaForConditionalGeneration`` and ``AutoProcessor``
read on their own (no vlgraft import), safetensors only, and that computes what the vlgraft model computes.

LLaVA in transformers is one vision tower, a projector ``linear_1 -> act -> linear_2`` applied per token,
and a causal LM; the visual tokens replace the ``<image>`` token positions the processor expands. The
vlgraft parts map onto it as follows:

* ``vision`` (an ``hf:`` tower) -> ``vision_config`` + ``model.vision_tower.*`` (methods merged). LLaVA
  builds the tower with ``AutoModel.from_config``, so the tower's class must be the one it builds.
* ``vision.feature_layer`` -> ``vision_feature_layer`` (the same hidden-state index); ``feature_layers`` with
  ``layer_merge: channels`` -> a list (LLaVA concatenates the layers on channels, in order, as vlgraft does).
* ``vision.tokens: patch`` on a tower with [CLS] (CLIP) -> ``vision_feature_select_strategy: default``, which
  drops token 0 as vlgraft does; on a tower without one (SigLIP) -> ``full``; ``cls+patch`` on CLIP -> ``full``.
* connector ``mlp`` (``fc1``, ``nn.GELU()``, ``fc2``) -> ``linear_1``, ``projector_hidden_act: gelu`` (transformers'
  ``gelu`` is ``F.gelu``, the same exact erf form), ``linear_2``. Connector ``linear`` (``proj``) -> ``linear_1``
  = ``proj``, ``projector_hidden_act: linear`` (identity) and ``linear_2`` = identity matrix, zero bias.
* the LLM (mergeable methods merged) -> ``text_config`` + ``model.language_model.*`` (its base model) +
  ``lm_head``; ``<image>`` becomes a special token, with one appended embedding row when it falls beyond
  the matrix (``_text_weights``).
* ``vision.preprocess`` (PIL square bicubic resize, /255, the tower's mean and std) -> a CLIP image processor
  with ``size: {height, width}``, ``resample: 3`` and no centre crop; ``num_additional_image_tokens`` and the
  strategy make the processor expand ``<image>`` into ``vlm.num_image_tokens`` tokens.
* the LLM's chat template and ``llm.system_prompt`` -> the processor's ``chat_template``: a prefix that turns
  ``{"type": "image"}`` / ``{"type": "text"}`` content parts into vlgraft's ``"<image>\\n" + question`` text
  and adds the system message, then the LLM's own template (``chat_template``).
* ``llm.stop_token_ids``, greedy decoding, ``chat.max_new_tokens`` -> ``generation_config.json``.

Whatever LLaVA cannot express — another tower, pooling, resizing, a connector with other layers, a
method that stays a module (it changes the computation inside the LLM or the sequence) — is refused
by ``check`` in one line before anything is merged or written; ``--format vlgraft`` takes any recipe.
docs/EXPORT.md has the user's view (and how to compare the two).
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch
from torch import nn

from vlgraft.errors import VlgraftError

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
_PROBE_QUESTION = "What is in the picture?"  # the prompt check() tokenizes both ways


# ---------------------------------------------------------------------------------------------- check
def check(vlm, recipe) -> None:
    """Raise a one-line ``VlgraftError`` naming the first part llava-hf cannot represent."""
    # methods first: the later checks run the tower, which a method's modules may not allow outside a forward
    for problem in (_method_problem, _vision_problem, _connector_problem, _llm_problem, _prompt_problem):
        what = problem(vlm, recipe)
        if what:
            raise VlgraftError(f"llava-hf cannot represent {what}; export with --format vlgraft")


def _vision_problem(vlm, recipe) -> str | None:
    from vlgraft.models.vision import DualEncoder, HFVisionEncoder

    enc, cfg = vlm.vision, recipe.vision
    if recipe.vision_hr is not None or isinstance(enc, DualEncoder):
        return "vision_hr (a second, high-resolution tower: LLaVA has one)"
    if not isinstance(enc, HFVisionEncoder):
        return f"vision {cfg.name!r} (not a transformers tower)"
    if cfg.tokens in ("cls", "embed"):
        return f"vision.tokens: {cfg.tokens} (LLaVA passes the patch tokens, with or without the class token)"
    side = enc.image_size // enc.patch
    if cfg.grid and cfg.grid != side:  # pooling to the tower's own grid is the identity
        return f"vision.grid: {cfg.grid} (pooling; LLaVA passes the tower's {side}x{side} patch grid as it is)"
    if enc.image_size != enc.native_size:
        return (f"vision.image_size: {enc.image_size} (the tower's native size is {enc.native_size}; LLaVA does "
                "not interpolate position embeddings)")
    if len(enc.layers) > 1 and cfg.layer_merge == "tokens":
        return "vision.layer_merge: tokens with several feature_layers (LLaVA concatenates layers on channels)"
    extra = _extra_tokens(enc)
    if extra > 1:
        return f"vision {cfg.name!r} ({extra} tokens before the patches, e.g. registers: LLaVA drops at most one)"
    if cfg.tokens == "cls+patch" and not extra:
        return (f"vision.tokens: cls+patch on {cfg.name!r}, which has no class token (vlgraft puts the patch mean "
                "there)")
    if _auto_class_mismatch(enc.model.config, type(enc.model)) is not None:
        return f"vision {cfg.name!r} (transformers' AutoModel builds another class from its config)"
    return None


def _extra_tokens(enc) -> int:
    """Tokens the tower puts before its patches ([CLS], registers). Counted by running it once on a blank
    image: the only answer that holds for every architecture."""
    p = next(enc.tower.parameters())
    pixels = torch.zeros(1, 3, enc.image_size, enc.image_size, dtype=p.dtype, device=p.device)
    with torch.no_grad():
        hidden = enc.tower(pixel_values=pixels, output_hidden_states=True).hidden_states[enc.layers[0]]
    return hidden.shape[1] - enc.n_patch


def _auto_class_mismatch(config, cls: type) -> str | None:
    """The class name ``AutoModel.from_config(config)`` builds when it is not ``cls`` (LLaVA builds both
    parts that way), else None."""
    from transformers import AutoModel

    with torch.device("meta"):
        built = type(AutoModel.from_config(copy.deepcopy(config)))
    return None if built is cls else built.__name__


def _connector_problem(vlm, recipe) -> str | None:
    from vlgraft.connectors.linear import LinearConnector
    from vlgraft.connectors.mlp import MLPConnector

    con, name = vlm.connector, recipe.connector.name
    if type(con) is LinearConnector:
        return None
    if type(con) is not MLPConnector:
        return f"connector {name!r} (LLaVA's projector is linear or a two-layer GELU MLP)"
    if con.fc1.out_features != vlm.llm.hidden_size:
        return (f"connector mlp hidden_dim: {con.fc1.out_features} (LLaVA's MLP is as wide as the LLM, "
                f"{vlm.llm.hidden_size})")
    if not isinstance(con.act, nn.GELU) or con.act.approximate != "none":  # transformers' "gelu" is the erf form
        return f"connector mlp activation {con.act} (LLaVA's 'gelu' is the exact erf form)"
    return None


def _method_problem(vlm, recipe) -> str | None:
    kept = [m for m in vlm.methods if not m.mergeable]
    if kept and getattr(kept[0].cfg, "scope", "all") != "all":
        return (f"method {kept[0].name!r} with scope {kept[0].cfg.scope!r} (it acts on image samples only, which "
                "weights merged into the LLM cannot do)")
    if kept:
        return (f"method {kept[0].name!r} (it stays a module inside the model and cannot be merged into the base "
                "weights)")
    return None


def _llm_problem(vlm, recipe) -> str | None:
    model, name = vlm.llm.model, recipe.llm.name
    base = type(model.base_model).__name__
    built = _auto_class_mismatch(model.config, type(model.base_model))
    if built is not None:
        return f"llm {name!r} (as LLaVA's text_config, transformers builds {built}, not its {base})"
    if getattr(model.config, "final_logit_softcapping", None):
        return f"llm {name!r} (final logit soft-capping: LLaVA's LM head is a plain linear layer)"
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        return f"llm {name!r} (its LM head has a bias: LLaVA's has none)"
    with torch.device("meta"):
        fresh = type(model)(copy.deepcopy(model.config))
    prefix = model.base_model_prefix + "."
    head_w = fresh.get_output_embeddings().weight
    head_keys = {n for n, p in fresh.named_parameters(remove_duplicate=False) if p is head_w}
    other = [k for k in fresh.state_dict() if not k.startswith(prefix) and k not in head_keys]
    if other:
        return f"llm {name!r} (weights outside its base model and LM head, e.g. {other[0]!r})"
    return None


def _prompt_problem(vlm, recipe) -> str | None:
    """The exported template and tokenizer must give vlgraft's prompt tokens for a question about an image
    (vlgraft tokenizes the text around each ``<image>`` separately, the processor the whole string)."""
    tok, image_id = _tokenizer(vlm)
    turns = [("user", f"{IMAGE_TOKEN}\n{_PROBE_QUESTION}")]
    rendered, same_ids = _probe(vlm, tok, image_id, turns)
    if not rendered:
        return f"llm {recipe.llm.name!r} chat template (the exported template renders a prompt differently)"
    if not same_ids:
        return (f"llm {recipe.llm.name!r} tokenizer (it tokenizes the text around {IMAGE_TOKEN} differently when "
                "it is one string, as the processor gives it)")
    return None


def _probe(vlm, tok, image_id: int, turns: list[tuple[str, str]]) -> tuple[bool, bool]:
    """(the exported template renders ``turns`` as vlgraft does, the processor's token ids equal vlgraft's)."""
    from vlgraft.data.conversation import tokenize_prompt
    from vlgraft.models.vlm import IMAGE_TOKEN_ID

    n = vlm.num_image_tokens
    text = tok.apply_chat_template(_as_parts(turns), chat_template=chat_template(vlm), tokenize=False,
                                   add_generation_prompt=True)
    if text != vlm.llm.render(vlm.llm.messages(turns), add_generation_prompt=True):
        return False, False
    ids = [image_id if t == IMAGE_TOKEN_ID else t for t in tokenize_prompt(turns, vlm.llm, n).tolist()]
    return True, _processor_ids(tok, text, n) == ids


def _followup_note(vlm, tok, image_id: int) -> str | None:
    """vlgraft tokenizes a conversation turn by turn; a template whose turns do not end on a special token
    (the plain User:/Assistant: fallback) can tokenize a turn boundary differently as one string. Single
    questions are unaffected (check() refuses otherwise), so this is a note, not a refusal."""
    turns = [("user", f"{IMAGE_TOKEN}\n{_PROBE_QUESTION}"), ("assistant", "A cat."), ("user", "And its colour?")]
    if all(_probe(vlm, tok, image_id, turns)):
        return None
    return "multi-turn prompts may tokenize differently from vlgraft at turn boundaries"


def _as_parts(turns: list[tuple[str, str]]) -> list[dict]:
    """vlgraft turns as transformers messages: ``<image>\\n`` placeholders become ``{"type": "image"}`` parts."""
    out = []
    for role, text in turns:
        pieces = text.split(f"{IMAGE_TOKEN}\n")
        parts = [{"type": "image"}] * (len(pieces) - 1) + [{"type": "text", "text": "".join(pieces)}]
        out.append({"role": role, "content": parts})
    return out


def _processor_ids(tok, text: str, n: int) -> list[int]:
    """What ``LlavaProcessor`` makes of a rendered prompt: each ``<image>`` repeated ``n`` times, then one
    tokenizer call, without special tokens when the text starts with BOS (processing_utils)."""
    expanded = text.replace(IMAGE_TOKEN, IMAGE_TOKEN * n)
    add = not (tok.bos_token is not None and expanded.startswith(tok.bos_token))
    return tok(expanded, add_special_tokens=add).input_ids


# ------------------------------------------------------------------------------------ prompt format
def _tokenizer(vlm):
    """A copy of the LLM's tokenizer with ``<image>`` as a special token, and that token's id."""
    from tokenizers import AddedToken

    tok = copy.deepcopy(vlm.llm.tokenizer)
    if IMAGE_TOKEN not in tok.get_vocab():
        tok.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    # batched generation continues every row from its last token, as vlgraft pads; saved only from init_kwargs
    tok.padding_side = tok.init_kwargs["padding_side"] = "left"
    return tok, tok.convert_tokens_to_ids(IMAGE_TOKEN)


# Rebuilds ``messages`` with string contents: an image part becomes the "<image>\n" vlgraft puts before
# the question, a text part its text; then the recipe's system prompt goes first when the conversation
# has none (LanguageModel.messages). The LLM's own template follows and renders the result. ``{{ '' }}``
# ends the prefix with an expression, not a block tag, so trim_blocks cannot eat a newline the LLM's
# template begins with.
_PREFIX = """{%- set vlgraft = namespace(msgs=[], text='') -%}
{%- for m in messages -%}
{%- if m['content'] is string or m['content'] is none -%}
{%- set vlgraft.msgs = vlgraft.msgs + [m] -%}
{%- else -%}
{%- set vlgraft.text = '' -%}
{%- for part in m['content'] -%}
{%- if part['type'] == 'image' -%}{%- set vlgraft.text = vlgraft.text + '<image>\\n' -%}
{%- elif part['type'] == 'text' -%}{%- set vlgraft.text = vlgraft.text + part['text'] -%}
{%- endif -%}
{%- endfor -%}
{%- set vlgraft.msgs = vlgraft.msgs + [dict(m, content=vlgraft.text)] -%}
{%- endif -%}
{%- endfor -%}
"""
_SYSTEM = """{%- if not vlgraft.msgs or vlgraft.msgs[0]['role'] != 'system' -%}
{%- set vlgraft.msgs = [{'role': 'system', 'content': SYSTEM}] + vlgraft.msgs -%}
{%- endif -%}
"""
_END = "{%- set messages = vlgraft.msgs %}{{ '' }}"


def chat_template(vlm) -> str:
    """The processor's chat template: the content-parts prefix, then the LLM's own template."""
    own = vlm.llm.tokenizer.chat_template
    if isinstance(own, dict):  # named templates: apply_chat_template uses "default"
        own = own["default"]
    system = vlm.llm.cfg.system_prompt
    mid = "" if system is None else _SYSTEM.replace("SYSTEM", json.dumps(system, ensure_ascii=False))
    return _PREFIX + mid + _END + own


# ---------------------------------------------------------------------------------------------- write
def write(vlm, recipe, folder: Path) -> dict:
    """Merge the mergeable methods into ``vlm`` (in place), then write the llava-hf folder."""
    merged = [[m.name, m.merge(vlm)] for m in vlm.methods]  # check() refused any that is not mergeable
    tok, image_id = _tokenizer(vlm)
    extra = _extra_tokens(vlm.vision)
    text_state, vocab, tied, added = _text_weights(vlm, image_id)
    config = _llava_config(vlm, image_id, vocab, tied, extra)
    llava = _llava_model(config, {**_vision_weights(vlm), **_projector_weights(vlm.connector), **text_state}, tied)
    llava.generation_config = _generation_config(vlm, recipe, tok, image_id)
    llava.save_pretrained(folder)
    _processor(vlm, tok, config.vision_feature_select_strategy, extra).save_pretrained(folder)
    note = _followup_note(vlm, tok, image_id)
    if note:
        log.warning("llava-hf export: %s", note)
    return {"format": "llava-hf", "merged": merged, "image_token_id": image_id, "image_tokens": vlm.num_image_tokens,
            "rows_added": added, "vision_feature_layer": config.vision_feature_layer,
            "vision_feature_select_strategy": config.vision_feature_select_strategy,
            "projector_hidden_act": config.projector_hidden_act, "note": note}


def _llava_config(vlm, image_id: int, vocab: int, tied: bool, extra: int):
    """``LlavaConfig`` of the two parts' own configs. "default" drops the first token of each feature layer,
    which is what ``tokens: patch`` does on a tower with [CLS]; "full" keeps them all."""
    from transformers import LlavaConfig

    enc = vlm.vision
    text_config = copy.deepcopy(vlm.llm.model.config)
    text_config.vocab_size, text_config.tie_word_embeddings = vocab, tied  # LlavaConfig copies a True tie up
    text_config.dtype = vlm.llm.model.dtype
    strategy = "default" if enc.cfg.tokens == "patch" and extra == 1 else "full"
    layers = enc.layers
    config = LlavaConfig(vision_config=copy.deepcopy(enc.model.config), text_config=text_config,
                         image_token_index=image_id, image_seq_length=vlm.num_image_tokens,
                         projector_hidden_act=_activation(vlm.connector), vision_feature_select_strategy=strategy,
                         vision_feature_layer=layers[0] if len(layers) == 1 else list(layers),
                         multimodal_projector_bias=True, tie_word_embeddings=tied)
    config.dtype = text_config.dtype
    return config


def _llava_model(config, state: dict[str, torch.Tensor], tied: bool):
    """``LlavaForConditionalGeneration`` holding ``state``: built on the meta device and given the tensors
    themselves (no second copy of the weights), its own class checking every name."""
    from transformers import LlavaForConditionalGeneration

    with torch.device("meta"):
        llava = LlavaForConditionalGeneration(config)
    result = llava.load_state_dict({k: v.detach().contiguous() for k, v in state.items()}, strict=False, assign=True)
    missing = [k for k in result.missing_keys if not (tied and k == "lm_head.weight")]
    if missing or result.unexpected_keys:  # a merge left a module behind, or a part was renamed
        raise VlgraftError(f"export: the llava-hf model does not match vlgraft's weights (missing {missing[:3]}, "
                           f"unexpected {result.unexpected_keys[:3]})")
    if tied:
        llava.tie_weights()
    return llava


def _vision_weights(vlm) -> dict[str, torch.Tensor]:
    return {f"model.vision_tower.{k}": v for k, v in vlm.vision.model.state_dict().items()}


def _activation(connector) -> str:
    from vlgraft.connectors.mlp import MLPConnector

    return "gelu" if isinstance(connector, MLPConnector) else "linear"


def _projector_weights(connector) -> dict[str, torch.Tensor]:
    """``model.multi_modal_projector.linear_1`` / ``linear_2``. A ``linear`` connector becomes ``linear_1`` with an
    identity ``linear_2`` (weight I, bias 0: each output is one input times 1 plus zeros, exact in any
    float format) behind the identity activation."""
    from vlgraft.connectors.mlp import MLPConnector

    if isinstance(connector, MLPConnector):
        first, second = connector.fc1, connector.fc2
        out = {"linear_2.weight": second.weight, "linear_2.bias": second.bias}
    else:
        first = connector.proj
        d, w = first.out_features, first.weight
        out = {"linear_2.weight": torch.eye(d, dtype=w.dtype, device=w.device),
               "linear_2.bias": torch.zeros(d, dtype=w.dtype, device=w.device)}
    out.update({"linear_1.weight": first.weight, "linear_1.bias": first.bias})
    return {f"model.multi_modal_projector.{k}": v for k, v in out.items()}


def _text_weights(vlm, image_id: int) -> tuple[dict[str, torch.Tensor], int, bool, int]:
    """The LLM's weights under LLaVA's names, its vocabulary size, whether the head stays tied and how many
    rows were added for ``<image>``.

    The token's input row is never read (LLaVA writes the visual tokens over it), but its output row makes
    a logit: appended rows are the exact mean of the existing ones, so the new logit is the mean of the
    others and greedy decoding cannot choose it (generation_config also suppresses it). A head tied to
    an embedding LLaVA does not know by name (``embed_tokens``; GPT-2's ``wte`` is not) is written as a
    separate ``lm_head`` so transformers' tying cannot miss it."""
    model = vlm.llm.model
    base = model.base_model
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    emb_key = next(n for n, p in base.named_parameters(remove_duplicate=False) if p is emb)
    tied = head is emb and emb_key == "embed_tokens.weight"
    added = max(0, image_id + 1 - emb.shape[0])
    out = {f"model.language_model.{k}": v for k, v in base.state_dict().items()}
    out[f"model.language_model.{emb_key}"] = _with_mean_rows(emb, added)
    if not tied:
        out["lm_head.weight"] = _with_mean_rows(head, added)
    return out, emb.shape[0] + added, tied, added


def _with_mean_rows(w: torch.Tensor, n: int) -> torch.Tensor:
    if not n:
        return w.detach()
    mean = w.detach().double().mean(0, keepdim=True).to(w.dtype)  # in float64: the mean itself, then rounded once
    return torch.cat([w.detach(), mean.expand(n, -1)])


def _generation_config(vlm, recipe, tok, image_id: int):
    """The LLM's generation settings with vlgraft's decoding: greedy, its turn-end tokens, the chat's
    answer length; ``<image>`` is never generated."""
    gen = copy.deepcopy(vlm.llm.model.generation_config)
    gen._from_model_config = False  # else generate() may rebuild it from the model's config
    gen.do_sample = False
    for key in ("temperature", "top_p", "top_k"):  # sampling-only settings (transformers warns about them)
        setattr(gen, key, None)
    gen.eos_token_id = list(vlm.llm.stop_token_ids)
    gen.pad_token_id = tok.pad_token_id
    gen.max_new_tokens = recipe.chat.max_new_tokens
    gen.suppress_tokens = sorted(set(gen.suppress_tokens or []) | {image_id})
    return gen


def _processor(vlm, tok, strategy: str, extra: int):
    """``LlavaProcessor`` that expands ``<image>`` into ``vlm.num_image_tokens`` tokens and preprocesses as
    ``VisionEncoder.preprocess``: square bicubic resize to ``image_size`` (no centre crop), /255, the
    tower's mean and std. The saved class name does not pin the PIL backend: where torchvision is installed,
    AutoProcessor picks its torchvision resize, which differs from PIL's bicubic by a few levels on some
    pixels; ``AutoProcessor.from_pretrained(folder, backend="pil")`` gives vlgraft's pixels (docs/EXPORT.md)."""
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    enc = vlm.vision
    size = {"height": enc.image_size, "width": enc.image_size}
    images = CLIPImageProcessorPil(do_resize=True, size=size, resample=3, do_center_crop=False, crop_size=size,
                                   do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                                   image_mean=list(enc.mean), image_std=list(enc.std), do_convert_rgb=True)
    # tokens per image = (S / patch)^2 + num_additional_image_tokens, minus 1 with "default"
    proc = LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=enc.patch,
                          vision_feature_select_strategy=strategy, chat_template=chat_template(vlm),
                          image_token=IMAGE_TOKEN, num_additional_image_tokens=extra)
    n = (enc.image_size // enc.patch) ** 2 + extra - (strategy == "default")
    if n != vlm.num_image_tokens:
        raise VlgraftError(f"export: the processor would expand {IMAGE_TOKEN} to {n} tokens, the model takes "
                           f"{vlm.num_image_tokens}")
    return proc


def summary(info: dict) -> str:
    merged = ", ".join(f"{n} ({c} layers)" for n, c in info["merged"]) or "nothing"
    rows = f", {info['rows_added']} embedding row(s) added" if info["rows_added"] else ""
    return (f"merged {merged}; {IMAGE_TOKEN} = token {info['image_token_id']}{rows}, "
            f"{info['image_tokens']} visual tokens per image; vision layer {info['vision_feature_layer']} "
            f"({info['vision_feature_select_strategy']}), projector {info['projector_hidden_act']}"
            + (f"; note: {info['note']}" if info.get("note") else ""))
