"""Checks on the unbuilt experiment config, all at once, before any device.

Every check reads the Fiddle graph, the host-side builders made from it, or
the model built on the meta device (shapes, no memory); nothing here imports
torch_xla. ``validate`` collects every problem and raises one ``ConfigError``
listing them; when there is none it returns the ``Plan`` (parameters, FLOPs,
memory, family) the trainer and ``--dry_run`` use, so nothing is computed
twice.

Who checks what:

- each builder checks its own arguments when it is made (``__post_init__`` or
  ``__init__``, raising ``xlafw.arguments.InvalidArgument``).
  ``xlafw.config.builders.construct`` makes every builder of the graph,
  children first, so an error is reported at the config path of the builder
  that raised it (``optimizer.betas=...``), and completes the partially
  specified ones as the trainer will (the optimizer over a stand-in
  parameter, the schedule with ``trainer.max_steps`` steps, the pipelines for
  one host), without reading any data;
- the model's own checks belong to its family (``ModelFamily.problems``,
  ``mesh_problems``, ``scan_problem``, ``tpu_only``);
- this module checks what spans builders (batch against mesh, profile window
  against steps, eval data against training data), the file system (run and
  checkpoint directories, data files, tokenizer, Hugging Face directory) and
  the backend. The memory check compares the plan's estimate with the
  devices' memory (``hardware.resolve_devices``: the TPU type's HBM for
  ``--target``, else this machine's available memory shared by the virtual
  CPU devices).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import fiddle as fdl
import torch
from fiddle import daglish

from xlafw.config.builders import Builders, construct, contains, meta_model_on
from xlafw.config.errors import ConfigError, suggest
from xlafw.config.hardware import Devices, backend, detected_device_count, resolve_devices
from xlafw.config.overrides import owner_name, parameters
from xlafw.config.plan import (
    Plan,
    devices_for_dry_run,
    eval_activation_bytes,
    human_bytes,
    make_plan,
    meta_model,
)
from xlafw.dtypes import itemsize
from xlafw.models.family import ModelFamily, UnknownFamilyError, family_of
from xlafw.parallel.mesh import AXIS_NAMES, Mesh, MeshError, batch_ways
from xlafw.parallel.sharding import check_rules

__all__ = ["detected_device_count", "meta_model", "validate"]

# Arguments the trainer supplies when it completes a partially specified builder.
RUNTIME_SUPPLIED = {"params", "schedule", "total_steps", "host"}
# Files a local tokenizer directory holds at least one of (transformers' AutoTokenizer).
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
)
# A tokenizer's hub name: ``name`` or ``owner/name``.
_HUB_ID = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?(?:/[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)?"
)


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


def _eval_enabled(built: Builders) -> bool:
    """Whether the trainer will run evaluations (and so build eval.data)."""
    evaluation = built.objects.get("eval")
    return bool(evaluation is not None and evaluation.every_steps and evaluation.data is not None)


def _pipelines(built: Builders) -> list[str]:
    """The config paths of the pipelines the trainer builds: data, and eval.data when on."""
    return ["data", "eval.data"] if _eval_enabled(built) else ["data"]


def _model_checks(cfg: fdl.Config, family: ModelFamily, built: Builders) -> Iterator[str]:
    if not built.ok("model.config") or not built.ok("data"):
        return  # reported where it failed
    config = built.objects["model.config"]
    problems = list(family.problems(config, cfg.data.seq_len))
    yield from problems
    if _eval_enabled(built) and built.ok("eval.data"):
        # The family names data.seq_len; what only the eval sequence length causes:
        for problem in family.problems(config, cfg.eval.data.seq_len):
            if problem not in problems:
                yield problem.replace("data.seq_len=", "eval.data.seq_len=")


def _tokenizer_checks(built: Builders) -> Iterator[str]:
    """The tokenizers exist and their ids fit the model's vocabulary.

    Checked for tokenizers on local disk (a sentencepiece file, a local HF
    directory); a hub tokenizer needs the network, so only the form of its
    name is checked here and the rest when the data pipeline loads it.
    """
    config = built.objects.get("model.config") if built.ok("model.config") else None
    vocab_of: dict[Any, int | None] = {}  # data and eval usually share one tokenizer
    for pipeline in _pipelines(built):
        path = f"{pipeline}.tokenizer"
        if not built.ok(path):
            continue
        tokenizer = built.objects[path]
        if tokenizer not in vocab_of:
            problems = list(_tokenizer_file_problems(path, tokenizer))
            vocab_of[tokenizer] = None if problems else _vocab_size(path, tokenizer, problems)
            yield from problems
        vocab = vocab_of[tokenizer]
        if vocab is not None and config is not None and vocab > config.vocab_size:
            yield (
                f"{path} produces {vocab} ids but model.config.vocab_size={config.vocab_size}. "
                f"Fix: --fdl_set=model.config.vocab_size={vocab} (or a multiple of 128 above it)."
            )


def _tokenizer_file_problems(path: str, tokenizer: Any) -> Iterator[str]:
    """A tokenizer's file or directory: present on local disk, or a well-formed hub name."""
    from xlafw.data import files

    if (model_file := getattr(tokenizer, "model_file", None)) is not None:
        if "://" in model_file:
            return
        try:
            found = files.resolve_one(model_file)
        except files.MissingFileError as e:
            yield (
                f"{path}.model_file={model_file}: no such file ({e}) Fix: point it at a "
                f"sentencepiece .model file (pkg:PACKAGE/PATH for one inside a package)."
            )
            return
        if not os.path.isfile(found):
            yield (
                f"{path}.model_file={model_file} is a directory, not a sentencepiece .model file. "
                f"Fix: name the file inside it."
            )
        return
    name = getattr(tokenizer, "name_or_path", None)
    if name is None:
        return
    local = name.startswith(("/", ".", "~")) or os.path.exists(name)
    directory = os.path.expanduser(name)
    if local and not os.path.isdir(directory):
        yield (
            f"{path}.name_or_path={name}: no such directory. Fix: a local directory with the "
            f"tokenizer's files (tokenizer.json ...), or a hub name such as "
            f"'meta-llama/Llama-3.1-8B'."
        )
    elif local and not any(os.path.isfile(os.path.join(directory, f)) for f in _TOKENIZER_FILES):
        yield (
            f"{path}.name_or_path={name}: the directory holds none of a tokenizer's files "
            f"({', '.join(_TOKENIZER_FILES)}). Fix: point it at a tokenizer saved with "
            f"save_pretrained, or use a hub name."
        )
    elif not local and (not _HUB_ID.fullmatch(name) or ".." in name or len(name) > 96):
        yield (
            f"{path}.name_or_path={name!r} is neither a local directory nor a hub name. Fix: "
            f"owner/name as on the model's hub page (e.g. 'meta-llama/Llama-3.1-8B'), or a "
            f"path starting with / or ./."
        )


