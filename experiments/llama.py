"""Llama experiments, from a CPU-sized model to Llama 3.1 405B.

Launch (from the repository root; ``make -s python-path`` prints the interpreter):

    python -m xlafw.main --fdl_config=experiments.llama_tiny
    python -m xlafw.main --fdl_config=llama_tiny --fdl.trainer.max_steps=50
    python -m xlafw.main --fdl_config=llama_8b --dry_run

Every function returns an unbuilt ``fdl.Config[Experiment]``; experiments
inherit by calling another and changing fields.
"""

from __future__ import annotations

import fiddle as fdl

from xlafw.data import (
    SHAKESPEARE_TEXTS,
    ConsecutivePairs,
    DataPipeline,
    DocumentBoundaries,
    HubDataset,
    HuggingFaceTokenizer,
    SentencePieceTokenizer,
    SftPipeline,
    TextFiles,
)
from xlafw.experiment import (
    Checkpointing,
    Evaluation,
    Experiment,
    MetricsSettings,
    TrainerSettings,
)
from xlafw.models import Llama3RopeScaling, LlamaConfig, LlamaForCausalLM
from xlafw.models.llama import LLAMA_FSDP, LLAMA_FSDP_TP
from xlafw.optim import AdamW, WarmupCosine
from xlafw.parallel import AxisSizes, Mesh, RematPolicy, ShardingRules


def _llama(**config) -> fdl.Partial:
    return fdl.Partial(LlamaForCausalLM, config=fdl.Config(LlamaConfig, **config))


def _rules(rules: ShardingRules) -> fdl.Config[ShardingRules]:
    return fdl.Config(ShardingRules, parameters=rules.parameters, activations=rules.activations)


def _fineweb_edu() -> fdl.Config[HubDataset]:
    """FineWeb-Edu's 10B-token sample, streamed from the hub (the pod experiments' corpus).

    Educational web pages filtered from FineWeb (ODC-By 1.0); columns ``text``,
    ``id``, ``dump``, ``url``, ``file_path``, ``language``, ``language_score``,
    ``token_count``, ``score``, ``int_score``. Not reachable from CPU machines:
    tests stream a local copy of its layout (``tests/test_pretraining_data.py``).
    """
    return fdl.Config(
        HubDataset,
        name="HuggingFaceFW/fineweb-edu",
        config_name="sample-10BT",
        split="train",
        text_field="text",
    )


def _experiment(model: fdl.Partial, data: fdl.Partial) -> fdl.Config[Experiment]:
    return fdl.Config(
        Experiment,
        model=model,
        optimizer=fdl.Partial(AdamW, lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1),
        lr_schedule=fdl.Partial(WarmupCosine, warmup_steps=100, min_ratio=0.1),
        data=data,
        mesh=fdl.Config(Mesh, ici=fdl.Config(AxisSizes, fsdp=-1), dcn=fdl.Config(AxisSizes)),
        sharding=fdl.Config(ShardingRules),
        remat=fdl.Config(RematPolicy),
        trainer=fdl.Config(TrainerSettings),
        checkpoint=fdl.Config(Checkpointing),
        metrics=fdl.Config(MetricsSettings),
        eval=fdl.Config(Evaluation),
    )


def llama_tiny() -> fdl.Config[Experiment]:
    """CPU default: a 19M-parameter Llama 3 style model on Shakespeare."""
    model = _llama(
        vocab_size=32000,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=2048,
    )
    data = fdl.Partial(
        DataPipeline,
        source=fdl.Config(
            TextFiles, paths=(SHAKESPEARE_TEXTS,), shuffle_buffer=10_000, split="train"
        ),
        tokenizer=fdl.Config(SentencePieceTokenizer),
        seq_len=256,
        global_batch_size=8,
    )
    cfg = _experiment(model, data)
    # Validation loss on the held-out 3% of Shakespeare's paragraphs (by a hash of
    # each paragraph: disjoint from the training split by construction).
    heldout = fdl.Partial(
        DataPipeline,
        source=fdl.Config(TextFiles, paths=(SHAKESPEARE_TEXTS,), split="heldout"),
        tokenizer=fdl.Config(SentencePieceTokenizer),
        seq_len=256,
        global_batch_size=8,
    )
    cfg.eval = fdl.Config(Evaluation, data=heldout, every_steps=50, steps=4)
    cfg.sharding = _rules(LLAMA_FSDP)  # used when CPU_NUM_DEVICES > 1: FSDP over all
    cfg.optimizer.lr = 3e-3
    cfg.lr_schedule.warmup_steps = 15
    cfg.trainer.max_steps = 150
    cfg.trainer.log_every = 10
    cfg.checkpoint.every_steps = 50
    return cfg


