"""Mixtral: Llama's attention with a sparse mixture of SwiGLU experts in place of the MLP.

Parameter names match the checkpoints Hugging Face publishes and
``transformers`` writes (``model.layers.N.block_sparse_moe.gate.weight``,
``...experts.w1`` ...), except that each layer's experts are one stacked tensor
per projection (``w1``/``w3`` ``[experts, intermediate, hidden]``, ``w2``
``[experts, hidden, intermediate]``) rather than one tensor per expert, so the
expert dimension can be sharded over the ``expert`` mesh axis. HF I/O stacks
and splits them (``MixtralFamily.hf_sources``).

Routing (``MixtralTopKRouter`` in transformers): router logits in float32,
softmax over all experts, the top k kept and renormalized to sum to 1.

Every shape is static (XLA compiles one graph). Each batch row is a group:
its ``seq * k`` assignments are given slots ``[experts, capacity]``
(first choices before second choices, then by position), the slotted tokens
are gathered into ``[batch, experts, capacity, hidden]`` (the output of the
``dispatch`` submodule), the experts run as batched matmuls over that tensor
(the output of ``experts``), and each token sums its experts' outputs,
weighted. With ``capacity_factor=None`` (dropless) the capacity is the
sequence length, so no assignment is ever dropped and the result equals
transformers'; with a factor, assignments beyond an expert's capacity are
dropped (the token keeps only its residual for that expert).

The load-balancing loss (Switch Transformer, transformers'
``load_balancing_loss_func`` without an attention mask) needs every layer's
routing: each layer returns its statistics alongside the hidden states, the
layer stack sums them (``DecoderLayers``) and the model reduces them. Nothing
is stashed on a module, so recomputing a layer in the backward is safe.

Weight init: as Llama (N(0, ``initializer_range``) for every weight matrix,
experts and router included; RMSNorm gains 1).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from xlafw.arguments import instance, integer, number, raise_invalid
from xlafw.models.attention import AttentionMasks
from xlafw.models.layers import (
    CausalLMOutput,
    RMSNorm,
    causal_lm_output,
    count_targets,
    init_normal,
)
from xlafw.models.llama.model import LlamaConfig, LlamaModel, llama_attention
from xlafw.models.rope import RotaryEmbedding

__all__ = [
    "MixtralConfig",
    "MixtralDecoderLayer",
    "MixtralExperts",
    "MixtralForCausalLM",
    "MixtralModel",
    "MixtralSparseMoeBlock",
    "MoeDispatch",
    "MoeKernel",
    "Routing",
]


class MoeKernel(enum.Enum):
    """How tokens reach their experts.

    Attributes:
      GATHER: static shapes; slots are filled by indexing (a gather of the
        slotted tokens, a gather of each token's expert outputs). The default:
        the faster path on one device (BUILD_NOTES.md, "Mixtral MoE (issue
        15)"), and its index tensors grow with ``seq * k``, not ``seq *
        slots``. Under SPMD, XLA's partitioner does not see the gathers as
        batch-parallel: every device gathers (and in the backward
        all-reduces) the whole global batch's tokens, so sharded runs should
        use EINSUM.
      EINSUM: static shapes; GShard's one-hot dispatch and combine tensors
        ``[batch, seq, experts, capacity]`` contracted with einsums, which
        XLA partitions over the batch and, with an expert-parallel
        activation rule, moves between devices with all-to-alls. The
        experiments on meshes use it.
      GMM: dropless and sorted: assignments sorted by expert and run through
        torch_xla's Pallas grouped matmul (megablox ``gmm``); no capacity, no
        padding slots. TPU only, on one device (the kernel is not partitioned
        by GSPMD).
    """

    GATHER = "gather"
    EINSUM = "einsum"
    GMM = "gmm"

    @property
    def needs_tpu(self) -> bool:
        return self is MoeKernel.GMM


@dataclasses.dataclass(frozen=True)
class MixtralConfig(LlamaConfig):
    """Hyper-parameters of a Mixtral model (Llama's plus the mixture's).

    Defaults that differ from ``LlamaConfig``'s are transformers' Mixtral
    defaults (``rope_theta=1e6``, ``max_position_embeddings=131072``).

    Attributes:
      num_local_experts: experts per layer.
      num_experts_per_tok: experts each token is routed to (top k).
      router_aux_loss_coef: weight of the load-balancing loss in the training
        objective (0.02 in Mixtral 8x7B's published config; transformers'
        class default is 0.001).
      capacity_factor: None for dropless routing (an expert can take every
        token of a sequence); a float gives each expert
        ``ceil(k * seq * factor / experts)`` slots per sequence (at most
        ``seq``), and assignments beyond them are dropped.
      moe_kernel: how tokens reach their experts (``MoeKernel``).
    """

    rope_theta: float = 1e6
    max_position_embeddings: int = 131072
    num_local_experts: int = 8
    num_experts_per_tok: int = 2
    router_aux_loss_coef: float = 0.02
    capacity_factor: float | None = None
    moe_kernel: MoeKernel = MoeKernel.GATHER

    def __post_init__(self):
        super().__post_init__()  # Llama's fields
        experts = "Mixtral 8x7B and 8x22B use 8 experts, top 2."
        raise_invalid(
            integer(
                "num_local_experts", self.num_local_experts, at_least=1, at_most=4096, fix=experts
            ),
            integer(
                "num_experts_per_tok",
                self.num_experts_per_tok,
                at_least=1,
                at_most=4096,
                fix=experts,
            ),
            number(
                "router_aux_loss_coef",
                self.router_aux_loss_coef,
                at_least=0,
                at_most=1e3,
                fix="Mixtral uses 0.001-0.02; 0 turns the load-balancing loss off.",
            ),
            number(
                "capacity_factor",
                self.capacity_factor,
                above=0,
                at_most=1e3,
                allow_none=True,
                fix="None for dropless routing, or e.g. 1.25.",
            ),
            instance("moe_kernel", self.moe_kernel, MoeKernel),
        )

    def capacity(self, seq_len: int) -> int:
        """Slots per expert and sequence."""
        if self.capacity_factor is None:
            return seq_len
        slots = self.num_experts_per_tok * seq_len * self.capacity_factor
        return max(1, min(seq_len, math.ceil(slots / self.num_local_experts)))


# --- routing ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Routing:
    """Where each of a batch row's ``seq * k`` assignments goes.

    Attributes:
      weights: ``[batch, k, seq]`` float32 renormalized top-k probabilities
        (choice 0 is the largest).
      experts: ``[batch, k, seq]`` the chosen expert of each assignment.
      slots: ``[batch, k, seq]`` ``expert * capacity + position`` of each kept
        assignment, ``experts * capacity`` (one past the last slot) for a
        dropped one.
      num_experts: experts per layer.
      capacity: slots per expert in a row.
    """

    weights: torch.Tensor
    experts: torch.Tensor
    slots: torch.Tensor
    num_experts: int
    capacity: int

    @property
    def kept(self) -> torch.Tensor:
        """``[batch, k, seq]`` bool: the assignment has a slot."""
        return self.slots < self.num_experts * self.capacity


def route(logits: torch.Tensor, k: int, capacity: int) -> tuple[Routing, torch.Tensor]:
    """Top-k routing with per-row expert capacity.

    Positions inside an expert are taken by all first choices of a row (in
    sequence order), then all second choices, and so on: when an expert is
    full, a token loses its weaker choice before another token loses its best.

    Args:
      logits: ``[batch, seq, experts]`` float32 router logits.
      k: experts per token.
      capacity: slots per expert and row.

    Returns:
      The routing and the ``[batch, seq, experts]`` float32 probabilities.
    """
    batch, seq, num_experts = logits.shape
    probs = torch.softmax(logits, dim=-1)
    top, experts = torch.topk(probs, k, dim=-1)  # [b, s, k]
    weights = (top / top.sum(dim=-1, keepdim=True)).transpose(1, 2)
    experts = experts.transpose(1, 2)  # [b, k, s]: choice-major priority
    onehot = F.one_hot(experts, num_experts).reshape(batch, k * seq, num_experts)
    # 0-based position of each assignment among the row's assignments to its expert.
    position = ((onehot.cumsum(dim=1) - 1) * onehot).sum(dim=-1).reshape(batch, k, seq)
    dropped = num_experts * capacity
    slots = torch.where(position < capacity, experts * capacity + position, dropped)
    return Routing(weights, experts, slots, num_experts, capacity), probs


# --- dispatch, experts, combine ----------------------------------------------------------


def _slot_onehot(routing: Routing) -> torch.Tensor:
    """``[batch, k, seq, experts * capacity]`` bool: assignment -> slot (none if dropped)."""
    slots = routing.num_experts * routing.capacity
    return routing.slots[..., None] == torch.arange(slots, device=routing.slots.device)


def _batch_index(batch: int, device: torch.device) -> torch.Tensor:
    """``[batch, 1]`` row numbers, to index each row's own tokens."""
    return torch.arange(batch, device=device)[:, None]


class MoeDispatch(nn.Module):
    """Gathers each row's routed tokens into expert slots (no parameters).

    Its output ``[batch, experts, capacity, hidden]`` is what an expert-parallel
    activation rule annotates (``(("data", "fsdp"), "expert", None, None)``):
    XLA then moves tokens from the batch-sharded layout to the expert-sharded
    one with an all-to-all. Empty slots hold zeros.

    Args:
      kernel: ``GATHER`` or ``EINSUM``.
    """

    def __init__(self, kernel: MoeKernel):
        super().__init__()
        self.kernel = kernel

    def forward(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        batch, seq, hidden = x.shape
        experts, capacity = routing.num_experts, routing.capacity
        if self.kernel is MoeKernel.EINSUM:
            mask = _slot_onehot(routing).any(dim=1).to(x.dtype)  # [b, s, slots]
            out = torch.einsum("bsx,bsh->bxh", mask, x)
            return out.reshape(batch, experts, capacity, hidden)
        # The token in each slot; unfilled slots (and the dropped bin) point at a zero row.
        tokens = torch.arange(seq, device=x.device).expand_as(routing.slots)
        slot_token = torch.full(
            (batch, experts * capacity + 1), seq, dtype=tokens.dtype, device=x.device
        )
        slot_token = slot_token.scatter(
            1, routing.slots.reshape(batch, -1), tokens.reshape(batch, -1)
        )
        padded = torch.cat([x, x.new_zeros(batch, 1, hidden)], dim=1)
        out = padded[_batch_index(batch, x.device), slot_token[:, :-1]]
        return out.reshape(batch, experts, capacity, hidden)


class MixtralExperts(nn.Module):
    """Every expert's SwiGLU MLP, as stacked weights run with batched matmuls.

    Attributes:
      w1: ``[experts, intermediate, hidden]`` gate projections.
      w3: ``[experts, intermediate, hidden]`` up projections.
      w2: ``[experts, hidden, intermediate]`` down projections.
    """

    NORMAL_INIT = ("w1", "w2", "w3")  # drawn by ``init_normal``, in this order

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(num_experts, intermediate_size, hidden_size))
        self.w3 = nn.Parameter(torch.empty(num_experts, intermediate_size, hidden_size))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, experts, capacity, hidden]`` -> the same shape, expert e on slice e."""
        gate = torch.einsum("bech,eih->beci", x, self.w1)
        up = torch.einsum("bech,eih->beci", x, self.w3)
        return torch.einsum("beci,ehi->bech", F.silu(gate) * up, self.w2)


def combine(y: torch.Tensor, routing: Routing, kernel: MoeKernel, dtype: torch.dtype):
    """Each token's expert outputs, weighted and summed: ``[batch, seq, hidden]``.

    Args:
      y: ``[batch, experts, capacity, hidden]`` expert outputs.
      routing: the routing that filled the slots.
      kernel: ``GATHER`` or ``EINSUM``.
      dtype: the result's dtype (the residual stream's).
    """
    batch, experts, capacity, hidden = y.shape
    flat = y.reshape(batch, experts * capacity, hidden)
    if kernel is MoeKernel.EINSUM:
        weights = (_slot_onehot(routing) * routing.weights[..., None]).sum(dim=1)
        return torch.einsum("bsx,bxh->bsh", weights.to(y.dtype), flat).to(dtype)
    padded = torch.cat([flat, flat.new_zeros(batch, 1, hidden)], dim=1)
    index = _batch_index(batch, y.device)[:, :, None]
    picked = padded[index, routing.slots]  # [b, k, s, h]; dropped -> zeros
    return (picked.float() * routing.weights[..., None]).sum(dim=1).to(dtype)


class MixtralTopKRouter(nn.Linear):
    """The router: ``[experts, hidden]`` weights, logits computed in float32 (no bias)."""

    def __init__(self, hidden_size: int, num_experts: int):
        super().__init__(hidden_size, num_experts, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x.float(), self.weight.float())


class MixtralSparseMoeBlock(nn.Module):
    """Router, dispatch, experts and combine of one layer.

    Returns the ``[batch, seq, hidden]`` output and the layer's router
    statistics, each ``[experts]`` float32: the fraction of tokens routed to
    each expert (summed over the k choices, so the fractions add up to k; no
    gradient), the mean router probability (with gradient), and the fraction
    of assignments dropped for capacity (a 0-d tensor, no gradient).
    """

    def __init__(self, config: MixtralConfig):
        super().__init__()
        self.config = config
        e, h, i = config.num_local_experts, config.hidden_size, config.intermediate_size
        self.gate = MixtralTopKRouter(h, e)
        self.dispatch = MoeDispatch(config.moe_kernel)
        self.experts = MixtralExperts(e, h, i)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        config = self.config
        k = config.num_experts_per_tok
        routing, probs = route(self.gate(x), k, config.capacity(x.shape[1]))
        if config.moe_kernel is MoeKernel.GMM:
            from xlafw.models.mixtral import gmm

            out = gmm.sorted_experts(x, routing, self.experts)
        else:
            y = self.experts(self.dispatch(x, routing))
            out = combine(y, routing, config.moe_kernel, x.dtype)
        with torch.no_grad():
            onehot = F.one_hot(routing.experts, config.num_local_experts).float()
            tokens = onehot.shape[0] * onehot.shape[2]
            assigned = onehot.sum(dim=(0, 1, 2)) / tokens
            dropped = (~routing.kept).float().mean()
        return out, (assigned, probs.mean(dim=(0, 1)), dropped)


class MixtralDecoderLayer(nn.Module):
    """Pre-norm attention (Llama's) followed by a pre-norm sparse MoE block.

    Returns ``(h, assigned, mean_probs, dropped)``: the hidden states and the
    block's router statistics, which ``DecoderLayers`` sums over the layers.
    """

    def __init__(self, config: MixtralConfig, rotary: RotaryEmbedding):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = llama_attention(config, rotary)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.block_sparse_moe = MixtralSparseMoeBlock(config)

    def forward(
        self, x: torch.Tensor, position_ids: torch.Tensor, masks: AttentionMasks
    ) -> tuple[torch.Tensor, ...]:
        x = x + self.self_attn(self.input_layernorm(x), position_ids, masks)
        moe, stats = self.block_sparse_moe(self.post_attention_layernorm(x))
        return (x + moe, *stats)


class MixtralModel(LlamaModel):
    """Embedding, Mixtral decoder stack and final norm (no LM head).

    Returns the normed hidden states and the router statistics summed over
    the layers (``MixtralSparseMoeBlock``).
    """

    def __init__(self, config: MixtralConfig):
        super().__init__(config, layer=MixtralDecoderLayer)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        masks: AttentionMasks = AttentionMasks(),
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        h, *stats = self.layers(self.embed_tokens(input_ids), position_ids, masks)
        return self.norm(h), tuple(stats)


class MixtralForCausalLM(nn.Module):
    """Mixtral with an untied LM head, a causal-LM loss and the load-balancing loss.

    Args:
      config: the model's hyper-parameters.
    """

    def __init__(self, config: MixtralConfig):
        super().__init__()
        self.config = config
        self.model = MixtralModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.apply(functools.partial(init_normal, std=config.initializer_range))

    count_targets = staticmethod(count_targets)

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
    ) -> CausalLMOutput:
        """Runs the model; arguments as ``LlamaForCausalLM.forward``.

        Returns:
          The loss (with labels; cross-entropy only) or the logits (without),
          plus ``aux_loss`` (``router_aux_loss_coef`` times the load-balancing
          loss, which the trainer adds to the objective) and ``metrics``:
          ``aux_loss`` (unweighted), ``dropped_fraction`` (assignments over
          capacity) and ``expert_share/{e}`` (the share of routed assignments
          expert e received; they sum to 1). Router statistics are averaged
          over every token of every layer, padding included (transformers'
          ``load_balancing_loss_func`` without an attention mask).
        """
        config = self.config
        masks = AttentionMasks(padding=attention_mask, segment_ids=segment_ids)
        h, (assigned, mean_probs, dropped) = self.model(input_ids, position_ids, masks)
        layers = config.num_hidden_layers
        assigned, mean_probs = assigned / layers, mean_probs / layers
        balance = config.num_local_experts * (assigned * mean_probs).sum()
        out = causal_lm_output(self.lm_head, h, labels)
        out.aux_loss = config.router_aux_loss_coef * balance
        share = assigned / config.num_experts_per_tok
        out.metrics = {
            "aux_loss": balance.detach(),
            "dropped_fraction": dropped / layers,
            **{f"expert_share/{e}": share[e] for e in range(config.num_local_experts)},
        }
        return out
