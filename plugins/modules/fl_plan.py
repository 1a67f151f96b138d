#!/usr/bin/python
# Copyright: hfl.orchestration developers
# Apache License 2.0

# The work is done by the action plugin plugins/action/fl_plan.py on the controller;
# this file carries its documentation, as Ansible expects for action plugins.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fl_plan
short_description: Validate the inventory and compute the pipeline's plan
version_added: 0.1.0
description:
  - Reads the hosts of group C(hfl_cluster) from the inventory, builds the topology (every
    mistake in the inventory is one line of the failure message, naming the host and the
    variable) and computes the plan, one fl_service spec per service.
  - Writes the plan to C(<hfl_state_dir>/<pipeline>/plan.json) on the controller only when its
    content changed, and returns it as the fact C(hfl_plan).
  - With C(hfl_flower_app) set, loads that Flower app folder (a C(pyproject.toml) with a
    C([tool.flwr.app]) table; a relative path is relative to the folder of the inventory file
    that defines the global aggregator's host), checks C(hfl_run_config) against its
    C([tool.flwr.app.config]) and writes its files as one archive,
    C(<hfl_state_dir>/<pipeline>/app/<digest>.tar.gz), which placement ships to the hosts.
  - Before anything is placed, imports every component the inventory names (client app, model,
    evaluate function, strategies, each strategy built with its kwargs) in a subprocess of the
    controller's Python with the app folder on C(sys.path); each one that fails is one error
    line naming its variable. A check that passed is not repeated for the same app content,
    components and interpreter (C(app-check.json) in the pipeline's folder). When that Python
    has no C(flwr), the check is skipped with a warning.
  - Records in the plan how each host was reached (C(connections) holds its C(ansible_host),
    C(ansible_port), C(ansible_user), key file, SSH arguments, interpreter and become variables;
    never a password). Compared with the last C(plan.json), every process service the new plan
    no longer runs on the same host in the same folder (its host left the inventory, its folder
    moved) gets a record in C(<hfl_state_dir>/<pipeline>/stale/), kept until role fl_placement
    has stopped it there; they are returned in the fact as C(hfl_plan.stale).
  - Runs on the controller; use it with C(run_once) so the facts reach every host of the play.
author:
  - hfl.orchestration developers (@hfl)
requirements:
  - The controller's Python, 3.11 or later (ansible-core 2.19's); C(tomllib) reads a Flower app's
    C(pyproject.toml).
  - With C(hfl_flower_app), C(flwr) and the app's own dependencies in that Python for the import
    check of its components (without C(flwr) the check is skipped with a warning).
extends_documentation_fragment:
  - hfl.orchestration.attributes
  - hfl.orchestration.attributes.controller
  - hfl.orchestration.attributes.action_group
  - hfl.orchestration.pipeline
attributes:
  check_mode:
    details: Computes the plan and reports whether plan.json would change; writes nothing.
options:
  assignment_file:
    description:
      - A JSON or YAML file on the controller mapping client names to parent names, either at
        its top level or under the key C(assignment). Overrides the inventory's placement of the
        clients it names. The orchestrator writes it when it moves clients.
      - Its list C(left_out) (the clients the orchestrator took out) becomes the plan's
        C(left_out), and podman and k3s render none of them.
    type: path
"""

EXAMPLES = r"""
- name: Validate the inventory and plan the pipeline
  hfl.orchestration.fl_plan:
  run_once: true

- name: Re-plan with the orchestrator's assignment
  hfl.orchestration.fl_plan:
    assignment_file: "{{ hfl_state_dir }}/demo/assignment.json"
  run_once: true
"""

RETURN = r"""
ansible_facts:
  description: Facts set for every host of the play.
  returned: success
  type: dict
  contains:
    hfl_plan:
      description:
        - The plan (format in docs/architecture.md). With a Flower app it has C(app) with
          C(source) (the folder on the controller), C(digest) and C(archive).
        - C(stale) lists the services to stop, each C({id, name, host, dir, connection}); it is
          not written to C(plan.json).
      type: dict
    hfl_pipeline_dir:
      description: The pipeline's folder on the controller (absolute).
      type: str
      sample: /home/me/.hfl/demo
plan_path:
  description: Where the plan is written.
  returned: success
  type: str
  sample: /home/me/.hfl/demo/plan.json
errors:
  description: One line per mistake in the inventory.
  returned: failure
  type: list
  elements: str
"""
