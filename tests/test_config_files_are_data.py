"""Config files and --fiddler name no code outside xlafw, experiments and opted-in packages."""

from __future__ import annotations

import json
import os

from xlafw.exit_codes import ExitCode


def _config_naming(tmp_path, module: str, name: str) -> str:
    """llama_tiny's config.json with its optimizer replaced by ``module.name``."""
    from fiddle.experimental import serialization

    from xlafw.config import build_config

    text = serialization.dump_json(build_config("llama_tiny"))
    adamw = '{"type": "pyref", "module": "xlafw.optim.adamw", "name": "AdamW"}'
    assert adamw in text
    path = tmp_path / "config.json"
    path.write_text(
        text.replace(adamw, json.dumps({"type": "pyref", "module": module, "name": name}))
    )
    return str(path)


def test_a_config_file_naming_os_system_is_refused_before_anything_runs(xlafw_cli, tmp_path):
    path = _config_naming(tmp_path, "os", "system")
    proc = xlafw_cli(f"--fdl_config_file={path}", "--print_config")
    assert proc.returncode == ExitCode.CONFIG_ERROR, proc.stderr
    assert "os.system" in proc.stderr or "'os'" in proc.stderr, proc.stderr
    assert "--allow_package" in proc.stderr and "Traceback" not in proc.stderr


def test_fiddler_outside_the_registry_needs_its_package_opted_in(xlafw_cli, tmp_path):
    proc = xlafw_cli("--fdl_config=llama_tiny", "--fiddler=os.system", "--print_config")
    assert proc.returncode == ExitCode.CONFIG_ERROR, proc.stderr
    assert "--fiddler=os.system" in proc.stderr and "--allow_package=os" in proc.stderr

    package = tmp_path / "mytweaks"
    package.mkdir()
    (package / "__init__.py").write_text("def short(cfg):\n    cfg.trainer.max_steps = 7\n")
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    args = ("--fdl_config=llama_tiny", "--fiddler=mytweaks.short", "--print_config")
    refused = xlafw_cli(*args, env=env)
    assert refused.returncode == ExitCode.CONFIG_ERROR, refused.stderr
    allowed = xlafw_cli(*args, "--allow_package=mytweaks", env=env)
    assert allowed.returncode == ExitCode.OK, allowed.stderr
    assert "trainer.max_steps: int = 7" in allowed.stdout
