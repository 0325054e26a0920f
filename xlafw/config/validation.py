"""Checks on the unbuilt experiment config, all at once, before any device.

Every check reads the Fiddle graph, or the model built on the meta device
(shapes, no memory); nothing here imports torch_xla. ``validate`` collects
every problem and raises one ``ConfigError`` listing them; when there is none
it returns the ``Plan`` (parameters, FLOPs, memory, family) the trainer and
``--dry_run`` use, so nothing is computed twice. The model's own checks belong
to its family (``ModelFamily.problems``, ``mesh_problems``, ``scan_problem``,
``tpu_only``). The memory check compares the plan's estimate with the devices'
memory (``hardware.resolve_devices``: the TPU type's HBM for ``--target``, else
this machine's available memory shared by the virtual CPU devices).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Literal

import fiddle as fdl
import torch
from fiddle import daglish

from xlafw.config.errors import ConfigError, suggest
from xlafw.config.hardware import Devices, backend, detected_device_count, resolve_devices
from xlafw.config.overrides import owner_name, parameters
from xlafw.config.plan import Plan, devices_for_dry_run, human_bytes, make_plan, meta_model
from xlafw.dtypes import itemsize
from xlafw.models.family import ModelFamily, UnknownFamilyError, family_of
from xlafw.parallel.mesh import Mesh, MeshError, batch_ways
from xlafw.parallel.sharding import check_rules

__all__ = ["detected_device_count", "meta_model", "validate"]

# Arguments the trainer supplies when it completes a partially specified builder.
RUNTIME_SUPPLIED = {"params", "schedule", "total_steps", "host"}


def _missing_required(cfg: fdl.Buildable) -> Iterator[str]:
    for value, path in daglish.iterate(cfg):
        if not isinstance(value, fdl.Buildable):
            continue
        params, _ = parameters(value)
        for name, param in params.items():
            if param.default is param.empty and name not in value.__arguments__:
                if isinstance(value, fdl.Partial) and name in RUNTIME_SUPPLIED:
                    continue
                where = daglish.path_str(path).lstrip(".")
                yield (
                    f"{where + '.' if where else ''}{name} is required by "
                    f"{owner_name(value)} but not set. Fix: set it in the experiment "
                    f"or with --fdl_set={where + '.' if where else ''}{name}=..."
                )


def _model_checks(cfg: fdl.Config, family: ModelFamily) -> Iterator[str]:
    try:
        config = fdl.build(cfg.model.config)
    except (TypeError, ValueError) as e:
        yield f"model.config: {e}"
        return
    yield from family.problems(config, cfg.data.seq_len)
    yield from _tokenizer_checks(cfg)


def _tokenizer_checks(cfg: fdl.Config) -> Iterator[str]:
    """The tokenizer exists and its ids fit the model's vocabulary.

    Checked for tokenizers on local disk (a sentencepiece file, a local HF
    directory); a hub tokenizer needs the network, so it is checked when the
    data pipeline loads it.
    """
    tokenizer_cfg = getattr(cfg.data, "tokenizer", None)
    if not isinstance(tokenizer_cfg, fdl.Buildable):
        return
    local = getattr(tokenizer_cfg, "model_file", None) or getattr(
        tokenizer_cfg, "name_or_path", None
    )
    if local is None or (not str(local).startswith("pkg:") and not os.path.exists(local)):
        if getattr(tokenizer_cfg, "model_file", None) is not None:
            yield (
                f"data.tokenizer.model_file={local}: no such file. Fix: point it at a "
                f"sentencepiece .model file (pkg:PACKAGE/PATH for one inside a package)."
            )
        return
    try:
        vocab = fdl.build(tokenizer_cfg).vocab_size
    except (OSError, ValueError) as e:  # missing package data, unreadable model file
        yield f"data.tokenizer: {e}"
        return
    model_vocab = cfg.model.config.vocab_size
    if vocab > model_vocab:
        yield (
            f"data.tokenizer produces {vocab} ids but model.config.vocab_size={model_vocab}. "
            f"Fix: --fdl_set=model.config.vocab_size={vocab} (or a multiple of 128 above it)."
        )


def _trainer_checks(cfg: fdl.Config) -> Iterator[str]:
    trainer = cfg.trainer
    for name in ("max_steps", "log_every"):
        if getattr(trainer, name) < 1:
            yield f"trainer.{name}={getattr(trainer, name)} must be >= 1."
    if cfg.data.seq_len < 2:
        yield f"data.seq_len={cfg.data.seq_len} must be >= 2 (one input, one target)."
    if cfg.data.global_batch_size < 1:
        yield f"data.global_batch_size={cfg.data.global_batch_size} must be >= 1."
    if trainer.param_dtype == "bfloat16" and trainer.compute_dtype == "float32":
        yield (
            "trainer.compute_dtype=float32 with trainer.param_dtype=bfloat16: XLA's autocast "
            "only lowers precision, so the run would silently be pure bfloat16. Fix: "
            "trainer.param_dtype=float32 with compute_dtype=bfloat16 (mixed precision), or "
            "compute_dtype=None."
        )
    accum = trainer.grad_accum_steps
    if not isinstance(accum, int) or accum < 1:
        yield f"trainer.grad_accum_steps={accum} must be an integer >= 1 (1: no accumulation)."
    elif cfg.data.global_batch_size % accum:
        yield (
            f"trainer.grad_accum_steps={accum} does not divide "
            f"data.global_batch_size={cfg.data.global_batch_size} into equal micro-batches. "
            f"Fix: use a divisor of {cfg.data.global_batch_size}."
        )
    hf_dir = trainer.init_from_hf
    if hf_dir:
        yield from _hf_checkpoint_checks(cfg, hf_dir)


def _source_checks(cfg: fdl.Config) -> Iterator[str]:
    """The data sources' own settings (hub names, held-out split), read without any data."""
    sources = [("data.source", cfg.data.source)]
    if cfg.eval.every_steps and cfg.eval.data is not None:
        sources.append(("eval.data.source", cfg.eval.data.source))
    for path, source in sources:
        try:
            built = fdl.build(source)
        except (TypeError, ValueError) as e:
            yield f"{path}: {e}"
            continue
        if hasattr(built, "problems"):
            yield from built.problems(path)


