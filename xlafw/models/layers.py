"""Building blocks every decoder-only family shares: norm, layer stack, LM loss.

A family (``xlafw/models/<family>/``) composes these with its own decoder
layer. Parameter names follow Hugging Face's (``model.layers.N.*``,
``model.norm``, ``lm_head``), which the sharding rules and HF I/O rely on.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from xlafw.models.attention import AttentionMasks

IGNORE_INDEX = -100


class RMSNorm(nn.Module):
    """Root-mean-square layer norm, computed in float32."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class DecoderLayers(nn.ModuleList):
    """The decoder stack, run layer after layer.

    A plain ``nn.ModuleList`` (parameter names stay ``layers.N.*``) with a
    forward, so the remat policy can swap in a scanned version of the same
    layers (``xlafw.parallel.remat_apply.ScannedLayers``) without the model
    knowing: every layer takes the hidden states plus the same broadcast inputs.

    A layer may return a tuple ``(h, *extras)`` instead of ``h`` (a mixture of
    experts returns its router statistics): the stack then passes ``h`` on,
    sums each extra over the layers and returns ``(h, *sums)``. Nothing is kept
    on the modules, so this holds when a layer is recomputed in the backward
    (activation checkpointing runs its forward twice).
    """

    def forward(
        self, h: torch.Tensor, position_ids: torch.Tensor, masks: AttentionMasks
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        sums: list[torch.Tensor] | None = None
        for layer in self:
            out = layer(h, position_ids, masks)
            if not isinstance(out, tuple):
                h = out
                continue
            h, *extras = out
            sums = extras if sums is None else [s + e for s, e in zip(sums, extras, strict=True)]
        return h if sums is None else (h, *sums)


@dataclasses.dataclass
class CausalLMOutput:
    """What a forward pass returns.

    Attributes:
      loss: mean cross-entropy over target tokens (labels != -100), or None
        when no labels were given.
      logits: ``[batch, seq, vocab]`` float32 logits; None when labels were given
        (the loss path never materializes full-sequence logits).
      num_target_tokens: how many tokens contributed to the loss.
      loss_sum: the summed cross-entropy (``loss * num_target_tokens``), which
        gradient accumulation weights by the global batch's target tokens; 0
        (not NaN) when no token is a target.
      aux_loss: a term the training objective adds to ``loss`` (already
        weighted), e.g. an MoE load-balancing loss; None when the model has none.
        It is not part of ``loss``, so losses compare across families.
      metrics: 0-d tensors the model reports for the step's metrics (router
        statistics); empty for a dense model.
    """

    loss: torch.Tensor | None
    logits: torch.Tensor | None
    num_target_tokens: torch.Tensor | None
    loss_sum: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


def init_normal(module: nn.Module, std: float) -> None:
    """Draws one module's own weights from N(0, std); pass to ``model.apply``.

    Every ``nn.Linear`` and ``nn.Embedding`` weight, and the parameters a module
    names in ``NORMAL_INIT`` (stacked expert weights). Norm gains keep their ones.
    """
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=std)
    for name in getattr(module, "NORMAL_INIT", ()):
        nn.init.normal_(getattr(module, name), mean=0.0, std=std)


def count_targets(labels: torch.Tensor) -> torch.Tensor:
    """Tokens the loss is taken over: labels shifted by one, -100 excluded."""
    return (labels[:, 1:] != IGNORE_INDEX).sum()


def causal_lm_output(
    lm_head: nn.Module, h: torch.Tensor, labels: torch.Tensor | None
) -> CausalLMOutput:
    """Logits (without labels) or the shifted cross-entropy (with labels).

    With labels, hidden states are sliced before the LM head, so the last
    position's logits are never computed.
    """
    if labels is None:
        return CausalLMOutput(loss=None, logits=lm_head(h).float(), num_target_tokens=None)
    logits = lm_head(h[:, :-1]).float()
    targets = labels[:, 1:]
    loss_sum = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    num_targets = count_targets(labels)
    loss = loss_sum / num_targets.clamp(min=1)
    return CausalLMOutput(loss=loss, logits=None, num_target_tokens=num_targets, loss_sum=loss_sum)
