"""Fiddlers: named edits applied with ``--fiddler=NAME`` after the experiment.

A fiddler takes the ``fdl.Config[Experiment]`` and mutates it in place.
"""

from __future__ import annotations

import fiddle as fdl

from xlafw.experiment import Experiment


def bfloat16(cfg: fdl.Config[Experiment]) -> None:
    """Train in pure bfloat16 (parameters, optimizer state and activations)."""
    cfg.trainer.param_dtype = "bfloat16"
    cfg.trainer.compute_dtype = None


def mixed_precision(cfg: fdl.Config[Experiment]) -> None:
    """fp32 parameters and optimizer state, bf16 matmuls and activations."""
    cfg.trainer.param_dtype = "float32"
    cfg.trainer.compute_dtype = "bfloat16"


def quick(cfg: fdl.Config[Experiment]) -> None:
    """A 5-step run that logs every step: for checking a set-up end to end."""
    cfg.trainer.max_steps = 5
    cfg.trainer.log_every = 1


def splash_attention(cfg: fdl.Config[Experiment]) -> None:
    """Use torch_xla's splash attention kernel (TPU only; refused on CPU)."""
    from xlafw.models import AttentionKernel

    cfg.model.config.attention_kernel = AttentionKernel.SPLASH
