"""Experiment factories. Each public function returns ``fdl.Config[Experiment]``.

``--fdl_config=NAME`` resolves NAME (or ``experiments.NAME``) among the
functions listed in ``EXPERIMENTS``; ``--fiddler=NAME`` among ``FIDDLERS``.
These modules must not import torch_xla: resolving, overriding and validating
a config never starts an XLA runtime.
"""

from experiments.fiddlers import bfloat16, mixed_precision, quick, splash_attention
from experiments.llama import (
    llama_8b,
    llama_8b_fsdp_tp,
    llama_70b,
    llama_405b,
    llama_tiny,
    llama_tiny_sft,
    llama_tiny_smoke,
    llama_tiny_spmd,
)
from experiments.mixtral import mixtral_8x7b, mixtral_8x22b, mixtral_tiny, mixtral_tiny_ep

EXPERIMENTS = (
    llama_tiny,
    llama_tiny_smoke,
    llama_tiny_sft,
    llama_tiny_spmd,
    llama_8b,
    llama_8b_fsdp_tp,
    llama_70b,
    llama_405b,
    mixtral_tiny,
    mixtral_tiny_ep,
    mixtral_8x7b,
    mixtral_8x22b,
)
FIDDLERS = (bfloat16, mixed_precision, quick, splash_attention)

__all__ = [f.__name__ for f in (*EXPERIMENTS, *FIDDLERS)] + ["EXPERIMENTS", "FIDDLERS"]
