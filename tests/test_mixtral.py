"""The Mixtral family: agreement with transformers, routing, dispatch paths, formulas, HF mapping.

The reference is a ``transformers.MixtralForCausalLM`` with random weights,
saved with ``save_pretrained`` (the per-expert ``block_sparse_moe.experts.{e}.
w1.weight`` layout of published checkpoints) and read into xlafw's stacked
experts through ``FAMILY.hf_sources``. Models are tiny and float32; each test
takes seconds.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch_xla
from safetensors import safe_open

from xlafw.arguments import InvalidArgument
from xlafw.models.family import family_of
from xlafw.models.hf_config import HfCheckpointError
from xlafw.models.mixtral import (
    FAMILY,
    MIXTRAL_EP,
    MIXTRAL_FSDP,
    MixtralConfig,
    MixtralForCausalLM,
    MixtralSparseMoeBlock,
    MoeKernel,
)
from xlafw.models.mixtral.model import route
from xlafw.parallel.sharding import check_rules

torch_xla.device()  # start XLA before any eager backward in this process

EXPERTS, TOP_K, VOCAB = 8, 2, 128
HF_SIZES = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_local_experts=EXPERTS,
    num_experts_per_tok=TOP_K,
    router_aux_loss_coef=0.02,
    initializer_range=0.2,  # peaked router logits: no near-ties between experts
    max_position_embeddings=256,
    tie_word_embeddings=False,
)
KERNELS = (MoeKernel.GATHER, MoeKernel.EINSUM)


def _xla_and_cpu():
    return pytest.mark.parametrize("device", ["cpu", "xla"])


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    """A random transformers Mixtral and the directory ``save_pretrained`` wrote it to."""
    import transformers

    torch.manual_seed(0)
    config = transformers.MixtralConfig(**HF_SIZES)
    config._attn_implementation = "eager"
    model = transformers.MixtralForCausalLM(config).eval()
    directory = tmp_path_factory.mktemp("hf_mixtral")
    model.save_pretrained(directory)
    return model, directory


def _load(directory, **overrides) -> MixtralForCausalLM:
    """xlafw's model from an HF directory: config.json mapped, experts stacked by hf_sources."""
    with open(directory / "config.json") as f:
        config = FAMILY.from_hf_config(json.load(f))
    model = MixtralForCausalLM(dataclasses.replace(config, **overrides)).eval()
    with safe_open(directory / "model.safetensors", "pt") as f:
        state = {}
        for name, param in model.named_parameters():
            tensors = [f.get_tensor(s) for s in FAMILY.hf_sources(name, tuple(param.shape))]
            state[name] = tensors[0] if len(tensors) == 1 else torch.stack(tensors)
    model.load_state_dict(state)
    return model


def _ids(batch=3, seq=24, seed=1):
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _device(name):
    return torch_xla.device() if name == "xla" else torch.device("cpu")


# --- transformers ------------------------------------------------------------------------


def test_hf_sources_name_exactly_the_tensors_transformers_saves(hf_checkpoint):
    hf, directory = hf_checkpoint
    model = _load(directory)
    sources = {
        source: tuple(param.shape[1:]) if param.dim() == 3 else tuple(param.shape)
        for name, param in model.named_parameters()
        for source in FAMILY.hf_sources(name, tuple(param.shape))
    }
    with safe_open(directory / "model.safetensors", "pt") as f:
        saved = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118
    assert sources == saved
    assert FAMILY.hf_sources("model.layers.0.block_sparse_moe.experts.w2", (3, 4, 5)) == tuple(
        f"model.layers.0.block_sparse_moe.experts.{e}.w2.weight" for e in range(3)
    )
    assert FAMILY.hf_sources("model.layers.0.block_sparse_moe.gate.weight", (8, 4)) == (
        "model.layers.0.block_sparse_moe.gate.weight",
    )
    # transformers keeps w1 and w3 fused in memory: the stacked tensors are its halves.
    fused = hf.model.layers[1].mlp.experts.gate_up_proj
    experts = model.model.layers[1].block_sparse_moe.experts
    torch.testing.assert_close(torch.cat([experts.w1, experts.w3], dim=1), fused, rtol=0, atol=0)


