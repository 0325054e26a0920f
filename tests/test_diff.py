"""python -m xlafw.diff: path-level differences of experiments and run directories."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT
from xlafw.config import build_config, write_run_files
from xlafw.config.diff import UNSET, Change, diff_configs
from xlafw.diff import load, main


def test_inherited_experiment_differs_only_where_it_changes_fields():
    changes = {c.path: c for c in diff_configs(load("llama_8b"), load("llama_70b"))}
    assert changes["model.config.hidden_size"] == Change("model.config.hidden_size", 4096, 8192)
    assert changes["model.config.num_hidden_layers"].new == 80
    assert "model.config.vocab_size" not in changes
    assert "optimizer.lr" not in changes


def test_field_set_on_one_side_only_shows_unset():
    changes = diff_configs(load("llama_8b"), load("llama_8b_fsdp_tp"))
    assert str(next(c for c in changes if c.path == "mesh.ici.tensor")) == (
        "mesh.ici.tensor: <unset> -> 4"
    )
    assert all(c.old is UNSET or c.old != c.new for c in changes)


def test_sharding_rules_differ_rule_by_rule():
    changes = {c.path for c in diff_configs(load("llama_8b"), load("llama_8b_fsdp_tp"))}
    assert "sharding.parameters[0]" in changes and "sharding.parameters" not in changes


def test_run_directory_compares_against_an_experiment(tmp_path, capsys):
    cfg = build_config("llama_tiny", sets=["optimizer.lr=1e-3"])
    write_run_files(cfg, str(tmp_path), ["xlafw.main"])
    assert main(["llama_tiny", str(tmp_path)]) == 1
    assert "optimizer.lr: 0.003 -> 0.001" in capsys.readouterr().out
    assert main([str(tmp_path / "config.json"), str(tmp_path)]) == 0


def test_unknown_name_is_a_user_error_with_suggestions(capsys):
    assert main(["llama_8", "llama_8b"]) == 2
    assert "Did you mean llama_8b" in capsys.readouterr().err


def test_cli_runs_as_a_module():
    proc = subprocess.run(
        [sys.executable, "-m", "xlafw.diff", "llama_tiny", "llama_tiny_smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert "model.config.hidden_size: 256 -> 64" in proc.stdout
