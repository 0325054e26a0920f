"""Where metrics records go: ``metrics.jsonl`` (local or in a bucket) and wandb.

A sink is a callable taking a record (``StepMetrics`` or ``EvalMetrics``), with
``flush`` (make every record so far durable; the trainer calls it after each
checkpoint) and ``close``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
import uuid

from xlafw import storage
from xlafw.metrics.records import EvalMetrics, StepMetrics

log = logging.getLogger(__name__)


class JsonlSink:
    """Writes one JSON object per logged step to ``metrics.jsonl``, local or in a bucket.

    A file already there (an earlier run of the same run directory) is kept and
    continued, so a resumed run's records follow the interrupted run's.

    - Local: each record is appended and flushed, so a reader tailing the file
      sees every step as it is logged.
    - Object store (``gs://...``): an object cannot be appended to, only
      replaced whole. Records go to a local staging file (seeded with the
      object's current contents) and the object is rewritten from it at most
      every ``upload_every_s`` seconds and at ``close``. Rewriting on every
      record would upload the whole file per step, which grows quadratically
      over a run; with a period the upload rate stays at most (file size /
      period), and the staging file keeps host memory flat. A crash loses at
      most the last period's records; those of steps after the last
      checkpoint are logged again when the run resumes.

    Args:
      path: the JSONL file, a local path or an fsspec URL.
      upload_every_s: on an object store, the shortest time between uploads.
    """

    def __init__(self, path: str, upload_every_s: float = 30.0):
        self.path = storage.path(path)
        self.remote = storage.is_remote(path)
        self.upload_every_s = upload_every_s
        if self.remote:
            self.file = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the sink
            if self.path.exists():
                with self.path.open("rb") as earlier:
                    shutil.copyfileobj(earlier, self.file)
            self._uploaded_at = time.monotonic()
            self._pending = False
        else:
            self.file = open(path, "ab")  # noqa: SIM115 - a sink lives as long as the loop

    def __call__(self, metrics: StepMetrics | EvalMetrics) -> None:
        """Writes the record as one line; a model's metrics are the nested object ``"model"``."""
        self.file.write((json.dumps(dataclasses.asdict(metrics)) + "\n").encode())
        self.file.flush()
        if self.remote:
            self._pending = True
            if time.monotonic() - self._uploaded_at >= self.upload_every_s:
                try:
                    self.upload()
                except Exception as e:  # a metrics upload must not end a training run
                    self._uploaded_at = time.monotonic()  # retried a period later
                    log.warning("could not upload %s (retried later): %s", self.path, e)

    def upload(self) -> None:
        """Replaces the object with every record so far (object store only)."""
        self.file.seek(0)
        with storage.open_atomic(self.path) as out:
            shutil.copyfileobj(self.file, out)
        self.file.seek(0, os.SEEK_END)
        self._uploaded_at = time.monotonic()
        self._pending = False

    def flush(self) -> None:
        """Makes every record so far durable (the trainer calls it after each checkpoint)."""
        if self.remote and self._pending:
            self.upload()

    def close(self) -> None:
        """Uploads what is not uploaded yet (object store) and closes the file."""
        if self.file.closed:
            return
        if self.remote and self._pending:
            self.upload()
        self.file.close()


class WandbSink:
    """Logs to Weights & Biases; a resumed run continues the same wandb run.

    Args:
      mode: ``offline`` or ``online``.
      project: the wandb project.
      name: the run name (the experiment's).
      run_dir: wandb files go to ``<run_dir>/wandb`` (``./wandb`` when
        ``run_dir`` is in a bucket); the run id is kept in
        ``<run_dir>/wandb_id.txt`` so a restart resumes it.
      config: the flattened config, logged as the run's config.
    """

    def __init__(self, mode: str, project: str, name: str, run_dir: str, config: dict):
        import wandb

        id_file = storage.path(run_dir) / "wandb_id.txt"
        if id_file.exists():
            run_id = id_file.read_text().strip()
        else:
            run_id = uuid.uuid4().hex[:12]
            storage.write_text(id_file, run_id)
        self.run = wandb.init(
            project=project,
            name=name,
            id=run_id,
            resume="allow",
            mode=mode,
            # wandb writes local files only: for a run directory in a bucket
            # they go to its default, ./wandb in the working directory.
            dir=None if storage.is_remote(run_dir) else run_dir,
            config=config,
        )

    def __call__(self, metrics: StepMetrics | EvalMetrics) -> None:
        self.run.log(wandb_values(metrics), step=metrics.step)

    def flush(self) -> None:
        """Nothing to do: wandb syncs in its own process."""

    def close(self) -> None:
        self.run.finish()


def wandb_values(metrics: StepMetrics | EvalMetrics) -> dict[str, float]:
    """A record as wandb's flat keys: ``train/loss``, ``eval/eval_loss``, ``model/aux_loss``.

    The record's fields go under its ``wandb_prefix``; a model's metrics under
    ``model/`` (a panel section of their own). None values are left out.
    """
    record = dataclasses.asdict(metrics)
    model = record.pop("model", {})
    values = {f"{metrics.wandb_prefix}/{k}": v for k, v in record.items() if v is not None}
    values.update({f"model/{k}": v for k, v in model.items()})
    return values


def make_sinks(
    settings, run_dir: str, experiment_name: str, flat_config: dict, primary: bool
) -> list:
    """The metrics file, plus wandb when configured (on the primary process only).

    With ``run_dir`` in a bucket, only the primary process writes the metrics
    file (an object has one writer).

    Args:
      settings: the experiment's ``MetricsSettings``.
      run_dir: where ``metrics.jsonl`` and wandb's files go.
      experiment_name: names the wandb run.
      flat_config: the flattened config, logged as wandb's run config.
      primary: whether this is process 0.
    """
    sinks: list = []
    # Every process logs the same global values. Local run directories are per
    # host, so each keeps its file; an object has one writer, process 0.
    if primary or not storage.is_remote(run_dir):
        sinks.append(JsonlSink(os.path.join(run_dir, "metrics.jsonl")))
    if settings.wandb != "disabled" and primary:
        config = {k: str(v) for k, v in flat_config.items()}
        sinks.append(
            WandbSink(settings.wandb, settings.wandb_project, experiment_name, run_dir, config)
        )
    return sinks
