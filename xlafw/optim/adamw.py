"""AdamW with update clipping and an on-device learning rate.

Differences from ``torch.optim.AdamW``:
  * The step count and the learning rate live in device tensors, so the whole
    update is part of the one compiled train-step graph and a changing LR
    never recompiles it.
  * Update clipping (Adafactor's ``clip_threshold``, Shazeer & Stern 2018):
    each parameter's Adam update ``m_hat / (sqrt(v_hat) + eps)`` is scaled down
    so its RMS is at most ``update_clip``. It tames the spikes that follow rare
    large gradients, which global-norm gradient clipping alone does not. Every
    parameter's RMS comes from one batched reduction (``sums_of_squares``):
    under SPMD one all-reduce per step, not one per parameter.
  * Weight decay is decoupled and applies to matrices only (``ndim >= 2``):
    never to norm gains.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import ClassVar

import torch

from xlafw.arguments import FLOAT32_MAX, InvalidArgument, number, raise_invalid
from xlafw.optim.norms import sums_of_squares
from xlafw.optim.schedules import Constant

Schedule = Callable[[torch.Tensor], torch.Tensor]


class AdamW(torch.optim.Optimizer):
    """AdamW whose state and learning rate stay on the device.

    Args:
      params: the parameters to optimize.
      lr: peak learning rate; the schedule multiplies it.
      betas: Adam's moment decay rates.
      eps: added to ``sqrt(v_hat)``.
      weight_decay: decoupled decay, applied to matrices only.
      update_clip: maximum RMS of one parameter's Adam update; None disables.
      schedule: maps the 1-based step tensor to a multiplier of ``lr``. The
        trainer passes the experiment's schedule.

    Implements ``xlafw.optim.TrainableOptimizer``.

    Raises:
      InvalidArgument: for a hyper-parameter out of its range, naming it.
    """

    # exp_avg and exp_avg_sq (the step count is a scalar).
    STATE_TENSORS_PER_PARAMETER: ClassVar[int] = 2

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 3e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.1,
        update_clip: float | None = 1.0,
        schedule: Schedule = Constant(),
    ):
        check_hyperparameters(lr, betas, eps, weight_decay, update_clip, schedule)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.update_clip = update_clip
        self.schedule = schedule
        self.last_lr: torch.Tensor | None = None
        self.last_update_norm: torch.Tensor | None = None
        self._numels: dict[tuple[int, ...], torch.Tensor] = {}  # parameter sizes on device

    @torch.no_grad()
    def init_state(self) -> None:
        """Creates every parameter's state now instead of at the first step.

        The first step then runs the same graph as every later one (one
        compilation instead of two), and a checkpoint can be restored in place.
        State tensors are created like their parameter (device, dtype); the
        trainer gives them the parameter's sharding.
        """
        for group in self.param_groups:
            for p in group["params"]:
                if not self.state[p]:
                    self.state[p] = {
                        "step": torch.zeros((), dtype=torch.float32, device=p.device),
                        "exp_avg": torch.zeros_like(p),
                        "exp_avg_sq": torch.zeros_like(p),
                    }

    def load_state_dict(self, state_dict: dict) -> None:
        """Loads state, then gives every parameter its own step tensor on device.

        torch_xla caches host scalars: step counts loaded from a checkpoint (all
        equal) come back as one shared device buffer, which changes the first
        step's graph and costs a recompilation on the second. Fresh tensors keep
        the resumed graph identical to the uninterrupted run's.
        """
        super().load_state_dict(state_dict)
        for param, state in self.state.items():
            if "step" in state:
                fresh = torch.zeros((), dtype=torch.float32, device=param.device)
                state["step"] = fresh.add_(state["step"].to(param.device))

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = closure() if closure is not None else None
        update_squares = []
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if not all(self.state[p] for p in params):
                self.init_state()
            # The learning rate and bias corrections are computed once per group,
            # from its first parameter's count: per parameter they were 3 x 39
            # scalar chains in llama_tiny's step graph (0.3 s of compile). Exact
            # when every parameter gets a gradient every step, as in the trainer;
            # a parameter skipped on some steps (no gradient) would be corrected
            # with the group's count, not its own.
            for p in params:
                self.state[p]["step"].add_(1)
            step = self.state[params[0]]["step"]
            lr = group["lr"] * self.schedule(step)
            self.last_lr = lr
            # Adam's update m_hat / (sqrt(v_hat) + eps) is m / (sqrt(v / c2) + eps) / c1;
            # the scalar 1 / c1 goes into the step size.
            inv_c1 = 1 / (1 - beta1**step)
            inv_c2 = 1 / (1 - beta2**step)
            sqrt_inv_c2 = inv_c2.sqrt()
            measured = []
            for p in params:
                state, grad = self.state[p], p.grad
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                # float32, as the reduction sums it (free: the casts fuse into its loop)
                v_hat = exp_avg_sq.float() * inv_c2
                measured.append(exp_avg.float() / (v_hat.sqrt() + group["eps"]))
            # One batched reduction serves the clipping and the logged update norm of
            # every parameter: ||lr * update||^2 = lr^2 * numel * rms^2, rms after clipping.
            numels = self._numels_on_device(params)
            rms = (sums_of_squares(measured, like=params) / numels).sqrt() * inv_c1
            step_sizes = (lr * inv_c1).expand(len(params))
            if self.update_clip is not None:
                scales = (rms / self.update_clip).clamp(min=1.0)
                rms, step_sizes = rms / scales, step_sizes / scales
            update_squares.append(((lr * rms).pow(2) * numels).sum())
            for p, step_size in zip(params, step_sizes, strict=True):
                state = self.state[p]
                if group["weight_decay"] and p.ndim >= 2:
                    p.mul_(1 - lr * group["weight_decay"])
                # The same update, spelled differently from ``measured`` on purpose: XLA
                # merges identical expressions, and a shared update tensor is written to
                # memory and read back by both passes. Spelled apart, the reduction and
                # this update each compute it inside their own fused loop (llama_tiny,
                # one device: 0.08 -> 0.06 s of optimizer per step; torch's AdamW and
                # clip_grad_norm_, without update clipping or norm: 0.05;
                # benchmarks/optimizer_step.py).
                denom = state["exp_avg_sq"].sqrt() * sqrt_inv_c2 + group["eps"]
                p.sub_(step_size.to(p.dtype) * (state["exp_avg"] / denom))
        if update_squares:
            self.last_update_norm = torch.stack(update_squares).sum().sqrt()
        return loss

    def _numels_on_device(self, params: list[torch.nn.Parameter]) -> torch.Tensor:
        """The parameters' sizes as a float32 device vector, uploaded once, not every step."""
        sizes = tuple(p.numel() for p in params)
        if sizes not in self._numels:
            self._numels[sizes] = torch.tensor(
                [float(n) for n in sizes], dtype=torch.float32, device=params[0].device
            )
        return self._numels[sizes]


