#!/usr/bin/python
# Copyright: hfl.orchestration developers
# Apache License 2.0

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fl_status
short_description: Read the /status of fl_service services from the host it runs on
version_added: 0.1.0
description:
  - Fetches C(GET /status) of each service given, concurrently, from the target host (run it
    where the services are reachable, on their own host or on the global aggregator's host,
    which reaches every service of its pipeline).
  - A service that does not answer within O(timeout) is reported with C(reachable=false) and the
    reason; the module itself does not fail for it, since a dead service is information here.
  - Reads only; changes nothing.
author:
  - hfl.orchestration developers (@hfl)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    support: full
    platforms: posix
options:
  services:
    description: The services to read.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Service name; the key of the result.
        type: str
        required: true
      url:
        description: Full URL of its status page, e.g. C(http://127.0.0.1:8080/status).
        type: str
        required: true
  timeout:
    description: Seconds to wait for each service.
    type: float
    default: 3.0
"""

EXAMPLES = r"""
- name: Read one service
  hfl.orchestration.fl_status:
    services:
      - name: ga
        url: http://127.0.0.1:8080/status
  register: hfl_ga

- name: Show its round
  ansible.builtin.debug:
    msg: "{{ hfl_ga.statuses.ga.global_round }}"

- name: Read every service of the plan
  hfl.orchestration.fl_status:
    services: "{{ hfl_status_services }}"
  vars:
    hfl_status_services: >-
      [{% for s in hfl_plan.services %}{"name": "{{ s.name }}",
      "url": "http://{{ s.address }}:{{ s.port }}/status"}{{ "," if not loop.last }}{% endfor %}]
"""

RETURN = r"""
statuses:
  description:
    - Service name to its /status document (see docs/architecture.md) plus C(reachable=true),
      or C({reachable=false, error}) when it did not answer.
  returned: always
  type: dict
  sample:
    ga: {reachable: true, role: global_aggregator, state: training, global_round: 3}
    la2: {reachable: false, error: "[Errno 111] Connection refused"}
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402 - after the docs
from ansible_collections.hfl.orchestration.plugins.module_utils.fl_status import (  # noqa: E402
    fetch_all,
)


def run_module():
    module = AnsibleModule(
        argument_spec=dict(
            services=dict(type="list", elements="dict", required=True, options=dict(
                name=dict(type="str", required=True),
                url=dict(type="str", required=True),
            )),
            timeout=dict(type="float", default=3.0),
        ),
        supports_check_mode=True,
    )
    statuses = fetch_all(module.params["services"], module.params["timeout"])
    module.exit_json(changed=False, statuses=statuses)


def main():
    run_module()


if __name__ == "__main__":
    main()
