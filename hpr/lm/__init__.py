"""The language model side: loading (``models``), the architecture table (``architectures``),
editing and recording hooks (``hooks``), KV-cache helpers (``kv``), activation capture
(``capture``, its forward passes in ``passes``) and the captured activations (``activations``); ``tiny`` builds a tiny random model.
(The ``capture`` function is ``hpr.lm.capture.capture`` or ``hpr.capture``: a package attribute of
that name would hide the module.)"""

from hpr.lm.activations import Captured
from hpr.lm.hooks import edit_attention_heads, edit_block_outputs, record_attention_inputs, record_block_outputs
from hpr.lm.models import EMBEDDED, load_model, resolve_device

__all__ = [
    "EMBEDDED",
    "Captured",
    "edit_attention_heads",
    "edit_block_outputs",
    "load_model",
    "record_attention_inputs",
    "record_block_outputs",
    "resolve_device",
]
