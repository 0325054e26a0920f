"""Stock sharding rules for Mixtral: FSDP, and expert parallelism with FSDP.

Expert weights are ``w1``/``w3`` ``[experts, intermediate, hidden]`` and
``w2`` ``[experts, hidden, intermediate]``; the router is ``[experts, hidden]``.

- ``MIXTRAL_FSDP``: Llama's FSDP for attention, embedding, norms and head;
  every expert weight split over ``fsdp`` along the intermediate dimension
  (Llama's MLP split), the router along hidden. The expert axis, if the mesh
  has one, is only data parallel.
- ``MIXTRAL_EP``: the expert dimension split over ``expert`` and the
  intermediate dimension over ``fsdp`` (each expert group shards its experts
  ZeRO-3 style); everything else is split over ``fsdp`` and ``expert``
  together, so no device holds a full copy of any weight. Activations: the
  batch is split over every batch axis (``BATCH_AXES``, ``expert`` included)
  outside the MoE blocks; the dispatched tokens and the experts' outputs
  ``[batch, experts, capacity, hidden]`` are split over ``(data, fsdp)`` and
  ``expert``, so XLA moves tokens to their experts' devices with an
  all-to-all and back after the experts.
"""

from __future__ import annotations

from xlafw.models.llama.sharding import ACTIVATIONS_BATCH, ATTENTION_FSDP, EDGES_FSDP, LAYER
from xlafw.parallel.sharding import ShardingRules, Spec

MOE = f"{LAYER}.block_sparse_moe"
# The layout of the dispatched tokens and of the experts' outputs under expert parallelism.
EXPERT_ACTIVATIONS: Spec = (("data", "fsdp"), "expert", None, None)


def _widen(rules: tuple[tuple[str, Spec], ...], axes: tuple[str, ...]):
    """The same rules with every ``fsdp`` entry replaced by ``axes``."""
    return tuple(
        (pattern, tuple(axes if entry == "fsdp" else entry for entry in spec))
        for pattern, spec in rules
    )


MIXTRAL_FSDP = ShardingRules(
    parameters=(
        *EDGES_FSDP[:1],
        *ATTENTION_FSDP,
        (f"{MOE}.gate.weight", (None, "fsdp")),
        (f"{MOE}.experts.w1", (None, "fsdp", None)),
        (f"{MOE}.experts.w3", (None, "fsdp", None)),
        (f"{MOE}.experts.w2", (None, None, "fsdp")),
        *EDGES_FSDP[1:],
    ),
    activations=ACTIVATIONS_BATCH,
)

_DENSE = ("fsdp", "expert")
MIXTRAL_EP = ShardingRules(
    parameters=(
        *_widen(EDGES_FSDP[:1], _DENSE),
        *_widen(ATTENTION_FSDP, _DENSE),
        (f"{MOE}.gate.weight", (None, _DENSE)),
        (f"{MOE}.experts.w1", ("expert", "fsdp", None)),
        (f"{MOE}.experts.w3", ("expert", "fsdp", None)),
        (f"{MOE}.experts.w2", ("expert", None, "fsdp")),
        *_widen(EDGES_FSDP[1:], _DENSE),
    ),
    activations=(
        *ACTIVATIONS_BATCH,
        (f"{MOE}.dispatch", EXPERT_ACTIVATIONS),
        (f"{MOE}.experts", EXPERT_ACTIVATIONS),
    ),
)

RULE_SETS = {"fsdp": MIXTRAL_FSDP, "ep": MIXTRAL_EP}