def _eval_checks(cfg: fdl.Config) -> Iterator[str]:
    """Eval settings, and eval data that cannot share a document with the training data."""
    evaluation = cfg.eval
    every, steps = evaluation.every_steps, evaluation.steps
    if not isinstance(every, int) or every < 0:
        yield f"eval.every_steps={every} must be an integer >= 0 (0 disables evaluation)."
        return
    if not isinstance(steps, int) or steps < 1:
        yield f"eval.steps={steps} must be an integer >= 1 (batches per evaluation)."
    if not every:
        return
    if evaluation.data is None:
        yield (
            f"eval.every_steps={every} but eval.data is not set. Fix: configure eval.data "
            f"(a pipeline over held-out data, as llama_tiny does) or set eval.every_steps=0."
        )
        return
    from xlafw.data.overlap import sources_overlap

    try:
        reason = sources_overlap(fdl.build(cfg.data.source), fdl.build(evaluation.data.source))
    except (AttributeError, TypeError, ValueError) as e:
        yield f"eval.data.source: cannot be compared with data.source ({e})."
        return
    if reason:
        yield f"eval.data.source overlaps the training data: {reason}"


def _hf_checkpoint_checks(cfg: fdl.Config, directory: str) -> Iterator[str]:
    """The Hugging Face directory exists and describes the configured model."""
    import json

    from xlafw.models.hf_config import config_from_hf, remote_checkpoint_problem

    if problem := remote_checkpoint_problem(directory):
        yield f"trainer.init_from_hf={problem}"
        return
    config_file = os.path.join(directory, "config.json")
    if not os.path.isfile(config_file):
        yield (
            f"trainer.init_from_hf={directory}: no config.json there. Fix: point it at a local "
            f"Hugging Face checkpoint directory (config.json + *.safetensors)."
        )
        return
    try:
        with open(config_file) as f:
            family, theirs = config_from_hf(json.load(f))
    except ValueError as e:  # HfCheckpointError or bad JSON: a user error here
        yield f"trainer.init_from_hf={directory}: {e}"
        return
    ours = family_of(cfg.model)
    if family is not ours:
        yield (
            f"trainer.init_from_hf={directory} holds a {family.name} model "
            f"({family.hf_architecture}) but the experiment's model is {ours.name}. Fix: "
            f"point it at a {ours.name} checkpoint, or use a {family.name} experiment."
        )
        return
    config = fdl.build(cfg.model.config)
    for field in family.architecture_fields:
        if getattr(config, field) != getattr(theirs, field):
            yield (
                f"trainer.init_from_hf: model.config.{field}={getattr(config, field)} but the "
                f"checkpoint has {getattr(theirs, field)}. Fix: "
                f"--fdl_set=model.config.{field}={getattr(theirs, field)}."
            )