def _vocab_size(path: str, tokenizer: Any, problems: list[str]) -> int | None:
    """The tokenizer's vocabulary size when it is on local disk (loaded), else None."""
    field = "model_file" if hasattr(tokenizer, "model_file") else "name_or_path"
    location = getattr(tokenizer, field, None)
    if location is None or "://" in location:
        return None
    if field == "name_or_path" and not os.path.isdir(os.path.expanduser(location)):
        return None  # a hub tokenizer: loaded by the pipeline
    try:
        return _vocabulary_size(tokenizer, field, location)
    except Exception as e:  # an unreadable model file or directory: the user's input
        problems.append(
            f"{path}.{field}={location}: cannot load a tokenizer from it "
            f"({type(e).__name__}: {e}). Fix: point it at the tokenizer's own files."
        )
        return None


def _vocabulary_size(tokenizer: Any, field: str, location: str) -> int:
    """``tokenizer.vocab_size``, loaded once per version of a sentencepiece file."""
    if field != "model_file":
        return tokenizer.vocab_size
    from xlafw.data import files

    path = os.path.realpath(files.resolve_one(location))
    stat = os.stat(path)
    return _sentencepiece_vocabulary(type(tokenizer), path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _sentencepiece_vocabulary(kind: type, path: str, mtime_ns: int, size: int) -> int:
    return kind(model_file=path).vocab_size


def _trainer_checks(cfg: fdl.Config, built: Builders) -> Iterator[str]:
    if not built.ok("trainer"):
        return
    trainer = built.objects["trainer"]
    if trainer.param_dtype == "bfloat16" and trainer.compute_dtype == "float32":
        yield (
            "trainer.compute_dtype=float32 with trainer.param_dtype=bfloat16: XLA's autocast "
            "only lowers precision, so the run would silently be pure bfloat16. Fix: "
            "trainer.param_dtype=float32 with compute_dtype=bfloat16 (mixed precision), or "
            "compute_dtype=None."
        )
    accum, batch = trainer.grad_accum_steps, cfg.data.global_batch_size
    if built.ok("data") and batch % accum:
        yield (
            f"trainer.grad_accum_steps={accum} does not divide "
            f"data.global_batch_size={batch} into equal micro-batches. "
            f"Fix: use a divisor of {batch}."
        )
    metrics = built.objects.get("metrics") if built.ok("metrics") else None
    profile = metrics.profile_steps if metrics is not None else None
    if profile is not None and profile[1] > trainer.max_steps:
        yield (
            f"metrics.profile_steps={profile} ends after trainer.max_steps={trainer.max_steps}, "
            f"so the profile would never be written. Fix: a window inside "
            f"1..{trainer.max_steps}, or None."
        )
    if trainer.init_from_hf:
        yield from _hf_checkpoint_checks(cfg, trainer.init_from_hf, built)


def directory_problem(field: str, directory: str, what: str) -> str | None:
    """Why a directory cannot be created or written, or None.

    Local paths are checked on disk; of a URL (``gs://BUCKET/PATH``) only that
    it names a bucket, since reaching it needs the network.
    """
    scheme, sep, rest = directory.partition("://")
    if sep:
        if rest.strip("/"):
            return None
        return (
            f"{field}={directory}: a URL needs a bucket and a path, as in "
            f"{scheme}://BUCKET/runs/NAME."
        )
    path = Path(directory).expanduser()
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "it is a file" if probe == path else f"{probe} is a file"
        return (
            f"{field}={directory}: cannot write {what} there: {where}, not a directory. "
            f"Fix: choose another path, or move the file away."
        )
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        return (
            f"{field}={directory}: cannot write {what} there: {probe} is not writable. Fix: "
            f"choose a directory you can write to."
        )
    return None


def _file_system_checks(built: Builders) -> Iterator[str]:
    """Run and checkpoint directories, the compilation cache and the data files, locally."""
    if built.ok("") and built.ok("trainer"):
        experiment = built.objects[""]
        directories = [("trainer.run_dir", experiment.run_dir, "the run's files")]
        if built.ok("checkpoint"):
            directories.append(("checkpoint.directory", experiment.checkpoint_dir, "checkpoints"))
        for field, directory, what in directories:
            if problem := directory_problem(field, directory, what):
                yield problem
                break  # the checkpoints are usually inside the run directory
        trainer = experiment.trainer
        if trainer.compile_cache != "off" and (
            problem := directory_problem(
                "trainer.compile_cache_dir", trainer.compile_cache_dir, "the compilation cache"
            )
        ):
            yield problem
    yield from _data_file_checks(built)


def _data_file_checks(built: Builders) -> Iterator[str]:
    """Every local file or glob of the pipelines' sources matches files (not directories)."""
    from xlafw.data import files

    for path, source in built.objects.items():
        patterns = getattr(source, "paths", None)
        if not any(contains(p, path) for p in _pipelines(built)) or not isinstance(patterns, tuple):
            continue
        for pattern in patterns:
            if "://" in pattern:
                continue  # a bucket: read by the pipeline
            try:
                matches = files.resolve(pattern)
            except files.MissingFileError as e:
                yield f"{path}.paths: {e}"
                continue
            directories = [m for m in matches if os.path.isdir(m)]
            if directories:
                yield (
                    f"{path}.paths: {pattern!r} matches the directory {directories[0]}, not a "
                    f"file. Fix: a glob of the files inside it, e.g. {pattern.rstrip('/')}/*."
                )


def _source_checks(built: Builders) -> Iterator[str]:
    """The data sources' own settings (hub names, held-out split), read without any data."""
    for path, source in built.objects.items():
        problems = getattr(source, "problems", None)
        if callable(problems) and any(contains(p, path) for p in _pipelines(built)):
            yield from problems(path)


def _eval_checks(built: Builders) -> Iterator[str]:
    """Eval data that cannot share a document with the training data."""
    if not built.ok("eval"):
        return
    evaluation = built.objects["eval"]
    if not evaluation.every_steps:
        return
    if evaluation.data is None:
        yield (
            f"eval.every_steps={evaluation.every_steps} but eval.data is not set. Fix: "
            f"configure eval.data (a pipeline over held-out data, as llama_tiny does) or set "
            f"eval.every_steps=0."
        )
        return
    if not (built.ok("data.source") and built.ok("eval.data.source")):
        return
    from xlafw.data.overlap import sources_overlap

    try:
        reason = sources_overlap(built.objects["data.source"], built.objects["eval.data.source"])
    except (AttributeError, TypeError, ValueError) as e:
        yield f"eval.data.source: cannot be compared with data.source ({e})."
        return
    if reason:
        yield f"eval.data.source overlaps the training data: {reason}"


def _hf_checkpoint_checks(cfg: fdl.Config, directory: str, built: Builders) -> Iterator[str]:
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
    if not built.ok("model.config"):
        return
    config = built.objects["model.config"]
    for field in family.architecture_fields:
        if getattr(config, field) != getattr(theirs, field):
            yield (
                f"trainer.init_from_hf: model.config.{field}={getattr(config, field)} but the "
                f"checkpoint has {getattr(theirs, field)}. Fix: "
                f"--fdl_set=model.config.{field}={getattr(theirs, field)}."
            )


def _mesh_checks(
    cfg: fdl.Config, family: ModelFamily, devices: Devices, on_tpu: bool, built: Builders
) -> Iterator[str]:
    if devices.count is None or not built.ok("mesh"):
        return
    mesh: Mesh = built.objects["mesh"]
    try:
        axes = mesh.resolve(devices.count)
    except MeshError as e:
        hint = (
            " On XLA's CPU backend, set CPU_NUM_DEVICES to the device count you want."
            if not on_tpu
            else ""
        )
        yield f"mesh ({_mesh_fields(mesh)}) on {devices.description}: {e}{hint}"
        return
    if built.ok("model.config"):
        yield from family.mesh_problems(built.objects["model.config"], axes)
    ways = batch_ways(axes)
    if built.ok("data") and built.ok("trainer"):
        batch, accum = cfg.data.global_batch_size, built.objects["trainer"].grad_accum_steps
        if batch % ways:
            yield (
                f"data.global_batch_size={batch} is not divisible by the data-parallel ways "
                f"(data x fsdp x expert = {ways}). Fix: use a multiple of {ways}."
            )
        elif accum > 1 and batch % (accum * ways):
            yield (
                f"data.global_batch_size={batch} is not divisible by "
                f"trainer.grad_accum_steps x data-parallel ways ({accum} x {ways}): every "
                f"micro-batch must split evenly over the devices. Fix: use a multiple of "
                f"{accum * ways}, or fewer accumulation steps."
            )
    if _eval_enabled(built) and built.ok("eval.data"):
        eval_batch = cfg.eval.data.global_batch_size
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


def _mesh_fields(mesh: Mesh) -> str:
    """The mesh's axis sizes other than 1, as config paths: ``mesh.ici.tensor=4, ...``."""
    return (
        ", ".join(
            f"mesh.{level}.{axis}={size}"
            for level in ("ici", "dcn")
            for axis, size in zip(AXIS_NAMES, getattr(mesh, level).as_tuple(), strict=True)
            if size != 1
        )
        or "every axis 1"
    )


def _slice_checks(target: str | None, num_slices: int, built: Builders) -> Iterator[str]:
    """DCN axes against the declared slices: ``xs.HybridMesh`` needs one DCN index per slice.

    A DCN product of 1 on several slices is a flat mesh over all their chips
    (valid, but its ICI axes then cross the data-center network); the launcher
    says so. Without ``--target`` the slice count is unknown until the runtime
    starts, so nothing is checked.
    """
    if target is None or not built.ok("mesh"):
        return
    sizes = built.objects["mesh"].dcn.as_tuple()
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
    family: ModelFamily, target: str | None, purpose: str, built: Builders
) -> Iterator[str]:
    if not built.ok("model.config"):
        return
    config = built.objects["model.config"]
    tpu_setting = family.tpu_only(config)
    if tpu_setting and not _on_tpu(target, purpose):
        yield (
            f"{tpu_setting} needs a TPU: its Pallas kernel does not run on XLA's {backend()} "
            f"backend. Fix: choose the static-shape implementation here, or run on a TPU."
        )
    kernel = config.attention_kernel
    if kernel.needs_tpu and not _on_tpu(target, purpose):
        yield (
            f"model.config.attention_kernel={kernel.value}: {kernel.value} needs a TPU: Pallas "
            f"kernels only run in interpret mode on XLA's {backend()} backend. Fix: "
            f"--fdl.model.config.attention_kernel=REFERENCE here, or run on a TPU."
        )


