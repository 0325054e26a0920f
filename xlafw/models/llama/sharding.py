"""Stock sharding rules for Llama, matching torchprime's presets.

Weights are ``[out, in]``. FSDP splits one dimension of every weight over
``fsdp`` (ZeRO-3); FSDP+TP is Megatron-style: column-parallel q/k/v/gate/up
(``[tensor, fsdp]``), row-parallel o/down (``[fsdp, tensor]``). The embedding
is ``[fsdp, tensor]``, not ``[tensor, fsdp]``, which gives NaN gradients
(torchprime#114). The batch dimension of activations is split over the mesh's
batch axes (``xlafw.parallel.mesh.BATCH_AXES``).
"""

from __future__ import annotations

from xlafw.parallel.mesh import BATCH_AXES
from xlafw.parallel.sharding import ShardingRules

LAYER = "model.layers.*"

# The attention block, shared with Mixtral (whose layers use Llama's attention).
ATTENTION_FSDP = (
    (f"{LAYER}.self_attn.q_proj.weight", ("fsdp", None)),
    (f"{LAYER}.self_attn.k_proj.weight", (None, "fsdp")),
    (f"{LAYER}.self_attn.v_proj.weight", (None, "fsdp")),
    (f"{LAYER}.self_attn.o_proj.weight", ("fsdp", None)),
)
EDGES_FSDP = (
    ("model.embed_tokens.weight", ("fsdp", None)),
    (f"{LAYER}.*layernorm.weight", ("fsdp",)),
    ("model.norm.weight", ("fsdp",)),
    ("lm_head.weight", ("fsdp", None)),
)
ACTIVATIONS_BATCH = (
    (LAYER, (BATCH_AXES, None, None)),
    ("lm_head", (BATCH_AXES, None, None)),
)

LLAMA_FSDP = ShardingRules(
    parameters=(
        *EDGES_FSDP[:1],
        *ATTENTION_FSDP,
        (f"{LAYER}.mlp.gate_proj.weight", ("fsdp", None)),
        (f"{LAYER}.mlp.up_proj.weight", ("fsdp", None)),
        (f"{LAYER}.mlp.down_proj.weight", (None, "fsdp")),
        *EDGES_FSDP[1:],
    ),
    activations=ACTIVATIONS_BATCH,
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
    parameters=(
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
    ),
    activations=tuple((m, (BATCH_AXES, None, "tensor")) for m in _TP_ACTIVATION_MODULES),
)

RULE_SETS = {"fsdp": LLAMA_FSDP, "fsdp_tp": LLAMA_FSDP_TP}
