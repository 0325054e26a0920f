"""Stock sharding rules for Llama, matching torchprime's presets.

Weights are ``[out, in]``. FSDP splits one dimension of every weight over
``fsdp`` (ZeRO-3); FSDP+TP is Megatron-style: column-parallel q/k/v/gate/up
(``[tensor, fsdp]``), row-parallel o/down (``[fsdp, tensor]``). The embedding
is ``[fsdp, tensor]``, not ``[tensor, fsdp]``, which gives NaN gradients
(torchprime#114). The batch dimension of activations is split over
``data`` x ``fsdp``.
"""

from __future__ import annotations

from xlafw.parallel.sharding import ShardingRules

BATCH = ("data", "fsdp")
LAYER = "model.layers.*"

LLAMA_FSDP = ShardingRules(
    parameters=(
        ("model.embed_tokens.weight", ("fsdp", None)),
        (f"{LAYER}.self_attn.q_proj.weight", ("fsdp", None)),
        (f"{LAYER}.self_attn.k_proj.weight", (None, "fsdp")),
        (f"{LAYER}.self_attn.v_proj.weight", (None, "fsdp")),
        (f"{LAYER}.self_attn.o_proj.weight", ("fsdp", None)),
        (f"{LAYER}.mlp.gate_proj.weight", ("fsdp", None)),
        (f"{LAYER}.mlp.up_proj.weight", ("fsdp", None)),
        (f"{LAYER}.mlp.down_proj.weight", (None, "fsdp")),
        (f"{LAYER}.*layernorm.weight", ("fsdp",)),
        ("model.norm.weight", ("fsdp",)),
        ("lm_head.weight", ("fsdp", None)),
    ),
    activations=(
        (LAYER, (BATCH, None, None)),
        ("lm_head", (BATCH, None, None)),
    ),
)

_TP_PARAMETERS = (
    ("model.embed_tokens.weight", ("fsdp", "tensor")),
    (f"{LAYER}.self_attn.q_proj.weight", ("tensor", "fsdp")),
    (f"{LAYER}.self_attn.k_proj.weight", ("tensor", "fsdp")),
    (f"{LAYER}.self_attn.v_proj.weight", ("tensor", "fsdp")),
    (f"{LAYER}.self_attn.o_proj.weight", ("fsdp", "tensor")),
    (f"{LAYER}.mlp.gate_proj.weight", ("tensor", "fsdp")),
    (f"{LAYER}.mlp.up_proj.weight", ("tensor", "fsdp")),
    (f"{LAYER}.mlp.down_proj.weight", ("fsdp", "tensor")),
    (f"{LAYER}.*layernorm.weight", ("fsdp",)),
    ("model.norm.weight", ("fsdp",)),
    ("lm_head.weight", ("tensor", "fsdp")),
)
_TP_ACTIVATION_MODULES = (
    f"{LAYER}.self_attn.q_proj",
    f"{LAYER}.self_attn.k_proj",
    f"{LAYER}.self_attn.v_proj",
    f"{LAYER}.self_attn.o_proj",
    f"{LAYER}.input_layernorm",
    f"{LAYER}.post_attention_layernorm",
    f"{LAYER}.mlp.gate_proj",
    f"{LAYER}.mlp.up_proj",
    f"{LAYER}.mlp.down_proj",
    LAYER,
)

LLAMA_FSDP_TP = ShardingRules(
    parameters=_TP_PARAMETERS,
    activations=tuple((m, (BATCH, None, "tensor")) for m in _TP_ACTIVATION_MODULES),
)

LLAMA_FSDP_TP_CP = ShardingRules(
    parameters=_TP_PARAMETERS,
    activations=tuple(
        (m, ("fsdp", "context" if m.endswith("q_proj") else None, "tensor"))
        for m in _TP_ACTIVATION_MODULES
    ),
)
"""FSDP + TP + context parallelism: queries are split over ``context`` on the
sequence dimension; the batch is split over ``fsdp`` only."""
