"""Mesh arithmetic, per-host data shards and sharding-rule checks (no XLA runtime)."""

from __future__ import annotations

from collections import Counter

import fiddle as fdl
import numpy as np
import pytest

from xlafw.arguments import InvalidArgument
from xlafw.config import build_config
from xlafw.config.validation import meta_model
from xlafw.data import SHAKESPEARE_TEXTS, TextFiles
from xlafw.models.llama import LLAMA_FSDP
from xlafw.parallel import AxisSizes, Mesh, MeshError, ShardingRules
from xlafw.parallel.mesh import host_data_shard, hybrid_device_ids
from xlafw.parallel.sharding import abstract_name, check_rules


def test_minus_one_axis_takes_the_remaining_devices():
    sizes = Mesh(ici=AxisSizes(fsdp=-1, tensor=2)).resolve(8)
    assert sizes == {"data": 1, "fsdp": 4, "tensor": 2, "context": 1, "expert": 1}


@pytest.mark.parametrize(
    "mesh, fix",
    [
        (Mesh(ici=AxisSizes(fsdp=3)), "product of the axis sizes 8"),
        (Mesh(ici=AxisSizes(fsdp=-1, tensor=3)), "does not divide 8"),
    ],
)
def test_impossible_mesh_is_rejected_with_a_fix(mesh, fix):
    with pytest.raises(MeshError, match=fix):
        mesh.resolve(8)


@pytest.mark.parametrize(
    "make, field, fix",
    [
        (lambda: Mesh(ici=AxisSizes(fsdp=-1, tensor=-1)), "ici.fsdp", "at most one ICI axis"),
        (lambda: Mesh(dcn=AxisSizes(data=-1)), "dcn.data", "cannot be -1"),
        (lambda: AxisSizes(tensor=0), "tensor", "integer >= 1"),
    ],
)
def test_impossible_axis_sizes_are_refused_when_the_mesh_is_made(make, field, fix):
    with pytest.raises(InvalidArgument, match=fix) as err:
        make()
    assert err.value.field == field


def test_hybrid_mesh_keeps_ici_axes_inside_a_slice():
    # 2 slices of 4 devices, data parallel across slices, FSDP inside.
    ids = hybrid_device_ids(ici=(1, 4, 1, 1, 1), dcn=(2, 1, 1, 1, 1))
    assert ids.shape == (2, 4, 1, 1, 1)
    np.testing.assert_array_equal(ids[:, :, 0, 0, 0], [[0, 1, 2, 3], [4, 5, 6, 7]])
    # FSDP over both: the DCN index is the outer part of the fsdp coordinate.
    ids = hybrid_device_ids(ici=(1, 2, 2, 1, 1), dcn=(1, 2, 1, 1, 1))
    np.testing.assert_array_equal(ids[0, :, :, 0, 0], [[0, 1], [2, 3], [4, 5], [6, 7]])


def _mesh_ids(fsdp, tensor):
    return np.arange(fsdp * tensor).reshape(1, fsdp, tensor, 1, 1)


@pytest.mark.parametrize("hosts", [2, 4])
def test_hosts_on_a_2d_mesh_read_disjoint_splits_that_cover_the_batch(hosts):
    ids = _mesh_ids(fsdp=4, tensor=2)
    splits = [host_data_shard(ids, 8 // hosts, h) for h in range(hosts)]
    assert {world for _, world in splits} == {hosts}
    assert sorted(rank for rank, _ in splits) == list(range(hosts))
    source = TextFiles(paths=(SHAKESPEARE_TEXTS,))
    everything = Counter(source.documents(0, 1))
    per_host = [Counter(source.documents(rank, world)) for rank, world in splits]
    assert sum(per_host, Counter()) == everything


def test_hosts_sharing_batch_shards_read_the_same_split():
    # tensor=4 spans hosts of 2 devices: hosts 0,1 hold fsdp row 0, hosts 2,3 row 1.
    ids = _mesh_ids(fsdp=2, tensor=4)
    assert [host_data_shard(ids, 2, h) for h in range(4)] == [(0, 2), (0, 2), (1, 2), (1, 2)]


def test_layer_indices_are_abstracted_in_names():
    assert (
        abstract_name("model.layers.12.mlp.up_proj.weight") == "model.layers.*.mlp.up_proj.weight"
    )
    assert abstract_name("model.layers.3") == "model.layers.*"


def _experiment_devices(name):
    cfg = build_config(name)
    return cfg, {"llama_tiny": 1, "llama_tiny_smoke": 1, "llama_tiny_spmd": 8}.get(name, 256)


@pytest.mark.parametrize(
    "name",
    [
        "llama_tiny",
        "llama_tiny_smoke",
        "llama_tiny_spmd",
        "llama_8b",
        "llama_8b_fsdp_tp",
        "llama_70b",
        "llama_405b",
    ],
)
def test_shipped_rules_cover_every_parameter_with_no_dead_rule(name):
    cfg, devices = _experiment_devices(name)
    axes = fdl.build(cfg.mesh).resolve(devices)
    model = meta_model(cfg)
    rules = fdl.build(cfg.sharding)
    assert check_rules(model, rules, axes) == []
    assert all(rules.spec_for(n) is not None for n, _ in model.named_parameters())


def test_rule_checks_report_dead_uncovered_indivisible_and_unknown():
    cfg = build_config("llama_tiny_smoke")
    model = meta_model(cfg)
    axes = {"data": 1, "fsdp": 8, "tensor": 1, "context": 1, "expert": 1}
    rules = ShardingRules(
        parameters=(
            ("model.layers.*.mlp.gate_proj.weight", ("fsdp", None)),  # 172 % 8 != 0
            ("model.nothing.weight", (None,)),
        )
    )
    problems = "\n".join(check_rules(model, rules, axes))
    assert "size 172 is split 8 ways" in problems
    assert "('model.nothing.weight') matches no parameter" in problems
    assert "match no rule of sharding.parameters" in problems
    with pytest.raises(InvalidArgument, match=r"parameters\[0\].*names mesh axes \['fsdq'\]"):
        ShardingRules(parameters=(("*", ("fsdq",)),))  # refused when the rules are made


def test_stock_fsdp_rules_shard_the_embedding_rows():
    assert LLAMA_FSDP.spec_for("model.embed_tokens.weight") == ("fsdp", None)
