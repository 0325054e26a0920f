"""RematPolicy: checkpointing, scan and scan + remat give the plain run's loss and gradients.

Each runtime set-up runs in its own process (1 device; 8 virtual devices with
SPMD, mesh fsdp=4 x tensor=2 and LLAMA_FSDP_TP). Validation of impossible
combinations runs in-process (it never imports torch_xla).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT

from xlafw.config import build_config
from xlafw.config.errors import ConfigError
from xlafw.config.validation import validate

PROBE = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch, torch_xla
    import torch_xla.runtime as xr
    from xlafw.models.llama import LlamaConfig, LlamaForCausalLM
    from xlafw.parallel import apply as pa
    from xlafw.parallel.remat import RematPolicy
    spmd = sys.argv[1] == "spmd"
    mesh = None
    if spmd:
        import torch_xla.distributed.spmd as xs
        from xlafw.models.llama import LLAMA_FSDP_TP
        xr.use_spmd()
        names = ("data", "fsdp", "tensor", "context", "expert")
        mesh = xs.Mesh(np.arange(8), (1, 4, 2, 1, 1), names)
        xs.set_global_mesh(mesh)
    dev = torch_xla.device()
    POLICIES = {
        "plain": RematPolicy(),
        "checkpoint": RematPolicy(checkpoint_modules=("LlamaDecoderLayer",)),
        "scan": RematPolicy(scan_layers="model.layers"),
        "scan+remat": RematPolicy(
            scan_layers="model.layers", checkpoint_modules=("LlamaDecoderLayer",)
        ),
    }
    ids = torch.randint(0, 1000, (8, 64), generator=torch.Generator().manual_seed(1))
    seg = torch.cat([torch.zeros(8, 40), torch.ones(8, 24)], 1).long()
    pos = torch.cat([torch.arange(40), torch.arange(24)])[None].expand(8, 64).contiguous()
    results = {}
    for name, policy in POLICIES.items():
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=172,
                             num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2)
        model = LlamaForCausalLM(config).to(dev)
        if spmd:
            for n, p in model.named_parameters():
                if spec := LLAMA_FSDP_TP.spec_for(n):
                    xs.mark_sharding(p, mesh, spec)
            for n, m in model.named_modules():
                spec = LLAMA_FSDP_TP.activation_spec_for(n) if n else None
                if spec is not None:
                    m.register_forward_hook(pa._annotate_output(mesh, spec))
        pa.apply_checkpointing(model, policy)
        batch = [t.to(dev) for t in (ids, seg, pos)]
        if spmd:
            for t in batch:
                xs.mark_sharding(t, mesh, (("data", "fsdp"), None))
        out = model(batch[0], labels=batch[0], segment_ids=batch[1], position_ids=batch[2])
        out.loss.backward()
        torch_xla.sync()
        results[name] = (out.loss.item(), {n: p.grad.cpu() for n, p in model.named_parameters()})
    loss0, grads0 = results["plain"]
    report = {
        name: {"loss": abs(loss - loss0),
               "grad": max((g - grads0[n]).abs().max().item() for n, g in grads.items())}
        for name, (loss, grads) in results.items()
    }
    print("REPORT " + json.dumps(report))
    """
)


def _run(script: str, *args: str, devices: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "PJRT_DEVICE": "CPU", "CPU_NUM_DEVICES": str(devices)}
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


@pytest.mark.parametrize(("mode", "devices"), [("single", 1), ("spmd", 8)])
def test_checkpoint_scan_and_scan_remat_match_the_plain_loss_and_gradients(mode, devices):
    proc = _run(PROBE, mode, devices=devices)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("REPORT ")]
    assert lines, proc.stderr[-3000:]
    report = json.loads(lines[0][7:])
    for name, diff in report.items():
        assert diff["loss"] <= 1e-5 and diff["grad"] <= 1e-5, (name, diff)


OFFLOAD_PROBE = textwrap.dedent(
    """
    import torch, torch_xla
    from xlafw.models.llama import LlamaConfig, LlamaForCausalLM
    from xlafw.parallel import apply as pa
    from xlafw.parallel.remat import RematPolicy
    dev = torch_xla.device()
    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)
    model = LlamaForCausalLM(config).to(dev)
    print(pa.apply_checkpointing(model, RematPolicy(
        scan_layers="model.layers", checkpoint_modules=("LlamaDecoderLayer",),
        offload_tensors=("decoder_input",))))
    ids = torch.randint(0, 100, (2, 16)).to(dev)
    model(ids, labels=ids).loss.backward()
    grads = [p.grad for p in model.parameters()]
    # Graph construction only: compiling host placement crashes XLA's CPU backend.
    hlo = torch_xla._XLAC._get_xla_tensors_hlo(grads)
    print("PLACEMENTS", hlo.count("annotate_device_placement"))
    print("HOST", hlo.count("pinned_host"))
    """
)