def _mesh_checks(
    cfg: fdl.Config, family: ModelFamily, num_devices: int | None, on_tpu: bool
) -> Iterator[str]:
    if num_devices is None:
        return
    mesh: Mesh = fdl.build(cfg.mesh)
    try:
        axes = mesh.resolve(num_devices)
    except MeshError as e:
        hint = (
            " On XLA's CPU backend, set CPU_NUM_DEVICES to the device count you want."
            if not on_tpu
            else ""
        )
        yield f"mesh: {e}{hint}"
        return
    yield from family.mesh_problems(fdl.build(cfg.model.config), axes)
    ways = batch_ways(axes)
    accum = cfg.trainer.grad_accum_steps
    if cfg.data.global_batch_size % ways:
        yield (
            f"data.global_batch_size={cfg.data.global_batch_size} is not divisible by the "
            f"data-parallel ways (data x fsdp x expert = {ways}). Fix: use a multiple of {ways}."
        )
    elif isinstance(accum, int) and accum > 1 and cfg.data.global_batch_size % (accum * ways):
        yield (
            f"data.global_batch_size={cfg.data.global_batch_size} is not divisible by "
            f"trainer.grad_accum_steps x data-parallel ways ({accum} x {ways}): every "
            f"micro-batch must split evenly over the devices. Fix: use a multiple of "
            f"{accum * ways}, or fewer accumulation steps."
        )
    evaluation = cfg.eval
    if evaluation.every_steps and evaluation.data is not None:
        eval_batch = evaluation.data.global_batch_size
        if eval_batch % ways:
            yield (
                f"eval.data.global_batch_size={eval_batch} is not divisible by the "
                f"data-parallel ways (data x fsdp x expert = {ways}). Fix: use a multiple of "
                f"{ways}."
            )
    if math.prod(mesh.dcn.as_tuple()) > 1 and not on_tpu:
        yield (
            f"mesh.dcn={mesh.dcn.as_tuple()} spans several slices, which needs a multi-slice "
            f"TPU (xs.HybridMesh reads the TPU topology). Fix: on CPU keep every DCN axis at 1."
        )


def _slice_checks(cfg: fdl.Config, target: str | None, num_slices: int) -> Iterator[str]:
    """DCN axes against the declared slices: ``xs.HybridMesh`` needs one DCN index per slice.

    A DCN product of 1 on several slices is a flat mesh over all their chips
    (valid, but its ICI axes then cross the data-center network); the launcher
    says so. Without ``--target`` the slice count is unknown until the runtime
    starts, so nothing is checked.
    """
    if target is None:
        return
    sizes = fdl.build(cfg.mesh).dcn.as_tuple()
    dcn = math.prod(sizes)
    if dcn not in (1, num_slices):
        yield (
            f"mesh.dcn={sizes} spans {dcn} slices but "
            f"--num_slices={num_slices}. Fix: make the DCN axes multiply to {num_slices} "
            f"(--fdl_set=mesh.dcn.data={num_slices}), or launch --num_slices={dcn}."
        )


def _on_tpu(target: str | None, purpose: str) -> bool:
    """Whether TPU-only features are fine: a plan, a ``--target`` slice, or ``PJRT_DEVICE=TPU``."""
    return purpose == "plan" or target is not None or backend() == "TPU"


def _kernel_checks(
    cfg: fdl.Config, family: ModelFamily, target: str | None, purpose: str
) -> Iterator[str]:
    tpu_setting = family.tpu_only(fdl.build(cfg.model.config))
    if tpu_setting and not _on_tpu(target, purpose):
        yield (
            f"{tpu_setting} needs a TPU: its Pallas kernel does not run on XLA's {backend()} "
            f"backend. Fix: choose the static-shape implementation here, or run on a TPU."
        )
    kernel = cfg.model.config.attention_kernel
    if kernel.needs_tpu and not _on_tpu(target, purpose):
        yield (
            f"model.config.attention_kernel={kernel.value}: {kernel.value} needs a TPU: Pallas "
            f"kernels only run in interpret mode on XLA's {backend()} backend. Fix: "
            f"--fdl.model.config.attention_kernel=REFERENCE here, or run on a TPU."
        )
    blocks = cfg.model.config.attention_block_sizes
    for name in ("q", "kv"):
        size = getattr(blocks, name)
        if size < 128 or size % 128:
            yield (
                f"model.config.attention_block_sizes.{name}={size} must be a positive multiple "
                f"of 128 (TPU vector lanes)."
            )


