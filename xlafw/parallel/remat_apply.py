"""Applying a RematPolicy to a built model: scan, checkpointing, barriers, pure modules.

Imports torch_xla. ``xlafw.parallel.apply`` calls these from the trainer's
stages 9-11. Parameter names never change: a scanned stack is the same
``nn.ModuleList`` subclass holding the same layers, and pure modules keep their
place in the tree (only their ``forward`` is replaced).
"""

from __future__ import annotations

import copy
import functools

import torch
from functorch.compile import default_partition, min_cut_rematerialization_partition
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten
from torch.utils.checkpoint import CheckpointPolicy

from xlafw.parallel.remat import RematPolicy


def submodule(model: nn.Module, path: str) -> nn.Module:
    """The module at ``path`` ("" = ``model``); raises ``KeyError`` naming the path."""
    try:
        return model.get_submodule(path) if path else model
    except AttributeError as e:
        raise KeyError(f"no module at path {path!r}: {e}") from e


def matching(model: nn.Module, class_names: tuple[str, ...], scope: str = "") -> list[nn.Module]:
    """Modules under ``scope`` whose class name is one of ``class_names``."""
    root = submodule(model, scope)
    return [m for m in root.modules() if type(m).__name__ in class_names]


def _meta_template(module: nn.Module) -> nn.Module:
    """A hook-free copy of ``module`` on the meta device, to call with other weights.

    ``functional_call`` swaps in every parameter and buffer, so the copy needs
    no real memory. Backward hooks (optimization barriers) are dropped;
    forward hooks (activation-sharding annotations) are kept.
    """
    template = copy.deepcopy(module).to("meta")
    for m in template.modules():
        m._backward_hooks.clear()
        m._backward_pre_hooks.clear()
        m._backward_pre_hooks.clear()
    return template


# --- offload ---------------------------------------------------------------------------


