"""Mixtral experiments, from a CPU-sized mixture of experts to Mixtral 8x22B.

Launch (from the repository root; ``make -s python-path`` prints the interpreter):

    python -m xlafw.main --fdl_config=mixtral_tiny
    CPU_NUM_DEVICES=8 python -m xlafw.main --fdl_config=mixtral_tiny_ep
    python -m xlafw.main --fdl_config=mixtral_8x7b --dry_run

Every function returns an unbuilt ``fdl.Config[Experiment]``; experiments
inherit by calling another and changing fields.
"""

from __future__ import annotations

import fiddle as fdl

from experiments.llama import _experiment, _fineweb_edu, _rules, llama_tiny
from xlafw.data import DataPipeline, DocumentBoundaries, HuggingFaceTokenizer
from xlafw.experiment import Experiment
from xlafw.models.mixtral import (
    MIXTRAL_EP,
    MIXTRAL_FSDP,
    MixtralConfig,
    MixtralForCausalLM,
    MoeKernel,
)


def _mixtral(**config) -> fdl.Partial:
    return fdl.Partial(MixtralForCausalLM, config=fdl.Config(MixtralConfig, **config))


def mixtral_tiny() -> fdl.Config[Experiment]:
    """CPU default: a 16.2M-parameter Mixtral (8 experts, top 2) on llama_tiny's Shakespeare.

    llama_tiny's data, tokenizer, optimizer, schedule, steps and evaluation;
    13.6M parameters are active per token, 12.3M of them the 32k-vocabulary
    embedding and head. Dropless routing (every token reaches both its
    experts, as in transformers).
    """
    cfg = llama_tiny()
    cfg.model = _mixtral(
        vocab_size=32000,
        hidden_size=192,
        intermediate_size=192,
        num_hidden_layers=4,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        num_local_experts=8,
        num_experts_per_tok=2,
    )
    cfg.sharding = _rules(MIXTRAL_FSDP)  # used when CPU_NUM_DEVICES > 1: FSDP over all
    return cfg


def mixtral_tiny_ep() -> fdl.Config[Experiment]:
    """mixtral_tiny on 8 devices, expert 4 x fsdp 2 (CPU: CPU_NUM_DEVICES=8).

    The same model, data and seed as mixtral_tiny, so its losses compare with
    the 1-device run: 2 experts per expert-parallel group, tokens moved to
    their experts by all-to-all. One-hot einsum dispatch: XLA partitions it
    over the batch, where the gather dispatch would gather the global batch
    on every device (BUILD_NOTES.md, "Mixtral MoE (issue 15)").
    """
    cfg = mixtral_tiny()
    cfg.model.config.moe_kernel = MoeKernel.EINSUM
    cfg.mesh.ici.fsdp = 2
    cfg.mesh.ici.expert = 4
    cfg.sharding = _rules(MIXTRAL_EP)
    return cfg


def mixtral_8x7b() -> fdl.Config[Experiment]:
    """Mixtral 8x7B (46.7B parameters, 12.9B active), expert parallel 8 x FSDP (TPU pod slice).

    The published ``mistralai/Mixtral-8x7B-v0.1`` architecture, trained like
    llama_8b: FineWeb-Edu packed with segment ids, fp32 master weights with
    bf16 matmuls, every decoder layer recomputed in the backward. Each expert
    takes 1.25x its even share of a sequence's assignments (tokens over that
    are dropped): the static dispatch then runs 2.5 expert copies per token
    where dropless would run 8. One-hot einsum dispatch, which XLA
    partitions over the batch (as mixtral_tiny_ep).
    """
    model = _mixtral(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=32768,
        rope_theta=1e6,
        num_local_experts=8,
        num_experts_per_tok=2,
        router_aux_loss_coef=0.02,
        capacity_factor=1.25,
        moe_kernel=MoeKernel.EINSUM,
    )
    data = fdl.Partial(
        DataPipeline,
        source=_fineweb_edu(),
        tokenizer=fdl.Config(HuggingFaceTokenizer, name_or_path="mistralai/Mixtral-8x7B-v0.1"),
        seq_len=4096,
        global_batch_size=256,
        document_boundaries=DocumentBoundaries.SEGMENTED,
    )
    cfg = _experiment(model, data)
    cfg.mesh.ici.expert = 8
    cfg.sharding = _rules(MIXTRAL_EP)
    cfg.trainer.param_dtype = "float32"
    cfg.trainer.compute_dtype = "bfloat16"
    cfg.trainer.max_steps = 1000
    cfg.checkpoint.every_steps = 100
    cfg.remat.checkpoint_modules = ("MixtralDecoderLayer",)
    cfg.remat.optimization_barrier_modules = ("MixtralDecoderLayer",)
    return cfg


def mixtral_8x22b() -> fdl.Config[Experiment]:
    """Mixtral 8x22B (141B parameters, 39B active): mixtral_8x7b's recipe at its published size."""
    cfg = mixtral_8x7b()
    model = cfg.model.config
    model.vocab_size = 32768
    model.hidden_size = 6144
    model.intermediate_size = 16384
    model.num_hidden_layers = 56
    model.num_attention_heads = 48
    model.max_position_embeddings = 65536
    model.router_aux_loss_coef = 0.001
    cfg.data.tokenizer.name_or_path = "mistralai/Mixtral-8x22B-v0.1"
    return cfg
