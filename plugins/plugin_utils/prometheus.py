# Copyright: hfl.orchestration developers
# Apache License 2.0
"""What Prometheus needs to know about one pipeline: its scrape targets and its constants.

Pure Python (no Ansible imports). ``scrape_targets(plan)`` turns the plan dict into file_sd
target groups; ``pipeline_rules(...)`` turns the inventory's link cost weights, budget and the
stall factor into recording rules of constant value, which the collection's static rules
(roles/fl_prometheus/files/hfl.rules.yml) join against. Role fl_prometheus writes both to the
Prometheus host.
"""

from __future__ import annotations

import math

CLIENT = "client"
# Runtimes whose clients serve no port outside their pod (manifests: only aggregators get a
# hostPort), so Prometheus outside the cluster reaches the aggregators only.
PROCESS_RUNTIME = "process"


def job_name(pipeline):
    """The scrape job of a pipeline (also its ``job`` label)."""
    return f"hfl-{pipeline}"


def scrape_targets(plan):
    """file_sd target groups, one per service Prometheus can reach, labelled ``pipeline``,
    ``service``, ``role``, ``tier`` and ``host`` (the inventory host it runs on). On podman
    and k3s a client has no port outside its pod: its links are counted at its parent, and it
    is left out."""
    groups = []
    for service in plan["services"]:
        if plan["runtime"] != PROCESS_RUNTIME and service["role"] == CLIENT:
            continue
        # The plan's URL already brackets an IPv6 address; the target is its host:port.
        target = service["url"].split("://", 1)[1]
        groups.append({"targets": [target], "labels": {
            "pipeline": plan["pipeline"], "service": service["name"], "role": service["role"],
            "tier": service["tier"], "host": service["host"]}})
    return groups


def _constant(record, value, labels):
    return {"record": record, "expr": f"vector({float(value)!r})", "labels": labels}


def pipeline_rules(pipeline, weights, budget=None, stall_factor=3):
    """One rule group of the pipeline's constants:

    - ``hfl:link_cost_weight{pipeline, child, parent}``: each link the inventory allows
      (``weights``: child -> {parent: weight}, as observation.fleet_of gives them), so a client
      the orchestrator moves is still priced;
    - ``hfl:budget_units{pipeline}``: ``hfl_budget`` (no series when there is none);
    - ``hfl:round_stall_factor{pipeline}``: N of the round-stalled alert.
    """
    if isinstance(stall_factor, bool) or not isinstance(stall_factor, int | float) \
            or not math.isfinite(stall_factor) or stall_factor <= 0:
        raise ValueError(f"hfl_prometheus_stall_factor: expected a number above 0, "
                         f"got {stall_factor!r}")
    rules = [_constant("hfl:link_cost_weight", weight,
                       {"pipeline": pipeline, "child": child, "parent": parent})
             for child, parents in sorted(weights.items())
             for parent, weight in sorted(parents.items())]
    if budget is not None:
        rules.append(_constant("hfl:budget_units", budget, {"pipeline": pipeline}))
    rules.append(_constant("hfl:round_stall_factor", stall_factor, {"pipeline": pipeline}))
    return {"groups": [{"name": f"{job_name(pipeline)}-constants", "rules": rules}]}
