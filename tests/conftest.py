"""Test set-up: the real XLA CPU backend, offline hubs, repository on sys.path.

The environment is fixed before anything imports torch_xla. Tests that need a
different runtime (SPMD on 8 virtual devices) run it in a subprocess through
``run_xlafw``, because torch_xla's runtime is fixed once a process starts it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PJRT_DEVICE", "CPU")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# llama_tiny shrunk to seconds per run: the command-line overrides tests share.
SMALL_MODEL = (
    "--fdl.model.config.hidden_size=64",
    "--fdl.model.config.intermediate_size=172",
    "--fdl.model.config.num_hidden_layers=2",
    "--fdl.model.config.num_attention_heads=4",
    "--fdl.model.config.num_key_value_heads=2",
)


def run_xlafw(*args: str, env: dict[str, str] | None = None, timeout: float = 600):
    """Runs ``python -m xlafw.main ARGS`` from the repository root; returns the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "xlafw.main", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def xlafw_cli():
    return run_xlafw


# A real GCS server on loopback (tests/gcs_server.py). gcsfs and fsspec read these two
# when imported, so they are set before any test module imports them.
from gcs_server import IMPORT_TIME_ENV, GcsServer, running_gcs_server  # noqa: E402

for _name, _value in IMPORT_TIME_ENV.items():
    os.environ.setdefault(_name, _value)


@pytest.fixture(scope="session")
def gcs_server():
    """fake-gcs-server on 127.0.0.1 for the session: a ``GcsServer`` (``.root``, ``.env``).

    ``gs://`` paths in the test process reach it; pass ``gcs_server.env`` to a
    subprocess (``run_xlafw(..., env=gcs_server.env)``).
    """
    with running_gcs_server() as server:
        yield server


@pytest.fixture
def gcs_bucket(gcs_server: GcsServer) -> str:
    """A fresh, empty bucket on the session's server, as ``gs://NAME``."""
    return gcs_server.new_bucket()
