"""Rotary position embeddings, with Llama 3's frequency scaling.

The layout follows Hugging Face's Llama (rotate the two halves of each head),
so weights move between xlafw and ``transformers`` without permutation.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from xlafw.arguments import InvalidArgument, integer, number, raise_invalid


@dataclasses.dataclass(frozen=True)
class Llama3RopeScaling:
    """Llama 3.1's long-context scaling of RoPE frequencies.

    Wavelengths shorter than ``original_max_position_embeddings / high_freq_factor``
    are kept; those longer than ``original_max_position_embeddings /
    low_freq_factor`` are divided by ``factor``; the band between is blended
    linearly in 1/wavelength.

    Attributes:
      factor: how much the low frequencies are stretched.
      low_freq_factor: lower edge of the blended band.
      high_freq_factor: upper edge of the blended band.
      original_max_position_embeddings: the context length before scaling.
    """

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self):
        raise_invalid(
            number("factor", self.factor, at_least=1, fix="Llama 3.1 uses 8.0."),
            number("low_freq_factor", self.low_freq_factor, above=0, fix="Llama 3.1 uses 1.0."),
            number("high_freq_factor", self.high_freq_factor, above=0, fix="Llama 3.1 uses 4.0."),
            integer(
                "original_max_position_embeddings",
                self.original_max_position_embeddings,
                at_least=1,
                at_most=2**40,
                fix="the context length before scaling; Llama 3.1 uses 8192.",
            ),
        )
        if not self.high_freq_factor > self.low_freq_factor:
            raise InvalidArgument(
                "low_freq_factor",
                self.low_freq_factor,
                f"must be below {{high_freq_factor}}={self.high_freq_factor}: the blended band "
                f"lies between them. Fix: Llama 3.1 uses 1.0 and 4.0.",
                related=("high_freq_factor",),
            )


def inverse_frequencies(
    head_dim: int, theta: float, scaling: Llama3RopeScaling | None
) -> torch.Tensor:
    """Returns the ``[head_dim // 2]`` float32 inverse frequencies, on the CPU."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device="cpu") / head_dim
    inv_freq = 1.0 / (theta**exponents)
    if scaling is None:
        return inv_freq.float()
    old_len = scaling.original_max_position_embeddings
    low_freq_wavelen = old_len / scaling.low_freq_factor
    high_freq_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    blended = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, blended)
    scaled = torch.where(wavelen < high_freq_wavelen, inv_freq, scaled)
    return scaled.float()


class RotaryEmbedding(nn.Module):
    """Computes cos/sin tables for given position ids.

    Positions are an input, not a fixed range, so packed documents can restart
    their positions at every document boundary.
    """

    def __init__(self, head_dim: int, theta: float, scaling: Llama3RopeScaling | None):
        super().__init__()
        # Computed on the CPU (a few values), then moved where the model is being
        # built. Not persistent: derived from the config, so never in a checkpoint.
        inv_freq = inverse_frequencies(head_dim, theta, scaling)
        self.register_buffer("inv_freq", inv_freq.to(torch.get_default_device()), persistent=False)

    def forward(
        self, position_ids: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq  # [b, s, d/2]
        angles = torch.cat([freqs, freqs], dim=-1)[:, None]  # [b, 1, s, d]
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates ``[b, heads, s, d]`` by the angles in ``cos``/``sin``."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin
