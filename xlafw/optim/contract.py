"""What the trainer and the plan need of an optimizer, beyond ``torch.optim.Optimizer``.

The trainer creates the optimizer as ``experiment.optimizer(params,
schedule=...)``, then relies on these members (``TrainableOptimizer``):

- ``init_state()``: creates every parameter's state before step 1, so step 1
  runs the same graph as every later step and a checkpoint restores in place;
  the trainer then gives parameter-shaped state tensors their parameter's
  sharding.
- ``last_lr`` and ``last_update_norm``: device scalars set by ``step()``,
  logged without a host read inside the step.
- ``STATE_TENSORS_PER_PARAMETER``: how many parameter-sized state tensors it
  keeps per parameter (AdamW: ``exp_avg`` and ``exp_avg_sq``, 2), a class
  attribute so that the plan's memory estimate and the checkpoint's size can
  read it from the config without building anything
  (``state_tensors_per_parameter``).
"""

from __future__ import annotations

import functools
import inspect
from typing import ClassVar, Protocol, runtime_checkable

import fiddle as fdl
import torch


@runtime_checkable
class TrainableOptimizer(Protocol):
    """An optimizer the trainer can run (module docstring).

    Also a ``torch.optim.Optimizer``: ``step``, ``zero_grad``, ``state``,
    ``state_dict`` and ``load_state_dict`` are used as torch defines them.

    Attributes:
      STATE_TENSORS_PER_PARAMETER: parameter-sized state tensors kept per
        parameter (a class attribute).
      last_lr: the learning rate of the latest step (a device scalar; None
        before the first).
      last_update_norm: the global norm of the latest step's update (a device
        scalar; None before the first).
    """

    STATE_TENSORS_PER_PARAMETER: ClassVar[int]
    last_lr: torch.Tensor | None
    last_update_norm: torch.Tensor | None

    def init_state(self) -> None:
        """Creates every parameter's state now, on its parameter's device."""
        ...


def state_tensors_per_parameter(optimizer: type | fdl.Partial | functools.partial) -> int:
    """``STATE_TENSORS_PER_PARAMETER`` of an optimizer class, or of a partial of one.

    Nothing is built: a ``fdl.Partial`` / ``fdl.Config`` or a
    ``functools.partial`` is only unwrapped to the class it would call.

    Args:
      optimizer: the class, e.g. ``AdamW``, or a partial of it (the
        experiment's ``optimizer`` field).

    Raises:
      TypeError: when it does not name a class, or the class does not declare
        ``STATE_TENSORS_PER_PARAMETER`` as an int.
    """
    target = optimizer
    while True:
        if isinstance(target, fdl.Buildable):
            target = fdl.get_callable(target)
        elif isinstance(target, functools.partial):
            target = target.func
        else:
            break
    if not inspect.isclass(target):
        raise TypeError(
            f"the optimizer {target!r} is not a class: the trainer needs an optimizer class "
            f"(or a partial of one) that declares STATE_TENSORS_PER_PARAMETER."
        )
    count = getattr(target, "STATE_TENSORS_PER_PARAMETER", None)
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise TypeError(
            f"{target.__module__}.{target.__qualname__} does not declare "
            f"STATE_TENSORS_PER_PARAMETER (found {count!r}). Fix: add the class attribute "
            f"STATE_TENSORS_PER_PARAMETER: int, the number of parameter-sized state tensors it "
            f"keeps per parameter (AdamW: 2), and implement xlafw.optim.TrainableOptimizer."
        )
    return count
