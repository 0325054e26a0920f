"""What a config will cost before it runs: parameters, memory, FLOPs, sharding.

``make_plan`` builds the model on the meta device (shapes, no memory, no XLA)
and applies the config's mesh and sharding rules arithmetically. It is what
``--dry_run`` prints, what validation's memory check compares against the
device memory, and what the trainer is handed (parameter count, FLOPs per
token) instead of recomputing it. Never imports torch_xla.

The model-specific formulas belong to the model's family
(``xlafw.models.family.ModelFamily``); this module applies them to a config.

Memory per device (parameters, gradients and optimizer state in
``trainer.param_dtype``):

* parameters: each tensor's elements divided by the ways its spec splits it
  (``sharding.ways`` per dimension; no rule or ``()`` means replicated).
* gradients: the same as the parameters.
* optimizer state: ``STATE_TENSORS_PER_PARAMETER`` parameter-sized tensors
  (AdamW: ``exp_avg`` and ``exp_avg_sq``).
* activations: the family's bytes per token
  (``ModelFamily.activation_bytes_per_token``) times the tokens of one
  micro-batch on one device: ``global_batch * seq_len / (grad_accum_steps *
  batch ways * context)``.

FLOPs per token: the family's ``flops_per_token`` (``6 * N_matmul + 12 *
layers * seq_len * q``, the formula MaxText uses and torchprime reports; a
mixture of experts counts only the experts a token is routed to).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Mapping

import fiddle as fdl
import torch

from xlafw.config.errors import ConfigError
from xlafw.config.hardware import Devices, resolve_devices
from xlafw.dtypes import itemsize
from xlafw.models.family import ActivationDtypes, ModelFamily, family_of
from xlafw.optim import state_tensors_per_parameter
from xlafw.parallel.mesh import MeshError, batch_ways
from xlafw.parallel.sharding import ShardingRules, Spec, abstract_name, ways


@contextlib.contextmanager
def _skipped_weight_init():
    """Makes ``torch.nn.init``'s in-place initializers no-ops for a moment.

    Meta tensors have no values to initialize, but ``normal_`` on the meta
    device still goes through torch's Python reference kernels, whose first
    use imports ~1 s of modules: every CLI command, error exits included, would
    pay it. (transformers' ``no_init_weights`` does the same for the same reason.)
    """
    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(torch.nn.init, n) for n in names}
    try:
        for n in names:
            setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, fn in saved.items():
            setattr(torch.nn.init, n, fn)


def meta_model(cfg: fdl.Config) -> torch.nn.Module:
    """Builds the experiment's model on the meta device: shapes only, no memory."""
    return meta_model_of(fdl.build(cfg.model))


def meta_model_of(builder: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """Calls a built model builder (``fdl.build(cfg.model)``) on the meta device."""
    with torch.device("meta"), _skipped_weight_init():
        return builder()


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Estimated bytes on one device (see the module docstring for the formulas)."""

    parameters: int
    gradients: int
    optimizer_state: int
    activations: int

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer_state + self.activations


@dataclasses.dataclass(frozen=True)
class ShardingRow:
    """One parameter (or one parameter of every decoder layer) and its layout.

    Attributes:
      name: the parameter name; decoder layers collapse into ``model.layers.*``.
      spec: the partition spec, or None when no rule matches (replicated).
      global_shape: the full tensor's shape.
      local_shape: the shape one device holds.
      copies: how many parameters the row stands for (layers collapsed).
    """

    name: str
    spec: Spec | None
    global_shape: tuple[int, ...]
    local_shape: tuple[int, ...]
    copies: int


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything ``--dry_run`` reports for one config on one set of devices.

    Attributes:
      experiment: the experiment's name.
      family: the model's family.
      devices: what the plan is for.
      axis_sizes: the resolved mesh.
      parameter_groups: parameter count per top-level module group.
      num_parameters: the total parameter count.
      active_parameters: parameters one token uses (fewer than
        ``num_parameters`` for a mixture of experts).
      memory: estimated bytes per device.
      dtype: the dtypes the byte counts use (parameters; compute if it differs).
      remat_layers: whether decoder layers are recomputed in the backward.
      tokens_per_step: global batch x sequence length.
      flops_per_token: training FLOPs (forward and backward) per token.
      sharding: the sharding table.
      data: what the data pipeline reads and how it packs it, one line each.
      advice: settings that run but waste the mesh (the family's
        ``mesh_advice``), one line each, with the fix.
    """

    experiment: str
    family: ModelFamily
    devices: Devices
    axis_sizes: Mapping[str, int]
    parameter_groups: Mapping[str, int]
    num_parameters: int
    active_parameters: int
    memory: MemoryEstimate
    dtype: str
    remat_layers: bool
    tokens_per_step: int
    flops_per_token: int
    sharding: tuple[ShardingRow, ...]
    data: tuple[str, ...] = ()
    advice: tuple[str, ...] = ()

    @property
    def flops_per_step(self) -> int:
        return self.flops_per_token * self.tokens_per_step


def parameter_group(name: str) -> str:
    """The top-level module group of a parameter, decoder layers as one group.

    ``model.layers.3.mlp.up_proj.weight`` -> ``model.layers.*``;
    ``lm_head.weight`` -> ``lm_head``.
    """
    parts = abstract_name(name).split(".")
    return ".".join(parts[:3] if parts[1:2] == ["layers"] else parts[: min(2, len(parts) - 1)])


def _local_shape(shape: tuple[int, ...], spec: Spec | None, axes: Mapping[str, int]):
    if not spec:
        return shape
    return tuple(-(-size // ways(entry, axes)) for size, entry in zip(shape, spec, strict=False))


def sharding_table(
    model: torch.nn.Module, rules: ShardingRules, axes: Mapping[str, int]
) -> tuple[ShardingRow, ...]:
    """One row per distinct parameter name, identical decoder layers collapsed."""
    rows: dict[str, ShardingRow] = {}
    for name, param in model.named_parameters():
        key = abstract_name(name)
        if key in rows:
            rows[key] = dataclasses.replace(rows[key], copies=rows[key].copies + 1)
            continue
        spec = rules.spec_for(name)
        shape = tuple(param.shape)
        rows[key] = ShardingRow(key, spec, shape, _local_shape(shape, spec, axes), 1)
    return tuple(rows.values())


def compute_dtype(cfg: fdl.Config) -> str:
    """The dtype activations and matmuls run in (``trainer.compute_dtype`` or the parameters')."""
    return cfg.trainer.compute_dtype or cfg.trainer.param_dtype


def _dtype_description(cfg: fdl.Config) -> str:
    param, compute = cfg.trainer.param_dtype, compute_dtype(cfg)
    if param == compute:
        return param
    return f"{param} parameters and optimizer state, {compute} compute (mixed precision)"


def remat_layers(cfg: fdl.Config, family: ModelFamily) -> bool:
    """Whether the family's decoder layer is recomputed in the backward."""
    return family.layer_class.__name__ in cfg.remat.checkpoint_modules


def activation_bytes(cfg: fdl.Config, axes: Mapping[str, int]) -> int:
    """Activation memory per device under the remat policy (module docstring)."""
    family = family_of(cfg.model)
    # Gradient accumulation keeps one micro-batch's activations alive at a time.
    micro_batch = cfg.data.global_batch_size / max(1, cfg.trainer.grad_accum_steps)
    return _activations(cfg, axes, micro_batch, cfg.data.seq_len, remat_layers(cfg, family))


def eval_activation_bytes(cfg: fdl.Config, axes: Mapping[str, int]) -> int:
    """Activation memory per device of one eval batch (0 without evaluation).

    Evaluation runs no backward, so, as in a recomputed layer stack, only the
    layer inputs and one layer's activations are alive at a time.
    """
    evaluation = cfg.eval
    if not evaluation.every_steps or evaluation.data is None:
        return 0
    data = evaluation.data
    return _activations(cfg, axes, data.global_batch_size, data.seq_len, remat=True)


def _activations(
    cfg: fdl.Config, axes: Mapping[str, int], rows: float, seq_len: int, remat: bool
) -> int:
    dtypes = ActivationDtypes(
        compute=itemsize(compute_dtype(cfg)), residual=itemsize(cfg.trainer.param_dtype)
    )
    per_token = family_of(cfg.model).activation_bytes_per_token(
        fdl.build(cfg.model.config), seq_len, dtypes, tensor_ways=axes["tensor"], remat_layers=remat
    )
    tokens = rows * seq_len / (batch_ways(axes) * axes["context"])
    return int(tokens * per_token)


def flops_per_token(cfg: fdl.Config) -> int:
    """Training FLOPs per token of the config's model (``ModelFamily.flops_per_token``)."""
    return family_of(cfg.model).flops_per_token(fdl.build(cfg.model.config), cfg.data.seq_len)


def estimate_memory(
    cfg: fdl.Config, model: torch.nn.Module, axes: Mapping[str, int]
) -> MemoryEstimate:
    """Bytes per device of parameters, gradients, optimizer state and activations."""
    rules: ShardingRules = fdl.build(cfg.sharding)
    size = itemsize(cfg.trainer.param_dtype)
    elements = 0
    for row in sharding_table(model, rules, axes):
        elements += math.prod(row.local_shape) * row.copies
    params = elements * size
    return MemoryEstimate(
        parameters=params,
        gradients=params,
        optimizer_state=state_tensors_per_parameter(cfg.optimizer) * params,
        activations=activation_bytes(cfg, axes),
    )


def resolve_mesh(cfg: fdl.Config, devices: Devices) -> dict[str, int]:
    """The mesh's axis sizes on ``devices`` (one device when the count is unknown).

    Raises:
      ConfigError: when the mesh does not fit the device count.
    """
    try:
        return fdl.build(cfg.mesh).resolve(devices.count or 1)
    except MeshError as e:
        raise ConfigError(f"mesh on {devices.description}: {e}") from None


def devices_for_dry_run(cfg: fdl.Config, detected: Devices) -> Devices:
    """The detected devices, or the fewest the mesh accepts when they cannot hold it.

    A dry run on a laptop of an experiment whose mesh fixes ``tensor=4`` should
    still print its figures; it plans for the smallest device count the mesh
    takes and says so. A declared ``--target``/``--num_devices`` is never
    replaced this way.
    """
    try:
        mesh = fdl.build(cfg.mesh)
    except ValueError:  # an invalid axis size (InvalidArgument): validation reports it
        return detected
    try:
        mesh.resolve(detected.count or 1)
        return detected
    except MeshError:
        pass
    fewest = math.prod(s for s in mesh.ici.as_tuple() if s != -1) * math.prod(mesh.dcn.as_tuple())
    fallback = resolve_devices(fewest)
    return dataclasses.replace(
        fallback,
        description=f"{fallback.description} (the fewest this mesh takes; pass --target or "
        f"--num_devices to plan for real hardware)",
    )


def data_summary(cfg: fdl.Config) -> tuple[str, ...]:
    """The data source, tokenizer and packing of ``cfg.data``; reads no data, no network."""
    source = fdl.build(cfg.data.source)
    describe = getattr(source, "describe", None)
    lines = [f"source      {describe() if describe else repr(source)}"]
    if (tokenizer := getattr(cfg.data, "tokenizer", None)) is not None:
        lines.append(f"tokenizer   {fdl.build(tokenizer)!r}")
    boundaries = getattr(cfg.data, "document_boundaries", None)
    if boundaries is not None:
        attention = (
            "segment ids: attention stops at document boundaries"
            if boundaries.value == "segmented"
            else "attention crosses document boundaries"
        )
        lines.append(f"packing     documents end to end, EOS between; {attention}")
    return tuple(lines)


def make_plan(cfg: fdl.Config, devices: Devices, model: torch.nn.Module | None = None) -> Plan:
    """Computes the dry-run figures of ``cfg`` on ``devices``.

    Args:
      cfg: the experiment config, overrides applied.
      devices: what to plan for (``hardware.resolve_devices``).
      model: the meta-device model if the caller already built it.

    Raises:
      ConfigError: when the mesh does not fit the device count.
    """
    axes = resolve_mesh(cfg, devices)
    model = model if model is not None else meta_model(cfg)
    family = family_of(cfg.model)
    groups: dict[str, int] = {}
    for name, param in model.named_parameters():
        group = parameter_group(name)
        groups[group] = groups.get(group, 0) + param.numel()
    num_parameters = sum(groups.values())
    return Plan(
        experiment=cfg.name,
        family=family,
        devices=devices,
        axis_sizes=axes,
        parameter_groups=groups,
        num_parameters=num_parameters,
        active_parameters=family.active_parameters(model.config, num_parameters),
        memory=estimate_memory(cfg, model, axes),
        dtype=_dtype_description(cfg),
        remat_layers=remat_layers(cfg, family),
        tokens_per_step=cfg.data.global_batch_size * cfg.data.seq_len,
        flops_per_token=flops_per_token(cfg),
        sharding=sharding_table(model, fdl.build(cfg.sharding), axes),
        data=data_summary(cfg),
        advice=tuple(family.mesh_advice(model.config, axes)),
    )


def human_bytes(n: float) -> str:
    """``1536`` -> ``1.5 KiB``; binary units, one decimal."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} B" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _spec_str(spec: Spec | None) -> str:
    if spec is None:
        return "replicated (no rule)"
    return "replicated ()" if not spec else str(tuple(spec))


def format_plan(plan: Plan) -> str:
    """The ``--dry_run`` report: parameters, memory, compute and the sharding table."""
    mesh = " ".join(f"{a}={n}" for a, n in plan.axis_sizes.items())
    lines = [f"dry run: {plan.experiment} on {plan.devices.description}", f"mesh: {mesh}", ""]
    if plan.data:
        lines += ["data", *(f"  {line}" for line in plan.data), ""]
    lines.append(f"parameters ({plan.family.name})")
    stack = f"{plan.family.layers_path}.*"
    for group, count in plan.parameter_groups.items():
        layers = next((r.copies for r in plan.sharding if r.name.startswith(group + ".")), 1)
        label = f"{group} ({layers} layers)" if group == stack else group
        lines.append(f"  {label:<34}{count:>20,}")
    lines.append(f"  {'total':<34}{plan.num_parameters:>20,}")
    if plan.active_parameters != plan.num_parameters:
        lines.append(f"  {'active per token':<34}{plan.active_parameters:>20,}")
    remat = "decoder layers keep only their input" if plan.remat_layers else "none"
    memory, limit = plan.memory, plan.devices.memory_bytes
    lines += ["", f"memory per device ({plan.dtype}; remat: {remat})"]
    for label, value in (
        ("parameters", memory.parameters),
        ("gradients", memory.gradients),
        ("optimizer state", memory.optimizer_state),
        ("activations (estimate)", memory.activations),
    ):
        lines.append(f"  {label:<34}{human_bytes(value):>20}")
    verdict = ""
    if limit:
        fits = "fits" if memory.total <= limit else "DOES NOT FIT"
        verdict = f"  of {human_bytes(limit)}: {fits} ({100 * memory.total / limit:.0f}%)"
    lines.append(f"  {'total':<34}{human_bytes(memory.total):>20}{verdict}")
    lines += ["", "compute (6 * N_matmul + 12 * layers * seq_len * q_width per token)"]
    lines.append(f"  {'FLOPs per token':<34}{plan.flops_per_token:>20.4g}")
    lines.append(f"  {'tokens per step':<34}{plan.tokens_per_step:>20,}")
    lines.append(f"  {'FLOPs per step':<34}{plan.flops_per_step:>20.4g}")
    if plan.devices.peak_flops and plan.devices.count:
        peak = plan.devices.peak_flops * plan.devices.count
        lines.append(f"  {'step time at 100% MFU':<34}{plan.flops_per_step / peak:>19.3f}s")
    lines += ["", "sharding (parameter, spec, global shape, per-device shape)"]
    width = max(len(r.name) + 5 for r in plan.sharding)
    for row in plan.sharding:
        name = f"{row.name} x{row.copies}" if row.copies > 1 else row.name
        lines.append(
            f"  {name:<{width}} {_spec_str(row.spec):<28} {list(row.global_shape)!s:<16} "
            f"{list(row.local_shape)}"
        )
    if plan.advice:
        lines += ["", "advice (runs, but wastes the mesh)", *(f"  {line}" for line in plan.advice)]
    return "\n".join(lines)
