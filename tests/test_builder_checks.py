"""Every typed builder checks its own arguments; validation names the config path of each.

The builders raise ``InvalidArgument`` (field, value, allowed range, fix) when
they are made; ``validate`` makes every host-side builder of an experiment
before anything runs and reports each error at its config path, together with
every other problem, as one ``ConfigError``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import subprocess

import fiddle as fdl
import pytest
import torch

from xlafw.arguments import InvalidArgument, InvalidArguments
from xlafw.config import ConfigError, build_config, validate
from xlafw.config.hardware import resolve_devices
from xlafw.data import (
    ChatMessages,
    ConsecutivePairs,
    DataPipeline,
    HostShard,
    HubDataset,
    LocalFiles,
    Mixture,
    SentencePieceTokenizer,
    TextFiles,
)
from xlafw.experiment import Checkpointing, Evaluation, Experiment, MetricsSettings, TrainerSettings
from xlafw.models import Llama3RopeScaling, LlamaConfig
from xlafw.models.attention_kernels import KernelBlockSizes
from xlafw.optim import AdamW, WarmupCosine
from xlafw.parallel import AxisSizes, Mesh, RematPolicy, ShardingRules

TINY = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)
PARAMETER = [torch.nn.Parameter(torch.zeros(1))]


@pytest.mark.parametrize(
    "make, field, expected",
    [
        (lambda: TrainerSettings(max_steps=0), "max_steps", "integer from 1 to 16777216"),
        (lambda: TrainerSettings(max_steps=2**25), "max_steps", "float32"),
        (lambda: TrainerSettings(seed=-1), "seed", "0 to 2**32-1"),
        (lambda: TrainerSettings(log_every=0), "log_every", "integer >= 1"),
        (lambda: TrainerSettings(grad_accum_steps=0), "grad_accum_steps", "no accumulation"),
        (lambda: TrainerSettings(max_grad_norm=0.0), "max_grad_norm", "None disables"),
        (lambda: TrainerSettings(run_dir="runs/{name}"), "run_dir", "{experiment}"),
        (lambda: TrainerSettings(run_dir="  "), "run_dir", "blank"),
        (lambda: TrainerSettings(param_dtype="float16"), "param_dtype", "'bfloat16'"),
        (lambda: TrainerSettings(init_from_hf=""), "init_from_hf", "blank"),
        (lambda: MetricsSettings(profile_steps=(5, 1)), "profile_steps", "first <= last"),
        (lambda: MetricsSettings(profile_steps=(0, 3)), "profile_steps", "1 <= first"),
        (lambda: MetricsSettings(wandb_project="a/b"), "wandb_project", "128 characters"),
        (lambda: MetricsSettings(peak_tflops_per_device=-1.0), "peak_tflops_per_device", "> 0"),
        (lambda: Checkpointing(keep_last=0), "keep_last", "resume needs it"),
        (lambda: Checkpointing(keep_every=-1), "keep_every", "integer >= 0"),
        (lambda: Checkpointing(every_steps=-5), "every_steps", "saves only at the end"),
        (lambda: Checkpointing(directory="{run}/ckpt"), "directory", "{run_dir}"),
        (lambda: Evaluation(steps=0), "steps", "batches per evaluation"),
        (lambda: Evaluation(every_steps=-1), "every_steps", "disables evaluation"),
        (lambda: AxisSizes(tensor=0), "tensor", "-1 for the devices"),
        (lambda: Mesh(dcn=AxisSizes(data=-1)), "dcn.data", "slice count"),
        (lambda: ShardingRules(parameters=(("x",),)), "parameters[0]", "is not a rule"),
        (
            lambda: ShardingRules(activations=(("*", ("fsdp", "fsdp")),)),
            "activations[0]",
            "more than once",
        ),
        (lambda: RematPolicy(offload_tensors=("x",)), "offload_tensors", "decoder_input"),
        (lambda: RematPolicy(checkpoint_modules=("",)), "checkpoint_modules", "non-blank"),
        (lambda: LlamaConfig(**{**TINY, "hidden_size": 0}), "hidden_size", "from 1 to 1048576"),
        (lambda: LlamaConfig(**{**TINY, "num_hidden_layers": 10**6}), "num_hidden_layers", "4096"),
        (lambda: LlamaConfig(**TINY, head_dim=15), "head_dim", "even"),
        (lambda: LlamaConfig(**TINY, rms_norm_eps=0.0), "rms_norm_eps", "> 0"),
        (lambda: LlamaConfig(**TINY, initializer_range=-0.02), "initializer_range", "std"),
        (lambda: LlamaConfig(**TINY, rope_theta=math.inf), "rope_theta", "finite"),
        (lambda: KernelBlockSizes(q=100), "q", "multiple of 128"),
        (lambda: Llama3RopeScaling(factor=0.5), "factor", ">= 1"),
        (lambda: Llama3RopeScaling(low_freq_factor=8.0), "low_freq_factor", "high_freq_factor"),
        (lambda: AdamW(PARAMETER, lr=-1.0), "lr", "in [0, 3.40282e+38]"),
        (lambda: AdamW(PARAMETER, lr=1e39), "lr", "3.40282e+38"),
        (lambda: AdamW(PARAMETER, betas=(0.9,)), "betas", "two moment decay rates"),
        (lambda: AdamW(PARAMETER, betas=(0.9, 1.0)), "betas", "[0, 1)"),
        (lambda: AdamW(PARAMETER, eps=0.0), "eps", "in (0, 3.40282e+38]"),
        (lambda: AdamW(PARAMETER, weight_decay=math.nan), "weight_decay", "finite"),
        (lambda: AdamW(PARAMETER, update_clip=0.0), "update_clip", "None for no clipping"),
        (lambda: WarmupCosine(total_steps=0), "total_steps", "trainer.max_steps"),
        (lambda: WarmupCosine(total_steps=10, warmup_steps=-1), "warmup_steps", "no warm-up"),
        (lambda: WarmupCosine(total_steps=10, min_ratio=1.5), "min_ratio", "[0, 1]"),
        (lambda: TextFiles(paths=()), "paths", "at least one"),
        (lambda: TextFiles(paths=("x",), shuffle_buffer=-1), "shuffle_buffer", "no shuffle"),
        (lambda: LocalFiles(paths=("x",), text_field=" "), "text_field", "blank"),
        (lambda: HubDataset(name="a/b", seed=2**40), "seed", "2**32-1"),
        (lambda: Mixture(sources=(TextFiles(paths=("x",)),), weights=(math.nan,)), "weights", ""),
        (
            lambda: ConsecutivePairs(TextFiles(paths=("x",), split="train")),
            "source.split",
            "'all'",
        ),
        (lambda: SentencePieceTokenizer(model_file=""), "model_file", "sentencepiece"),
        (lambda: ChatMessages(loss_roles=()), "loss_roles", "at least one"),
        (lambda: HostShard(process_index=2, process_count=2), "process_index", "process_count"),
    ],
)
def test_a_builder_refuses_an_argument_out_of_range_naming_field_range_and_fix(
    make, field, expected
):
    with pytest.raises(InvalidArgument) as err:
        make()
    assert err.value.field == field
    assert expected in str(err.value)


def test_a_builder_reports_every_bad_argument_at_once():
    with pytest.raises(InvalidArguments) as err:
        Checkpointing(keep_last=0, every_steps=-1)
    assert [e.field for e in err.value.errors] == ["every_steps", "keep_last"]


def test_a_pipeline_checks_its_sizes_before_reading_anything():
    source = TextFiles(paths=("/nowhere/*.txt",))  # never read
    with pytest.raises(InvalidArgument, match="seq_len=1: must be an integer >= 2"):
        DataPipeline(source, SentencePieceTokenizer(), seq_len=1, global_batch_size=2)


def test_a_subclass_of_a_model_config_runs_the_base_checks_first():
    @dataclasses.dataclass(frozen=True)
    class WithExperts(LlamaConfig):
        experts: int = 8

        def __post_init__(self):
            super().__post_init__()
            if self.experts < 1:
                raise InvalidArgument("experts", self.experts, "must be >= 1.")

    with pytest.raises(InvalidArgument, match="hidden_size"):
        WithExperts(**{**TINY, "hidden_size": -4})
    with pytest.raises(InvalidArgument, match="experts=0"):
        WithExperts(**TINY, experts=0)
    assert WithExperts(**TINY).experts == 8


def _problems(sets, **context) -> str:
    with pytest.raises(ConfigError) as err:
        validate(build_config("llama_tiny_smoke", sets=sets), **context)
    return str(err.value)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("optimizer.betas=(0.9, 1.0)", "optimizer.betas=(0.9, 1.0): must be two moment decay"),
        ("checkpoint.keep_last=0", "checkpoint.keep_last=0: must be an integer >= 1"),
        ("lr_schedule.min_ratio=2.0", "lr_schedule.min_ratio=2.0: must be a finite number"),
        ("data.seq_len=1", "data.seq_len=1: must be an integer >= 2"),
        ("eval.data.global_batch_size=0", "eval.data.global_batch_size=0: must be"),
        ("mesh.ici.data=-1", "mesh.ici.data=-1: at most one ICI axis may be -1"),
        ("model.config.rms_norm_eps=0", "model.config.rms_norm_eps=0.0: must be"),
        ("trainer.run_dir='{nope}'", "trainer.run_dir='{nope}': is not a valid template"),
        ("metrics.profile_steps=(5, 99)", "metrics.profile_steps=(5, 99) ends after"),
        ("optimizer.params=1", "optimizer.params is supplied at run time"),
        ("lr_schedule.total_steps=5", "lr_schedule.total_steps is supplied at run time"),
        ("model.config.rope_scaling=None", None),  # accepted: plain RoPE
    ],
)
def test_validation_names_the_config_path_of_every_bad_argument(override, expected):
    cfg = build_config("llama_tiny_smoke", sets=[override])
    if expected is None:
        validate(cfg)
        return
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert expected in str(err.value)


def test_builder_errors_are_reported_with_every_other_problem_at_once():
    text = _problems(
        ["optimizer.lr=-1", "checkpoint.keep_every=-1", "model.config.num_key_value_heads=3"]
    )
    assert "optimizer.lr=-1.0" in text and "checkpoint.keep_every=-1" in text
    assert "model.config.num_key_value_heads=3" in text
    assert "3 problems" in text


def test_a_run_directory_that_is_a_file_is_refused(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert f"trainer.run_dir={blocker}: cannot write the run's files there: it is a file" in (
        _problems([f"trainer.run_dir={blocker}"])
    )
    assert f"{blocker} is a file" in _problems([f"trainer.run_dir={blocker}/run"])
    assert "checkpoint.directory" in _problems([f"checkpoint.directory={blocker}/ckpt"])


@contextlib.contextmanager
def _unwritable_directory(path):
    """A directory nobody may write: mode 0o500, and for root the immutable flag too."""
    path.mkdir(mode=0o500)
    if os.geteuid() != 0:  # permission bits bind everyone but root
        yield path
        return
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("running as root on a file system without chattr's immutable flag")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_an_unwritable_run_directory_is_refused(tmp_path):
    with _unwritable_directory(tmp_path / "locked") as locked:
        assert "is not writable" in _problems([f"trainer.run_dir={locked}/run"])


def test_data_files_that_match_nothing_or_a_directory_are_refused(tmp_path):
    missing = _problems([f"data.source.paths=('{tmp_path}/none/*.txt',)"])
    assert "data.source.paths: no file matches" in missing
    directory = _problems([f"data.source.paths=('{tmp_path}',)"])
    assert "data.source.paths: " in directory and "matches the directory" in directory


def test_a_tokenizer_that_is_no_tokenizer_is_refused(tmp_path):
    text_file = tmp_path / "tokenizer.model"
    text_file.write_text("not a sentencepiece model")
    assert "data.tokenizer.model_file=" in _problems([f"data.tokenizer.model_file={text_file}"])
    assert "is a directory" in _problems([f"data.tokenizer.model_file={tmp_path}"])


def test_a_hub_tokenizer_directory_without_tokenizer_files_is_refused(tmp_path):
    cfg = build_config("llama_8b", sets=[f"data.tokenizer.name_or_path={tmp_path}"])
    with pytest.raises(ConfigError, match="holds none of a tokenizer's files"):
        validate(cfg, target="v5p-256")


def test_an_empty_local_dataset_directory_is_refused(tmp_path):
    cfg = build_config("llama_8b", sets=[f"data.source.name={tmp_path}"])
    with pytest.raises(ConfigError, match=r"data\.source\.name=.*holds no files"):
        validate(cfg, target="v5p-256")


def test_eval_batches_kept_on_the_devices_count_against_memory():
    text = _problems(["eval.steps=100000000"])
    assert "eval.steps=100000000" in text and "memory" in text


def test_an_eval_sequence_longer_than_the_model_takes_is_refused():
    text = _problems(["eval.data.seq_len=100000"])
    assert "eval.data.seq_len=100000 exceeds model.config.max_position_embeddings=2048" in text


def test_an_eval_forward_larger_than_the_memory_is_refused_before_training():
    text = _problems(["eval.data.global_batch_size=65536"])
    assert "eval activations" in text and "eval.data.global_batch_size=65536" in text


@pytest.mark.parametrize("count", [0, -8])
def test_no_device_count_below_one(count):
    with pytest.raises(ConfigError, match=f"--num_devices={count}: a run needs at least one"):
        resolve_devices(count)


def test_a_mesh_that_cannot_fit_names_its_axes_and_the_declared_devices():
    with pytest.raises(ConfigError) as err:
        validate(build_config("llama_tiny_spmd"), 3)
    assert "mesh (mesh.ici.fsdp=4, mesh.ici.tensor=2) on 3 CPU device(s) (--num_devices=3)" in (
        str(err.value)
    )


def test_the_experiment_name_must_be_a_file_name():
    with pytest.raises(InvalidArgument, match="without '/'"):
        Experiment(model=None, optimizer=None, lr_schedule=None, data=None, name="a/b")


def test_accepted_configs_complete_like_the_trainer():
    cfg = build_config("llama_tiny_smoke")
    validate(cfg)
    experiment = fdl.build(cfg)
    schedule = experiment.lr_schedule(total_steps=experiment.trainer.max_steps)
    experiment.optimizer(PARAMETER, schedule=schedule)
    experiment.data(host=HostShard())
