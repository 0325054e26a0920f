"""The seam between a model family and the rest of xlafw.

A family (Llama, Mixtral, ...) lives in its own package ``xlafw/models/<name>/``
which exposes ``FAMILY``, an instance of a ``ModelFamily`` subclass. The config
system (``--dry_run`` figures, validation), the trainer (MFU, the loss
objective), ``parallel`` (stock rule sets) and Hugging Face I/O learn about a
model only through it:

==========================  ==================================================
what                        member
==========================  ==================================================
config and module           ``config_class``, ``model_class``
remat / scan unit           ``layer_class``, ``layers_path``
stock sharding rule sets    ``sharding_rules``
validation                  ``problems(config, seq_len)``
--dry_run and MFU formulas  ``matmul_parameters``, ``active_parameters``,
                            ``flops_per_token``, ``activation_bytes_per_token``
Hugging Face mapping        ``hf_model_type``, ``from_hf_config``,
                            ``to_hf_config``, ``architecture_fields``,
                            ``hf_sources``
==========================  ==================================================

Formulas read the family's frozen config dataclass only (no module is built),
so they run before torch_xla is imported. ``family_of`` finds the family of a
config, a model class or a ``fdl.Partial`` of one by looking in every package
under ``xlafw/models/``: adding a family is adding a folder.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import fiddle as fdl
from torch import nn

from xlafw.parallel.sharding import ShardingRules


@dataclasses.dataclass(frozen=True)
class ActivationDtypes:
    """Byte sizes the activation formula needs.

    Attributes:
      compute: bytes of one element of a matmul output (``trainer.compute_dtype``).
      residual: bytes of one element of the residual stream, norms and
        the layer inputs (``trainer.param_dtype``: under mixed precision only
        matmuls are autocast).
    """

    compute: int
    residual: int


class ModelFamily:
    """What xlafw knows about one family of models; subclass per family.

    Class attributes:
      name: the family's name (``llama``), also its package name.
      config_class: the frozen dataclass of hyper-parameters.
      model_class: the ``nn.Module``, built as ``model_class(config)``.
      layer_class: the decoder layer: what ``RematPolicy`` checkpoints and scans.
      layers_path: the module path of the layer stack (a ``DecoderLayers``).
      hf_model_type: ``model_type`` in a Hugging Face ``config.json``.
      hf_architecture: ``architectures[0]`` written on export.
      architecture_fields: config fields that change the computation; a
        checkpoint must agree on these (others, like the attention kernel,
        may differ between a model and its weights).
      tied_weights: ``(head, embedding)`` parameter names; a Hugging Face
        checkpoint with ``tie_word_embeddings`` and no head tensor fills the
        head from the embedding.

    A family's model is built as ``model_class(config)`` and keeps the config
    as ``model.config`` (the plan, validation and HF I/O read it there).
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    model_class: ClassVar[type[nn.Module]]
    layer_class: ClassVar[type[nn.Module]]
    layers_path: ClassVar[str] = "model.layers"
    hf_model_type: ClassVar[str]
    hf_architecture: ClassVar[str]
    architecture_fields: ClassVar[tuple[str, ...]]
    tied_weights: ClassVar[tuple[str, str]] = ("lm_head.weight", "model.embed_tokens.weight")

    # -- sharding ---------------------------------------------------------------------------

    @property
    def sharding_rules(self) -> Mapping[str, ShardingRules]:
        """Stock rule sets by name (``fsdp``, ``fsdp_tp``, ``ep`` ...)."""
        raise NotImplementedError

    # -- validation -------------------------------------------------------------------------

    def problems(self, config: Any, seq_len: int) -> Iterator[str]:
        """Yields one message per problem, naming ``model.config.<field>`` and the fix."""
        raise NotImplementedError

    def mesh_problems(self, config: Any, axis_sizes: Mapping[str, int]) -> Iterator[str]:
        """Problems of the config on a resolved mesh (e.g. experts over the ``expert`` axis)."""
        return iter(())

    def mesh_advice(self, config: Any, axis_sizes: Mapping[str, int]) -> Iterator[str]:
        """Settings that run on the mesh but waste it (a slower path, not an error).

        ``--dry_run`` prints them and the trainer logs them as warnings.
        """
        return iter(())

    def scan_problem(self, config: Any) -> str | None:
        """Why the layer stack cannot run under ``remat.scan_layers``, or None."""
        return None

    def tpu_only(self, config: Any) -> str | None:
        """A ``model.config.<field>=<value>`` setting that needs a TPU, or None."""
        return None

    # -- formulas (--dry_run, MFU) ----------------------------------------------------------

    def matmul_parameters(self, config: Any) -> int:
        """Weights of the matrix multiplies one token goes through (LM head included).

        The embedding lookup and norms are not matmuls; for a mixture of
        experts only the experts a token is routed to count.
        """
        raise NotImplementedError

    def active_parameters(self, config: Any, num_parameters: int) -> int:
        """Parameters one token uses (all of them for a dense model)."""
        return num_parameters

    def attention_width(self, config: Any) -> int:
        """Query width (heads x head_dim) of the attention score and value products."""
        raise NotImplementedError

    def flops_per_token(self, config: Any, seq_len: int) -> int:
        """Training FLOPs per token: ``6 * N_matmul + 12 * layers * seq_len * q``.

        The formula MaxText uses and torchprime reports: forward and backward
        of every matmul a token goes through, plus the attention score and
        value products without a causal discount.
        """
        layers = config.num_hidden_layers
        return 6 * self.matmul_parameters(config) + 12 * layers * seq_len * self.attention_width(
            config
        )

    def activation_bytes_per_token(
        self,
        config: Any,
        seq_len: int,
        dtypes: ActivationDtypes,
        tensor_ways: int,
        remat_layers: bool,
    ) -> float:
        """Bytes one token's activations keep alive for the backward, on one device.

        Args:
          config: the family's config.
          seq_len: the sequence length (attention scores grow with it).
          dtypes: byte sizes of matmul outputs and of the residual stream.
          tensor_ways: how many ways the tensor-parallel rules split a layer.
          remat_layers: whether ``layer_class`` is recomputed in the backward
            (a layer then keeps only its input, and one layer's full set is
            live again while it is recomputed).
        """
        raise NotImplementedError

    # -- Hugging Face -----------------------------------------------------------------------

    def from_hf_config(self, config_json: Mapping[str, Any]) -> Any:
        """Maps a Hugging Face ``config.json`` to the family's config.

        Raises:
          HfCheckpointError: for settings the family cannot represent.
        """
        raise NotImplementedError

    def to_hf_config(self, config: Any, dtype: str = "float32") -> dict[str, Any]:
        """The ``config.json`` ``transformers`` reads back as this model."""
        raise NotImplementedError

    def hf_sources(self, name: str, shape: tuple[int, ...]) -> tuple[str, ...]:
        """The Hugging Face tensor(s) a parameter is made of.

        A plain one-name tuple: the parameter is that tensor. ``Stacked``
        names (``xlafw.models.hf_config.Stacked``): the parameter is their
        stack along a new first dimension (xlafw keeps a mixture's experts as
        one ``[experts, ...]`` tensor, HF one tensor per expert).
        """
        return (name,)

    def architecture_differences(self, model: Any, checkpoint: Any) -> list[str]:
        """``field: model X, checkpoint Y`` for every architecture field that differs."""
        return [
            f"{field}: model {getattr(model, field)!r}, checkpoint {getattr(checkpoint, field)!r}"
            for field in self.architecture_fields
            if getattr(model, field) != getattr(checkpoint, field)
        ]

    def __repr__(self) -> str:
        return f"<model family {self.name}>"


