#!/usr/bin/python
# Copyright: hfl.orchestration developers
# Apache License 2.0

# The work is done by the action plugin plugins/action/orchestrate.py on the controller;
# this file carries its documentation, as Ansible expects for action plugins.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: orchestrate
short_description: Watch a running HFL pipeline and reconfigure it under a communication budget
version_added: 0.1.0
description:
  - Runs on the controller, once per pipeline (use C(run_once)), a loop of observe, decide, act
    and verify until a stop condition.
  - Observe. Re-reads the inventory file every iteration (a client added to or removed from it
    is a change, and so is an edit of C(hfl_budget)), reads every service's /status on the
    task's host (delegate it to the global aggregator's host; where that host is the controller,
    C(ansible_connection=local), the reads and the global aggregator's C(/control) run inside
    the plugin and an iteration takes milliseconds, elsewhere they run there as
    M(hfl.orchestration.fl_status_info) and M(ansible.builtin.uri); on podman and k3s a client,
    whose pod publishes no port, counts as reachable while its parent lists it among its
    children, and shows no class histogram), and books the measured bytes on every uplink times
    that link's C(hfl_link_cost) (unit C(MB x weight)).
  - Decide. Triggers are a node joining or leaving, a service failing (two missed /status in a
    row) or recovering, and a learning stall (loss rising or accuracy flat over O(stall_window)
    rounds). The configuration model C(hfl_config_model) (C(min_comm_cost), C(min_kld), C(flat))
    computes the assignment for the live fleet.
  - Act. The running services are first told, by C(POST /control), what they can act on at
    once; each aggregator which of its children failed, left or are left out (its open round stops
    waiting for them), and on the process runtime each moved client its new parent (a live
    switch). Services other than the global aggregator are told only where its host is the
    controller, with the controller's certificate from C(hfl_pki_dir). Then a different
    assignment is written to C(<hfl_state_dir>/<pipeline>/assignment.json) and
    C(playbooks/place.yml) is re-run with it through ansible-runner (limited away from hosts left
    out, which are stopped after their results are collected), which makes the change last.
    Only services whose spec changed move; a client's move reloads it and never restarts the
    global aggregator.
  - Verify. A change that costs more per round (or a stall's speculative one) is checked
    O(window) global rounds later (earlier when the budget runs out first); accuracy is fitted
    as C(a + b ln(x+1)), the final accuracy at budget exhaustion (C(hfl_objective=max_accuracy))
    or the cost to C(hfl_target_accuracy) (C(min_cost)) is forecast for keeping and for
    reverting, and the change is reverted if that wins; the revert's cost is booked.
  - Stop. Pipeline finished; target accuracy reached; budget spent (the global aggregator is told
    its last round in advance, so the run never exceeds C(hfl_budget) by more than one round's
    cost; that last round follows the price of a round as it is measured, and the budget as it
    is edited); the same two plans alternating (reported as a warning); O(max_iterations);
    O(max_wall_s).
  - Every decision is one JSON line in C(<hfl_state_dir>/<pipeline>/events.jsonl).
author:
  - hfl.orchestration developers (@hfl)
requirements:
  - The controller's Python, 3.11 or later (ansible-core 2.19's), with C(numpy) and
    C(ansible-runner) (requirements.txt), and C(ansible-playbook) on C(PATH) next to it (the venv's
    C(bin)).
  - Where the task's host is not the controller, Python 3.8 or later there for
    M(hfl.orchestration.fl_status_info) and M(ansible.builtin.uri).
extends_documentation_fragment:
  - hfl.orchestration.attributes
  - hfl.orchestration.attributes.action_group
  - hfl.orchestration.pipeline
attributes:
  check_mode:
    details: observes once and returns the plan it would apply; places nothing, writes nothing.
options:
  inventory:
    description: Inventory sources to re-read; default the ones this run was given.
    type: list
    elements: path
  state_dir:
    description: Controller state folder; default C(hfl_state_dir) (C(~/.hfl)).
    type: path
  config_model:
    description: Overrides the inventory's C(hfl_config_model).
    type: str
    choices: [min_comm_cost, min_kld, flat]
  verify:
    description: Run the reconfiguration check (keep or revert).
    type: bool
    default: true
  window:
    description: Global rounds between a change and its check.
    type: int
    default: 5
  stall_window:
    description:
      - Global rounds over which a stall is judged; C(0) runs no stall experiments (fleet
        changes and failures are still acted on).
    type: int
    default: 5
  poll_s:
    description: Seconds between loop iterations.
    type: float
    default: 2.0
  max_iterations:
    description: Upper bound on loop iterations.
    type: int
    default: 100000
  max_wall_s:
    description: Upper bound on the loop's wall time in seconds.
    type: float
    default: 3600.0
  status_timeout:
    description: Seconds to wait for each service's /status.
    type: float
    default: 3.0
notes:
  - "The global aggregator is told its last round with C(POST /control) C({global_rounds: N});
    if it refuses, it is re-placed with C(hfl_global_rounds=N) and resumes from its checkpoint."
"""

EXAMPLES = r"""
- name: Orchestrate the running pipeline from the global aggregator's host
  hfl.orchestration.orchestrate:
    window: 5
  run_once: true
  delegate_to: ga

- name: Show the plan it would apply now
  hfl.orchestration.orchestrate:
  run_once: true
  check_mode: true
"""

RETURN = r"""
stop_reason:
  description: Why the loop ended.
  returned: always
  type: str
  sample: "budget: spent 1.05e+04 of 1.1e+04; the GA was told to stop after global round 12"
global_round:
  description: Last completed global round seen.
  returned: success
  type: int
accuracy:
  description: The global aggregator's last test accuracy.
  returned: success
  type: float
cost:
  description: Cumulative cost (total, measured, booked), per-round cost, budget and remaining.
  returned: success
  type: dict
  contains:
    total:
      description: Cost so far, measured plus booked (unit C(MB x weight)).
      type: float
    measured:
      description: Cost of the bytes measured on the links.
      type: float
    booked:
      description: Cost booked without being measured (reconfigurations, reverts).
      type: float
    per_round:
      description: The cost of one global round with the current assignment.
      type: float
    budget:
      description: C(hfl_budget), or null without one.
      type: float
    remaining:
      description: Budget left, or null without a budget.
      type: float
assignment:
  description: Client to parent at the end (in check mode, the one it would apply).
  returned: always
  type: dict
left_out:
  description: Hosts left out of the plan (failed services, clients a revert took out).
  returned: success
  type: list
  elements: str
reconfigurations:
  description: Plans applied (reverts included).
  returned: success
  type: int
events_path:
  description: The events file on the controller.
  returned: success
  type: str
"""
