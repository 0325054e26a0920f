"""Experiment resolution, typed overrides and validation: the CLI's config path."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import fiddle as fdl
import pytest
from conftest import ROOT

from xlafw.config import (
    ConfigError,
    build_config,
    config_hash,
    load_config_file,
    registry,
    validate,
)
from xlafw.config.sweep import grid, parse_sweep, split_values
from xlafw.experiment import Experiment


def test_bare_and_package_qualified_names_resolve_to_the_same_experiment():
    assert build_config("llama_tiny") == build_config("experiments.llama_tiny")


def test_experiment_name_is_the_function_name():
    assert build_config("llama_tiny_smoke").name == "llama_tiny_smoke"


def test_the_library_imports_the_experiments_package_only_to_resolve_a_name():
    script = textwrap.dedent(
        """
        import sys
        from xlafw.config import build_config
        import xlafw.checkpoint.manager, xlafw.diff
        assert "experiments" not in sys.modules, "imported with the library"
        build_config("llama_tiny")
        assert "experiments" in sys.modules
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


STAND_IN_EXPERIMENTS = '''
import fiddle as fdl


def tiny():
    """A stand-in experiment."""
    return fdl.Config(dict, size=1)


EXPERIMENTS = (tiny,)
FIDDLERS = ()
'''


def test_experiments_resolve_in_the_package_the_program_names(tmp_path, monkeypatch):
    (tmp_path / "my_experiments").mkdir()
    (tmp_path / "my_experiments" / "__init__.py").write_text(STAND_IN_EXPERIMENTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "PACKAGE", "my_experiments")
    assert build_config("my_experiments.tiny").size == 1
    assert ("experiment", "tiny", "A stand-in experiment.") in registry.describe_all()
    with pytest.raises(ConfigError, match=r"no experiment named 'llama_tiny' in my_experiments/"):
        build_config("llama_tiny")
    monkeypatch.setattr(registry, "PACKAGE", "no_such_experiments")
    with pytest.raises(ConfigError, match="no package 'no_such_experiments' to find experiments"):
        build_config("tiny")


def test_inherited_experiment_changes_only_what_it_sets():
    base, child = build_config("llama_tiny"), build_config("llama_tiny_smoke")
    assert child.model.config.hidden_size == 64
    assert child.model.config.vocab_size == base.model.config.vocab_size
    assert child.optimizer.lr == base.optimizer.lr


def test_sets_are_parsed_by_the_field_annotation():
    cfg = build_config(
        "llama_tiny",
        sets=[
            "trainer.max_steps=30",
            "optimizer.lr=1e-3",
            "trainer.param_dtype=bfloat16",  # str-like Literal: no quoting needed
            "trainer.run_dir=/tmp/some run",  # plain str: no quoting needed
            "trainer.max_grad_norm=None",
            "optimizer.betas=(0.9,0.99)",
        ],
    )
    assert cfg.trainer.max_steps == 30 and isinstance(cfg.trainer.max_steps, int)
    assert cfg.optimizer.lr == 1e-3
    assert cfg.trainer.param_dtype == "bfloat16"
    assert cfg.trainer.run_dir == "/tmp/some run"
    assert cfg.trainer.max_grad_norm is None
    assert cfg.optimizer.betas == (0.9, 0.99)


def test_fiddler_applies_before_sets():
    cfg = build_config("llama_tiny", fiddlers=["quick"], sets=["trainer.max_steps=7"])
    assert cfg.trainer.log_every == 1 and cfg.trainer.max_steps == 7


@pytest.mark.parametrize(
    "override, expected",
    [
        ("trainer.max_stepz=3", "did you mean trainer.max_steps"),
        ("model.config.hiden_size=3", "did you mean model.config.hidden_size"),
        ("mesh.ici.fsdp='8'", "expected int"),
        ("trainer.param_dtype=float16", "'float32', 'bfloat16'"),
        ("mesh.ici=3", "sub-config"),
        ("optimizer.lr=fast", "expected float"),
    ],
)
def test_bad_override_names_path_and_fix(override, expected):
    with pytest.raises(ConfigError) as err:
        build_config("llama_tiny", sets=[override])
    assert override.split("=")[0] in str(err.value)
    assert expected.lower() in str(err.value).lower()


def test_every_bad_override_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        build_config("llama_tiny", sets=["trainer.max_stepz=3", "optimizer.lr=fast"])
    assert len(err.value.problems) == 2


def test_unknown_experiment_and_fiddler_get_suggestions():
    with pytest.raises(ConfigError, match="Did you mean llama_tiny"):
        build_config("llama_tiy")
    with pytest.raises(ConfigError, match="Did you mean quick"):
        build_config("llama_tiny", fiddlers=["quik"])


def test_validation_reports_every_problem_at_once():
    cfg = build_config(
        "llama_tiny",
        sets=["model.config.num_key_value_heads=3", "data.seq_len=4096", "mesh.ici.tensor=3"],
    )
    with pytest.raises(ConfigError) as err:
        validate(cfg, num_devices=8)
    text = str(err.value)
    assert "num_key_value_heads=3" in text
    assert "max_position_embeddings" in text
    assert "does not divide 8 devices" in text