@functools.cache
def families() -> dict[str, ModelFamily]:
    """Every family: the ``FAMILY`` of each package under ``xlafw/models/``, by name."""
    import xlafw.models as package

    found = {}
    for info in pkgutil.iter_modules(package.__path__):
        if info.ispkg:
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            family = getattr(module, "FAMILY", None)
            if isinstance(family, ModelFamily):
                found[family.name] = family
    return found


class UnknownFamilyError(ValueError):
    """Nothing under ``xlafw/models/`` owns this model or config."""


def family_of(obj: Any) -> ModelFamily:
    """The family of a config, a model (class or instance) or a ``fdl`` buildable of either.

    A subclass belongs to the family of its nearest registered parent, so a
    family whose config subclasses another's (Mixtral's ``LlamaConfig``) is
    found before its parent's.

    Raises:
      UnknownFamilyError: naming what was asked and the known families.
    """
    if isinstance(obj, fdl.Buildable):
        obj = fdl.get_callable(obj)
    cls = obj if isinstance(obj, type) else type(obj)
    # The nearest registered class in the MRO wins: a subclass of a family's model
    # (or config) in an experiments package belongs to that family.
    for base in cls.__mro__:
        for family in families().values():
            if base in (family.config_class, family.model_class):
                return family
    raise UnknownFamilyError(
        f"{cls.__module__}.{cls.__qualname__} belongs to no model family; known families: "
        f"{', '.join(sorted(families()))} (each is a package under xlafw/models/ with a FAMILY)."
    )


def family_for_hf_config(config_json: Mapping[str, Any]) -> ModelFamily:
    """The family whose ``hf_model_type`` is the ``model_type`` of a ``config.json``.

    Raises:
      UnknownFamilyError: for a model type no family reads.
    """
    model_type = config_json.get("model_type")
    for family in families().values():
        if family.hf_model_type == model_type:
            return family
    known = sorted(f.hf_model_type for f in families().values())
    raise UnknownFamilyError(
        f"config.json has model_type {model_type!r}; xlafw reads {', '.join(known)}."
    )
