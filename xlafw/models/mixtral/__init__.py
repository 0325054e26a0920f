"""The Mixtral family: ``MixtralForCausalLM`` and what xlafw knows about it (``FAMILY``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from xlafw.models.family import ActivationDtypes
from xlafw.models.llama import LlamaFamily
from xlafw.models.mixtral import hf
from xlafw.models.mixtral.model import (
    MixtralConfig,
    MixtralDecoderLayer,
    MixtralExperts,
    MixtralForCausalLM,
    MixtralModel,
    MixtralSparseMoeBlock,
    MoeKernel,
)
from xlafw.models.mixtral.sharding import MIXTRAL_EP, MIXTRAL_FSDP, RULE_SETS
from xlafw.parallel.mesh import batch_ways
from xlafw.parallel.sharding import ShardingRules

__all__ = [
    "FAMILY",
    "MIXTRAL_EP",
    "MIXTRAL_FSDP",
    "MixtralConfig",
    "MixtralDecoderLayer",
    "MixtralExperts",
    "MixtralFamily",
    "MixtralForCausalLM",
    "MixtralModel",
    "MixtralSparseMoeBlock",
    "MoeKernel",
]


class MixtralFamily(LlamaFamily):
    """Llama's attention with a sparse mixture of SwiGLU experts per layer.

    Formulas (``LlamaFamily``'s, with the MLP replaced):

    - matmul parameters per layer: attention, the router (``hidden x
      experts``) and the k experts a token is routed to (``k x 3 x hidden x
      intermediate``): FLOPs per token count only useful work. The static
      paths compute more (``experts x capacity / seq`` expert copies per
      token, 4x the useful expert work for 8 experts top-2 dropless); MFU
      does not credit it.
    - active parameters: all of them minus the ``experts - k`` experts a
      token skips in each layer.
    - MoE activations per token and layer (``mlp_activation_elements``, in
      the compute dtype): router logits and probabilities (``2 x experts``;
      float32, counted at the compute dtype's size), then per expert copy a
      token occupies the dispatched input and the expert output (``2 x
      hidden``) and gate, up, silu(gate) and their product (``4 x
      intermediate``), and the combine: the k gathered outputs and their sum
      (``(k + 1) x hidden``). Copies per token: k for ``gmm``;
      ``experts x capacity / seq`` on the static paths, which is ``experts``
      dropless and ``min(experts, k x capacity_factor)`` with a factor
      (ceil rounding ignored). The ``einsum`` path also keeps its dispatch
      and combine tensors, ``2 x experts x capacity`` per token: quadratic in
      the sequence when dropless. Index tensors and XLA's temporaries are not
      counted: a floor, like Llama's.
    """

    name = "mixtral"
    config_class = MixtralConfig
    model_class = MixtralForCausalLM
    layer_class = MixtralDecoderLayer
    hf_model_type = "mixtral"
    hf_architecture = "MixtralForCausalLM"
    architecture_fields = hf.ARCHITECTURE_FIELDS

    @property
    def sharding_rules(self) -> Mapping[str, ShardingRules]:
        return RULE_SETS

    # -- validation -------------------------------------------------------------------------

    def problems(self, config: MixtralConfig, seq_len: int) -> Iterator[str]:
        yield from super().problems(config, seq_len)
        experts, k = config.num_local_experts, config.num_experts_per_tok
        if experts < 1:
            yield (
                f"model.config.num_local_experts={experts} must be at least 1. "
                "Fix: set it to the number of experts per layer (8 for Mixtral 8x7B)."
            )
        elif not 1 <= k <= experts:
            yield (
                f"model.config.num_experts_per_tok={k} must be between 1 and "
                f"num_local_experts={experts}. Fix: route each token to 1..{experts} experts "
                "(Mixtral uses 2)."
            )
        if config.router_aux_loss_coef < 0:
            yield (
                f"model.config.router_aux_loss_coef={config.router_aux_loss_coef} is negative, "
                "which would reward imbalanced routing. Fix: use 0 (off) or a small positive "
                "weight such as 0.02."
            )
        factor = config.capacity_factor
        if factor is not None and not factor > 0:
            yield (
                f"model.config.capacity_factor={factor} must be positive, or None for "
                "dropless routing. Fix: use e.g. 1.25, or None."
            )
        if config.moe_kernel is MoeKernel.GMM and factor is not None:
            yield (
                f"model.config.moe_kernel=gmm is dropless but model.config.capacity_factor="
                f"{factor}. Fix: set capacity_factor=None, or use moe_kernel=gather to drop "
                "tokens over capacity."
            )

    def mesh_problems(self, config: MixtralConfig, axis_sizes: Mapping[str, int]) -> Iterator[str]:
        """Yields one message per way the model does not fit the mesh.

        Args:
          config: the model's config.
          axis_sizes: the resolved size of every mesh axis.
        """
        experts, ways = config.num_local_experts, axis_sizes.get("expert", 1)
        if experts % ways:
            yield (
                f"model.config.num_local_experts={experts} is not divisible by the mesh's "
                f"expert axis ({ways}), so the experts cannot be split evenly over it. Fix: "
                f"make mesh.ici.expert x mesh.dcn.expert divide {experts}, or change the "
                "number of experts."
            )
        devices = 1
        for size in axis_sizes.values():
            devices *= size
        if config.moe_kernel is MoeKernel.GMM and devices > 1:
            yield (
                f"model.config.moe_kernel=gmm runs on one device only (the mesh has {devices}): "
                "its Pallas kernel is not partitioned over a mesh. Fix: use moe_kernel=einsum "
                "(partitioned over the batch) with a capacity_factor for sharded runs."
            )

    def mesh_advice(self, config: MixtralConfig, axis_sizes: Mapping[str, int]) -> Iterator[str]:
        ways = batch_ways(axis_sizes)
        if config.moe_kernel is MoeKernel.GATHER and ways > 1:
            yield (
                f"model.config.moe_kernel=gather on a mesh with {ways} batch-parallel ways: "
                "XLA's partitioner does not see its gathers as batch-parallel, so every "
                "device gathers the global batch's tokens and all-reduces their gradients. "
                "Fix: --fdl_set=model.config.moe_kernel=einsum (its dispatch is partitioned "
                "over the batch; with a capacity_factor, e.g. 1.25, its dispatch tensors do "
                "not grow with the square of the sequence)."
            )

    def tpu_only(self, config: MixtralConfig) -> str | None:
        """The setting that needs a TPU, or None."""
        return "model.config.moe_kernel=gmm" if config.moe_kernel.needs_tpu else None

    def scan_problem(self, config: MixtralConfig) -> str | None:
        """Why ``remat.scan_layers`` cannot scan this model's layers, or None."""
        return (
            "Mixtral's layers return their router statistics beside the hidden states, "
            "and the scanned stack carries only the hidden states, so the load-balancing "
            "loss would be lost. Fix: remat.scan_layers=None (checkpoint_modules="
            "('MixtralDecoderLayer',) still recomputes each layer)."
        )

    # -- formulas ---------------------------------------------------------------------------

    def expert_parameters(self, config: MixtralConfig) -> int:
        """Weights of one expert (gate, up and down projections)."""
        return 3 * config.hidden_size * config.intermediate_size

    def mlp_matmul_parameters(self, config: MixtralConfig) -> int:
        """The router and the k experts one token goes through in one layer."""
        router = config.hidden_size * config.num_local_experts
        return router + config.num_experts_per_tok * self.expert_parameters(config)

    def active_parameters(self, config: MixtralConfig, num_parameters: int) -> int:
        skipped = config.num_local_experts - config.num_experts_per_tok
        return num_parameters - config.num_hidden_layers * skipped * self.expert_parameters(config)

    def routed_copies(self, config: MixtralConfig) -> float:
        """Expert slots one token occupies per layer (see the class docstring)."""
        experts, k = config.num_local_experts, config.num_experts_per_tok
        if config.moe_kernel is MoeKernel.GMM:
            return k
        if config.capacity_factor is None:
            return experts
        return min(experts, k * config.capacity_factor)

    def mlp_activation_elements(self, config: MixtralConfig) -> float:
        h, i, k = config.hidden_size, config.intermediate_size, config.num_experts_per_tok
        router = 2 * config.num_local_experts
        return router + self.routed_copies(config) * (2 * h + 4 * i) + (k + 1) * h

    def activation_bytes_per_token(
        self,
        config: MixtralConfig,
        seq_len: int,
        dtypes: ActivationDtypes,
        tensor_ways: int,
        remat_layers: bool,
    ) -> float:
        total = super().activation_bytes_per_token(
            config, seq_len, dtypes, tensor_ways, remat_layers
        )
        if config.moe_kernel is not MoeKernel.EINSUM:
            return total
        masks = 2 * config.num_local_experts * config.capacity(seq_len) * dtypes.compute
        return total + masks * (1 if remat_layers else config.num_hidden_layers)

    # -- Hugging Face -----------------------------------------------------------------------

    def from_hf_config(self, config_json: Mapping[str, Any]) -> MixtralConfig:
        return hf.from_hf_config(config_json)

    def to_hf_config(self, config: MixtralConfig, dtype: str = "float32") -> dict[str, Any]:
        return hf.to_hf_config(config, dtype)

    def hf_sources(self, name: str, shape: tuple[int, ...]) -> tuple[str, ...]:
        return hf.hf_sources(name, shape)


FAMILY = MixtralFamily()
