"""What every family's Hugging Face ``config.json`` mapping shares (pure Python).

Both layouts of RoPE settings that ``transformers`` has written are read:
version 4 puts ``rope_theta`` at the top level and the scaling in
``rope_scaling``; version 5 puts both in ``rope_parameters``. Exports write
both, so either version (and tools that only know version 4) reads them.

The family-specific mapping lives with each family
(``xlafw/models/<family>/hf.py``); ``config_from_hf`` picks the family from
``model_type``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from xlafw.models.rope import Llama3RopeScaling


class HfCheckpointError(ValueError):
    """A Hugging Face checkpoint does not fit the model; the message lists every problem."""


class Stacked(tuple):
    """HF tensor names whose stack along a new first dimension is one xlafw parameter.

    ``ModelFamily.hf_sources`` returns a plain one-name tuple for a parameter
    stored as it is, and ``Stacked`` names for one stored as its slices (a
    mixture's ``[experts, ...]`` weights, one HF tensor per expert), so a
    stack of one expert is still a stack of shape ``[1, ...]``.
    """

    __slots__ = ()


def remote_checkpoint_problem(directory: str | os.PathLike) -> str | None:
    """Why a checkpoint directory cannot be loaded from where it is, or None.

    Loading reads local directories only: ``safetensors.safe_open`` memory-maps
    a local file (so a host reads only its shards' bytes) and cannot open a
    ``gs://`` URL. Exports may go to a bucket (``save_hf_weights``).
    """
    text = os.fspath(directory)
    if "://" not in text:
        return None
    local = text.rstrip("/").rsplit("/", 1)[-1] or "checkpoint"
    return (
        f"{text}: Hugging Face weights load from a local directory only (safetensors "
        f"memory-maps local files). Fix: copy it to local disk first, e.g. "
        f"`gcloud storage cp -r {text} /tmp/` and point to /tmp/{local}."
    )


def rope_from_hf(
    config_json: Mapping[str, Any], default_theta: float
) -> tuple[float, Llama3RopeScaling | None]:
    """``(rope_theta, scaling)`` from either RoPE layout; ``default_theta`` when absent.

    Raises:
      HfCheckpointError: for a RoPE type other than ``default`` and ``llama3``.
    """
    params = config_json.get("rope_parameters") or config_json.get("rope_scaling") or {}
    theta = config_json.get("rope_theta", params.get("rope_theta", default_theta))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return float(theta), None
    if rope_type != "llama3":
        raise HfCheckpointError(
            f"rope type {rope_type!r} is not supported; xlafw implements plain RoPE "
            f"('default') and Llama 3.1 scaling ('llama3'). The config has {params}."
        )
    defaults = Llama3RopeScaling()
    scaling = Llama3RopeScaling(
        factor=float(params.get("factor", defaults.factor)),
        low_freq_factor=float(params.get("low_freq_factor", defaults.low_freq_factor)),
        high_freq_factor=float(params.get("high_freq_factor", defaults.high_freq_factor)),
        original_max_position_embeddings=int(
            params.get(
                "original_max_position_embeddings", defaults.original_max_position_embeddings
            )
        ),
    )
    return float(theta), scaling


def rope_to_hf(theta: float, scaling: Llama3RopeScaling | None) -> dict[str, Any]:
    """The RoPE keys of a ``config.json``, in both transformers 4 and 5 layouts."""
    rope: dict[str, Any] = {"rope_type": "default"}
    if scaling is not None:
        rope = {"rope_type": "llama3", **dataclasses.asdict(scaling)}
    return {
        # transformers 4 reads these two ...
        "rope_theta": theta,
        "rope_scaling": rope if scaling is not None else None,
        # ... and transformers 5 this one.
        "rope_parameters": {**rope, "rope_theta": theta},
    }


def config_from_hf(config_json: Mapping[str, Any]):
    """``(family, config)`` for a parsed ``config.json``, the family chosen by ``model_type``.

    A ``config.json`` without ``model_type`` is read as Llama (old exports).

    Raises:
      HfCheckpointError: for an unknown model type or settings the family
        cannot represent.
    """
    from xlafw.models.family import UnknownFamilyError, family_for_hf_config

    try:
        family = family_for_hf_config({"model_type": "llama", **config_json})
    except UnknownFamilyError as e:
        raise HfCheckpointError(str(e)) from None
    return family, family.from_hf_config(config_json)
