#!/usr/bin/python
# Copyright: hfl.orchestration developers
# Apache License 2.0

# The work is done by the action plugin plugins/action/fl_prometheus_info.py on the controller;
# this file carries its documentation, as Ansible expects for action plugins.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fl_prometheus_info
short_description: Say what Prometheus must scrape for a pipeline, and the pipeline's constants
version_added: 0.1.0
description:
  - Turns the plan into Prometheus file_sd target groups, one per service, labelled
    C(pipeline), C(service), C(role), C(tier) and C(host). On the podman and k3s runtimes only
    the aggregators are targets (a client serves no port outside its pod; its links are
    counted at its parent).
  - Turns the inventory's link cost weights (every link it allows, so a moved client is still
    priced), C(hfl_budget) and the stall factor into a rule group of constant recording rules
    (C(hfl:link_cost_weight), C(hfl:budget_units), C(hfl:round_stall_factor)) that the
    collection's rules (roles/fl_prometheus/files/hfl.rules.yml) join against.
  - Runs on the controller and changes nothing; role C(hfl.orchestration.fl_prometheus) writes
    what it returns to the Prometheus host.
author:
  - hfl.orchestration developers (@hfl)
requirements:
  - The controller's Python, 3.11 or later (ansible-core 2.19's), with C(numpy) (requirements.txt).
extends_documentation_fragment:
  - hfl.orchestration.attributes.info_module
  - hfl.orchestration.attributes
  - hfl.orchestration.attributes.controller
options:
  plan:
    description: The plan from M(hfl.orchestration.fl_plan).
    type: dict
    required: true
  stall_factor:
    description: N of the round-stalled alert (no new global round for N times the median
      round time); above 0.
    type: float
    default: 3.0
"""

EXAMPLES = r"""
- name: What Prometheus must scrape
  hfl.orchestration.fl_prometheus_info:
    plan: "{{ hfl_plan }}"
  register: hfl_prometheus_info
"""

RETURN = r"""
job:
  description: The pipeline's scrape job name (its C(job) label).
  returned: success
  type: str
  sample: hfl-demo
scheme:
  description: C(https) (mutual TLS) or C(http) (C(hfl_insecure)).
  returned: success
  type: str
targets:
  description: file_sd target groups, one per service Prometheus scrapes.
  returned: success
  type: list
  elements: dict
  contains:
    targets:
      description: The service's C(address:port).
      type: list
      elements: str
    labels:
      description: C(pipeline), C(service), C(role), C(tier), C(host).
      type: dict
  sample: [{"targets": ["127.0.0.1:28080"], "labels": {"pipeline": "demo", "service": "ga",
           "role": "global_aggregator", "tier": "cloud", "host": "ga"}}]
constants:
  description: A Prometheus rule file (one group) of the pipeline's constants.
  returned: success
  type: dict
  contains:
    groups:
      description: One rule group.
      type: list
      elements: dict
      contains:
        name:
          description: The group's name, C(<job>-constants).
          type: str
          sample: hfl-demo-constants
        rules:
          description:
            - Recording rules, each with C(record), C(expr) (a C(vector(<value>))) and C(labels).
            - C(hfl:link_cost_weight) per link the inventory allows (labels C(pipeline),
              C(child), C(parent)), C(hfl:budget_units) when C(hfl_budget) is set, and
              C(hfl:round_stall_factor) (label C(pipeline)).
          type: list
          elements: dict
          sample: [{"record": "hfl:round_stall_factor", "expr": "vector(3.0)",
                    "labels": {"pipeline": "demo"}}]
"""