@_xla_and_cpu()
@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.value)
def test_logits_loss_and_aux_loss_match_transformers(hf_checkpoint, kernel, device):
    hf, directory = hf_checkpoint
    ids = _ids()
    with torch.no_grad():
        expected = hf(ids, labels=ids)
        expected_aux = hf(ids, labels=ids, output_router_logits=True).aux_loss
    dev = _device(device)
    model = _load(directory, moe_kernel=kernel).to(dev)
    with torch.no_grad():
        logits = model(ids.to(dev)).logits.cpu()
        out = model(ids.to(dev), labels=ids.to(dev))
    assert (logits - expected.logits).abs().max() <= 1e-4
    torch.testing.assert_close(out.loss.cpu(), expected.loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.metrics["aux_loss"].cpu(), expected_aux, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.aux_loss.cpu(), 0.02 * expected_aux, rtol=1e-5, atol=1e-7)
    shares = torch.stack([out.metrics[f"expert_share/{e}"] for e in range(EXPERTS)]).cpu()
    torch.testing.assert_close(shares.sum(), torch.tensor(1.0))
    assert out.metrics["dropped_fraction"].item() == 0


def _skew_routing(model_state: dict[str, torch.Tensor], strength: float = 10.0) -> None:
    """Adds one direction to every embedding and points expert 0's router row along it.

    Every token's residual stream then leans the same way, so expert 0 is
    (nearly) every token's first choice: one expert gets a whole sequence.
    """
    hidden = model_state["model.embed_tokens.weight"].shape[1]
    direction = torch.ones(hidden) / math.sqrt(hidden)
    model_state["model.embed_tokens.weight"] += strength * direction
    for name, value in model_state.items():
        if name.endswith("gate.weight"):
            value[0] = 4 * strength * direction


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.value)
def test_dropless_routing_matches_transformers_when_one_expert_takes_every_token(
    hf_checkpoint, kernel
):
    import transformers

    hf_source, _ = hf_checkpoint
    hf = transformers.MixtralForCausalLM(hf_source.config).eval()
    state = {k: v.clone() for k, v in hf_source.state_dict().items()}
    _skew_routing(state)
    hf.load_state_dict(state)
    config = FAMILY.from_hf_config(hf.config.to_dict())
    model = MixtralForCausalLM(dataclasses.replace(config, moe_kernel=kernel)).eval()
    ours = {
        name.replace(".mlp.gate.", ".block_sparse_moe.gate."): value
        for name, value in state.items()
        if ".mlp.experts." not in name
    }
    for layer in range(HF_SIZES["num_hidden_layers"]):
        prefix = f"model.layers.{layer}"
        w1, w3 = state[f"{prefix}.mlp.experts.gate_up_proj"].chunk(2, dim=1)
        ours[f"{prefix}.block_sparse_moe.experts.w1"] = w1
        ours[f"{prefix}.block_sparse_moe.experts.w3"] = w3
        ours[f"{prefix}.block_sparse_moe.experts.w2"] = state[f"{prefix}.mlp.experts.down_proj"]
    model.load_state_dict(ours)
    ids = _ids(batch=2, seq=40)
    with torch.no_grad():
        expected = hf(ids, output_router_logits=True)
        out = model(ids, labels=ids)
        logits = model(ids).logits
    # Expert 0 is (nearly) every token's first choice: half of all assignments.
    assert out.metrics["expert_share/0"] > 0.45
    assert (logits - expected.logits).abs().max() <= 1e-4
    torch.testing.assert_close(out.metrics["aux_loss"], expected.aux_loss, rtol=1e-5, atol=1e-6)
    assert out.metrics["dropped_fraction"] == 0


# --- routing and capacity ----------------------------------------------------------------


def _block(capacity_factor, kernel=MoeKernel.GATHER, experts=4):
    config = MixtralConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_local_experts=experts,
        capacity_factor=capacity_factor,
        moe_kernel=kernel,
    )
    block = MixtralSparseMoeBlock(config)  # the model initializes; a bare block is empty
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return block


