"""Run files: what a run directory records, and a config hash that survives a reload."""

from __future__ import annotations

import json

from xlafw.config import build_config, load_config_file
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
