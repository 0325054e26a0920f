"""Every file xlafw writes, apart from checkpoints, on local disk and in a real GCS bucket.

The bucket is fake-gcs-server on loopback (``gcs_server``/``gcs_bucket`` in
conftest.py, tests/gcs_server.py): real HTTP through gcsfs, nothing mocked.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time

import pytest
import torch
from etils import epath
from fiddle.experimental import serialization

from xlafw import storage
from xlafw.config import build_config, config_hash, write_run_files
from xlafw.config.provenance import package_versions
from xlafw.metrics import JsonlSink, StepMetrics, make_sinks, plot
from xlafw.models import LlamaConfig, LlamaForCausalLM
from xlafw.models.hf_io import HfCheckpointError, load_hf_weights, save_hf_weights

TINY = LlamaConfig(
    vocab_size=256,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)


def _metrics(step: int) -> StepMetrics:
    return StepMetrics(
        step=step,
        loss=10.0 / step,
        grad_norm=1.0,
        update_norm=0.1,
        lr=1e-3,
        tokens_per_s=1000.0 + step,
        tokens_per_s_per_device=1000.0 + step,
        mfu=0.1,
        step_time_s=0.5,
        tokens_seen=256 * step,
        compiles=2,
        timestamp=1.7e9 + step,
    )


def _steps(url: str) -> list[int]:
    return [json.loads(line)["step"] for line in epath.Path(url).read_text().splitlines()]


def _model(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(TINY)


def test_server_starts_in_seconds_and_serves_epath_and_gcsfs(gcs_server, gcs_bucket):
    assert gcs_server.start_s < 5, f"fake-gcs-server took {gcs_server.start_s:.1f} s to start"
    epath.Path(f"{gcs_bucket}/a/b.txt").write_text("hello")
    assert epath.Path(f"{gcs_bucket}/a/b.txt").read_text() == "hello"
    assert gcs_server.filesystem().ls(f"{gcs_bucket}/a") == [f"{gcs_bucket[5:]}/a/b.txt"]
    assert [p.name for p in epath.Path(gcs_bucket).iterdir()] == ["a"]


def test_a_subprocess_started_with_the_server_env_reads_and_writes_the_bucket(
    gcs_server, gcs_bucket
):
    epath.Path(f"{gcs_bucket}/in.txt").write_text("from the test")
    script = (
        "import sys; from etils import epath; b = sys.argv[1]; "
        "epath.Path(b + '/out.txt').write_text(epath.Path(b + '/in.txt').read_text() + '!')"
    )
    env = {k: v for k, v in os.environ.items() if k not in gcs_server.env}
    proc = subprocess.run(
        [sys.executable, "-c", script, gcs_bucket],
        env={**env, **gcs_server.env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert epath.Path(f"{gcs_bucket}/out.txt").read_text() == "from the test!"


def test_run_files_are_written_to_a_bucket_and_reload_with_the_same_hash(gcs_bucket):
    cfg = build_config("llama_tiny_smoke")
    run_dir = f"{gcs_bucket}/runs/a"
    digest = write_run_files(cfg, run_dir, ["xlafw.main", "--fdl_config=llama_tiny_smoke"])
    names = sorted(p.name for p in epath.Path(run_dir).iterdir())
    assert names == ["argv.txt", "config.json", "config.txt", "config_hash.txt", "versions.json"]
    assert epath.Path(f"{run_dir}/config_hash.txt").read_text().strip() == digest
    reloaded = serialization.load_json(epath.Path(f"{run_dir}/config.json").read_text())
    assert config_hash(reloaded) == digest
    versions = json.loads(epath.Path(f"{run_dir}/versions.json").read_text())
    assert versions["torch"] == package_versions()["torch"]


def test_metrics_in_a_bucket_keep_every_record_in_order_over_flushes_and_a_resume(gcs_bucket):
    url = f"{gcs_bucket}/run/metrics.jsonl"
    sink = JsonlSink(url, upload_every_s=0)  # upload at every record
    for step in (1, 2, 3):
        sink(_metrics(step))
        assert _steps(url) == list(range(1, step + 1))
    sink.close()
    resumed = JsonlSink(url, upload_every_s=0)  # a rerun continues the file
    for step in (4, 5):
        resumed(_metrics(step))
    resumed.close()
    assert _steps(url) == [1, 2, 3, 4, 5]


def test_metrics_in_a_bucket_are_uploaded_once_per_period_and_at_close(gcs_bucket):
    url = f"{gcs_bucket}/run/metrics.jsonl"
    sink = JsonlSink(url, upload_every_s=3600)
    for step in range(1, 51):
        sink(_metrics(step))
    assert not epath.Path(url).exists()  # not one upload per step
    sink.close()
    assert _steps(url) == list(range(1, 51))


def test_local_metrics_are_appended_and_readable_after_every_record(tmp_path):
    sink = JsonlSink(str(tmp_path / "metrics.jsonl"))
    for step in (1, 2):
        sink(_metrics(step))
        assert _steps(str(tmp_path / "metrics.jsonl")) == list(range(1, step + 1))
    sink.close()


def test_only_process_0_writes_metrics_to_a_bucket(gcs_bucket):
    settings = build_config("llama_tiny_smoke").metrics
    assert make_sinks(settings, gcs_bucket, "x", {}, primary=False) == []
    (sink,) = make_sinks(settings, gcs_bucket, "x", {}, primary=True)
    sink.close()


def test_plot_reads_metrics_from_a_bucket_and_writes_the_png_there(gcs_bucket):
    sink = JsonlSink(f"{gcs_bucket}/metrics.jsonl")
    for step in range(1, 11):
        sink(_metrics(step))
    sink.close()
    plot(f"{gcs_bucket}/metrics.jsonl", f"{gcs_bucket}/metrics.png")
    png = epath.Path(f"{gcs_bucket}/metrics.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_hf_export_to_a_bucket_writes_shards_in_place_then_config_and_round_trips(
    gcs_server, gcs_bucket, tmp_path
):
    source = _model(seed=0)
    saved = save_hf_weights(source, f"{gcs_bucket}/hf", max_shard_bytes=40_000)
    assert len(saved.files) > 2
    fs = gcs_server.filesystem()
    objects = {p.rsplit("/", 1)[-1]: fs.info(p) for p in fs.ls(f"{gcs_bucket}/hf")}
    assert sorted(objects) == sorted([*saved.files, "model.safetensors.index.json", "config.json"])
    # config.json marks a complete export: no other object is newer.
    generation = {name: int(info["generation"]) for name, info in objects.items()}
    assert generation["config.json"] == max(generation.values())
    fs.get(f"{gcs_bucket}/hf/", str(tmp_path / "hf"), recursive=True)
    target = _model(seed=1)
    load_hf_weights(target, tmp_path / "hf")
    for (name, theirs), ours in zip(
        source.state_dict().items(), target.state_dict().values(), strict=True
    ):
        assert torch.equal(theirs, ours), name


def test_loading_hf_weights_from_a_bucket_says_to_copy_them_to_local_disk(gcs_bucket):
    save_hf_weights(_model(seed=0), f"{gcs_bucket}/hf")
    with pytest.raises(HfCheckpointError, match=r"local directory only.*gcloud storage cp -r"):
        load_hf_weights(_model(seed=1), f"{gcs_bucket}/hf")


def test_hf_export_refuses_a_non_empty_bucket_directory(gcs_bucket):
    storage.write_text(f"{gcs_bucket}/hf/keep.txt", "x")
    with pytest.raises(FileExistsError, match="not empty"):
        save_hf_weights(_model(seed=0), f"{gcs_bucket}/hf")


class _Interrupted(Exception):
    pass


def test_an_exception_while_writing_locally_leaves_the_old_file_and_no_partial(tmp_path):
    target = tmp_path / "run" / "file.bin"
    storage.write_bytes(target, b"old")
    with pytest.raises(_Interrupted), storage.open_atomic(target) as f:
        f.write(b"new, but only half")
        raise _Interrupted
    assert target.read_bytes() == b"old"
    assert os.listdir(target.parent) == ["file.bin"]


def test_an_exception_while_writing_locally_creates_no_file(tmp_path):
    with pytest.raises(_Interrupted), storage.open_atomic(tmp_path / "new.bin") as f:
        f.write(b"half")
        raise _Interrupted
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("size", [1000, 12 * 2**20], ids=["one-request", "resumable-upload"])
def test_an_exception_while_writing_to_a_bucket_publishes_nothing(gcs_bucket, size):
    url = f"{gcs_bucket}/file.bin"
    storage.write_bytes(url, b"old")
    with pytest.raises(_Interrupted), storage.open_atomic(url) as f:
        f.write(b"x" * size)  # past gcsfs' 5 MiB block, the upload has begun
        raise _Interrupted
    # gcsfs closes, so commits, a file object dropped unclosed (in a background thread).
    del f
    gc.collect()
    time.sleep(0.5)
    assert epath.Path(url).read_bytes() == b"old"