def _token_expert(block, x, e):
    """Expert e's SwiGLU on tokens ``x`` ``[n, hidden]``, straight from its weights."""
    w = block.experts
    return (torch.nn.functional.silu(x @ w.w1[e].T) * (x @ w.w3[e].T)) @ w.w2[e].T


def test_capacity_drops_overflow_assignments_and_changes_only_their_tokens():
    torch.manual_seed(0)
    dropless = _block(None)
    capped = _block(0.5)  # 4 experts, top 2: ceil(2 * 16 * 0.5 / 4) = 4 slots of 16 tokens
    capped.load_state_dict(dropless.state_dict())
    x = torch.randn(2, 16, 16) + torch.linspace(-1, 1, 16)  # a lean: uneven expert loads
    with torch.no_grad():
        full, _ = dropless(x)
        out, (_, _, dropped) = capped(x)
        routing, _ = route(capped.gate(x), TOP_K, capped.config.capacity(16))
    assert capped.config.capacity(16) == 4
    kept = routing.kept  # [batch, k, seq]
    assert 0 < dropped.item() < 1 and dropped == (~kept).float().mean()
    # Never more than capacity per expert and row.
    for b in range(2):
        for e in range(4):
            assert ((routing.experts[b] == e) & kept[b]).sum() <= 4
    untouched = kept.all(dim=1)  # [batch, seq]: every assignment of the token has a slot
    assert untouched.any() and (~untouched).any()
    torch.testing.assert_close(out[untouched], full[untouched])
    assert (out[~untouched] - full[~untouched]).abs().amax(dim=-1).min() > 1e-4
    # A token's output is the weighted sum over its kept assignments only.
    expected = torch.zeros_like(out)
    for b in range(2):
        for j in range(TOP_K):
            for s in range(16):
                if kept[b, j, s]:
                    e = routing.experts[b, j, s].item()
                    y = _token_expert(capped, x[b, s][None], e)[0]
                    expected[b, s] += routing.weights[b, j, s] * y
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_first_choices_take_slots_before_second_choices():
    # One row, 3 tokens, 2 experts, capacity 2: every token picks expert 0 first.
    logits = torch.tensor([[[2.0, 1.0], [3.0, 0.0], [1.5, 1.0]]])
    routing, _ = route(logits, k=2, capacity=2)
    # Expert 0: first choices of tokens 0 and 1 fit, token 2's is dropped. Expert 1:
    # second choices of tokens 0 and 1 fit, token 2's is dropped.
    assert routing.experts.tolist() == [[[0, 0, 0], [1, 1, 1]]]
    assert routing.slots.tolist() == [[[0, 1, 4], [2, 3, 4]]]
    assert routing.kept.tolist() == [[[True, True, False], [True, True, False]]]


@pytest.mark.parametrize("capacity_factor", [None, 0.5])
def test_gather_and_einsum_dispatch_agree_on_xla(capacity_factor):
    dev = torch_xla.device()
    torch.manual_seed(0)
    blocks = {k: _block(capacity_factor, k, experts=8) for k in KERNELS}
    state = blocks[MoeKernel.GATHER].state_dict()
    x = torch.randn(3, 20, 16) + torch.linspace(-1, 1, 16)
    results = {}
    for kernel, block in blocks.items():
        block.load_state_dict(state)
        block.to(dev)
        xd = x.clone().to(dev).requires_grad_()
        out, (assigned, probs, dropped) = block(xd)
        (out.square().sum() + probs.square().sum()).backward()
        torch_xla.sync()
        grads = {n: p.grad.cpu() for n, p in block.named_parameters()}
        results[kernel] = (out.cpu(), xd.grad.cpu(), grads, dropped.cpu(), assigned.cpu())
    (out_a, dx_a, g_a, d_a, f_a), (out_b, dx_b, g_b, d_b, f_b) = results.values()
    torch.testing.assert_close(out_a, out_b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx_a, dx_b, rtol=1e-5, atol=1e-5)
    for name in g_a:
        torch.testing.assert_close(g_a[name], g_b[name], rtol=1e-5, atol=1e-5)
    assert d_a == d_b and torch.equal(f_a, f_b)
    assert (d_a > 0) == (capacity_factor is not None)


