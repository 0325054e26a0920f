"""--dry_run figures, TPU targets and the memory check (no XLA runtime anywhere)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from xlafw.config import ConfigError, build_config, validate
from xlafw.config.hardware import Devices, GiB, resolve_devices, tpu_target
from xlafw.config.plan import format_plan, make_plan, meta_model
from xlafw.models.mixtral import MoeKernel

EXPECTED_PARAMETERS = {
    "llama_8b": 8_030_261_248,
    "llama_70b": 70_553_706_496,
    "llama_405b": 405_853_388_800,
}


@pytest.mark.parametrize("name, count", EXPECTED_PARAMETERS.items())
def test_plan_counts_llama_3_1_parameters_exactly(name, count):
    plan = make_plan(build_config(name), tpu_target("v5p-1024"))
    assert plan.num_parameters == count
    assert sum(plan.parameter_groups.values()) == count


def test_slice_names_count_chips_by_generation():
    assert tpu_target("v5p-256").count == 128  # v5p counts TensorCores, two per chip
    assert tpu_target("v4-8").count == 4
    assert tpu_target("v5litepod-16").count == 16  # v5e and v6e count chips
    assert tpu_target("v6e-256").count == 256
    assert tpu_target("v5p-8").memory_bytes == 95 * GiB
    assert tpu_target("v6e-8").peak_flops == 918e12


@pytest.mark.parametrize(
    "name, expected",
    [("v5x-256", "Did you mean v5p or v5e"), ("v5p-3", "multiple of 2"), ("tpu", "v5p-256")],
)
def test_bad_target_names_the_fix(name, expected):
    with pytest.raises(ConfigError, match=expected):
        tpu_target(name)


def test_target_and_contradicting_device_count_are_refused():
    with pytest.raises(ConfigError, match="128 chips"):
        resolve_devices(num_devices=64, target="v5p-256")


def test_fsdp_divides_parameters_gradients_and_adam_state_over_all_chips():
    plan = make_plan(build_config("llama_8b"), tpu_target("v5p-256"))
    # float32 master weights, every weight split 128 ways on fsdp (all dimensions divide).
    assert plan.memory.parameters == 8_030_261_248 * 4 // 128
    assert plan.memory.gradients == plan.memory.parameters
    assert plan.memory.optimizer_state == 2 * plan.memory.parameters


def test_mixed_precision_keeps_fp32_state_and_bf16_activations():
    mixed = make_plan(build_config("llama_8b"), tpu_target("v5p-256"))
    pure = make_plan(
        build_config(
            "llama_8b", sets=["trainer.param_dtype=bfloat16", "trainer.compute_dtype=None"]
        ),
        tpu_target("v5p-256"),
    )
    assert mixed.memory.parameters == 2 * pure.memory.parameters
    assert mixed.memory.optimizer_state == 2 * pure.memory.optimizer_state
    # The residual stream stays float32 under autocast; the matmul outputs are bf16.
    assert pure.memory.activations < mixed.memory.activations < 2 * pure.memory.activations
    assert "mixed precision" in mixed.dtype and pure.dtype == "bfloat16"


def test_gradient_accumulation_plans_the_activations_of_one_micro_batch():
    whole = make_plan(build_config("llama_8b"), tpu_target("v5p-256"))
    micro = make_plan(
        build_config("llama_8b", sets=["trainer.grad_accum_steps=2"]), tpu_target("v5p-256")
    )
    assert micro.memory.activations == whole.memory.activations // 2
    assert micro.memory.parameters == whole.memory.parameters


def test_remat_keeps_fewer_activations_than_no_remat():
    remat = make_plan(build_config("llama_8b"), tpu_target("v5p-256"))
    plain = make_plan(
        build_config("llama_8b", sets=["remat.checkpoint_modules=()"]), tpu_target("v5p-256")
    )
    assert remat.remat_layers and not plain.remat_layers
    assert remat.memory.activations < plain.memory.activations / 10


def test_flops_per_token_is_six_matmul_parameters_plus_attention():
    cfg = build_config("llama_8b")
    plan = make_plan(cfg, tpu_target("v5p-256"))
    embedding = 128_256 * 4096
    norms = (2 * 32 + 1) * 4096
    matmul = 8_030_261_248 - embedding - norms
    assert plan.flops_per_token == 6 * matmul + 12 * 32 * 8192 * 4096
    assert plan.flops_per_step == plan.flops_per_token * 256 * 8192


def test_sharding_table_collapses_identical_layers():
    cfg = build_config("llama_8b_fsdp_tp")
    plan = make_plan(cfg, tpu_target("v5p-256"), model=meta_model(cfg))
    rows = {row.name: row for row in plan.sharding}
    assert len(rows) == 12
    q = rows["model.layers.*.self_attn.q_proj.weight"]
    assert q.copies == 32 and q.spec == ("tensor", "fsdp")
    assert q.global_shape == (4096, 4096) and q.local_shape == (1024, 128)


def test_llama_8b_does_not_fit_this_machine_and_says_what_to_do():
    with pytest.raises(ConfigError) as err:
        validate(build_config("llama_8b"))
    text = str(err.value)
    assert "memory: the estimate is" in text and "--dry_run" in text and "llama_tiny" in text


def test_llama_8b_fits_a_v5p_256_slice():
    validate(build_config("llama_8b"), target="v5p-256")


def test_host_initialization_that_cannot_fit_host_memory_is_refused():
    # 405B parameters in bfloat16: 756 GiB, more than any host has.
    cfg = build_config("llama_405b", sets=["trainer.init_on=host"])
    with pytest.raises(ConfigError) as err:
        validate(cfg, target="v5p-1024")
    assert "trainer.init_on=host: initializing the model on the host needs 1.5 TiB" in str(
        err.value
    )
    validate(build_config("llama_8b"), target="v5p-256")  # auto: on the devices
    validate(build_config("llama_tiny", sets=["trainer.init_on=host"]))


@pytest.mark.parametrize(
    "name, num_devices", [("llama_tiny", 1), ("llama_tiny_smoke", 1), ("llama_tiny_spmd", 8)]
)
def test_cpu_experiments_pass_validation_with_the_memory_check(name, num_devices):
    validate(build_config(name), num_devices=num_devices)


def _run_main_without_torch_xla(*args: str) -> subprocess.CompletedProcess:
    """Runs xlafw.main in a fresh interpreter and fails if torch_xla got imported."""
    script = (
        "import runpy, sys\n"
        f"sys.argv = ['xlafw.main', *{list(args)!r}]\n"
        "try:\n"
        "    runpy.run_module('xlafw.main', run_name='__main__')\n"
        "finally:\n"
        "    assert 'torch_xla' not in sys.modules, 'torch_xla was imported'\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_dry_run_cli_prints_the_plan_fast_without_torch_xla():
    start = time.monotonic()
    proc = _run_main_without_torch_xla("--fdl_config=experiments.llama_8b", "--dry_run")
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - start < 20  # typically ~4 s on 2 shared cores
    assert "8,030,261,248" in proc.stdout
    for section in ("memory per device", "FLOPs per step", "model.layers.*.mlp.up_proj.weight x32"):
        assert section in proc.stdout
    assert "torch_xla was imported" not in proc.stderr


def test_dry_run_of_a_mesh_larger_than_this_machine_plans_for_the_fewest_devices():
    proc = _run_main_without_torch_xla("--fdl_config=llama_405b", "--dry_run")
    assert proc.returncode == 0, proc.stderr
    assert "405,853,388,800" in proc.stdout and "the fewest this mesh takes" in proc.stdout


def test_cli_refuses_llama_8b_on_this_machine_before_xla(xlafw_cli):
    start = time.monotonic()
    proc = xlafw_cli("--fdl_config=experiments.llama_8b")
    assert proc.returncode == 2
    assert time.monotonic() - start < 20
    assert "--dry_run" in proc.stderr and "llama_tiny" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_mixtral_gather_dispatch_on_a_batch_parallel_mesh_is_advised_against():
    cfg = build_config("mixtral_8x7b")  # einsum dispatch: partitioned over the batch
    assert make_plan(cfg, tpu_target("v5p-256")).advice == ()
    cfg.model.config.moe_kernel = MoeKernel.GATHER
    plan = make_plan(cfg, tpu_target("v5p-256"))
    (advice,) = plan.advice
    assert "moe_kernel=gather on a mesh with 128 batch-parallel ways" in advice
    assert "--fdl_set=model.config.moe_kernel=einsum" in advice
    assert advice in format_plan(plan)
    # A pod host validates before its runtime knows the device count: the stand-in mesh
    # it plans for is not the real one, so no advice (the trainer gives it at stage 8).
    unknown = validate(cfg, purpose="plan", devices=Devices("a pod", count=None))
    assert unknown.advice == ()
    one_device = build_config("mixtral_tiny")  # gather, the faster path on one device
    assert make_plan(one_device, resolve_devices(num_devices=1)).advice == ()
