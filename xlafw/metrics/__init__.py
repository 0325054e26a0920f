"""Step metrics: read on the host in step closures, written to sinks.

The trainer hands device tensors to ``StepLogger`` through
``xm.add_step_closure``; values are read there, after the step's graph ran, so
logging never adds a graph or a recompilation. Throughput is measured between
consecutive logged steps (wall clock), which on an asynchronous device is the
rate the device completes steps. MFU = achieved model FLOP/s over the peak of
all devices; model FLOPs per token come from the config (MaxText's formula,
``xlafw.config.plan.flops_per_token``).

Modules: ``records`` (``StepMetrics``, ``EvalMetrics``), ``logger``
(``StepLogger``), ``sinks`` (``metrics.jsonl``, wandb), ``peak`` (the peak
FLOP/s for MFU, measured on a CPU host) and ``plotting`` (``metrics.png``).
"""

from xlafw.metrics.logger import StepLogger
from xlafw.metrics.peak import best_cpu_matmul_flops, measured_cpu_matmul_flops, peak_flops
from xlafw.metrics.plotting import plot
from xlafw.metrics.records import EvalMetrics, StepMetrics
from xlafw.metrics.sinks import JsonlSink, WandbSink, make_sinks, wandb_values

__all__ = [
    "EvalMetrics",
    "JsonlSink",
    "StepLogger",
    "StepMetrics",
    "WandbSink",
    "best_cpu_matmul_flops",
    "make_sinks",
    "measured_cpu_matmul_flops",
    "peak_flops",
    "plot",
    "wandb_values",
]