def test_gmm_kernel_in_pallas_interpret_mode_matches_the_static_path():
    """torch_xla's megablox gmm, run by JAX's HLO interpreter on this CPU, forward and backward."""
    from jax.experimental.pallas import tpu as pltpu

    dev = torch_xla.device()
    sizes = dict(HF_SIZES, vocab_size=VOCAB)
    sizes.pop("tie_word_embeddings")
    config = MixtralConfig(**sizes)
    torch.manual_seed(0)
    static = MixtralForCausalLM(config)
    grouped = MixtralForCausalLM(MixtralConfig(**{**sizes, "moe_kernel": MoeKernel.GMM}))
    grouped.load_state_dict(static.state_dict())
    ids = _ids(batch=2, seq=16).to(dev)
    results = []
    for model in (static.to(dev), grouped.to(dev)):
        with pltpu.force_tpu_interpret_mode(True), torch.autograd.set_multithreading_enabled(False):
            out = model(ids, labels=ids)
            (out.loss + out.aux_loss).backward()
            torch_xla.sync()
        results.append((out.loss.cpu(), {n: p.grad.cpu() for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-6, atol=1e-6)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-5)


# --- the load-balancing loss under activation checkpointing ------------------------------


def test_router_gets_the_aux_loss_gradient_when_layers_are_recomputed():
    from torch_xla.distributed.fsdp import checkpoint_module

    dev = torch_xla.device()
    sizes = dict(HF_SIZES)
    sizes.pop("tie_word_embeddings")
    config = MixtralConfig(**{**sizes, "router_aux_loss_coef": 1.0})
    torch.manual_seed(0)
    plain = MixtralForCausalLM(config)
    recomputed = MixtralForCausalLM(config)
    recomputed.load_state_dict(plain.state_dict())
    ids = _ids(batch=2, seq=16).to(dev)
    results = []
    for model, checkpointed in ((plain, False), (recomputed, True)):
        model.to(dev)
        calls: list[int] = []
        for layer in model.model.layers:
            layer.block_sparse_moe.register_forward_hook(lambda *_, calls=calls: calls.append(1))
            if checkpointed:
                checkpoint_module(layer)
        out = model(ids, labels=ids)
        forward_calls = len(calls)
        out.aux_loss.backward()  # the router's only gradient is the load-balancing loss
        torch_xla.sync()
        router = [layer.block_sparse_moe.gate.weight.grad.cpu() for layer in model.model.layers]
        results.append((forward_calls, len(calls), router))
    (fwd_plain, total_plain, router_plain), (fwd_ckpt, total_ckpt, router_ckpt) = results
    layers = config.num_hidden_layers
    assert (fwd_plain, total_plain) == (layers, layers)
    assert (fwd_ckpt, total_ckpt) == (layers, 2 * layers)  # each layer ran again in the backward
    for a, b in zip(router_plain, router_ckpt, strict=True):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


# --- family: formulas, HF config, validation, sharding ----------------------------------

MIXTRAL_8X7B = MixtralConfig(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=32768,
)


def test_mixtral_8x7b_parameters_active_parameters_and_flops_count_top_k_experts():
    import fiddle as fdl

    from experiments.mixtral import mixtral_8x7b

    cfg = mixtral_8x7b()
    config = fdl.build(cfg.model.config)
    with torch.device("meta"):
        model = fdl.build(cfg.model)()
    total = sum(p.numel() for p in model.parameters())
    assert total == 46_702_792_704
    family = family_of(config)
    assert family is FAMILY and family_of(model) is FAMILY
    expert = 3 * 4096 * 14336
    assert family.active_parameters(config, total) == total - 32 * 6 * expert == 12_879_925_248
    attention = 2 * 4096 * (4096 + 1024)
    matmul = 32 * (attention + 4096 * 8 + 2 * expert) + 4096 * 32000
    assert family.matmul_parameters(config) == matmul
    seq = 4096
    assert family.flops_per_token(config, seq) == 6 * matmul + 12 * 32 * seq * 4096
    # A dense model with all 8 experts per token would count 6 more experts per layer.
    assert family.flops_per_token(config, seq) < 6 * (matmul + 32 * 6 * expert)


def test_activation_memory_counts_expert_copies_per_dispatch_path():
    from xlafw.models.family import ActivationDtypes

    dtypes = ActivationDtypes(compute=2, residual=4)
    dropless = MIXTRAL_8X7B
    capped = dataclasses.replace(MIXTRAL_8X7B, capacity_factor=1.25)
    assert FAMILY.routed_copies(dropless) == 8 and FAMILY.routed_copies(capped) == 2.5
    grouped = dataclasses.replace(MIXTRAL_8X7B, moe_kernel=MoeKernel.GMM)
    assert FAMILY.routed_copies(grouped) == 2
    einsum = dataclasses.replace(capped, moe_kernel=MoeKernel.EINSUM)
    per_token = {
        c: FAMILY.activation_bytes_per_token(c, 4096, dtypes, 1, remat_layers=True)
        for c in (dropless, capped, grouped, einsum)
    }
    assert per_token[grouped] < per_token[capped] < per_token[dropless]
    # The einsum path also keeps its dispatch and combine masks for one layer.
    masks = 2 * 8 * capped.capacity(4096) * 2
    assert per_token[einsum] == pytest.approx(per_token[capped] + masks)


def test_hf_config_round_trips_and_transformers_builds_the_same_model():
    import transformers

    for config in (MIXTRAL_8X7B, dataclasses.replace(MIXTRAL_8X7B, head_dim=64)):
        exported = FAMILY.to_hf_config(config)
        assert exported["model_type"] == "mixtral"
        assert exported["architectures"] == ["MixtralForCausalLM"]
        assert FAMILY.from_hf_config(exported) == config
        assert FAMILY.from_hf_config(json.loads(json.dumps(exported))) == config
    small = MixtralConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
    )
    hf = transformers.MixtralForCausalLM(transformers.MixtralConfig(**FAMILY.to_hf_config(small)))
    assert hf.config.output_router_logits and hf.config.router_aux_loss_coef == 0.02
    assert hf.config.rope_parameters["rope_theta"] == 1e6
    with torch.device("meta"):
        ours = MixtralForCausalLM(small)
    assert sum(p.numel() for p in hf.parameters()) == sum(p.numel() for p in ours.parameters())
    assert set(FAMILY.architecture_fields) >= {"num_local_experts", "num_experts_per_tok"}