def llama_tiny_smoke() -> fdl.Config[Experiment]:
    """llama_tiny shrunk for tests and quick checks: 2 narrow layers, 20 steps."""
    cfg = llama_tiny()
    cfg.model.config.hidden_size = 64
    cfg.model.config.intermediate_size = 172
    cfg.model.config.num_hidden_layers = 2
    cfg.model.config.num_attention_heads = 4
    cfg.model.config.num_key_value_heads = 2
    cfg.data.seq_len = 64
    cfg.data.global_batch_size = 4
    cfg.eval.data.seq_len = 64
    cfg.eval.data.global_batch_size = 4
    cfg.eval.every_steps = 10
    cfg.eval.steps = 2
    cfg.lr_schedule.warmup_steps = 5
    cfg.trainer.max_steps = 20
    cfg.trainer.log_every = 5
    return cfg


def llama_tiny_sft() -> fdl.Config[Experiment]:
    """llama_tiny fine-tuned on Shakespeare's replies: loss only on the reply.

    Each speech prompts the next one. Rows are padded to the fixed sequence
    length, so examples of every length share one compiled step.
    """
    cfg = llama_tiny()
    cfg.data = fdl.Partial(
        SftPipeline,
        source=fdl.Config(
            ConsecutivePairs, source=fdl.Config(TextFiles, paths=(SHAKESPEARE_TEXTS,))
        ),
        tokenizer=fdl.Config(SentencePieceTokenizer),
        seq_len=256,
        global_batch_size=8,
    )
    cfg.optimizer.lr = 1e-3
    cfg.trainer.max_steps = 100
    cfg.eval = fdl.Config(Evaluation)  # llama_tiny's held-out text overlaps these replies
    return cfg


def llama_tiny_spmd() -> fdl.Config[Experiment]:
    """llama_tiny on 8 devices, FSDP 4 x tensor 2 (CPU: CPU_NUM_DEVICES=8)."""
    cfg = llama_tiny()
    cfg.mesh.ici.fsdp = 4
    cfg.mesh.ici.tensor = 2
    cfg.sharding = _rules(LLAMA_FSDP_TP)
    return cfg


def llama_8b() -> fdl.Config[Experiment]:
    """Llama 3.1 8B, FSDP over every chip, sequence 8192 (TPU pod slice).

    Trains on FineWeb-Edu (``sample-10BT``, streamed from the hub), documents
    packed with segment ids so attention stops at their boundaries.
    """
    model = _llama(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rope_scaling=fdl.Config(Llama3RopeScaling),
    )
    data = fdl.Partial(
        DataPipeline,
        source=_fineweb_edu(),
        tokenizer=fdl.Config(HuggingFaceTokenizer, name_or_path="meta-llama/Llama-3.1-8B"),
        seq_len=8192,
        global_batch_size=256,
        document_boundaries=DocumentBoundaries.SEGMENTED,
    )
    cfg = _experiment(model, data)
    cfg.sharding = _rules(LLAMA_FSDP)
    # fp32 master weights and AdamW state, bf16 matmuls and activations.
    cfg.trainer.param_dtype = "float32"
    cfg.trainer.compute_dtype = "bfloat16"
    cfg.trainer.max_steps = 1000
    cfg.checkpoint.every_steps = 100
    cfg.remat.checkpoint_modules = ("LlamaDecoderLayer",)
    cfg.remat.optimization_barrier_modules = ("LlamaDecoderLayer",)
    return cfg


def llama_8b_fsdp_tp() -> fdl.Config[Experiment]:
    """Llama 3.1 8B with 2-D sharding: tensor parallel 4 inside FSDP over the rest."""
    cfg = llama_8b()
    cfg.mesh.ici.tensor = 4
    cfg.sharding = _rules(LLAMA_FSDP_TP)
    return cfg


def llama_70b() -> fdl.Config[Experiment]:
    """Llama 3.1 70B: llama_8b's recipe at 80 layers and width 8192."""
    cfg = llama_8b()
    cfg.model.config.hidden_size = 8192
    cfg.model.config.intermediate_size = 28672
    cfg.model.config.num_hidden_layers = 80
    cfg.model.config.num_attention_heads = 64
    cfg.data.tokenizer.name_or_path = "meta-llama/Llama-3.1-70B"
    # Scan the 80 layers (compile time flat in depth) and recompute each layer in the
    # backward pass. Barrier hooks never run inside a scanned layer: none.
    cfg.remat.scan_layers = "model.layers"
    cfg.remat.optimization_barrier_modules = ()
    return cfg


def llama_405b() -> fdl.Config[Experiment]:
    """Llama 3.1 405B: 126 layers, width 16384, 128 heads; scan, remat, host offload (TPU)."""
    cfg = llama_70b()
    cfg.model.config.hidden_size = 16384
    cfg.model.config.intermediate_size = 53248
    cfg.model.config.num_hidden_layers = 126
    cfg.model.config.num_attention_heads = 128
    cfg.data.tokenizer.name_or_path = "meta-llama/Llama-3.1-405B"
    cfg.remat.offload_tensors = ("decoder_input",)  # each layer's input waits in host memory
    cfg.mesh.ici.tensor = 4
    cfg.sharding = _rules(LLAMA_FSDP_TP)
    return cfg
