"""StepLogger and the sinks on host tensors: the model's own metrics, the log line, the records."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from xlafw.metrics import JsonlSink, StepLogger, StepMetrics, WandbSink, wandb_values


def _logger(sinks) -> StepLogger:
    return StepLogger(
        tokens_per_step=256,
        max_steps=100,
        steps_per_epoch=None,
        num_devices=1,
        flops_per_token=1000,
        peak_flops=1e12,
        sinks=sinks,
        compile_counter=lambda: 2,
    )


def _aux(model: dict[str, torch.Tensor] | None = None) -> dict:
    aux = {
        "grad_norm": torch.tensor(1.5),
        "update_norm": torch.tensor(0.01),
        "lr": torch.tensor(3e-4),
    }
    if model is not None:
        aux["model"] = model
    return aux


MOE = {
    "aux_loss": torch.tensor(1.25),
    "expert_share/0": torch.tensor(0.125),
    "expert_share/1": torch.tensor(0.625),
    "expert_share/2": torch.tensor(0.25),
}


def test_model_metrics_reach_the_record_the_log_line_and_the_jsonl_file(tmp_path, caplog):
    sink = JsonlSink(str(tmp_path / "metrics.jsonl"))
    logger = _logger([sink])
    logger.start(0)
    for loss in (4.0, 2.0):
        logger.record(torch.tensor(loss))
    with caplog.at_level(logging.INFO, logger="xlafw.metrics.logger"):
        logger.on_step(2, _aux(MOE))
    sink.close()

    metrics = logger.history[-1]
    assert metrics.loss == 3.0  # the window's mean
    assert metrics.model == {
        "aux_loss": 1.25,
        "expert_share/0": 0.125,
        "expert_share/1": 0.625,
        "expert_share/2": 0.25,
    }
    assert caplog.messages[-1].endswith(" | aux_loss 1.25 | max expert share 0.625")
    record = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert record["model"] == metrics.model  # nested under "model"
    assert record["loss"] == 3.0 and "aux_loss" not in record


def test_a_model_without_metrics_logs_as_before(tmp_path, caplog):
    sink = JsonlSink(str(tmp_path / "metrics.jsonl"))
    logger = _logger([sink])
    logger.start(0)
    logger.record(torch.tensor(2.0))
    with caplog.at_level(logging.INFO, logger="xlafw.metrics.logger"):
        logger.on_step(1, _aux())
    sink.close()
    assert logger.history[-1].model == {}
    assert caplog.messages[-1].endswith(" min")  # the line ends with the ETA
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["model"] == {}


def test_only_an_aux_loss_shows_no_expert_share():
    metrics = _step_metrics(model={"aux_loss": 0.5, "router_z_loss": 2.0})
    line = metrics.human(max_steps=10)
    assert line.endswith(" | aux_loss 0.5")
    assert "router_z_loss" not in line  # other model metrics go to the sinks only


def test_a_model_metric_with_more_than_one_value_is_refused_by_name():
    logger = _logger([])
    logger.start(0)
    logger.record(torch.tensor(2.0))
    with pytest.raises(ValueError, match=r"'expert_share' with shape \(4,\).*expert_share/0"):
        logger.on_step(1, _aux({"expert_share": torch.full((4,), 0.25)}))


def test_wandb_keys_put_model_metrics_in_a_section_of_their_own(tmp_path):
    metrics = _step_metrics(model={"aux_loss": 1.25, "expert_share/1": 0.625})
    values = wandb_values(metrics)
    assert values["train/loss"] == metrics.loss
    assert values["model/aux_loss"] == 1.25 and values["model/expert_share/1"] == 0.625
    assert "train/epoch" not in values and "train/model" not in values

    sink = WandbSink("offline", "xlafw-test", "metrics", str(tmp_path), config={})
    sink(metrics)
    sink.close()
    (history,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    assert b"model/expert_share/1" in history.read_bytes()


def _step_metrics(model: dict[str, float]) -> StepMetrics:
    return StepMetrics(
        step=3,
        loss=2.5,
        grad_norm=1.0,
        update_norm=0.1,
        lr=1e-3,
        tokens_per_s=1000.0,
        tokens_per_s_per_device=1000.0,
        mfu=0.1,
        step_time_s=0.5,
        tokens_seen=768,
        compiles=2,
        timestamp=1.7e9,
        model=model,
    )
