#!/usr/bin/python
# Copyright: hfl.orchestration developers
# Apache License 2.0

# The work is done by the action plugin plugins/action/fl_report.py on the controller;
# this file carries its documentation, as Ansible expects for action plugins.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fl_report
short_description: Write the self-contained HTML report of a pipeline run
version_added: 0.1.0
description:
  - Reads C(<pipeline_dir>/results/*.jsonl) (gathered by role C(hfl.orchestration.fl_metrics))
    and C(<pipeline_dir>/events.jsonl) (written by M(hfl.orchestration.orchestrate)) on the
    controller and writes one HTML file with its plots embedded as PNG images, viewable offline.
  - Accuracy and loss per global round and cumulative cost against C(hfl_budget), with
    reconfigurations marked; the federated evaluation where the GA ran one; bytes up and down
    and cost on each link; the mean round time of each service split into training,
    aggregation and waiting, so a slow tier shows; the topology before and after each change;
    every client that took part (joiners too, also one whose own results were not collected)
    with its parents, rounds and bytes; per-client class histograms; the orchestrator's events.
  - Figures are formatted (accuracy in %, bytes in MB, seconds); an unknown one is a dash.
  - Runs on the controller; use it with C(run_once).
author:
  - hfl.orchestration developers (@hfl)
requirements:
  - The controller's Python, 3.11 or later (ansible-core 2.19's), with C(matplotlib) and C(numpy)
    (requirements.txt).
extends_documentation_fragment:
  - hfl.orchestration.attributes
  - hfl.orchestration.attributes.controller
  - hfl.orchestration.pipeline
attributes:
  check_mode:
    details: reports whether the file would change; writes nothing.
options:
  pipeline_dir:
    description: The pipeline's state folder; default C(<hfl_state_dir>/<pipeline>).
    type: path
  dest:
    description: The HTML file; default C(<pipeline_dir>/report.html).
    type: path
"""

EXAMPLES = r"""
- name: Write the report
  hfl.orchestration.fl_report:
  run_once: true
"""

RETURN = r"""
path:
  description: The HTML file.
  returned: success
  type: str
  sample: /home/user/.hfl/demo/report.html
services:
  description: Services whose results were found.
  returned: success
  type: int
events:
  description: Orchestrator events found.
  returned: success
  type: int
"""