def _remat_checks(
    cfg: fdl.Config,
    family: ModelFamily,
    model: torch.nn.Module,
    target: str | None,
    purpose: str,
) -> Iterator[str]:
    """The remat policy against the real module tree and the backend."""
    layer_name = family.layer_class.__name__
    if cfg.remat.scan_layers and (reason := family.scan_problem(model.config)):
        yield f"remat.scan_layers={cfg.remat.scan_layers!r}: {reason} Fix: remat.scan_layers=None."
    classes = {type(m).__name__ for m in model.modules()}
    remat = cfg.remat
    for field in ("checkpoint_modules", "optimization_barrier_modules", "pure_modules"):
        for name in getattr(remat, field):
            if name not in classes:
                yield (
                    f"remat.{field} names {name!r}, which is not a module class of the model."
                    f"{suggest(name, classes)} Classes: {', '.join(sorted(classes))}."
                )
    paths = {name for name, _ in model.named_modules()}
    for field in ("checkpoint_scope", "scan_layers"):
        path = getattr(remat, field)
        if path and path not in paths:
            stacks = sorted(
                n for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList)
            )
            yield (
                f"remat.{field}={path!r} is not a module path of the model.{suggest(path, paths)} "
                f"Layer stacks: {', '.join(stacks) or 'none'}."
            )
    layer_class = None
    if remat.scan_layers and remat.scan_layers in paths:
        stack = model.get_submodule(remat.scan_layers)
        kinds = {type(m).__name__ for m in stack.children()}
        if not isinstance(stack, torch.nn.ModuleList) or len(kinds) != 1:
            yield (
                f"remat.scan_layers={remat.scan_layers!r} is a {type(stack).__name__} of "
                f"{sorted(kinds)}; scan needs a ModuleList of one layer class, called as "
                f"stack(h, *inputs) (like {family.layers_path})."
            )
        else:
            layer_class = kinds.pop()
            inside = {type(m).__name__ for m in stack.modules()} - {type(stack).__name__}
            for name in remat.checkpoint_modules:
                if name != layer_class:
                    yield (
                        f"remat.checkpoint_modules names {name!r} while scanning "
                        f"{remat.scan_layers}: under scan only the scanned layer "
                        f"({layer_class}) can be checkpointed (scan + remat recomputes the "
                        f"whole layer); torch_xla's checkpoint cannot run inside the traced "
                        f"layer. Fix: checkpoint_modules=({layer_class!r},) or no scan."
                    )
            for field in ("optimization_barrier_modules", "pure_modules"):
                for name in getattr(remat, field):
                    if name in inside:
                        yield (
                            f"remat.{field} names {name!r}, which runs inside the scanned "
                            f"{remat.scan_layers}: the scan traces the layer once with "
                            f"AOTAutograd, so module hooks and assume_pure do not apply there. "
                            f"Fix: drop it, or drop scan_layers."
                        )
    if remat.offload_tensors:
        from xlafw.parallel.remat import OFFLOADABLE_TENSORS

        unknown = [n for n in remat.offload_tensors if n not in OFFLOADABLE_TENSORS]
        if unknown:
            yield (
                f"remat.offload_tensors names {unknown}; offloadable tensors: "
                f"{list(OFFLOADABLE_TENSORS)}."
            )
        if layer_class is None or layer_class not in remat.checkpoint_modules:
            yield (
                "remat.offload_tensors needs scan + checkpointing of the scanned layer: the "
                "offloaded tensors are the ones the scan's remat partitioner saves. Fix: set "
                f"remat.scan_layers={family.layers_path!r} and remat.checkpoint_modules="
                f"({layer_name!r},)."
            )
        if not _on_tpu(target, purpose):
            yield (
                f"remat.offload_tensors={list(remat.offload_tensors)}: host offload needs a TPU; "
                f"XLA's {backend()} backend cannot compile the host-placement custom calls "
                f"(annotate_device_placement; it fails and can crash the process). Fix: "
                f"remat.offload_tensors=() here."
            )


