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
    reason; without O(wait_for) the module does not fail for it, since a dead service is
    information here (the orchestrator reads it so).
  - With O(wait_for) it polls every O(poll_s) seconds until every service answers
    (C(reachable)) or every service without a O(services[].parent) reports state C(finished)
    (C(finished)), and fails as soon as waiting cannot help, naming the service and the cause
    (docs/architecture.md, section Failing fast).
  - Such failures are a child that cannot reach its parent although the parent answers /status
    (its C(parent_error) from a join attempt that began after the parent was first seen
    answering; attempts that met a parent still starting do not count); with
    O(podman_pipeline), a service whose pod is missing or whose container exited, with the end
    of its log; a O(services[].started) service that stopped answering; with C(finished), the
    global aggregator not answering; a service whose URL is answered by another service (its
    C(/status) must name the service, O(pipeline) when given and its pid in O(pids) when
    given; else another process holds its port).
  - Otherwise it fails after O(wait_timeout) seconds, listing what it still waited for.
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
        description:
          - Full URL of its status page, e.g. C(https://127.0.0.1:8080/status) (C(http://) for a
            pipeline with C(hfl_insecure=true)).
        type: str
        required: true
      parent:
        description:
          - Service name of its parent (the plan's C(parent)); empty for the global aggregator.
          - Used by O(wait_for) only.
        type: str
      started:
        description:
          - It answered /status before (placement started it and waited for it), so while
            waiting, a read that finds it not answering means it stopped, and the wait fails at
            once (after three timed-out reads in a row for a slow answer), with the end of its
            O(services[].log).
        type: bool
        default: false
      log:
        description: Its log file on the host the module runs on, for the failure message.
        type: path
      wait:
        description:
          - C(false) lists it only so that its children can be judged (a parent on another host,
            whose own host checks it); the wait neither waits for it nor fails on it.
        type: bool
        default: true
  timeout:
    description: Seconds to wait for each service's answer.
    type: float
    default: 3.0
  wait_for:
    description:
      - C(none) reads once. C(reachable) waits until every service answers /status and no child
        is left with a join error. C(finished) waits until every service without a parent
        reports state C(finished).
    type: str
    choices: [none, reachable, finished]
    default: none
  wait_timeout:
    description: Seconds O(wait_for) may take before the module fails.
    type: int
    default: 180
  poll_s:
    description: Seconds between two reads while waiting.
    type: float
    default: 2.0
  pipeline:
    description:
      - While waiting, each service's C(/status) must name this pipeline (as well as the service's
        own name, which is always checked), else the wait fails at once (something else answers
        on its port).
    type: str
  pids:
    description:
      - While waiting, the pid each named service must report in its C(/status) (the process
        runtime's pids, as C(hfl.orchestration.fl_process) returns them), else the wait fails at
        once.
    type: dict
    default: {}
  ca:
    description:
      - The pipeline's CA certificate (PEM) on the host the module runs on; an C(https) service
        must present a certificate it signed, naming the URL's host.
      - Without it, the system's trust store is used (which does not know a pipeline's CA).
    type: path
  client_cert:
    description:
      - A certificate of the pipeline (PEM) on the host the module runs on, presented to each
        service, with O(client_key). Without one a service answers C(/status) with no more than
        that it is alive, and the identity checks of O(pipeline) and O(pids) fail.
      - On a service's host, that service's own certificate; on the controller, the
        controller's (role fl_pki).
    type: path
  client_key:
    description: The private key of O(client_cert) (PEM) on the host the module runs on.
    type: path
  podman_pipeline:
    description:
      - While waiting, read the pods labelled C(hfl.io/pipeline=<this>) on the host the module
        runs on; a service not answering whose pod is missing or whose container exited (or
        was restarted) fails the wait at once with podman's state and the end of its log.
    type: str
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

- name: Wait until every service of the plan answers, failing at once on a dead pod
  hfl.orchestration.fl_status:
    services:
      - {name: ga, url: "http://127.0.0.1:8080/status"}
      - {name: la1, url: "http://127.0.0.1:8081/status", parent: ga}
    wait_for: reachable
    wait_timeout: 180
    pipeline: demo
    podman_pipeline: demo

- name: Read a service of a pipeline with mutual TLS, from the global aggregator's host
  hfl.orchestration.fl_status:
    services:
      - {name: la1, url: "https://10.0.0.2:8080/status"}
    ca: ~/.local/state/hfl/demo/ga/tls/ca.crt
    client_cert: ~/.local/state/hfl/demo/ga/tls/service.crt
    client_key: ~/.local/state/hfl/demo/ga/tls/service.key

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
    la2: {reachable: false, error: "[Errno 111] Connection refused", timed_out: false}
elapsed_s:
  description: Seconds the module read or waited.
  returned: always
  type: float
  sample: 4.2
"""

import functools  # noqa: E402 - after the docs
import time  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.hfl.orchestration.plugins.module_utils.fl_status import (  # noqa: E402
    WaitFailed,
    Watch,
    fetch_all,
    podman_probe,
    tls_options,
)


def run_module():
    module = AnsibleModule(
        argument_spec=dict(
            services=dict(type="list", elements="dict", required=True, options=dict(
                name=dict(type="str", required=True),
                url=dict(type="str", required=True),
                parent=dict(type="str"),
                started=dict(type="bool", default=False),
                log=dict(type="path"),
                wait=dict(type="bool", default=True),
            )),
            timeout=dict(type="float", default=3.0),
            wait_for=dict(type="str", choices=["none", "reachable", "finished"],
                          default="none"),
            wait_timeout=dict(type="int", default=180),
            poll_s=dict(type="float", default=2.0),
            pipeline=dict(type="str"),
            pids=dict(type="dict", default={}),
            podman_pipeline=dict(type="str"),
            ca=dict(type="path"),
            client_cert=dict(type="path"),
            client_key=dict(type="path", no_log=False),
        ),
        required_together=[("client_cert", "client_key")],
        supports_check_mode=True,
    )
    p = module.params
    began = time.monotonic()
    fetch = functools.partial(fetch_all, tls=tls_options(p["ca"], p["client_cert"],
                                                         p["client_key"]))
    if p["wait_for"] == "none":
        statuses = fetch(p["services"], p["timeout"])
        module.exit_json(changed=False, statuses=statuses,
                         elapsed_s=round(time.monotonic() - began, 1))
    probe = None
    if p["podman_pipeline"]:
        probe = podman_probe(module.run_command, p["podman_pipeline"])
    pids = {str(name): int(pid) for name, pid in p["pids"].items() if pid is not None}
    watch = Watch(p["services"], p["timeout"], probe, fetch=fetch, pipeline=p["pipeline"],
                  pids=pids)
    try:
        statuses = watch.wait(p["wait_for"], p["wait_timeout"], p["poll_s"])
    except WaitFailed as e:
        msg = str(e)
        if p["podman_pipeline"] and any(x in msg for x in ("[Errno -2]", "[Errno -3]")):
            msg += ("\n(podman 4.3 resolves the pods' network aliases only with the CNI dnsname "
                    "plugin, Debian golang-github-containernetworking-plugin-dnsname, and only on "
                    "networks created after it was installed; scripts/podman-check.sh tests it)")
        module.fail_json(msg=msg, statuses=e.statuses,
                         elapsed_s=round(time.monotonic() - began, 1))
    module.exit_json(changed=False, statuses=statuses,
                     elapsed_s=round(time.monotonic() - began, 1))


def main():
    run_module()


if __name__ == "__main__":
    main()
