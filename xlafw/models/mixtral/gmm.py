"""The dropless sorted expert path on torch_xla's Pallas grouped matmul (``moe_kernel=gmm``).

Every assignment of a batch (``batch * seq * k`` of them) is sorted by its
expert, the tokens are gathered in that order, and each projection runs as
one grouped matmul (megablox ``gmm``: rows ``[offset_e, offset_e + count_e)``
times expert e's weight), so there is neither capacity nor padding: the
expert work is exactly the routed work. Outputs are put back in token order
and summed with the routing weights.

torch_xla's ``gmm`` is a JAX function behind ``call_jax``, which has no
autograd; ``_GroupedMatmul`` gives it one from the kernel's own transposes
(``gmm`` for the input gradient, ``tgmm`` for the weight gradient). The
expert weights stay ``[experts, out, in]`` (``transpose_rhs``), as stored.

TPU only: on XLA's CPU backend a Pallas kernel runs only in interpret mode
(BUILD_NOTES.md, "Mixtral MoE (issue 15)" for what happens there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xlafw.models.mixtral.model import MixtralExperts, Routing


class _GroupedMatmul(torch.autograd.Function):
    """``out[rows of e] = lhs[rows of e] @ rhs[e].T`` with ``rhs`` ``[groups, out, in]``."""

    @staticmethod
    def forward(ctx, lhs: torch.Tensor, rhs: torch.Tensor, group_sizes: torch.Tensor):
        from torch_xla.experimental.custom_kernel import gmm

        ctx.save_for_backward(lhs, rhs, group_sizes)
        return gmm(lhs, rhs, group_sizes, transpose_rhs=True)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        from torch_xla.experimental.custom_kernel import gmm, tgmm

        lhs, rhs, group_sizes = ctx.saved_tensors
        grad_lhs = gmm(grad, rhs, group_sizes)  # [m, out] @ rhs[e] ([out, in])
        grad_rhs = tgmm(grad.t().contiguous(), lhs, group_sizes)  # [groups, out, in]
        return grad_lhs, grad_rhs, None


def grouped_matmul(lhs: torch.Tensor, rhs: torch.Tensor, group_sizes: torch.Tensor):
    """``lhs`` rows sorted by group ``[m, in]``, ``rhs`` ``[groups, out, in]`` -> ``[m, out]``."""
    return _GroupedMatmul.apply(lhs, rhs, group_sizes)


def sorted_experts(x: torch.Tensor, routing: Routing, experts: MixtralExperts) -> torch.Tensor:
    """The MoE output ``[batch, seq, hidden]`` of the dropless sorted path.

    Args:
      x: ``[batch, seq, hidden]`` the block's (normed) input.
      routing: the top-k routing (its slots are not used: nothing is dropped).
      experts: the stacked expert weights.
    """
    batch, seq, hidden = x.shape
    k = routing.experts.shape[1]
    chosen = routing.experts.transpose(1, 2).reshape(-1)  # token-major: token t at t*k .. t*k+k-1
    order = torch.argsort(chosen, stable=True)
    group_sizes = F.one_hot(chosen, routing.num_experts).sum(dim=0).to(torch.int32)
    tokens = x.reshape(-1, hidden)[order // k]
    gate = grouped_matmul(tokens, experts.w1, group_sizes)
    up = grouped_matmul(tokens, experts.w3, group_sizes)
    out = grouped_matmul(F.silu(gate) * up, experts.w2, group_sizes)
    unsorted = out[torch.argsort(order)]  # back to token-major order
    weights = routing.weights.transpose(1, 2).reshape(-1, 1)
    summed = (unsorted.float() * weights).reshape(batch * seq, k, hidden).sum(dim=1)
    return summed.reshape(batch, seq, hidden).to(x.dtype)