def _model_tree_checks(
    cfg: fdl.Config, model: torch.nn.Module, num_devices: int | None
) -> Iterator[str]:
    """Sharding rules against the real module tree."""
    if num_devices is None:
        return
    try:
        axes = fdl.build(cfg.mesh).resolve(num_devices)
    except MeshError:
        return  # reported by the mesh checks
    for problem in check_rules(model, fdl.build(cfg.sharding), axes):
        yield f"sharding: {problem}"


def _memory_checks(plan: Plan) -> Iterator[str]:
    """The estimated bytes per device (see ``plan``) against the device's memory."""
    devices, estimate = plan.devices, plan.memory
    if devices.memory_bytes is None:
        return
    if estimate.total > devices.memory_bytes:
        yield (
            f"memory: the estimate is {human_bytes(estimate.total)} per device (parameters "
            f"{human_bytes(estimate.parameters)}, gradients {human_bytes(estimate.gradients)}, "
            f"optimizer state {human_bytes(estimate.optimizer_state)}, activations "
            f"{human_bytes(estimate.activations)}) but each of {devices.description} has "
            f"{human_bytes(devices.memory_bytes)}. Fix: run with --dry_run to see the "
            f"breakdown, or pick a smaller experiment such as llama_tiny (or more devices: "
            f"--target)."
        )


def _host_init_checks(cfg: fdl.Config, plan: Plan) -> Iterator[str]:
    """``trainer.init_on=host`` builds the whole model in host memory first."""
    if cfg.trainer.init_on != "host":
        return
    needed = plan.num_parameters * itemsize(cfg.trainer.param_dtype)
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > available:
        yield (
            f"trainer.init_on=host: initializing the model on the host needs "
            f"{human_bytes(needed)} of host memory, but this host has {human_bytes(available)}. "
            "Fix: --fdl_set=trainer.init_on=auto (large models initialize on the devices, "
            "sharded)."
        )


def validate(
    cfg: fdl.Config,
    num_devices: int | None = None,
    *,
    target: str | None = None,
    num_slices: int = 1,
    purpose: Literal["train", "plan"] = "train",
    devices: Devices | None = None,
) -> Plan:
    """Checks ``cfg``; returns its plan, or raises ``ConfigError`` listing every problem.

    Args:
      cfg: the experiment config, overrides applied.
      num_devices: devices to check the mesh against; None uses the count the
        environment implies (and skips the mesh check where none is implied).
      target: a TPU slice name (``v5p-256``) to check against instead of this
        machine; it sets the device count and the memory per device.
      num_slices: how many ``target`` slices; the mesh covers all their chips
        and its DCN axes multiply to the slice count (or are all 1).
      purpose: ``train`` checks everything, including that the config fits the
        device memory and that this backend can run what it asks for (kernels,
        host offload). ``plan`` (``--dry_run``) skips those two: a plan reports
        the estimate, and planning a TPU run on a laptop is its point.
      devices: what to plan for, when the caller already resolved it (a dry run
        on a machine too small for the mesh plans for the fewest devices it
        takes); overrides ``num_devices``, ``target`` and ``num_slices``' count.

    Returns:
      The plan: parameters, memory per device, FLOPs per token, sharding, family.

    Raises:
      ConfigError: with every problem found.
    """
    problems = list(_missing_required(cfg))
    if problems:  # later checks read required fields
        raise ConfigError(problems)
    try:
        family = family_of(cfg.model)
    except UnknownFamilyError as e:
        raise ConfigError([f"model: {e}"]) from None
    if devices is None:
        devices = resolve_devices(num_devices, target, num_slices)
    model = meta_model(cfg)
    on_tpu = _on_tpu(target, purpose)
    checks = [
        _trainer_checks(cfg),
        _eval_checks(cfg),
        _source_checks(cfg),
        _model_checks(cfg, family),
        _mesh_checks(cfg, family, devices.count, on_tpu),
        _slice_checks(cfg, target, num_slices),
        _model_tree_checks(cfg, model, devices.count),
        _remat_checks(cfg, family, model, target, purpose),
        _kernel_checks(cfg, family, target, purpose),
    ]
    for check in checks:
        problems.extend(check)
    if problems:
        raise ConfigError(problems)
    if devices.count is None:  # a TPU host before its runtime: plan for the fewest devices
        devices = devices_for_dry_run(cfg, devices)
    plan = make_plan(cfg, devices, model)
    if purpose == "train":
        problems = [*_memory_checks(plan), *_host_init_checks(cfg, plan)]
        if problems:
            raise ConfigError(problems)
    return plan