def test_published_mixtral_8x7b_config_maps_with_hf_defaults():
    published = {  # mistralai/Mixtral-8x7B-v0.1/config.json
        "architectures": ["MixtralForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": 4096,
        "initializer_range": 0.02,
        "intermediate_size": 14336,
        "max_position_embeddings": 32768,
        "model_type": "mixtral",
        "num_attention_heads": 32,
        "num_experts_per_tok": 2,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "num_local_experts": 8,
        "output_router_logits": False,
        "rms_norm_eps": 1e-05,
        "rope_theta": 1e6,
        "router_aux_loss_coef": 0.02,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": 32000,
    }
    assert FAMILY.from_hf_config(published) == MIXTRAL_8X7B
    minimal = {k: published[k] for k in ("vocab_size", "hidden_size", "intermediate_size")}
    minimal.update(num_hidden_layers=2, num_attention_heads=32, model_type="mixtral")
    config = FAMILY.from_hf_config(minimal)  # transformers' defaults, not xlafw's
    assert (config.rope_theta, config.router_aux_loss_coef, config.num_key_value_heads) == (
        1e6,
        0.001,
        32,
    )


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"sliding_window": 4096}, "sliding_window is 4096"),
        ({"router_jitter_noise": 0.01}, "router_jitter_noise is 0.01"),
        ({"model_type": "llama"}, "model_type is 'llama', not 'mixtral'"),
        ({"hidden_act": "gelu"}, "hidden_act is 'gelu'"),
    ],
)
def test_unrepresentable_hf_configs_are_refused_naming_the_key(change, fragment):
    with pytest.raises(HfCheckpointError, match="MixtralConfig") as error:
        FAMILY.from_hf_config({**FAMILY.to_hf_config(MIXTRAL_8X7B), **change})
    assert fragment in str(error.value)


