"""Checks on the JobSet manifest xpk wrote, before the launcher reports or submits it.

The kubernetes Python client has no JobSet model, so the JobSet's own fields
(kind, replicated jobs, failure policy) are read from the YAML. Each replicated
job's template is deserialized by the client as a ``V1JobTemplateSpec``, which
refuses a malformed one (a container without a name, a count that is not an
integer), and the job and pod fields are read from that typed object.

Restarts, as JobSet and Job define them: a pod that exits with a code the pod
failure policy's ``FailJob`` rule matches fails its Job with reason
``PodFailurePolicy``, and the JobSet's ``FailJobSet`` rule for that reason ends
the run. Any other failure fails the Job with ``BackoffLimitExceeded``
(``backoffLimit: 0``) and the JobSet restarts every job, up to ``maxRestarts``
times. So a code restarts the run exactly when the ``FailJob`` rule does not
match it (``exit_codes.py`` has the table).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import yaml

from xlafw.exit_codes import ExitCode
from xlafw.launch.slices import SliceType
from xlafw.launch.xpk import CONTAINER

TPU_RESOURCE = "google.com/tpu"
ACCELERATOR_LABEL = "cloud.google.com/gke-tpu-accelerator"
TOPOLOGY_LABEL = "cloud.google.com/gke-tpu-topology"


class ManifestError(RuntimeError):
    """The manifest is not the JobSet the launch asked for; the message lists why."""


@dataclasses.dataclass(frozen=True)
class Expected:
    """What the manifest must say.

    Attributes:
      workload: the JobSet's name.
      slice_type: each slice's TPU type.
      num_slices: how many slices.
      command: the command each pod must run.
      env: variables the container must have, with these values.
      max_restarts: the JobSet's ``failurePolicy.maxRestarts``.
    """

    workload: str
    slice_type: SliceType
    num_slices: int
    command: str
    env: Mapping[str, str]
    max_restarts: int


def _quantities_as_strings(template: dict[str, Any]) -> dict[str, Any]:
    """A copy whose resource quantities are strings, as the API server reads them.

    Kubernetes accepts ``google.com/tpu: 4`` (a Quantity may be a number); the
    Python client's model takes only the string form.
    """
    template = json.loads(json.dumps(template))
    pod = template.get("spec", {}).get("template", {}).get("spec", {})
    for container in pod.get("containers") or []:
        resources = container.get("resources") or {}
        for kind in ("limits", "requests"):
            if resources.get(kind):
                resources[kind] = {k: str(v) for k, v in resources[kind].items()}
    return template


def job_template(template: dict[str, Any]):
    """Deserializes one replicated job's template with the kubernetes client.

    Raises:
      ValueError: (pydantic's ValidationError) when the client refuses it.
    """
    from kubernetes.client import ApiClient

    text = json.dumps(_quantities_as_strings(template))
    return ApiClient().deserialize(text, "V1JobTemplateSpec", "application/json")


def restarts_on(job_spec, code: int, container: str = CONTAINER) -> bool:
    """Whether a pod of ``job_spec`` exiting with ``code`` restarts the JobSet (module doc)."""
    policy = job_spec.pod_failure_policy
    for rule in policy.rules if policy else []:
        on = rule.on_exit_codes
        if on is None or on.container_name not in (None, container):
            continue
        matches = (code in on.values) == (on.operator == "In")
        if matches:
            return rule.action != "FailJob"
    return True


def _check_jobset(doc: dict[str, Any], want: Expected) -> list[str]:
    problems = []
    kind = f"{doc.get('apiVersion')}/{doc.get('kind')}"
    if not (kind.startswith("jobset.x-k8s.io/") and kind.endswith("/JobSet")):
        problems.append(f"kind {kind}, not a jobset.x-k8s.io JobSet")
    name = doc.get("metadata", {}).get("name")
    if name != want.workload:
        problems.append(f"metadata.name is {name!r}, not {want.workload!r}")
    failure = doc.get("spec", {}).get("failurePolicy") or {}
    if failure.get("maxRestarts") != want.max_restarts:
        problems.append(
            f"failurePolicy.maxRestarts is {failure.get('maxRestarts')}, not {want.max_restarts}"
        )
    if not any(
        rule.get("action") == "FailJobSet"
        and "PodFailurePolicy" in (rule.get("onJobFailureReasons") or [])
        for rule in failure.get("rules") or []
    ):
        problems.append(
            "failurePolicy has no FailJobSet rule for PodFailurePolicy: config errors would restart"
        )
    jobs = doc.get("spec", {}).get("replicatedJobs") or []
    replicas = sum(job.get("replicas", 1) for job in jobs)
    if replicas != want.num_slices:
        problems.append(f"{replicas} slice job replicas, not one per slice ({want.num_slices})")
    return problems


def _check_template(name: str, template, want: Expected) -> list[str]:
    spec, slice_ = template.spec, want.slice_type
    problems = []
    if not spec.parallelism == spec.completions == slice_.hosts:
        problems.append(
            f"{name}: parallelism {spec.parallelism} / completions {spec.completions}, "
            f"not {slice_.hosts} (hosts per {slice_.name})"
        )
    pod = spec.template.spec
    selectors = pod.node_selector or {}
    wanted = {ACCELERATOR_LABEL: slice_.accelerator, TOPOLOGY_LABEL: slice_.topology}
    for label, value in wanted.items():
        if selectors.get(label) != value:
            problems.append(f"{name}: node selector {label}={selectors.get(label)}, not {value}")
    containers = {c.name: c for c in pod.containers}
    container = containers.get(CONTAINER)
    if container is None:
        return [*problems, f"{name}: no container {CONTAINER!r} (has {sorted(containers)})"]
    chips = (container.resources.limits or {}).get(TPU_RESOURCE) if container.resources else None
    if chips != str(slice_.chips_per_host):
        problems.append(
            f"{name}: {TPU_RESOURCE} limit {chips}, not {slice_.chips_per_host} per host"
        )
    if want.command not in "\n".join(container.command or []):
        problems.append(f"{name}: the container command does not run {want.command!r}")
    env = {e.name: e.value for e in container.env or []}
    for key, value in want.env.items():
        if env.get(key) != value:
            problems.append(f"{name}: env {key}={env.get(key)!r}, not {value!r}")
    for code in ExitCode:
        if code == ExitCode.OK:
            continue
        should_restart = code == ExitCode.PREEMPTED
        if restarts_on(spec, code) != should_restart:
            verb = "does not restart" if should_restart else "restarts"
            problems.append(f"{name}: exit {int(code)} ({code.name}) {verb} the JobSet")
    return problems


def check_manifest(text: str, want: Expected) -> str:
    """Checks the JobSet YAML against what was asked; returns a one-line summary.

    Raises:
      ManifestError: listing every mismatch.
    """
    doc = yaml.safe_load(text)
    if not isinstance(doc, dict):
        raise ManifestError("the manifest is not a YAML mapping")
    problems = _check_jobset(doc, want)
    for i, job in enumerate(doc.get("spec", {}).get("replicatedJobs") or []):
        name = f"replicatedJobs[{i}] ({job.get('name')})"
        try:
            template = job_template(job.get("template") or {})
        except ValueError as e:
            problems.append(f"{name}: the kubernetes client refuses the job template: {e}")
            continue
        problems += _check_template(name, template, want)
    if problems:
        raise ManifestError("\n".join(f"  - {p}" for p in problems))
    slice_ = want.slice_type
    return (
        f"JobSet {want.workload}: {want.num_slices} slice(s) x {slice_.hosts} pods, "
        f"{slice_.accelerator} {slice_.topology}, {TPU_RESOURCE}: {slice_.chips_per_host} "
        f"per pod; exit {int(ExitCode.PREEMPTED)} restarts the run (up to {want.max_restarts} "
        f"times), other failures end it"
    )
