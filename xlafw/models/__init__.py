"""Models xlafw trains: one package per family, reached through ``ModelFamily``.

``xlafw/models/<family>/`` holds a family's config, module, sharding rule sets,
formulas and Hugging Face mapping, and exposes ``FAMILY`` (see ``family.py``).
Shared building blocks: ``attention.py`` (with the Pallas kernels), ``rope.py``,
``layers.py``; Hugging Face I/O for every family: ``hf_io.py``.
"""

from __future__ import annotations

import os

import torch

from xlafw.models.attention import AttentionKernel, AttentionMasks
from xlafw.models.attention_kernels import KernelBlockSizes
from xlafw.models.family import ModelFamily, families, family_of
from xlafw.models.layers import CausalLMOutput
from xlafw.models.llama import LlamaConfig, LlamaForCausalLM
from xlafw.models.rope import Llama3RopeScaling

__all__ = [
    "AttentionKernel",
    "AttentionMasks",
    "CausalLMOutput",
    "KernelBlockSizes",
    "Llama3RopeScaling",
    "LlamaConfig",
    "LlamaForCausalLM",
    "ModelFamily",
    "families",
    "family_of",
    "load_pretrained",
]


def load_pretrained(
    directory: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    mesh=None,
    rules: str = "fsdp",
) -> torch.nn.Module:
    """The model a Hugging Face directory describes, with its weights, for any family.

    Like ``transformers.AutoModelForCausalLM.from_pretrained``: ``config.json``'s
    ``model_type`` picks the family, its config is mapped to xlafw's, the model
    is built and the safetensors weights are loaded (checked first, every
    problem reported at once).

    Args:
      directory: a local directory with ``config.json`` and safetensors files.
      dtype: the parameters' dtype.
      mesh: None builds the model on the CPU. A ``torch_xla`` SPMD mesh
        (``xs.Mesh``) builds it on the XLA device, shards every parameter by
        the family's ``rules`` set, then loads each device's shards only.
      rules: which of the family's stock sharding rule sets to use with a mesh
        (``family.sharding_rules``: ``fsdp`` for every family).

    Returns:
      The model in eval mode.

    Raises:
      HfCheckpointError: for an unreadable or unknown ``config.json`` and any
        mismatch between it, the files and the model.
      KeyError: for a rule set the family does not have (naming those it has).
    """
    from xlafw.models.hf_io import load_hf_weights, read_hf_config

    family, config = read_hf_config(directory)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        if mesh is None:
            model = family.model_class(config)
        else:
            model = _build_sharded(family, config, mesh, rules)
    finally:
        torch.set_default_dtype(previous)
    load_hf_weights(model, directory)
    return model.eval()


def _build_sharded(family: ModelFamily, config, mesh, rules: str) -> torch.nn.Module:
    import torch_xla
    import torch_xla.distributed.spmd as xs

    if rules not in family.sharding_rules:
        raise KeyError(
            f"rules={rules!r}: the {family.name} family has rule sets "
            f"{sorted(family.sharding_rules)}."
        )
    rule_set = family.sharding_rules[rules]
    with torch.device(torch_xla.device()):
        model = family.model_class(config)
    for name, param in model.named_parameters():
        if spec := rule_set.spec_for(name):
            xs.mark_sharding(param, mesh, spec)
    return model