def _remat_checks(
    family: ModelFamily,
    model: torch.nn.Module,
    target: str | None,
    purpose: str,
    built: Builders,
) -> Iterator[str]:
    """The remat policy against the real module tree and the backend."""
    if not built.ok("remat"):
        return
    remat = built.objects["remat"]
    layer_name = family.layer_class.__name__
    if remat.scan_layers and (reason := family.scan_problem(model.config)):
        yield f"remat.scan_layers={remat.scan_layers!r}: {reason} Fix: remat.scan_layers=None."
    classes = {type(m).__name__ for m in model.modules()}
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
    model: torch.nn.Module, num_devices: int | None, built: Builders
) -> Iterator[str]:
    """Sharding rules against the real module tree."""
    if num_devices is None or not (built.ok("mesh") and built.ok("sharding")):
        return
    try:
        axes = built.objects["mesh"].resolve(num_devices)
    except MeshError:
        return  # reported by the mesh checks
    for problem in check_rules(model, built.objects["sharding"], axes):
        yield f"sharding: {problem}"


# Eval batches hold at most four int64 [batch, seq] tensors (ids, labels and the
# segment and position ids, or the attention mask).
_EVAL_TENSOR_BYTES = 4 * 8


def _eval_batch_bytes(cfg: fdl.Config, plan: Plan) -> int:
    """Bytes per device of the eval batches kept on the devices (``eval.steps`` of them)."""
    evaluation = cfg.eval
    if not evaluation.every_steps or evaluation.data is None:
        return 0
    rows = -(-evaluation.data.global_batch_size // batch_ways(plan.axis_sizes))
    return evaluation.steps * rows * evaluation.data.seq_len * _EVAL_TENSOR_BYTES


def _memory_checks(cfg: fdl.Config, plan: Plan) -> Iterator[str]:
    """The estimated bytes per device (see ``plan``) against the device's memory.

    Evaluation adds its batches, kept on the devices, and, when its forward
    pass needs more than the training step's activations, the difference.
    """
    devices, estimate = plan.devices, plan.memory
    if devices.memory_bytes is None:
        return
    eval_bytes = _eval_batch_bytes(cfg, plan)
    eval_activations = eval_activation_bytes(cfg, plan.axis_sizes)
    activations = max(estimate.activations, eval_activations)
    total = estimate.total - estimate.activations + activations + eval_bytes
    if total <= devices.memory_bytes:
        return
    data, trainer, evaluation = cfg.data, cfg.trainer, cfg.eval
    evaluated = (
        f", eval batches {human_bytes(eval_bytes)} kept on the devices and eval activations "
        f"{human_bytes(eval_activations)} (eval.steps={evaluation.steps} batches of "
        f"eval.data.global_batch_size={evaluation.data.global_batch_size} x "
        f"eval.data.seq_len={evaluation.data.seq_len})"
        if eval_bytes
        else ""
    )
    yield (
        f"memory: the estimate is {human_bytes(total)} per device but each of "
        f"{devices.description} has {human_bytes(devices.memory_bytes)}: parameters "
        f"{human_bytes(estimate.parameters)}, gradients {human_bytes(estimate.gradients)} and "
        f"optimizer state {human_bytes(estimate.optimizer_state)} "
        f"(trainer.param_dtype={trainer.param_dtype}, sharded by the mesh), training "
        f"activations {human_bytes(estimate.activations)} (data.global_batch_size="
        f"{data.global_batch_size} x data.seq_len={data.seq_len} in "
        f"trainer.grad_accum_steps={trainer.grad_accum_steps} micro-batches, "
        f"trainer.compute_dtype={trainer.compute_dtype}, "
        f"remat.checkpoint_modules={tuple(cfg.remat.checkpoint_modules)}){evaluated}. Fix: "
        f"run with --dry_run to see the breakdown, or pick a smaller experiment such as "
        f"llama_tiny (or more devices: --target)."
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
    built = construct(cfg)
    problems = [*built.problems, *_model_checks(cfg, family, built)]
    model = None
    if built.ok("model") and not problems:
        model = built.attempt("model", lambda: meta_model_on(built))
        problems += built.problems
    on_tpu = _on_tpu(target, purpose)
    checks = [
        _trainer_checks(cfg, built),
        _eval_checks(built),
        _source_checks(built),
        _tokenizer_checks(built),
        _file_system_checks(built),
        _mesh_checks(cfg, family, devices, on_tpu, built),
        _slice_checks(target, num_slices, built),
        _kernel_checks(family, target, purpose, built),
    ]
    if model is not None:
        checks += [
            _model_tree_checks(model, devices.count, built),
            _remat_checks(family, model, target, purpose, built),
        ]
    for check in checks:
        problems.extend(check)
    if problems:
        raise ConfigError(problems)
    count_known = devices.count is not None
    if not count_known:  # a TPU host before its runtime: plan for the fewest devices
        devices = devices_for_dry_run(cfg, devices)
    plan = make_plan(cfg, devices, model)
    if not count_known:  # advice on the stand-in mesh would be about the wrong mesh
        plan = dataclasses.replace(plan, advice=())
    if purpose == "train":
        problems = [*_memory_checks(cfg, plan), *_host_init_checks(cfg, plan)]
        if problems:
            raise ConfigError(problems)
    return plan
