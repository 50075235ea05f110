"""``select``: train existing modules chosen by name (GIT-LLM's module study), composable with others.

Presets: ``proj`` (the connector), ``llm`` (every LLM weight), ``vision`` (the image encoder),
``head`` (the LM head; with tied embeddings this is the input embedding matrix too), ``norms``
(every normalisation layer of the LLM), ``lora`` (LoRA weights of an earlier ``lora`` method).
Any other entry is an fnmatch pattern over parameter names. Recipes train the selection by naming
``select`` in a ``trainable`` group.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlgraft.config import MethodOptions
from vlgraft.errors import ConfigError
from vlgraft.methods.base import Method, match_names
from vlgraft.models.anatomy import norm_parameters
from vlgraft.options import option
from vlgraft.registry import METHOD


@dataclass
class SelectOptions(MethodOptions):
    modules: list[str] = option(factory=lambda: ["proj"], help="presets (proj | llm | vision | head | norms | lora) "
                                "or fnmatch patterns over parameter names")


@METHOD.register("select")
class Select(Method):
    Options = SelectOptions
    mergeable = True  # it trains base weights themselves: merged as it is

    def apply(self, vlm) -> None:
        names = [n for n, _ in vlm.named_parameters()]
        for entry in self.cfg.modules:
            if entry == "proj":
                hit = match_names(names, ["connector.*"])
            elif entry == "llm":
                hit = [n for n in match_names(names, ["llm.*"]) if ".lora_" not in n and ".vlgraft_" not in n]
            elif entry == "vision":
                hit = match_names(names, ["vision.*"])
            elif entry == "head":
                head = vlm.llm.model.get_output_embeddings().weight
                hit = [n for n, p in vlm.named_parameters(remove_duplicate=False) if p is head][:1]
            elif entry == "norms":
                hit = norm_parameters(vlm.llm.model, "llm.model.")
            elif entry == "lora":
                hit = match_names(names, ["*lora_*"])
            else:
                hit = match_names(names, [entry])
            if not hit:
                raise ConfigError(f"select: {entry!r} matches no parameter")
            self.claims += [n for n in hit if n not in self.claims]

    def merge(self, vlm) -> int:
        return 0  # the selected tensors are base weights: the model already holds them