def test_global_batch_must_divide_over_data_parallel_axes():
    cfg = build_config("llama_tiny", sets=["data.global_batch_size=6"])
    with pytest.raises(ConfigError, match="data x fsdp x expert = 8"):
        validate(cfg, num_devices=8)


def test_every_shipped_experiment_builds_into_an_experiment():
    import experiments

    for fn in experiments.EXPERIMENTS:
        cfg = build_config(fn.__name__)
        assert isinstance(fdl.build(cfg), Experiment), fn.__name__


def test_cli_fdl_set_and_fdl_dot_spelling_are_equivalent(xlafw_cli):
    a = xlafw_cli(
        "--fdl_config=experiments.llama_tiny", "--fdl_set=trainer.max_steps=30", "--print_config"
    )
    b = xlafw_cli("--fdl_config=llama_tiny", "--fdl.trainer.max_steps=30", "--print_config")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert "trainer.max_steps: int = 30" in a.stdout
    assert a.stdout == b.stdout


def test_cli_user_error_exits_2_fast_without_starting_xla(xlafw_cli):
    start = time.monotonic()
    proc = xlafw_cli("--fdl_config=llama_tiny", "--fdl.trainer.max_stepz=3")
    elapsed = time.monotonic() - start
    assert proc.returncode == 2
    assert "did you mean trainer.max_steps" in proc.stderr.lower()
    assert "Traceback" not in proc.stderr
    assert "XLA runtime" not in proc.stdout + proc.stderr
    assert elapsed < 15  # generous: CI shares 2 cores; typically ~3 s


def test_sweep_values_split_at_top_level_commas_only():
    assert split_values("[1e-4, 3e-4]") == ["1e-4", "3e-4"]
    assert split_values("[(0.9,0.95),(0.9,0.99)]") == ["(0.9,0.95)", "(0.9,0.99)"]
    assert split_values("['a,b',c]") == ["'a,b'", "c"]


def test_sweep_grid_is_the_cartesian_product_in_flag_order():
    assert grid(["optimizer.lr=[1e-4,3e-4]", "data.seq_len=[64,128]"]) == [
        ("optimizer.lr=1e-4", "data.seq_len=64"),
        ("optimizer.lr=1e-4", "data.seq_len=128"),
        ("optimizer.lr=3e-4", "data.seq_len=64"),
        ("optimizer.lr=3e-4", "data.seq_len=128"),
    ]


def test_sweep_without_a_list_names_the_expected_form():
    with pytest.raises(ConfigError, match=r"--sweep=optimizer\.lr=\[1e-4,3e-4\]"):
        parse_sweep("optimizer.lr=1e-4")


def test_cli_sweep_writes_one_reloadable_hashed_config_per_trial(tmp_path, xlafw_cli):
    sweep_dir = tmp_path / "sweep"
    proc = xlafw_cli(
        "--fdl_config=llama_tiny_smoke",
        "--sweep=optimizer.lr=[1e-4,3e-4]",
        "--sweep=trainer.param_dtype=[float32,bfloat16]",
        f"--sweep_dir={sweep_dir}",
    )
    assert proc.returncode == 0, proc.stderr
    index = json.loads((sweep_dir / "sweep.json").read_text())
    assert [t["name"] for t in index["trials"]] == [f"trial_00{i}" for i in range(4)]
    last = index["trials"][3]
    assert last["overrides"] == ["optimizer.lr=3e-4", "trainer.param_dtype=bfloat16"]
    assert f"python -m xlafw.main --fdl_config_file={last['config_file']}" in proc.stdout
    cfg = load_config_file(last["config_file"])
    assert config_hash(cfg) == last["config_hash"]
    assert cfg.optimizer.lr == 3e-4 and cfg.trainer.param_dtype == "bfloat16"
    assert cfg.trainer.run_dir == str(sweep_dir / "trial_003")  # trials never share a run dir


def test_cli_sweep_reports_every_bad_trial_and_writes_nothing(tmp_path, xlafw_cli):
    proc = xlafw_cli(
        "--fdl_config=llama_tiny",
        "--sweep=optimizer.lr=[fast,1e-3,slow]",
        f"--sweep_dir={tmp_path / 'sweep'}",
    )
    assert proc.returncode == 2
    assert "trial_000 (optimizer.lr=fast)" in proc.stderr
    assert "trial_002 (optimizer.lr=slow)" in proc.stderr
    assert not (tmp_path / "sweep").exists()


def test_tokenizer_larger_than_the_model_vocabulary_is_refused():
    cfg = build_config("llama_tiny", sets=["model.config.vocab_size=1000"])
    with pytest.raises(ConfigError, match=r"produces 32000 ids but model\.config\.vocab_size=1000"):
        validate(cfg)


def test_missing_tokenizer_file_names_the_path():
    cfg = build_config("llama_tiny", sets=["data.tokenizer.model_file=/nowhere/tok.model"])
    with pytest.raises(ConfigError, match=r"/nowhere/tok\.model: no such file"):
        validate(cfg)