def test_offloaded_layer_inputs_reach_the_graph_as_host_placement_custom_calls():
    proc = _run(OFFLOAD_PROBE)
    counts = dict(
        line.split(" ") for line in proc.stdout.splitlines() if line[:5] in ("PLACE", "HOST ")
    )
    assert int(counts.get("PLACEMENTS", 0)) >= 2, proc.stderr[-3000:]
    assert int(counts.get("HOST", 0)) >= 1, proc.stdout


def _problems(*sets: str) -> str:
    cfg = build_config("llama_tiny", sets=list(sets))
    with pytest.raises(ConfigError) as e:
        validate(cfg, 1)
    return str(e.value)


def test_offload_is_refused_on_cpu_naming_the_backend_limit():
    msg = _problems(
        "remat.scan_layers=model.layers",
        "remat.checkpoint_modules=('LlamaDecoderLayer',)",
        "remat.offload_tensors=('decoder_input',)",
    )
    assert "host offload needs a TPU; XLA's CPU backend cannot compile" in msg


def test_offload_without_scan_and_checkpoint_is_refused_with_the_reason():
    msg = _problems("remat.offload_tensors=('decoder_input',)")
    assert "needs scan + checkpointing of the scanned layer" in msg


def test_scan_with_checkpointing_of_another_class_is_refused():
    msg = _problems("remat.scan_layers=model.layers", "remat.checkpoint_modules=('LlamaMLP',)")
    assert "only the scanned layer (LlamaDecoderLayer) can be checkpointed" in msg


def test_unknown_scan_path_is_refused_with_a_suggestion():
    msg = _problems("remat.scan_layers=model.layer")
    assert "'model.layer' is not a module path" in msg and "model.layers" in msg


def test_barriers_inside_a_scanned_layer_are_refused():
    msg = _problems(
        "remat.scan_layers=model.layers",
        "remat.optimization_barrier_modules=('LlamaDecoderLayer',)",
    )
    assert "runs inside the scanned" in msg


def test_flash_attention_is_refused_on_cpu():
    msg = _problems("model.config.attention_kernel=FLASH")
    assert "flash_attention needs a TPU: Pallas kernels only run in interpret mode" in msg


PURE_PROBE = textwrap.dedent(
    """
    import torch, torch_xla
    from xlafw.models.llama import LlamaConfig, LlamaForCausalLM
    from xlafw.parallel import apply as pa
    from xlafw.parallel.remat import RematPolicy
    dev = torch_xla.device()
    ids = torch.randint(0, 1000, (4, 32), generator=torch.Generator().manual_seed(1)).to(dev)
    results = {}
    policies = {"plain": RematPolicy(), "pure": RematPolicy(pure_modules=("LlamaMLP",))}
    for name, policy in policies.items():
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=172,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
        model = LlamaForCausalLM(config).to(dev)
        print(name, pa.mark_pure_modules(model, policy))
        out = model(ids, labels=ids)
        out.loss.backward()
        torch_xla.sync()
        results[name] = (out.loss.item(), [p.grad.cpu() for p in model.parameters()])
    (a, ga), (b, gb) = results["plain"], results["pure"]
    print("DLOSS", abs(a - b))
    print("DGRAD", max((x - y).abs().max().item() for x, y in zip(ga, gb)))
    """
)


def test_pure_modules_give_the_plain_run_loss_and_gradients():
    proc = subprocess.run(
        [sys.executable, "-c", PURE_PROBE], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    values = dict(line.split() for line in proc.stdout.splitlines() if line.startswith("D"))
    assert float(values["DLOSS"]) <= 1e-5 and float(values["DGRAD"]) <= 1e-5, proc.stdout
    assert "LlamaMLP" in proc.stdout  # the stage line names the wrapped modules


def test_scan_under_spmd_without_an_activation_rule_for_the_stack_warns():
    import fiddle as fdl

    from xlafw.config import build_config
    from xlafw.parallel.remat import unannotated_scan_carry

    def warning(cfg, spmd=True):
        exp = fdl.build(cfg)
        return unannotated_scan_carry(exp.remat, exp.sharding, spmd)

    cfg = build_config("llama_tiny_spmd", sets=["remat.scan_layers=model.layers"])
    assert warning(cfg) is None  # the stock rules annotate the layers
    cfg.sharding.activations = ()
    assert "no sharding.activations rule matches 'model.layers.*'" in warning(cfg)
    assert "Fix: add ('model.layers.*'" in warning(cfg)
    assert warning(cfg, spmd=False) is None