@torch.library.custom_op("xlafw::offload_name", mutates_args=())
def offload_name(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """Identity that names ``tensor`` in the traced graph, so a partitioner can find it."""
    return tensor.clone()


@offload_name.register_fake
def _(tensor: torch.Tensor, name: str) -> torch.Tensor:
    return torch.empty_like(tensor)


offload_name.register_autograd(lambda ctx, grad: (grad, None))


def _named(node: torch.fx.Node) -> str | None:
    if node.op == "call_function" and node.target is torch.ops.xlafw.offload_name.default:
        return node.args[1]
    return None


def recompute_all_partition(offload: tuple[str, ...] = ()):
    """A partition function for scan: recompute the whole layer from its inputs.

    Every forward node is marked ``MUST_RECOMPUTE`` (as torchprime does) so
    the min-cut partitioner saves only the layer's inputs, except nodes named
    by ``offload_name`` with a name in ``offload``: those are saved, moved to
    host memory at the end of the forward (``place_to_host``) and back at the
    start of the backward (``place_to_device``).
    """

    def partition(joint_module: torch.fx.GraphModule, joint_inputs, *, num_fwd_outputs, **kw):
        for node in joint_module.graph.nodes:
            if node.op != "call_function":
                continue
            name = _named(node)
            node.meta["recompute"] = (
                CheckpointPolicy.MUST_SAVE if name in offload else CheckpointPolicy.MUST_RECOMPUTE
            )
            node.meta["ac_graph_id"] = 0  # one checkpointed region: the whole layer
        fwd, bwd = min_cut_rematerialization_partition(
            joint_module, joint_inputs, num_fwd_outputs=num_fwd_outputs, **kw
        )
        if offload:
            _offload_saved(fwd, bwd, num_fwd_outputs, offload)
        return fwd, bwd

    return partition


def _offload_saved(
    fwd: torch.fx.GraphModule, bwd: torch.fx.GraphModule, num_fwd_outputs: int, names
) -> None:
    """Rewrites the saved ``offload_name`` tensors to go through host memory."""
    import torch_xla.experimental.stablehlo_custom_call  # noqa: F401  (registers xla::place_to_*)

    place_to_host = torch.ops.xla.place_to_host.default
    place_to_device = torch.ops.xla.place_to_device.default

    output = next(n for n in fwd.graph.nodes if n.op == "output")
    outs = list(output.args[0])
    moved = set()
    for i, value in enumerate(outs[num_fwd_outputs:], start=num_fwd_outputs):
        if isinstance(value, torch.fx.Node) and _named(value) in names:
            with fwd.graph.inserting_before(output):
                outs[i] = fwd.graph.call_function(place_to_host, (value,))
            moved.add(value.name)
    output.args = (tuple(outs),)
    fwd.recompile()
    for node in list(bwd.graph.nodes):
        if node.op == "placeholder" and node.name in moved:
            with bwd.graph.inserting_after(node):
                on_device = bwd.graph.call_function(place_to_device, (node,))
            for user in [u for u in node.users if u is not on_device]:
                user.replace_input_with(node, on_device)
    bwd.recompile()


# --- scan ------------------------------------------------------------------------------


class ScannedLayers(nn.ModuleList):
    """The same layers, run as one XLA while loop over their stacked weights.

    Each layer is called as ``layer(h, *broadcast)``: ``h`` is the scan's carry,
    ``broadcast`` (position ids, masks: any pytree of tensors) is the same for
    every layer. torch_xla's scan needs every scanned input to have a gradient
    (its backward rebuilds the input pytree, and a None gradient of a buffer
    or an integer tensor breaks it), so:

    - stacked buffers are marked as requiring grad (the gradient is discarded);
    - broadcast inputs ride in the carry as float32 and each layer passes them
      on unchanged; integer ids are exact in float32 below 2**24 (16.7M
      positions or documents), and a broadcast tensor that needs a gradient
      (a learned bias) accumulates it across layers through the identity chain.

    Args:
      layers: the homogeneous stack (same class, same parameter shapes).
      partition_fn: AOTAutograd partitioner: ``default_partition`` saves every
        activation; ``recompute_all_partition()`` saves only layer inputs.
      offload: names of tensors to tag with ``offload_name`` for the partitioner.
    """

    def __init__(
        self, layers: nn.ModuleList, partition_fn=default_partition, offload: tuple[str, ...] = ()
    ):
        super().__init__(layers)
        types = {type(m) for m in layers}
        if len(types) != 1:
            names = sorted(t.__name__ for t in types)
            raise ValueError(f"scan needs layers of one class, got {names}")
        self.layer_class = types.pop().__name__
        self.partition_fn = partition_fn
        # One function object per broadcast signature for the module's life:
        # scan caches traced graphs per function (is_fn_pure=True), so steps
        # after the first skip AOTAutograd entirely.
        self._template = [_meta_template(layers[0])]  # a list: not a submodule
        self._offload_input = "decoder_input" in offload
        self._steps: dict = {}

    def forward(self, h: torch.Tensor, *broadcast):
        from torch_xla.experimental.scan import scan

        flat, spec = tree_flatten(broadcast)
        dtypes = tuple(t.dtype for t in flat)
        key = (spec, dtypes)
        if key not in self._steps:
            self._steps[key] = functools.partial(
                _scan_step, self._template[0], self._offload_input, spec, dtypes
            )
        params = [dict(layer.named_parameters()) for layer in self]
        buffers = [dict(layer.named_buffers()) for layer in self]
        weights = (
            tree_map(lambda *t: torch.stack(t), *params),
            tree_map(lambda *t: torch.stack(t).requires_grad_(), *buffers),
        )
        carry = (h, tuple(t.to(torch.float32) for t in flat))
        (h, _), _ = scan(
            self._steps[key], carry, weights, partition_fn=self.partition_fn, is_fn_pure=True
        )
        return h


def _scan_step(template, offload_input: bool, spec, dtypes, carry, weights):
    h, encoded = carry
    broadcast = tree_unflatten([t.to(d) for t, d in zip(encoded, dtypes, strict=True)], spec)
    if offload_input:
        h = offload_name(h, "decoder_input")
    out = torch.func.functional_call(template, weights, (h, *broadcast), strict=True)
    return (out, encoded), None


def scan_layers(model: nn.Module, remat: RematPolicy) -> ScannedLayers:
    """Replaces the stack at ``remat.scan_layers`` with a ``ScannedLayers``.

    The scanned layer is recomputed in the backward (scan + remat) when its
    class is in ``remat.checkpoint_modules``.
    """
    parent_path, _, name = remat.scan_layers.rpartition(".")
    parent = submodule(model, parent_path)
    layers = getattr(parent, name)
    layer_class = type(layers[0]).__name__
    remat_layer = layer_class in remat.checkpoint_modules
    partition = recompute_all_partition(remat.offload_tensors) if remat_layer else default_partition
    scanned = ScannedLayers(layers, partition, remat.offload_tensors)
    setattr(parent, name, scanned)
    return scanned


# --- pure modules ----------------------------------------------------------------------


def _pure_forward(template, params, buffers, args, kwargs):
    return torch.func.functional_call(template, (params, buffers), args, kwargs)


def mark_pure(module: nn.Module) -> None:
    """Makes ``module``'s forward traced once per input signature (``assume_pure``).

    The module stays in place (parameter names unchanged); its forward calls a
    hook-free meta copy with the module's current weights through
    ``assume_pure``, which caches the lowered computation.
    """
    from torch_xla.experimental.assume_pure import assume_pure

    pure = assume_pure(functools.partial(_pure_forward, _meta_template(module)))

    def forward(*args, **kwargs):
        return pure(dict(module.named_parameters()), dict(module.named_buffers()), args, kwargs)

    module.forward = forward
