"""Provenance: run files, a config hash that survives a reload, and --explain."""

from __future__ import annotations

import json

import pytest

from xlafw.config import ConfigError, build_config, load_config_file
from xlafw.config.explain import explain
from xlafw.config.provenance import config_hash, git_state, write_run_files

ARGV = ["xlafw.main", "--fdl_config=llama_tiny", "--fdl_set=data.seq_len=128"]


def test_run_files_are_written(tmp_path):
    cfg = build_config("llama_tiny", sets=["data.seq_len=128"])
    digest = write_run_files(cfg, str(tmp_path / "run"), ARGV)
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == [
        "argv.txt",
        "config.json",
        "config.txt",
        "config_hash.txt",
        "versions.json",
    ]
    assert (run / "config_hash.txt").read_text().strip() == digest == config_hash(cfg)
    assert (run / "argv.txt").read_text().splitlines() == ARGV
    assert "data.seq_len: int = 128" in (run / "config.txt").read_text()
    versions = json.loads((run / "versions.json").read_text())
    assert versions["torch_xla"] and versions["fiddle"] and versions["python"]
    assert set(versions["git"]) == {"revision", "dirty"}


def test_saved_config_reloads_with_the_identical_hash(tmp_path):
    cfg = build_config("llama_tiny", fiddlers=["quick"], sets=["optimizer.lr=1e-3"])
    digest = write_run_files(cfg, str(tmp_path), ARGV)
    reloaded = build_config(None, config_file=str(tmp_path / "config.json"))
    assert config_hash(reloaded) == digest
    assert reloaded == cfg


def test_hash_is_stable_across_builds_and_changes_with_any_field():
    assert config_hash(build_config("llama_tiny")) == config_hash(build_config("llama_tiny"))
    changed = build_config("llama_tiny", sets=["trainer.seed=43"])
    assert config_hash(changed) != config_hash(build_config("llama_tiny"))


def test_git_state_tolerates_a_directory_without_git(tmp_path):
    assert git_state(tmp_path) == {"revision": None, "dirty": None}


def test_cli_reload_of_a_saved_config_prints_the_same_hash(tmp_path, xlafw_cli):
    cfg = build_config("llama_tiny_smoke", sets=["trainer.max_steps=3"])
    digest = write_run_files(cfg, str(tmp_path), ARGV)
    proc = xlafw_cli(f"--fdl_config_file={tmp_path / 'config.json'}", "--print_config")
    assert proc.returncode == 0, proc.stderr
    assert f"# config_hash: {digest}" in proc.stdout
    assert load_config_file(str(tmp_path / "config.json")) == cfg


def test_explain_lists_every_write_with_file_fiddler_and_flag():
    cfg = build_config("llama_tiny", fiddlers=["quick"], sets=["trainer.max_steps=9"])
    lines = explain(cfg, "trainer.max_steps").splitlines()
    assert lines[0] == "trainer.max_steps = 9 (TrainerSettings.max_steps)"
    assert "experiments/llama.py:" in lines[1] and "in llama_tiny" in lines[1]
    assert "--fiddler=quick at experiments/fiddlers.py:" in lines[2]
    assert lines[3].endswith("command line: --fdl_set=trainer.max_steps=9")


def test_explain_of_an_unwritten_field_names_its_default():
    text = explain(build_config("llama_tiny"), "trainer.seed")
    assert "<unset: default 42>" in text and "never written" in text


def test_explain_of_a_misspelled_field_suggests_the_right_one():
    with pytest.raises(ConfigError, match=r"Did you mean optimizer\.lr"):
        explain(build_config("llama_tiny"), "optimizer.lrr")


def test_cli_explain_names_the_flag_as_typed_in_fdl_dot_spelling(xlafw_cli):
    proc = xlafw_cli("--fdl_config=llama_tiny", "--fdl.optimizer.lr=1e-3", "--explain=optimizer.lr")
    assert proc.returncode == 0, proc.stderr
    assert "command line: --fdl_set=optimizer.lr=1e-3" in proc.stdout
