"""The typed ``Experiment`` the trainer consumes.

An experiment function returns ``fdl.Config[Experiment]``. Building it yields
an ``Experiment`` of *partially specified* builders: each is completed by the
trainer with what only exists at run time (see ARCHITECTURE.md, "The typed
builders"):

==============  ==========================================  =====================
field           built value                                 trainer supplies
==============  ==========================================  =====================
model           ``() -> nn.Module``                         dtype, XLA device
mesh            ``Mesh`` (axis sizes)                       the device count
sharding        ``ShardingRules``                           the model, the mesh
remat           ``RematPolicy``                             the model
optimizer       ``(params, schedule=...) -> Optimizer``     parameters, schedule
lr_schedule     ``(total_steps=...) -> schedule``           ``trainer.max_steps``
data            ``(host=...) -> pipeline``                  this host's data split
eval.data       ``(host=...) -> pipeline``                  this host's data split
trainer         ``TrainerSettings``                         --
==============  ==========================================  =====================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

import torch

from xlafw.arguments import (
    MAX_STEPS,
    SEED_MAX,
    InvalidArgument,
    declared_choice,
    instance,
    integer,
    is_int,
    number,
    raise_invalid,
    template,
    text,
)
from xlafw.data.pipeline import BatchPipeline
from xlafw.dtypes import TORCH_DTYPES
from xlafw.parallel import Mesh, RematPolicy, ShardingRules

# Models up to this many parameters are initialized on the host by default
# (TrainerSettings.init_on): 1 GiB in float32, about a second of host init.
HOST_INIT_MAX_PARAMETERS = 2**28
# Characters wandb refuses in a project name.
_WANDB_FORBIDDEN = "/\\#?%:"


@dataclasses.dataclass(frozen=True)
class TrainerSettings:
    """How long to train and what to report.

    Attributes:
      max_steps: optimizer steps to run in total (a restart continues to it).
      steps_per_epoch: steps in one pass over the data, for the logged epoch;
        None when the stream's length is unknown (the usual case when streaming).
      log_every: log metrics every this many steps; reading them never adds a
        graph or a recompilation.
      seed: seeds Python, NumPy, torch and the XLA RNG.
      param_dtype: the dtype parameters, gradients and optimizer state are
        kept in (the master weights).
      compute_dtype: the dtype matmuls and activations run in. With
        ``param_dtype=float32, compute_dtype=bfloat16`` (mixed precision)
        matmul inputs are cast to bfloat16 under autocast while the weights
        and AdamW's state stay float32, so small updates are not rounded
        away over a long run. None: the same as ``param_dtype`` (pure fp32,
        or pure bf16 when ``param_dtype=bfloat16``).
      grad_accum_steps: micro-batches per optimizer step. The global batch is
        split into this many micro-batches, run one after another inside the
        same compiled step, gradients summed; the loss stays token-weighted
        over the whole global batch, so the step equals the unaccumulated one
        at a fraction of the activation memory.
      max_grad_norm: clip gradients to this global L2 norm; None disables.
      run_dir: where the run writes its config and metrics. ``{experiment}`` is
        replaced by the experiment's name.
      compile_cache: XLA's persistent compilation cache. ``auto`` turns it on
        on TPU and off on XLA's CPU backend, whose PJRT client writes entries
        but cannot deserialize them (BUILD_NOTES.md, "Observability (issue 8)").
      compile_cache_dir: where the cache lives (shared by runs).
      init_from_hf: a local Hugging Face checkpoint directory of the model's family
        (config.json + safetensors) to start from. Loaded after sharding, each
        host reading only its shards; a checkpoint of this run, if one exists,
        takes precedence (resume).
      init_on: where the model's random initialization runs. ``host``: on the
        CPU with torch's generator, then copied to the devices (no
        initialization graph to compile: about a second less start-up for small
        models, and the same initial weights for every mesh). ``device``: on the
        XLA device, sharded, which is what large models need (a host could not
        hold them). ``auto``: host up to ``HOST_INIT_MAX_PARAMETERS`` (256M)
        parameters, device above.
    """

    max_steps: int = 100
    steps_per_epoch: int | None = None
    log_every: int = 10
    seed: int = 42
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    compute_dtype: Literal["float32", "bfloat16"] | None = None
    grad_accum_steps: int = 1
    max_grad_norm: float | None = 1.0
    run_dir: str = "runs/{experiment}"
    compile_cache: Literal["auto", "on", "off"] = "auto"
    compile_cache_dir: str = "~/.cache/xlafw/xla_compile_cache"
    init_from_hf: str | None = None
    init_on: Literal["auto", "host", "device"] = "auto"

    def __post_init__(self):
        raise_invalid(
            integer(
                "max_steps",
                self.max_steps,
                at_least=1,
                at_most=MAX_STEPS,
                fix="the optimizer counts steps in float32, exact up to 2**24.",
            ),
            integer(
                "steps_per_epoch",
                self.steps_per_epoch,
                at_least=1,
                allow_none=True,
                fix="None when the stream's length is unknown.",
            ),
            integer("log_every", self.log_every, at_least=1),
            integer(
                "seed",
                self.seed,
                at_least=0,
                at_most=SEED_MAX,
                fix="NumPy's seeding takes 0 to 2**32-1.",
            ),
            declared_choice(self, "param_dtype"),
            declared_choice(self, "compute_dtype", fix="None runs in param_dtype."),
            integer(
                "grad_accum_steps", self.grad_accum_steps, at_least=1, fix="1: no accumulation."
            ),
            number(
                "max_grad_norm",
                self.max_grad_norm,
                above=0,
                allow_none=True,
                fix="None disables clipping.",
            ),
            template(
                "run_dir",
                self.run_dir,
                {"experiment": "experiment"},
                fix="a directory path, e.g. runs/{experiment} or gs://BUCKET/runs/NAME.",
            ),
            declared_choice(self, "compile_cache"),
            text("compile_cache_dir", self.compile_cache_dir),
            text(
                "init_from_hf",
                self.init_from_hf,
                allow_none=True,
                fix="a Hugging Face checkpoint directory, or None to start from scratch.",
            ),
            declared_choice(self, "init_on"),
        )

    @property
    def torch_dtype(self) -> torch.dtype:
        """The parameters' dtype as a ``torch.dtype``."""
        return TORCH_DTYPES[self.param_dtype]

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The dtype to autocast matmuls to, or None when they run in ``param_dtype``."""
        compute = self.compute_dtype or self.param_dtype
        return None if compute == self.param_dtype else TORCH_DTYPES[compute]


@dataclasses.dataclass(frozen=True)
class MetricsSettings:
    """Where metrics go and what is watched while training.

    Attributes:
      wandb: ``disabled``, ``offline`` (files under the run directory, sync
        later with ``wandb sync``) or ``online``. The run is named after the
        experiment and gets the full flattened config.
      wandb_project: the wandb project.
      profile_steps: ``(first, last)`` steps to capture an XLA profile of, into
        ``<run_dir>/profile`` (TensorBoard's profile plugin reads it); None: off.
      on_recompile: what a compilation after warm-up does: ``warn`` logs the
        step and the likely cause, ``error`` stops the run.
      peak_tflops_per_device: peak dense TFLOP/s of one device for MFU. None:
        the TPU generation's bf16 peak, or on CPU a measured matmul rate.
    """

    wandb: Literal["disabled", "offline", "online"] = "disabled"
    wandb_project: str = "xlafw"
    profile_steps: tuple[int, int] | None = None
    on_recompile: Literal["warn", "error"] = "warn"
    peak_tflops_per_device: float | None = None

    def __post_init__(self):
        raise_invalid(
            declared_choice(self, "wandb"),
            _wandb_project_problem(self.wandb_project),
            _profile_steps_problem(self.profile_steps),
            declared_choice(self, "on_recompile"),
            number(
                "peak_tflops_per_device",
                self.peak_tflops_per_device,
                above=0,
                allow_none=True,
                fix="the device's peak dense TFLOP/s, or None to measure or look it up.",
            ),
        )


def _wandb_project_problem(project: object) -> InvalidArgument | None:
    if problem := text("wandb_project", project):
        return problem
    if any(c in project for c in _WANDB_FORBIDDEN) or len(project) > 128:
        return InvalidArgument(
            "wandb_project",
            project,
            f"wandb project names have at most 128 characters and none of "
            f"{' '.join(_WANDB_FORBIDDEN)}. Fix: e.g. xlafw.",
        )
    return None


def _profile_steps_problem(steps: object) -> InvalidArgument | None:
    if steps is None:
        return None
    if (
        not isinstance(steps, tuple)
        or len(steps) != 2
        or not all(is_int(s) for s in steps)
        or not 1 <= steps[0] <= steps[1]
    ):
        return InvalidArgument(
            "profile_steps",
            steps,
            "must be (first, last) steps with 1 <= first <= last. Fix: e.g. (20, 25), or "
            "None for no profile.",
        )
    return None


@dataclasses.dataclass(frozen=True)
class Checkpointing:
    """When checkpoints are written, which are kept, and how a restart resumes.

    Attributes:
      every_steps: save every this many steps; 0 saves only at the end of the
        run and on preemption (SIGTERM/SIGINT).
      keep_last: how many of the newest checkpoints to keep.
      keep_every: also keep every checkpoint whose step is a multiple of this,
        forever; 0 keeps none beyond ``keep_last``.
      directory: where checkpoints go; ``{run_dir}`` is the run directory.
        A ``gs://`` URL (any fsspec URL) works: the run directory of a pod.
      resume: ``auto`` continues from the newest checkpoint in ``directory``;
        ``never`` refuses to start if one exists (never overwrites a run).
      allow_config_change: resume even when the config differs from the one
        saved with the checkpoint beyond the fields in
        ``xlafw.checkpoint.RESUMABLE_CHANGES`` (the diff is logged).
      async_save: write checkpoints in a background thread; the step loop
        waits only for the copy of the state to host memory. None chooses:
        on for TPU (a large model's write takes minutes), off on the CPU
        backend (the host copy would double the memory the run already uses
        there). Preemption, the last step and a NaN stop wait for it.
    """

    every_steps: int = 0
    keep_last: int = 2
    keep_every: int = 0
    directory: str = "{run_dir}/checkpoints"
    resume: Literal["auto", "never"] = "auto"
    allow_config_change: bool = False
    async_save: bool | None = None

    def __post_init__(self):
        raise_invalid(
            integer("every_steps", self.every_steps, at_least=0, fix="0 saves only at the end."),
            integer(
                "keep_last",
                self.keep_last,
                at_least=1,
                fix="keep at least the newest checkpoint (resume needs it).",
            ),
            integer(
                "keep_every", self.keep_every, at_least=0, fix="0 keeps none beyond keep_last."
            ),
            template(
                "directory",
                self.directory,
                {"run_dir": "run_dir"},
                fix="e.g. {run_dir}/checkpoints or gs://BUCKET/PATH.",
            ),
            declared_choice(self, "resume"),
            instance("allow_config_change", self.allow_config_change, bool),
            instance(
                "async_save",
                self.async_save,
                bool,
                allow_none=True,
                fix="None chooses per backend.",
            ),
        )


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Validation loss during training.

    Attributes:
      data: builds this host's eval pipeline from a ``HostShard``, like
        ``Experiment.data``; it must read data the training pipeline never
        sees (e.g. ``TextFiles(split="heldout")`` beside ``split="train"``).
        None: no eval data.
      every_steps: evaluate after every this many training steps; 0 disables.
      steps: eval batches per evaluation. They are read once and reused, so
        every evaluation, in this run or a resumed one, scores the same tokens.
    """

    data: Callable[..., BatchPipeline] | None = None
    every_steps: int = 0
    steps: int = 4

    def __post_init__(self):
        raise_invalid(
            None
            if self.data is None or callable(self.data)
            else InvalidArgument(
                "data", self.data, "must build a pipeline (a fdl.Partial), or None."
            ),
            integer("every_steps", self.every_steps, at_least=0, fix="0 disables evaluation."),
            integer("steps", self.steps, at_least=1, fix="batches per evaluation, e.g. 4."),
        )


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything one training run needs, as builders.

    Attributes:
      model: builds the model (a ``fdl.Partial`` of a model class).
      optimizer: builds the optimizer from parameters and a ``schedule``.
      lr_schedule: builds the LR schedule from ``total_steps``.
      data: builds this host's data pipeline from a ``HostShard``.
      mesh: the device mesh's axis sizes.
      sharding: parameter and activation sharding rules.
      remat: what to recompute in the backward pass.
      trainer: loop length, logging, seed, dtype, clipping, run directory.
      checkpoint: checkpoint cadence, retention and resume policy.
      metrics: wandb, profiling, recompilation alarm, MFU peak.
      eval: validation loss on held-out data during training.
      name: the experiment's name; set by the resolver to the function name.
    """

    model: Callable[[], torch.nn.Module]
    optimizer: Callable[..., torch.optim.Optimizer]
    lr_schedule: Callable[..., Callable[[torch.Tensor], torch.Tensor]]
    data: Callable[..., BatchPipeline]
    mesh: Mesh = Mesh()
    sharding: ShardingRules = ShardingRules()
    remat: RematPolicy = RematPolicy()
    trainer: TrainerSettings = TrainerSettings()
    checkpoint: Checkpointing = Checkpointing()
    metrics: MetricsSettings = MetricsSettings()
    eval: Evaluation = Evaluation()
    name: str = "experiment"

    def __post_init__(self):
        if text("name", self.name) or self.name in (".", "..") or "/" in self.name:
            raise InvalidArgument(
                "name",
                self.name,
                "names the run directory (runs/{experiment}), so it must be a non-blank "
                "file name without '/'. Fix: the experiment function's name.",
            )

    @property
    def run_dir(self) -> str:
        return self.trainer.run_dir.format(experiment=self.name)

    @property
    def checkpoint_dir(self) -> str:
        return self.checkpoint.directory.format(run_dir=self.run_dir)
