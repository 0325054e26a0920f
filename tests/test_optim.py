"""AdamW with update clipping, gradient clipping and LR schedules."""

from __future__ import annotations

import functools
import math

import fiddle as fdl
import pytest
import torch

from xlafw.optim import (
    AdamW,
    Constant,
    TrainableOptimizer,
    WarmupCosine,
    clip_grad_norm,
    state_tensors_per_parameter,
)
from xlafw.optim.norms import sums_of_squares


def test_warmup_cosine_ramps_up_then_decays_to_the_floor():
    schedule = WarmupCosine(total_steps=110, warmup_steps=10, min_ratio=0.1)
    values = [schedule(torch.tensor(s)).item() for s in (1, 5, 10, 60, 110, 200)]
    # warm-up 0.1, 0.5, 1.0; halfway through the decay (1 + 0.1) / 2; then the floor.
    expected = [0.1, 0.5, 1.0, 0.55, 0.1, 0.1]
    assert all(math.isclose(v, e, rel_tol=1e-6) for v, e in zip(values, expected, strict=False)), (
        values
    )


# A small parameter and a llama-sized one (33k elements: summation order matters).
SHAPES = [(4, 3), (256, 129)]


def _twin_params(seed=0, shape=(4, 3), dtype=torch.float32):
    torch.manual_seed(seed)
    w = torch.randn(*shape, dtype=dtype)
    return torch.nn.Parameter(w.clone()), torch.nn.Parameter(w.clone())


@pytest.mark.parametrize("shape", SHAPES)
def test_adamw_without_update_clip_matches_torch_adamw(shape):
    ours, theirs = _twin_params(shape=shape)
    opt = AdamW([ours], lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1, update_clip=None)
    ref = torch.optim.AdamW([theirs], lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
    for step in range(5):
        grad = torch.randn(*shape, generator=torch.Generator().manual_seed(step))
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        opt.step()
        ref.step()
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("shape", SHAPES)
def test_update_clip_bounds_the_rms_of_each_update(shape):
    (p, _) = _twin_params(shape=shape)
    before = p.detach().clone()
    opt = AdamW([p], lr=1.0, weight_decay=0.0, update_clip=0.5)
    p.grad = torch.randn(*shape)
    opt.step()  # first Adam update has |u| ~ 1 everywhere, so RMS ~ 1 before clipping
    update = before - p.detach()
    assert math.isclose(update.pow(2).mean().sqrt().item(), 0.5, rel_tol=1e-4)


def test_weight_decay_skips_vectors():
    vector = torch.nn.Parameter(torch.ones(3))
    opt = AdamW([vector], lr=0.1, weight_decay=1.0, schedule=Constant())
    vector.grad = torch.zeros(3)
    opt.step()
    torch.testing.assert_close(vector.detach(), torch.ones(3))


def test_clip_grad_norm_returns_the_preclip_norm_and_scales_to_max():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0])
    norm = clip_grad_norm([a, b], max_norm=1.0)
    assert math.isclose(norm.item(), 5.0)
    total = torch.cat([a.grad, b.grad]).norm().item()
    assert math.isclose(total, 1.0, rel_tol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_logged_update_norm_is_the_norm_of_the_applied_update(shape):
    # float64 weights: in float32, before - after loses ~1e-5 of a small update's norm.
    (p, _) = _twin_params(shape=shape, dtype=torch.float64)
    before = p.detach().clone()
    opt = AdamW([p], lr=0.1, weight_decay=0.0, update_clip=0.5)
    p.grad = torch.randn(*shape, dtype=torch.float64)
    opt.step()
    applied = (before - p.detach()).norm().item()
    assert math.isclose(opt.last_update_norm.item(), applied, rel_tol=1e-5)


def test_sums_of_squares_match_float64():
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(688, 256, generator=gen), torch.randn(300, generator=gen)]
    want = torch.stack([t.double().pow(2).sum() for t in tensors])
    torch.testing.assert_close(sums_of_squares(tensors).double(), want, rtol=1e-6, atol=0)


def test_adamw_is_a_trainable_optimizer_and_declares_the_state_it_creates():
    weight, bias = torch.nn.Parameter(torch.ones(4, 3)), torch.nn.Parameter(torch.ones(3))
    opt = AdamW([weight, bias])
    assert isinstance(opt, TrainableOptimizer)
    assert not isinstance(torch.optim.SGD([weight], lr=0.1), TrainableOptimizer)
    opt.init_state()
    for param in (weight, bias):
        sized = [t for t in opt.state[param].values() if t.shape == param.shape]
        assert len(sized) == AdamW.STATE_TENSORS_PER_PARAMETER == 2


def test_state_tensors_per_parameter_reads_the_class_through_partials_without_building():
    assert state_tensors_per_parameter(AdamW) == 2
    assert state_tensors_per_parameter(fdl.Partial(AdamW, lr=1e-3, betas=(0.9, 0.95))) == 2
    assert state_tensors_per_parameter(functools.partial(AdamW, lr=1e-3)) == 2
    with pytest.raises(TypeError, match=r"torch\.optim\.sgd\.SGD does not declare STATE_TENSORS"):
        state_tensors_per_parameter(fdl.Partial(torch.optim.SGD, lr=0.1))
    with pytest.raises(TypeError, match="is not a class"):
        state_tensors_per_parameter(fdl.Partial(clip_grad_norm))
