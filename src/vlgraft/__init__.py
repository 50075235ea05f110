"""vlgraft: graft a pretrained image encoder onto a pretrained causal LM with small trainable parts.

``vlgraft.load(run)`` gives a trained model (``generate``, ``chat``); ``vlgraft.train(recipe)`` trains one.
"""

__version__ = "0.1.0"

from vlgraft.api import Model, load, train  # noqa: F401
from vlgraft.errors import VlgraftError  # noqa: F401
