"""Hugging Face safetensors weights into and out of an (already sharded) xlafw model.

Every family's parameter names are HF's (``model.layers.0.self_attn.q_proj.weight``);
the one difference a family declares through ``ModelFamily.hf_sources`` is a
parameter stored as several HF tensors (Mixtral's ``[experts, ...]`` weights,
one HF tensor per expert), stacked along the first dimension here. Both
directions hold at most one parameter in host memory:

* **Load** (``load_hf_weights``) runs after the model was built and sharded
  (startup stage 8), so a 70B model is never whole on one host. A sharded
  parameter is filled shard by shard: the index slices of the shards on this
  host's devices come from torch_xla (the same ones ``xs.wrap_if_sharded(param)
  .local_shards`` reports), each is read with ``safe_open(...).get_slice(name)
  [slices]`` (only those bytes leave the file), and the shards go straight to
  their devices (``_global_tensor_from_cpu_shards``, what ``load_local_shards_``
  does). On a multi-host pod every host does the same for its own devices, so
  each reads only its shards. An unsharded (or replicated) parameter gets
  ``param.copy_(tensor)``. Every parameter's sharding spec is checked after
  loading.
* **Save** (``save_hf_weights``) gathers one parameter at a time with
  ``param.cpu()``, which on a sharded tensor is a collective: every process must
  call it; only process 0 writes. The directory may be local or in a bucket
  (``gs://...``); loading reads local directories only, because ``safe_open``
  memory-maps a local file and cannot read an fsspec URL (copy a bucket's
  checkpoint to local disk first).

Why not ``param.copy_`` for sharded parameters too: it needs the whole tensor on
every host, and on torch_xla 2.9 a parameter whose value is still pending (built
on the device, not yet synced) and sharded unevenly (a dimension not divisible
by its mesh axes, e.g. vocabulary 128256 over 512 devices) comes back
*replicated* when that value is computed (``torch_xla.sync()``, or asking it for
its shards). The shard path never computes the pending value.

Tied embeddings (Llama 3.2 1B/3B: ``tie_word_embeddings: true``, no
``lm_head.weight`` in the files): xlafw's LM head is always its own parameter,
so it is filled from ``model.embed_tokens.weight``. The logits equal HF's at load
time; training then updates the two separately, and an export is untied.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open

from xlafw import storage
from xlafw.models.family import ModelFamily, family_of
from xlafw.models.hf_config import (
    HfCheckpointError,
    Stacked,
    config_from_hf,
    remote_checkpoint_problem,
)
from xlafw.models.safetensors_stream import SAFETENSORS_DTYPES, plan_files, write_safetensors
from xlafw.progress import Progress

__all__ = [
    "HfCheckpointError",
    "LoadedWeights",
    "SavedWeights",
    "load_hf_weights",
    "read_hf_config",
    "save_hf_weights",
]

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Old HF checkpoints store RoPE tables; xlafw derives them from the config.
_DERIVED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclasses.dataclass(frozen=True)
class TensorEntry:
    """One tensor in a checkpoint, as its file header describes it."""

    file: str
    shape: tuple[int, ...]
    dtype: str


@dataclasses.dataclass(frozen=True)
class LoadedWeights:
    """What ``load_hf_weights`` did.

    Attributes:
      directory: the checkpoint directory.
      files: safetensors files read.
      num_tensors: parameters filled.
      num_sharded: of them, filled shard by shard (the rest by ``copy_``).
      source_dtypes: dtypes found in the files (cast to the parameters' dtype).
      lm_head_from_embedding: whether the checkpoint was tied (see module doc).
    """

    directory: str
    files: tuple[str, ...]
    num_tensors: int
    num_sharded: int
    source_dtypes: tuple[str, ...]
    lm_head_from_embedding: bool

    def summary(self) -> str:
        tied = "; lm_head filled from the tied embedding" if self.lm_head_from_embedding else ""
        return (
            f"loaded {self.num_tensors} tensors ({self.num_sharded} shard by shard) from "
            f"{len(self.files)} files in {self.directory}, stored as "
            f"{', '.join(self.source_dtypes)}{tied}"
        )


@dataclasses.dataclass(frozen=True)
class SavedWeights:
    """What ``save_hf_weights`` wrote (every process gets the same answer).

    Attributes:
      directory: the final checkpoint directory.
      files: safetensors file names, in order.
      total_bytes: bytes of tensor data.
    """

    directory: str
    files: tuple[str, ...]
    total_bytes: int


def read_hf_index(directory: str | os.PathLike) -> dict[str, TensorEntry]:
    """Reads every tensor's file, shape and dtype from the safetensors headers.

    Only headers are read, no tensor data.

    Raises:
      HfCheckpointError: when the directory is in a bucket or holds neither
        ``model.safetensors`` nor ``model.safetensors.index.json``.
    """
    if problem := remote_checkpoint_problem(directory):
        raise HfCheckpointError(problem)
    directory = Path(directory)
    if (directory / INDEX_FILE).exists():
        weight_map = json.loads((directory / INDEX_FILE).read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    elif (directory / SINGLE_FILE).exists():
        files = [SINGLE_FILE]
    else:
        present = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
        raise HfCheckpointError(
            f"{directory} has neither {SINGLE_FILE} nor {INDEX_FILE} (it holds {present}). "
            f"Fix: point to a directory written by save_pretrained(..., safe_serialization=True)."
        )
    entries = {}
    for file in files:
        with safe_open(directory / file, framework="pt") as reader:
            for name in reader.keys():  # noqa: SIM118 (safe_open is not a dict)
                tensor_slice = reader.get_slice(name)
                entries[name] = TensorEntry(
                    file, tuple(tensor_slice.get_shape()), tensor_slice.get_dtype()
                )
    return entries


def read_hf_config(directory: str | os.PathLike) -> tuple[ModelFamily, object]:
    """``(family, config)`` of a local Hugging Face directory's ``config.json``.

    Raises:
      HfCheckpointError: for a directory in a bucket, a missing or unreadable
        ``config.json``, or a model no family reads.
    """
    return config_from_hf(_config_json(directory))


def _config_json(directory: str | os.PathLike) -> dict:
    """A local Hugging Face directory's ``config.json``, parsed (errors as ``read_hf_config``)."""
    if problem := remote_checkpoint_problem(directory):
        raise HfCheckpointError(problem)
    config_file = Path(directory) / "config.json"
    try:
        config_json = json.loads(config_file.read_text())
    except FileNotFoundError:
        raise HfCheckpointError(
            f"{directory}: no config.json there. Fix: point to a Hugging Face checkpoint "
            f"directory (config.json + *.safetensors)."
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HfCheckpointError(f"{config_file}: not valid JSON ({e})") from None
    except OSError as e:  # a directory, no permission
        raise HfCheckpointError(
            f"{config_file}: cannot be read ({e.strerror or e}). Fix: point to a Hugging Face "
            f"checkpoint directory whose config.json is a readable file."
        ) from None
    return config_json


def _sources(model: torch.nn.Module, family: ModelFamily, tied: bool) -> dict[str, tuple[str, ...]]:
    """Each parameter's HF tensor names (several: stacked along a new first dimension)."""
    head, embedding = family.tied_weights
    sources = {}
    for name, param in model.named_parameters():
        if tied and name == head:
            sources[name] = (embedding,)
        else:
            sources[name] = family.hf_sources(name, tuple(param.shape))
    return sources


def _check(
    model: torch.nn.Module,
    family: ModelFamily,
    directory: Path,
    entries: dict[str, TensorEntry],
) -> dict[str, tuple[str, ...]]:
    """Raises one error listing every mismatch; returns each parameter's HF sources."""
    config_json = _config_json(directory)
    theirs, checkpoint_config = config_from_hf(config_json)
    if theirs is not family:
        raise HfCheckpointError(
            f"{directory} holds a {theirs.name} model ({theirs.hf_architecture}); the model "
            f"is {family.name}. Fix: build the model with xlafw.models.load_pretrained, or "
            f"point to a {family.name} checkpoint."
        )
    problems = [
        f"config.json {d}" for d in family.architecture_differences(model.config, checkpoint_config)
    ]
    head = family.tied_weights[0]
    tied = head not in entries and bool(config_json.get("tie_word_embeddings"))
    sources = _sources(model, family, tied)
    for name, param in model.named_parameters():
        names = sources[name]
        expected = tuple(param.shape[1:]) if isinstance(names, Stacked) else tuple(param.shape)
        for source in names:
            entry = entries.get(source)
            if entry is None:
                problems.append(f"missing tensor {source} (expected shape {list(expected)})")
            elif entry.shape != expected:
                problems.append(
                    f"{entry.file}: {source} has shape {list(entry.shape)}, "
                    f"the model expects {list(expected)}"
                )
            elif entry.dtype not in SAFETENSORS_DTYPES.values():
                problems.append(f"{entry.file}: {source} is {entry.dtype}, not a floating dtype")
    used = {source for names in sources.values() for source in names}
    problems += [
        f"{entry.file}: unexpected tensor {name} (no such parameter in the model)"
        for name, entry in entries.items()
        if name not in used and not name.endswith(_DERIVED_SUFFIXES)
    ]
    if problems:
        raise HfCheckpointError(
            f"the checkpoint in {directory} does not fit the model "
            f"({len(problems)} problems):\n  " + "\n  ".join(problems) + "\nFix: build the "
            "model from this checkpoint's config (xlafw.models.load_pretrained), or point to "
            "the checkpoint the model was configured for."
        )
    return sources


def _is_sharded(param: torch.Tensor) -> bool:
    """Whether ``param`` is split over devices (not merely replicated to all)."""
    import torch_xla
    import torch_xla.distributed.spmd as xs

    sharding_type = torch_xla._XLAC._get_xla_sharding_type(param)
    return sharding_type is not None and sharding_type != xs.ShardingType.REPLICATED.value


def _tiles_per_dim(sharding_spec: str, ndim: int) -> list[int]:
    """Reads how many tiles split each dimension from a spec like ``{devices=[2,4]...}``."""
    match = re.search(r"devices=\[([\d,]+)\]", sharding_spec)
    if match is None:
        raise RuntimeError(f"cannot read the tiling of sharding {sharding_spec!r}")
    return [int(t) for t in match.group(1).split(",")[:ndim]]


def _load_shards(param: torch.Tensor, read: Callable[[tuple[slice, ...]], torch.Tensor]) -> None:
    """Reads only the slices of this host's shards and makes them the parameter's value.

    ``xs.wrap_if_sharded(param).local_shards`` / ``load_local_shards_`` would do
    the same, but asking a parameter for its shard indices runs its pending
    initialization first, which on torch_xla 2.9 replicates a parameter whose
    dimensions do not divide evenly (module doc). So the indices are read from
    a placeholder with the same sharding (zeros, one shard per device), and the
    loaded value replaces the parameter's data without running anything.
    Shards of an uneven dimension are zero-padded to the common shard shape,
    as XLA stores them.
    """
    import torch_xla

    xla = torch_xla._XLAC
    op_sharding = xla._get_xla_op_sharding(param)  # the annotation only; runs nothing
    tiles = _tiles_per_dim(xla._get_xla_sharding_spec(param), param.dim())
    shard_shape = [-(-size // t) for size, t in zip(param.shape, tiles, strict=True)]
    num_local = len(xla._xla_get_runtime_devices())
    global_shape = list(param.shape)
    zeros = torch.zeros(shard_shape, dtype=param.dtype)
    placeholder = xla._global_tensor_from_cpu_shards([zeros] * num_local, op_sharding, global_shape)
    done: dict[tuple, torch.Tensor] = {}  # replicas of one shard are read once
    shards = []
    for _, indices in xla._get_local_shard_replica_and_indices([placeholder])[0]:
        key = tuple((s.start, s.stop) for s in indices)
        if key not in done:
            piece = read(tuple(indices)).to(param.dtype)
            done[key] = zeros.clone()
            done[key][tuple(slice(0, n) for n in piece.shape)] = piece
        shards.append(done[key])
    # ``.data =`` (not ``_replace_xla_tensor``, which leaves ``param.detach()``,
    # hence ``state_dict()``, reading the old value through functionalization).
    param.data = xla._global_tensor_from_cpu_shards(shards, op_sharding, global_shape)


class _Readers:
    """Open safetensors files by name, each opened once (memory-mapped, read lazily)."""

    def __init__(self, directory: Path, entries: dict[str, TensorEntry]):
        self._directory, self._entries = directory, entries
        self._stack = contextlib.ExitStack()
        self._open: dict[str, object] = {}

    def tensor(self, name: str):
        """The lazily read tensor ``name`` (index it to read a slice)."""
        file = self._entries[name].file
        if file not in self._open:
            self._open[file] = self._stack.enter_context(
                safe_open(self._directory / file, framework="pt")
            )
        return self._open[file].get_slice(name)

    def reader(
        self, sources: tuple[str, ...], shape: tuple[int, ...]
    ) -> Callable[[tuple[slice, ...]], torch.Tensor]:
        """Reads an index slice of the parameter of ``shape`` made of ``sources``."""
        if not isinstance(sources, Stacked):
            return lambda index: self.tensor(sources[0])[index]

        def read(index: tuple[slice, ...]) -> torch.Tensor:
            rows, rest = index[0], index[1:]
            picked = range(len(sources))[rows]
            if not picked:  # a padding shard of an uneven split holds no rows
                dims = [len(range(n)[r]) for n, r in zip(shape[1:], rest, strict=False)]
                return torch.empty((0, *dims, *shape[1 + len(dims) :]))
            return torch.stack([self.tensor(sources[i])[rest] for i in picked])

        return read

    def close(self) -> None:
        self._stack.close()


def load_hf_weights(model: torch.nn.Module, directory: str | os.PathLike) -> LoadedWeights:
    """Loads a local Hugging Face checkpoint into a built (and sharded) model of any family.

    Call it after the parameters were sharded and before the optimizer is
    created. Every file, name, shape and the architecture in ``config.json``
    are checked before any value is copied, and all problems are reported at
    once. Values are cast to each parameter's dtype; shardings are preserved.

    Args:
      model: xlafw's model, on the XLA device (sharded or not) or on the CPU.
      directory: holds ``config.json`` and ``model.safetensors`` or
        ``model-0000x-of-0000y.safetensors`` with ``model.safetensors.index.json``.

    Returns:
      What was loaded (``.summary()`` is a log line).

    Raises:
      HfCheckpointError: for a directory in a bucket (copy it to local disk
        first), another family's checkpoint, missing or unexpected tensors, a
        shape or architecture mismatch (naming the file, tensor and both shapes).
      RuntimeError: if a parameter's sharding changed while loading.
    """
    if problem := remote_checkpoint_problem(directory):  # before Path() folds "gs://"
        raise HfCheckpointError(problem)
    directory = Path(directory)
    family = family_of(model)
    entries = read_hf_index(directory)
    sources = _check(model, family, directory, entries)
    params = dict(model.named_parameters())
    on_xla = any(p.device.type == "xla" for p in params.values())
    if on_xla:
        import torch_xla

        sharding_spec = torch_xla._XLAC._get_xla_sharding_spec
        specs_before = {name: sharding_spec(p) for name, p in params.items()}
    num_sharded = 0
    total_mib = sum(p.numel() * p.element_size() for p in params.values()) / 2**20
    progress = Progress(f"weights: importing {directory}", total_mib, "MiB")
    readers = _Readers(directory, entries)
    with torch.no_grad(), progress, contextlib.closing(readers):
        for name, param in params.items():
            read = readers.reader(sources[name], tuple(param.shape))
            if on_xla and _is_sharded(param):
                _load_shards(param, read)
                num_sharded += 1
            else:
                whole = (slice(None),) * param.dim()
                param.copy_(read(whole).to(param.dtype))
            progress.update(param.numel() * param.element_size() / 2**20)
    if on_xla:
        # Both paths above transfer at once (no pending graph holds host tensors), so
        # this is the only sync: syncing earlier would run the pending initialization
        # of parameters not loaded yet, which loses uneven shardings (module doc).
        torch_xla.sync()
        changed = [
            f"{name}: {specs_before[name]} -> {sharding_spec(p)}"
            for name, p in params.items()
            if sharding_spec(p) != specs_before[name]
        ]
        if changed:
            raise RuntimeError("loading changed parameter shardings:\n  " + "\n  ".join(changed))
    used = [source for names in sources.values() for source in names]
    return LoadedWeights(
        directory=str(directory),
        files=tuple(sorted({entries[s].file for s in used})),
        num_tensors=len(params),
        num_sharded=num_sharded,
        source_dtypes=tuple(sorted({entries[s].dtype for s in used})),
        lm_head_from_embedding=sources.get(family.tied_weights[0]) == family.tied_weights[1:],
    )


def _process_index_and_count(on_xla: bool) -> tuple[int, int]:
    if not on_xla:
        return 0, 1
    import torch_xla.runtime as xr

    return xr.process_index(), xr.process_count()


def save_hf_weights(
    model: torch.nn.Module,
    directory: str | os.PathLike,
    max_shard_bytes: int = 5 * 2**30,
) -> SavedWeights:
    """Writes the model in Hugging Face layout, to a local directory or a bucket.

    ``config.json`` (the family's ``to_hf_config``), the safetensors files (one
    ``model.safetensors``, or ``model-0000x-of-0000y.safetensors`` and
    ``model.safetensors.index.json`` when larger than ``max_shard_bytes``).

    - Local: everything is written into a temporary sibling directory that is
      renamed when complete, so ``directory`` is either absent or whole.
    - Object store (``gs://...``): there is no atomic rename (a "move" copies
      and deletes every object), so the files are written in place, each
      object appearing only once complete, and ``config.json`` is written
      last: a directory without it is an interrupted export.

    Every process must call it (gathering a sharded tensor is a collective);
    only process 0 writes, so ``directory`` must be on storage it can write.

    Args:
      model: xlafw's model, sharded or not.
      directory: where the checkpoint goes, a local path or an fsspec URL;
        must not exist or be empty.
      max_shard_bytes: the largest safetensors file (HF's default is 5 GB).

    Returns:
      What was written.

    Raises:
      FileExistsError: when ``directory`` exists and is not empty.
    """
    directory = storage.path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(
            f"{directory} exists and is not empty. Fix: choose a new directory or remove it."
        )
    family = family_of(model)
    params = [(name, p.detach()) for name, p in model.named_parameters()]
    on_xla = any(p.device.type == "xla" for _, p in params)
    process_index, process_count = _process_index_and_count(on_xla)
    groups = plan_files(params, max_shard_bytes)
    files = (
        [SINGLE_FILE]
        if len(groups) == 1
        else [f"model-{i:05d}-of-{len(groups):05d}.safetensors" for i in range(1, len(groups) + 1)]
    )
    in_place = storage.is_remote(directory)
    out = directory if in_place else directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    writer = process_index == 0
    if writer and not in_place:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
    for file, group in zip(files, groups, strict=True):
        gathered = (tensor.cpu() for _, tensor in group)
        if writer:
            write_safetensors(out / file, group, gathered, family.hf_sources)
        else:
            for _ in gathered:  # join the collective gathers; process 0 writes
                pass
    total_bytes = sum(p.numel() * p.element_size() for _, p in params)
    if writer:
        if len(files) > 1:
            index = {
                "metadata": {"total_size": total_bytes},
                "weight_map": {
                    stored: file
                    for file, group in zip(files, groups, strict=True)
                    for name, tensor in group
                    for stored in family.hf_sources(name, tuple(tensor.shape))
                },
            }
            storage.write_text(out / INDEX_FILE, json.dumps(index, indent=2) + "\n")
        dtype = str(params[0][1].dtype).removeprefix("torch.")
        config_json = family.to_hf_config(model.config, dtype=dtype)
        # Last: in a bucket, config.json marks a complete export.
        storage.write_text(out / "config.json", json.dumps(config_json, indent=2) + "\n")
        if not in_place:
            os.replace(out, directory)  # atomic; replaces an empty directory too
    if process_count > 1:
        import torch_xla.core.xla_model as xm

        xm.rendezvous("save_hf_weights")  # nobody returns before the export is complete
    return SavedWeights(str(directory), tuple(files), total_bytes)