def check_hyperparameters(
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    update_clip: float | None,
    schedule: Schedule,
) -> None:
    """Raises ``InvalidArgument`` naming every AdamW hyper-parameter out of its range.

    The learning rate and the decay factors become float32 device scalars,
    hence the float32 bound.
    """
    betas_ok = (
        isinstance(betas, (tuple, list))
        and len(betas) == 2
        and all(number("betas", b, at_least=0, below=1) is None for b in betas)
    )
    raise_invalid(
        number(
            "lr",
            lr,
            at_least=0,
            at_most=FLOAT32_MAX,
            fix="the peak learning rate, e.g. 3e-4; the schedule scales it.",
        ),
        None
        if betas_ok
        else InvalidArgument(
            "betas",
            betas,
            "must be two moment decay rates (beta1, beta2), each in [0, 1). Fix: e.g. (0.9, 0.95).",
        ),
        number("eps", eps, above=0, at_most=FLOAT32_MAX, fix="e.g. 1e-8."),
        number(
            "weight_decay",
            weight_decay,
            at_least=0,
            at_most=FLOAT32_MAX,
            fix="e.g. 0.1, or 0 for none.",
        ),
        number(
            "update_clip",
            update_clip,
            above=0,
            allow_none=True,
            fix="the largest RMS of one parameter's update, e.g. 1.0, or None for no clipping.",
        ),
        None
        if callable(schedule)
        else InvalidArgument(
            "schedule", schedule, "must map the step tensor to an LR multiplier (a callable)."
        ),
    )


def clip_grad_norm(
    parameters: Iterable[torch.nn.Parameter], max_norm: float | None
) -> torch.Tensor:
    """Scales gradients so their global L2 norm is at most ``max_norm``.

    Unlike ``torch.nn.utils.clip_grad_norm_`` this never reads a value on the
    host, so it stays inside the compiled step, and under SPMD it reduces every
    gradient with one all-reduce (``sums_of_squares``), not one per parameter.

    Returns:
      The global norm before clipping (a device scalar).
    """
    params = [p for p in parameters if p.grad is not None]
    grads = [p.grad for p in params]
    total = sums_of_squares(grads, like=params).sum().sqrt()
    if max_norm is not None and max_norm > 0:
        scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.to(g.dtype))
    return total
