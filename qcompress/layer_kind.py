"""What kind of layer a tensor belongs to, guessed from its name alone.

The HTML report groups tensors by it, and plans or budgets may too, so it lives here on its own:
a pure function of the name, no file needed. Names from PyTorch (``model.layers.0.self_attn.q_proj
.weight``), Keras (``dense_1/kernel:0``) and ONNX exports all reduce to a few kinds. The first
rule that matches wins, most specific first (``depthwise`` before ``conv``, ``q_proj`` before a
generic ``attn``).
"""

from __future__ import annotations

import re

KINDS: tuple[str, ...] = (
    "attention.q",
    "attention.k",
    "attention.v",
    "attention.o",
    "attention",
    "ffn",
    "embedding",
    "depthwise",
    "conv",
    "norm",
    "head",
    "other",
)
"""Every kind :func:`layer_kind` returns, in the order reports show them."""

# (kind, pattern) over the lower-cased name split into tokens joined by "."
_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern))
    for kind, pattern in (
        ("norm", r"(^|\.)(\w*norm\w*|ln(_?\w+)?|bn\d*|batch_?normalization\w*)(\.|$)"),
        ("depthwise", r"depthwise|dwconv|(^|\.)dw(\.|$)"),
        ("attention.q", r"(^|\.)(q|q_?proj|query|wq|q_lin)(\.|$)"),
        ("attention.k", r"(^|\.)(k|k_?proj|key|wk|k_lin)(\.|$)"),
        ("attention.v", r"(^|\.)(v|v_?proj|value|wv|v_lin)(\.|$)"),
        (
            "attention.o",
            r"(^|\.)(o|o_?proj|out_?proj|wo|out_lin|attention_output|attn_output)(\.|$)"
            r"|attn\.(c_)?proj|attention\.output\.dense",
        ),
        ("attention", r"attn|attention|qkv|c_attn"),
        ("embedding", r"embed|(^|\.)(wte|wpe|tok_embeddings|word_embeddings)(\.|$)"),
        (
            "head",
            r"(^|\.)(lm_head|head|classifier|logits|predictions|fc_out|score)(\.|$)|^output(\.|$)",
        ),
        (
            "ffn",
            r"mlp|ffn|feed_?forward|(^|\.)(fc\d*|c_fc|dense\w*|linear\w*|w[123]|gate_proj|"
            r"up_proj|down_proj|intermediate|wi|wi_[01])(\.|$)",
        ),
        ("conv", r"conv|(^|\.)(cnn|downsample)(\.|$)"),
    )
)


def layer_kind(name: str) -> str:
    """The layer kind of a tensor named ``name``: one of :data:`KINDS` (``"other"`` if unknown).

    Separators (``/``, ``:``, ``-``, ``.``) are treated alike so Keras and PyTorch names match the
    same rules; a trailing ``:0`` of TensorFlow names is ignored.
    """
    tokens = re.sub(r":\d+$", "", name.lower())
    tokens = re.sub(r"[/:\-\s]+", ".", tokens)
    for kind, pattern in _RULES:
        if pattern.search(tokens):
            return kind
    return "other"
