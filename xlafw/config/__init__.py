"""Config system: resolve, override, validate, plan, record. Never imports torch_xla."""

from xlafw.config.errors import ConfigError
from xlafw.config.loading import build_config, load_config_file
from xlafw.config.overrides import apply_override
from xlafw.config.provenance import config_hash, write_run_files
from xlafw.config.validation import validate

__all__ = [
    "ConfigError",
    "apply_override",
    "build_config",
    "config_hash",
    "load_config_file",
    "validate",
    "write_run_files",
]