def _problems(**changes) -> list[str]:
    return list(FAMILY.problems(dataclasses.replace(MIXTRAL_8X7B, **changes), 4096))


def test_problems_name_the_field_the_value_and_the_fix():
    assert _problems() == []
    (message,) = _problems(num_experts_per_tok=9)
    assert "model.config.num_experts_per_tok=9" in message and "Fix:" in message
    # Single-field ranges are the config's own (__post_init__), checked when it is built.
    for field, value in (
        ("num_local_experts", 0),
        ("router_aux_loss_coef", -0.1),
        ("capacity_factor", 0.0),
    ):
        with pytest.raises(InvalidArgument, match=f"{field}={value}: must be"):
            _problems(**{field: value})
    (message,) = _problems(moe_kernel=MoeKernel.GMM, capacity_factor=1.25)
    assert "moe_kernel=gmm is dropless" in message
    assert any("num_key_value_heads" in m for m in _problems(num_key_value_heads=5))


def test_mesh_tpu_and_scan_checks():
    axes = dict(data=1, fsdp=2, tensor=1, context=1, expert=3)
    (message,) = FAMILY.mesh_problems(MIXTRAL_8X7B, axes)
    assert "model.config.num_local_experts=8" in message and "expert axis (3)" in message
    assert list(FAMILY.mesh_problems(MIXTRAL_8X7B, {**axes, "expert": 4})) == []
    grouped = dataclasses.replace(MIXTRAL_8X7B, moe_kernel=MoeKernel.GMM)
    assert FAMILY.tpu_only(grouped) == "model.config.moe_kernel=gmm"
    assert FAMILY.tpu_only(MIXTRAL_8X7B) is None
    assert any("one device" in m for m in FAMILY.mesh_problems(grouped, {**axes, "expert": 4}))
    assert "remat.scan_layers=None" in FAMILY.scan_problem(MIXTRAL_8X7B)


@pytest.mark.parametrize(
    ("rules", "axes"),
    [
        (MIXTRAL_EP, dict(data=1, fsdp=2, tensor=1, context=1, expert=4)),
        (MIXTRAL_FSDP, dict(data=1, fsdp=8, tensor=1, context=1, expert=1)),
    ],
)
def test_stock_rules_cover_every_parameter_and_divide_its_dimensions(rules, axes):
    import fiddle as fdl

    from experiments.mixtral import mixtral_8x7b, mixtral_tiny

    for experiment in (mixtral_tiny, mixtral_8x7b):
        with torch.device("meta"):
            model = fdl.build(experiment().model)()
        assert check_rules(model, rules, axes) == []
    assert FAMILY.sharding_rules == {"fsdp": MIXTRAL_FSDP, "ep": MIXTRAL_EP}
    if rules is MIXTRAL_EP:
        assert rules.activation_spec_for("model.layers.3.block_sparse_moe.dispatch") == (
            ("data", "fsdp"),
            "expert",
            None,
            None,
        )


def test_router_stays_float32_under_mixed_precision():
    dev = torch_xla.device()
    block = _block(1.25, experts=8).to(dev)
    x = torch.randn(2, 16, 16).to(dev)
    with torch.autocast("xla", dtype=torch.bfloat16):
        logits = block.gate(x)
        y = block.experts(block.dispatch(x, route(logits, TOP_K, 5)[0]))
        out, (assigned, probs, _) = block(x)
    assert logits.dtype == probs.dtype == assigned.dtype == torch.float32
    assert y.dtype == torch.bfloat16  # the expert matmuls are autocast
    assert out.dtype == torch.float32  # the residual stream keeps its dtype
    out.float().square().mean().backward()
    torch_xla.sync()
    assert all(p.grad.dtype == torch.float32 for p in block.parameters())
    assert torch.isfinite(block.gate.weight.grad.cpu()).all()
