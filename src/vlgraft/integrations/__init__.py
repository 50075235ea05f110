"""Plug-ins for other tools' registries. Each entry point here is light: it names the class that the
tool imports when it needs it (vlgraft, torch and the tool itself load only then).

``lmms_eval_models``: the ``vlgraft`` model of lmms-eval (entry-point group ``lmms_eval.models``;
``vlgraft.integrations.lmms_eval``, docs/LMMS_EVAL.md).
"""

from __future__ import annotations

LMMS_EVAL_MODEL = "vlgraft"
LMMS_EVAL_CLASS = "vlgraft.integrations.lmms_eval.VlgraftLmms"


def lmms_eval_models():
    """The ``ModelManifest`` that registers ``--model vlgraft`` with lmms-eval 0.7's model registry."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=LMMS_EVAL_MODEL, simple_class_path=LMMS_EVAL_CLASS)
